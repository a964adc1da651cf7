//! Canary requests on one persistent connection per worker: stalls reach /metrics and
//! the window every second.

use std::{sync::Arc, time::Duration};

use crate::{
    canary::{self, CanaryConfig},
    config::Config,
    metrics::Metrics,
    window::{Evidence, EvidenceSink},
};

pub async fn watch(config: Config, metrics: Arc<Metrics>, evidence: EvidenceSink) {
    let observations = canary::start(CanaryConfig {
        app: std::net::SocketAddr::from(([127, 0, 0, 1], config.app.app_port)),
        path: config.app.probe_path.clone(),
        connections: config.app.workers.max(1) as usize,
        period: config.canary_period,
        threshold: config.app.stall_threshold,
        give_up: Duration::from_secs(60),
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Ok(delta) = observations.lock().map(|mut o| o.take_delta()) else {
            continue;
        };
        metrics.event_loop.record_canary(&delta);
        evidence.send(Evidence::Canary {
            probes: delta.probes,
            failures: delta.failures,
            stalled_seconds: delta.stalled_seconds,
            stalled_now_seconds: delta
                .oldest_inflight
                .filter(|d| *d > config.app.stall_threshold)
                .map_or(0.0, |d| d.as_secs_f64()),
        });
    }
}
