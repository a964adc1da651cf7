//! Receives the app's opt-in heartbeats; every second moves their stalls into the
//! metrics and the window. Without a heartbeat from the app this costs one idle socket.

use std::{sync::Arc, time::Duration};

use tracing::warn;

use crate::{
    config::Config,
    heartbeat::{self, Heartbeats},
    metrics::Metrics,
    window::{Evidence, EvidenceSink},
};

pub async fn watch(config: Config, metrics: Arc<Metrics>, evidence: EvidenceSink) {
    let socket = match tokio::net::UdpSocket::bind(config.heartbeat_listen).await {
        Ok(s) => s,
        Err(e) => {
            warn!(address = %config.heartbeat_listen, error = %e, "heartbeat socket unavailable; canary only");
            // Degraded, not ended: a supervised task that returns stops the sidecar.
            return std::future::pending().await;
        }
    };
    let mut beats = Heartbeats::default();
    let mut buf = [0u8; 128];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            received = socket.recv(&mut buf) => {
                if let Ok(n) = received {
                    if let Some(beat) = heartbeat::parse(&buf[..n]) {
                        beats.on_beat(beat, std::time::Instant::now(), config.app.stall_threshold);
                    } else if let Some(stat) = heartbeat::parse_cpu(&buf[..n]) {
                        beats.on_cpu(stat);
                    }
                }
            }
            _ = ticker.tick() => {
                let delta = beats.take_delta(std::time::Instant::now());
                metrics.event_loop.record_heartbeat(&delta);
                evidence.send(Evidence::Heartbeat {
                    stalled_seconds: delta.stalled_seconds,
                    stalled_now_seconds: delta
                        .overdue
                        .filter(|d| *d > config.app.stall_threshold)
                        .map_or(0.0, |d| d.as_secs_f64()),
                });
                if let Some(t) = delta.throttling {
                    evidence.send(Evidence::CpuThrottling(t));
                }
            }
        }
    }
}
