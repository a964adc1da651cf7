//! Event-loop metrics: stalls seen by the canary and by the opt-in heartbeat, and the
//! canary's own latencies.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{canary::CanaryDelta, heartbeat::HeartbeatDelta};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

fn source(name: &str) -> SourceLabels {
    SourceLabels {
        source: name.into(),
    }
}

/// `event_loop_*`, `canary_*` and `heartbeat_workers`.
#[derive(Debug)]
pub struct EventLoopMetrics {
    stall_duration: Family<SourceLabels, Histogram>,
    stalled_seconds: Family<SourceLabels, Counter<f64, AtomicU64>>,
    canary_oldest_inflight: Gauge<f64, AtomicU64>,
    canary_probes: Counter,
    canary_failures: Counter,
    canary_duration: Histogram,
    heartbeat_workers: Gauge,
    cpu_periods: Counter,
    cpu_throttled_periods: Counter,
    cpu_throttled_seconds: Counter<f64, AtomicU64>,
}

impl EventLoopMetrics {
    pub fn register(registry: &mut Registry) -> EventLoopMetrics {
        let m = EventLoopMetrics {
            stall_duration: Family::new_with_constructor(
                (|| Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]))
                    as fn() -> Histogram,
            ),
            stalled_seconds: Family::default(),
            canary_oldest_inflight: Gauge::default(),
            canary_probes: Counter::default(),
            canary_failures: Counter::default(),
            canary_duration: Histogram::new(exponential_buckets(0.001, 2.5, 12)),
            heartbeat_workers: Gauge::default(),
            cpu_periods: Counter::default(),
            cpu_throttled_periods: Counter::default(),
            cpu_throttled_seconds: Counter::default(),
        };
        registry.register_with_unit(
            "event_loop_stall_duration",
            "Detected event-loop stalls, by how they were seen",
            Unit::Seconds,
            m.stall_duration.clone(),
        );
        registry.register_with_unit(
            "event_loop_stall",
            "Time the event loop spent stalled (rate() is the stalled fraction)",
            Unit::Seconds,
            m.stalled_seconds.clone(),
        );
        registry.register_with_unit(
            "canary_oldest_inflight",
            "Age of the oldest unanswered canary request (a stall in progress when large)",
            Unit::Seconds,
            m.canary_oldest_inflight.clone(),
        );
        registry.register(
            "canary_probes",
            "Canary requests sent",
            m.canary_probes.clone(),
        );
        registry.register(
            "canary_failures",
            "Canary requests that failed or were abandoned",
            m.canary_failures.clone(),
        );
        registry.register(
            "heartbeat_workers",
            "App workers sending the opt-in heartbeat",
            m.heartbeat_workers.clone(),
        );
        registry.register(
            "app_cpu_periods",
            "CFS periods of the app container (its cgroup's cpu.stat, sent by the loop heartbeat)",
            m.cpu_periods.clone(),
        );
        registry.register(
            "app_cpu_throttled_periods",
            "CFS periods in which the app container's CPU quota throttled it",
            m.cpu_throttled_periods.clone(),
        );
        registry.register_with_unit(
            "app_cpu_throttled",
            "Time the app container's CPU quota kept it paused",
            Unit::Seconds,
            m.cpu_throttled_seconds.clone(),
        );
        registry.register_with_unit(
            "canary_request_duration",
            "Latency of canary requests to the app's probe path (small requests queued behind big ones show here)",
            Unit::Seconds,
            m.canary_duration.clone(),
        );
        // Both stall sources exist from the start (at 0): dashboards show 0, not no data.
        for name in ["canary", "heartbeat"] {
            let _ = m.stall_duration.get_or_create(&source(name));
            let _ = m.stalled_seconds.get_or_create(&source(name));
        }
        m
    }

    pub fn record_canary(&self, delta: &CanaryDelta) {
        let canary = source("canary");
        for stall in &delta.stalls {
            self.stall_duration
                .get_or_create(&canary)
                .observe(stall.seconds);
        }
        for latency in &delta.latencies {
            self.canary_duration.observe(*latency);
        }
        self.stalled_seconds
            .get_or_create(&canary)
            .inc_by(delta.stalled_seconds);
        self.canary_probes.inc_by(delta.probes);
        self.canary_failures.inc_by(delta.failures);
        self.canary_oldest_inflight.set(
            delta
                .oldest_inflight
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
    }

    pub fn record_heartbeat(&self, delta: &HeartbeatDelta) {
        let heartbeat = source("heartbeat");
        for stall in &delta.stalls {
            self.stall_duration
                .get_or_create(&heartbeat)
                .observe(stall.seconds);
        }
        self.stalled_seconds
            .get_or_create(&heartbeat)
            .inc_by(delta.stalled_seconds);
        self.heartbeat_workers.set(delta.workers as i64);
        if let Some(t) = delta.throttling {
            self.cpu_periods.inc_by(t.periods);
            self.cpu_throttled_periods.inc_by(t.throttled_periods);
            self.cpu_throttled_seconds.inc_by(t.throttled_seconds);
        }
    }
}
