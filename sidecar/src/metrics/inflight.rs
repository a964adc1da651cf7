//! In-flight requests: the latest sample and its time integral, whose `rate()` over a
//! window is the average number in flight (what an autoscaler should compare).

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

#[derive(Debug)]
pub struct InflightMetrics {
    current: Gauge,
    seconds: Counter<f64, AtomicU64>,
}

impl InflightMetrics {
    pub fn register(registry: &mut Registry) -> InflightMetrics {
        let m = InflightMetrics {
            current: Gauge::default(),
            seconds: Counter::default(),
        };
        registry.register(
            "inflight_requests",
            "Requests in flight on the app's port at the last sample (every 250 ms): unanswered requests on its connections and connections in its accept queue, the sidecar's own excluded",
            m.current.clone(),
        );
        registry.register_with_unit(
            "inflight_request",
            "Time integral of in-flight requests: rate() over a window is the average number in flight",
            Unit::Seconds,
            m.seconds.clone(),
        );
        m
    }

    /// `count` requests in flight at a sample taken `since` after the previous one.
    pub fn record(&self, count: u32, since: Duration) {
        self.current.set(i64::from(count));
        self.seconds.inc_by(f64::from(count) * since.as_secs_f64());
    }
}
