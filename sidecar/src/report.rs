//! Findings and their evidence, for /report and /metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};
use serde::Serialize;

use crate::{
    canary::Observations,
    conditions::Conditions,
    dns::{Lookup, Mode, Rcode},
    heartbeat::Heartbeats,
    resolv::{ResolvConf, candidates},
    sockets::{InboundCounts, InboundSample, OutboundTracker},
};

/// What the resolver configuration alone says about one probed name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchExpansion {
    pub name: String,
    /// Names the resolver tries, in order.
    pub candidates: Vec<String>,
    /// Queries before the real name is asked (A and AAAA each): the ndots tax of an
    /// external name that only resolves as itself.
    pub queries_before_name: usize,
}

/// The static DNS finding for each configured name.
pub fn search_expansions(conf: &ResolvConf, names: &[String]) -> Vec<SearchExpansion> {
    names
        .iter()
        .map(|name| {
            let c = candidates(name, conf);
            let absolute = format!("{}.", name.trim_end_matches('.'));
            let position = c.iter().position(|n| *n == absolute).unwrap_or(0);
            SearchExpansion {
                name: name.clone(),
                queries_before_name: 2 * position,
                candidates: c,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    target: String,
    mode: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    target: String,
    mode: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameserverLabels {
    nameserver: String,
    qtype: String,
    rcode: String,
}

/// Canary totals already moved into the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CanarySeen {
    pub probes: u64,
    pub failures: u64,
    pub stalled_seconds: f64,
}

/// The sidecar's metrics (prefix `apiworkload_sidecar_`; labels stay bounded: configured
/// targets, ≤ 3 nameservers, fixed enums).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    lookup_duration: Family<LookupLabels, Histogram>,
    lookups: Family<LookupLabels, Counter>,
    queries: Family<QueryLabels, Counter>,
    query_duration: Family<NameserverLabels, Histogram>,
    timeouts: Family<NameserverLabels, Counter>,
    stall_duration: Family<SourceLabels, Histogram>,
    stalled_seconds: Family<SourceLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    canary_oldest_inflight: Gauge<f64, std::sync::atomic::AtomicU64>,
    canary_probes: Counter,
    canary_failures: Counter,
    outbound_opened: Counter,
    outbound_closed_locally: Counter,
    outbound_duration: Histogram,
    condition: Family<ConditionLabels, Gauge>,
    condition_writes: Family<ResultLabels, Counter>,
    inbound_opened: Counter,
    inbound_closed: Family<CloserLabels, Counter>,
    listen_queue: Gauge,
    listen_queue_max: Gauge,
    inbound_unread: Gauge,
    inbound_unread_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    close_wait: Gauge,
    netns: Family<CounterNameLabels, Counter>,
    heartbeat_workers: Gauge,
    socket_source: Family<SourceLabels, Gauge>,
    timer_lag: Histogram,
    app_workers: Gauge,
    canary_duration: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloserLabels {
    closer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterNameLabels {
    counter: String,
}

/// Namespace-wide kernel counters mirrored as `netns_tcp_total{counter}`: exact, they miss
/// no connection however short, but include every container of the pod (the sidecar,
/// probes and scrapes too).
pub const NETNS_COUNTERS: [&str; 6] = [
    "Tcp.ActiveOpens",
    "Tcp.PassiveOpens",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

fn dns_histogram() -> Histogram {
    // 0.5 ms … 8 s: in-cluster lookups need sub-millisecond buckets; 5 s retries show too.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Metrics {
    pub fn new(expansions: &[SearchExpansion]) -> Metrics {
        let mut registry = Registry::with_prefix("apiworkload_sidecar");
        let version = VersionLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        };
        registry.register("build", "Sidecar build", Info::new(version));
        let tax = Family::<TargetLabels, Gauge>::default();
        for e in expansions {
            tax.get_or_create(&TargetLabels {
                target: e.name.clone(),
            })
            .set(e.queries_before_name as i64);
        }
        registry.register(
            "dns_search_queries_before_name",
            "Queries (A and AAAA) the search list costs before the name itself is asked",
            tax,
        );
        let lookup_duration = Family::<LookupLabels, Histogram>::new_with_constructor(
            dns_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "dns_lookup_duration",
            "How long a lookup took, as the app sees it (as_app) or for the name alone (fqdn)",
            Unit::Seconds,
            lookup_duration.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register("dns_lookups", "Lookups probed", lookups.clone());
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "Queries sent (queries / lookups is the ndots tax)",
            queries.clone(),
        );
        let query_duration = Family::<NameserverLabels, Histogram>::new_with_constructor(
            dns_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "dns_query_duration",
            "Latency of each query, by nameserver",
            Unit::Seconds,
            query_duration.clone(),
        );
        let timeouts = Family::<NameserverLabels, Counter>::default();
        registry.register(
            "dns_timeouts",
            "Queries that got no answer within the resolver timeout",
            timeouts.clone(),
        );
        let stall_duration = Family::<SourceLabels, Histogram>::new_with_constructor(
            (|| Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]))
                as fn() -> Histogram,
        );
        registry.register_with_unit(
            "event_loop_stall_duration",
            "Detected event-loop stalls, by how they were seen",
            Unit::Seconds,
            stall_duration.clone(),
        );
        let stalled_seconds =
            Family::<SourceLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "event_loop_stall",
            "Time the event loop spent stalled (rate() is the stalled fraction)",
            Unit::Seconds,
            stalled_seconds.clone(),
        );
        let canary_oldest_inflight = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "canary_oldest_inflight",
            "Age of the oldest unanswered canary request (a stall in progress when large)",
            Unit::Seconds,
            canary_oldest_inflight.clone(),
        );
        let canary_probes = Counter::default();
        registry.register(
            "canary_probes",
            "Canary requests sent",
            canary_probes.clone(),
        );
        let canary_failures = Counter::default();
        registry.register(
            "canary_failures",
            "Canary requests that failed or were abandoned",
            canary_failures.clone(),
        );
        let outbound_opened = Counter::default();
        registry.register(
            "tcp_outbound_connections_opened",
            "Outbound TCP connections the app opened (a client per request shows as a high rate)",
            outbound_opened.clone(),
        );
        let outbound_closed_locally = Counter::default();
        registry.register(
            "tcp_outbound_connections_closed_locally",
            "Outbound connections the app closed itself",
            outbound_closed_locally.clone(),
        );
        let outbound_duration =
            Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]);
        registry.register_with_unit(
            "tcp_outbound_connection_duration",
            "Lifetime of outbound connections (short means no pooling)",
            Unit::Seconds,
            outbound_duration.clone(),
        );
        let condition = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "condition",
            "1 for each condition's current status",
            condition.clone(),
        );
        let condition_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "condition_writes",
            "Patches of the pod's conditions (result=error: refused or unreachable API server)",
            condition_writes.clone(),
        );
        let inbound_opened = Counter::default();
        registry.register(
            "tcp_inbound_connections_opened",
            "Connections accepted on the app's port",
            inbound_opened.clone(),
        );
        let inbound_closed = Family::<CloserLabels, Counter>::default();
        registry.register(
            "tcp_inbound_connections_closed",
            "Inbound connections by who closed them: server_idle (the server's keep-alive timed out on a connection the client kept; a 502 risk behind a load balancer), server, client",
            inbound_closed.clone(),
        );
        let listen_queue = Gauge::default();
        registry.register(
            "listen_queue_length",
            "Connections waiting in the app's accept queue",
            listen_queue.clone(),
        );
        let listen_queue_max = Gauge::default();
        registry.register(
            "listen_queue_max",
            "The accept queue's limit (the listen backlog)",
            listen_queue_max.clone(),
        );
        let inbound_unread = Gauge::default();
        registry.register(
            "inbound_unread_connections",
            "Established inbound connections holding request bytes the app has not read",
            inbound_unread.clone(),
        );
        let inbound_unread_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "inbound_unread_max_age",
            "How long the oldest unread request has waited, at least (a stall in progress when large)",
            Unit::Seconds,
            inbound_unread_age.clone(),
        );
        let close_wait = Gauge::default();
        registry.register(
            "tcp_close_wait_connections",
            "The app's connections in CLOSE_WAIT (closed by the peer, not yet by the app)",
            close_wait.clone(),
        );
        let netns = Family::<CounterNameLabels, Counter>::default();
        registry.register(
            "netns_tcp",
            "Kernel TCP counters of the pod's network namespace (/proc/net/snmp, /proc/net/netstat; every container included)",
            netns.clone(),
        );
        let heartbeat_workers = Gauge::default();
        registry.register(
            "heartbeat_workers",
            "App workers sending the opt-in heartbeat",
            heartbeat_workers.clone(),
        );
        let socket_source = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "socket_source",
            "1 for where socket samples come from: netlink (sock_diag), proc (/proc/net/tcp), or none (neither readable)",
            socket_source.clone(),
        );
        let timer_lag = Histogram::new([0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]);
        registry.register_with_unit(
            "self_timer_lag",
            "How late the sidecar's own 1 s sampling timer fires: when high, the sidecar was starved of CPU and its latencies are skewed by as much",
            Unit::Seconds,
            timer_lag.clone(),
        );
        let app_workers = Gauge::default();
        registry.register(
            "app_workers",
            "Worker processes the app was started with (--workers, from the operator's sizing)",
            app_workers.clone(),
        );
        // Both stall sources exist from the start (at 0): dashboards show 0, not no data.
        for source in ["canary", "heartbeat"] {
            let labels = SourceLabels {
                source: source.into(),
            };
            let _ = stall_duration.get_or_create(&labels);
            let _ = stalled_seconds.get_or_create(&labels);
        }
        let canary_duration = Histogram::new(exponential_buckets(0.001, 2.5, 12));
        registry.register_with_unit(
            "canary_request_duration",
            "Latency of canary requests to the app's probe path (small requests queued behind big ones show here)",
            Unit::Seconds,
            canary_duration.clone(),
        );
        for result in ["ok", "error"] {
            let _ = condition_writes.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        Metrics {
            canary_duration,
            app_workers,
            timer_lag,
            socket_source,
            heartbeat_workers,
            inbound_opened,
            inbound_closed,
            listen_queue,
            listen_queue_max,
            inbound_unread,
            inbound_unread_age,
            close_wait,
            netns,
            condition,
            condition_writes,
            outbound_opened,
            outbound_closed_locally,
            outbound_duration,
            registry,
            lookup_duration,
            lookups,
            queries,
            query_duration,
            timeouts,
            stall_duration,
            stalled_seconds,
            canary_oldest_inflight,
            canary_probes,
            canary_failures,
        }
    }

    /// Records one probed lookup.
    pub fn record(&self, l: &Lookup) {
        let mode = match l.mode {
            Mode::AsApp => "as_app",
            Mode::Fqdn => "fqdn",
        };
        let labels = LookupLabels {
            target: l.target.clone(),
            mode: mode.into(),
            result: l.result().into(),
        };
        self.lookup_duration
            .get_or_create(&labels)
            .observe(l.seconds);
        self.lookups.get_or_create(&labels).inc();
        for q in &l.queries {
            let rcode = q.rcode.as_str().to_string();
            self.queries
                .get_or_create(&QueryLabels {
                    target: l.target.clone(),
                    mode: mode.into(),
                    rcode: rcode.clone(),
                })
                .inc();
            let ns = NameserverLabels {
                nameserver: q.nameserver.map(|n| n.ip().to_string()).unwrap_or_default(),
                qtype: q.qtype.into(),
                rcode,
            };
            self.query_duration.get_or_create(&ns).observe(q.seconds);
            if q.rcode == Rcode::Timeout {
                self.timeouts.get_or_create(&ns).inc();
            }
        }
    }

    /// Moves what the canaries saw since the last call into the metrics (draining the
    /// stall list keeps memory bounded); returns the stalled seconds added.
    pub fn record_canary(&self, obs: &mut Observations, seen: &mut CanarySeen) -> f64 {
        let source = SourceLabels {
            source: "canary".into(),
        };
        for stall in obs.stalls.drain(..) {
            self.stall_duration
                .get_or_create(&source)
                .observe(stall.seconds);
        }
        for latency in obs.latencies.drain(..) {
            self.canary_duration.observe(latency);
        }
        let stalled = (obs.stalled_seconds_union - seen.stalled_seconds).max(0.0);
        self.stalled_seconds.get_or_create(&source).inc_by(stalled);
        self.canary_probes
            .inc_by(obs.probes.saturating_sub(seen.probes));
        self.canary_failures
            .inc_by(obs.failures.saturating_sub(seen.failures));
        *seen = CanarySeen {
            probes: obs.probes,
            failures: obs.failures,
            stalled_seconds: obs.stalled_seconds_union,
        };
        self.canary_oldest_inflight.set(
            obs.oldest_inflight()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        stalled
    }

    pub fn set_app_workers(&self, workers: u32) {
        self.app_workers.set(i64::from(workers));
    }

    pub fn record_timer_lag(&self, lag: std::time::Duration) {
        self.timer_lag.observe(lag.as_secs_f64());
    }

    pub fn set_socket_source(&self, source: &str) {
        for s in ["netlink", "proc", "none"] {
            self.socket_source
                .get_or_create(&SourceLabels { source: s.into() })
                .set(i64::from(s == source));
        }
    }

    /// Moves the heartbeat's stalls into the metrics; returns the stalled seconds added.
    pub fn record_heartbeat(&self, h: &mut Heartbeats, seen_stalled: &mut f64) -> f64 {
        let source = SourceLabels {
            source: "heartbeat".into(),
        };
        for stall in h.stalls.drain(..) {
            self.stall_duration
                .get_or_create(&source)
                .observe(stall.seconds);
        }
        let added = (h.stalled_seconds - *seen_stalled).max(0.0);
        self.stalled_seconds.get_or_create(&source).inc_by(added);
        *seen_stalled = h.stalled_seconds;
        self.heartbeat_workers.set(h.workers() as i64);
        added
    }

    /// Moves what the outbound tracker counted since the last call into the metrics.
    pub fn record_outbound(&self, tracker: &mut OutboundTracker, seen: &mut (u64, u64)) {
        self.outbound_opened
            .inc_by(tracker.opened.saturating_sub(seen.0));
        self.outbound_closed_locally
            .inc_by(tracker.closed_locally.saturating_sub(seen.1));
        *seen = (tracker.opened, tracker.closed_locally);
        for lifetime in tracker.lifetimes.drain(..) {
            self.outbound_duration.observe(lifetime);
        }
    }

    /// Inbound events since the last call and the latest inbound sample.
    pub fn record_inbound(&self, counts: InboundCounts, sample: &InboundSample) {
        self.inbound_opened.inc_by(counts.opened);
        for (closer, n) in [
            ("server_idle", counts.closed_idle_by_server),
            ("server", counts.closed_early_by_server),
            ("client", counts.closed_by_client),
        ] {
            self.inbound_closed
                .get_or_create(&CloserLabels {
                    closer: closer.into(),
                })
                .inc_by(n);
        }
        self.listen_queue.set(i64::from(sample.accept_queue));
        self.listen_queue_max
            .set(i64::from(sample.accept_queue_max));
        self.inbound_unread
            .set(i64::from(sample.unread_connections));
        self.inbound_unread_age.set(sample.unread_max_age_seconds);
        self.close_wait.set(i64::from(sample.close_wait));
    }

    /// Moves kernel counters forward by what they grew since `previous` (None: first read,
    /// which only sets the baseline).
    pub fn record_netns(
        &self,
        current: &std::collections::BTreeMap<String, u64>,
        previous: Option<&std::collections::BTreeMap<String, u64>>,
    ) {
        for name in NETNS_COUNTERS {
            let counter = self.netns.get_or_create(&CounterNameLabels {
                counter: name.into(),
            });
            if let (Some(now), Some(before)) =
                (current.get(name), previous.and_then(|p| p.get(name)))
            {
                counter.inc_by(now.saturating_sub(*before));
            }
        }
    }

    /// Mirrors the conditions as `condition{type,status}` 0/1 gauges (like NPD's).
    pub fn record_conditions(&self, conditions: &Conditions) {
        for c in conditions.all() {
            for status in ["True", "False"] {
                let on = (status == "True") == c.status;
                self.condition
                    .get_or_create(&ConditionLabels {
                        r#type: c.type_.into(),
                        status: status.into(),
                    })
                    .set(i64::from(on));
            }
        }
    }

    pub fn count_condition_write(&self, ok: bool) {
        self.condition_writes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
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
    use crate::resolv::parse;

    #[test]
    fn records_lookups_with_bounded_labels() {
        use crate::dns::QueryRecord;
        let m = Metrics::new(&[]);
        let q = |rcode, answers| QueryRecord {
            name: "x.".into(),
            qtype: "A",
            nameserver: Some("10.96.0.10:53".parse().unwrap()),
            rcode,
            answers,
            seconds: 0.002,
        };
        m.record(&Lookup {
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
        let mut seen = CanarySeen::default();
        assert_eq!(m.record_canary(&mut obs, &mut seen), 1.5);
        assert!(obs.stalls.is_empty(), "drained");
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
