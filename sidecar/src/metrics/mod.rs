//! The sidecar's metrics (prefix `apiworkload_sidecar_`), one module per signal, each
//! registering its own and recording what its watcher hands out. Labels stay bounded:
//! configured targets, ≤ 3 nameservers, fixed enums.

mod conditions;
mod connections;
mod dns;
mod event_loop;
mod inflight;

pub use conditions::ConditionMetrics;
pub use connections::{ConnectionMetrics, NETNS_COUNTERS};
pub use dns::DnsMetrics;
pub use event_loop::EventLoopMetrics;
pub use inflight::InflightMetrics;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

use crate::resolv::SearchExpansion;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The sidecar's own health: how late its sampling timer fires, and what it was told.
#[derive(Debug)]
pub struct SelfMetrics {
    timer_lag: Histogram,
    app_workers: Gauge,
}

impl SelfMetrics {
    pub fn register(registry: &mut Registry) -> SelfMetrics {
        let version = VersionLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        };
        registry.register("build", "Sidecar build", Info::new(version));
        let m = SelfMetrics {
            timer_lag: Histogram::new([0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            app_workers: Gauge::default(),
        };
        registry.register_with_unit(
            "self_timer_lag",
            "How late the sidecar's own 1 s sampling timer fires: when high, the sidecar was starved of CPU and its latencies are skewed by as much",
            Unit::Seconds,
            m.timer_lag.clone(),
        );
        registry.register(
            "app_workers",
            "Worker processes the app was started with (--workers, from the operator's sizing)",
            m.app_workers.clone(),
        );
        m
    }

    pub fn set_app_workers(&self, workers: u32) {
        self.app_workers.set(i64::from(workers));
    }

    pub fn record_timer_lag(&self, lag: std::time::Duration) {
        self.timer_lag.observe(lag.as_secs_f64());
    }
}

/// Every metric of the sidecar, by signal.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub dns: DnsMetrics,
    pub event_loop: EventLoopMetrics,
    pub connections: ConnectionMetrics,
    pub inflight: InflightMetrics,
    pub conditions: ConditionMetrics,
    pub own: SelfMetrics,
}

impl Metrics {
    pub fn new(expansions: &[SearchExpansion]) -> Metrics {
        let mut registry = Registry::with_prefix("apiworkload_sidecar");
        let own = SelfMetrics::register(&mut registry);
        let dns = DnsMetrics::register(&mut registry, expansions);
        let event_loop = EventLoopMetrics::register(&mut registry);
        let connections = ConnectionMetrics::register(&mut registry);
        let inflight = InflightMetrics::register(&mut registry);
        let conditions = ConditionMetrics::register(&mut registry);
        Metrics {
            registry,
            dns,
            event_loop,
            connections,
            inflight,
            conditions,
            own,
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        canary::Observations,
        dns::{Lookup, Mode, QueryRecord, Rcode},
        resolv::{parse, search_expansions},
    };

    #[test]
    fn records_lookups_with_bounded_labels() {
        let m = Metrics::new(&[]);
        let q = |rcode, answers| QueryRecord {
            name: "x.".into(),
            qtype: "A",
            nameserver: Some("10.96.0.10:53".parse().unwrap()),
            rcode,
            answers,
            seconds: 0.002,
        };
        m.dns.record(&Lookup {
            target: "api.example.com".into(),
            mode: Mode::AsApp,
            answered_by: Some("api.example.com.".into()),
            queries: vec![q(Rcode::NxDomain, 0), q(Rcode::NoError, 1)],
            seconds: 0.004,
        });
        let text = m.encode();
        assert!(text.contains(r#"apiworkload_sidecar_dns_lookups_total{target="api.example.com",mode="as_app",result="ok"} 1"#), "{text}");
        assert!(text.contains(r#"apiworkload_sidecar_dns_queries_total{target="api.example.com",mode="as_app",rcode="nxdomain"} 1"#));
        assert!(text.contains(r#"apiworkload_sidecar_dns_query_duration_seconds_count{nameserver="10.96.0.10",qtype="A",rcode="noerror"} 1"#));
    }

    #[test]
    fn canary_stalls_become_a_histogram_and_a_stalled_seconds_counter() {
        let m = Metrics::new(&[]);
        let mut obs = Observations::default();
        obs.probes = 10;
        obs.inflight_since = vec![None];
        let end = std::time::Instant::now();
        obs.record_stall(0, 1.5, 1.4, end);
        let delta = obs.take_delta();
        assert_eq!(delta.stalled_seconds, 1.5);
        assert!(obs.stalls.is_empty(), "handed out once");
        assert_eq!(obs.take_delta().probes, 0, "only what is new");
        m.event_loop.record_canary(&delta);
        let text = m.encode();
        assert!(
            text.contains(
                r#"apiworkload_sidecar_event_loop_stall_seconds_total{source="canary"} 1.5"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"apiworkload_sidecar_event_loop_stall_duration_seconds_count{source="canary"} 1"#
        ));
        assert!(text.contains("apiworkload_sidecar_canary_probes_total 10"));
    }

    #[test]
    fn in_flight_requests_are_a_gauge_and_a_time_integral() {
        let m = Metrics::new(&[]);
        m.inflight.record(4, std::time::Duration::from_millis(250));
        m.inflight.record(2, std::time::Duration::from_millis(500));
        let text = m.encode();
        assert!(
            text.contains("apiworkload_sidecar_inflight_requests 2\n"),
            "{text}"
        );
        assert!(
            text.contains("apiworkload_sidecar_inflight_request_seconds_total 2.0\n"),
            "4 × 0.25 s + 2 × 0.5 s: {text}"
        );
    }

    #[test]
    fn counts_the_ndots_tax_per_name() {
        let conf =
            parse("search ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n");
        let e = search_expansions(
            &conf,
            &["api.example.com".into(), "api.example.com.".into()],
        );
        assert_eq!(
            e[0].queries_before_name, 6,
            "3 search suffixes × (A + AAAA)"
        );
        assert_eq!(
            e[1].queries_before_name, 0,
            "a trailing dot skips the search list"
        );
        let text = Metrics::new(&e).encode();
        assert!(
            text.contains(
                r#"apiworkload_sidecar_dns_search_queries_before_name{target="api.example.com"} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"apiworkload_sidecar_build_info{version=""#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
