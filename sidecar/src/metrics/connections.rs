//! Connection metrics: the app's outbound connections (pooling), the server side of its
//! inbound ones (keep-alive, accept queue, CLOSE_WAIT), the namespace's kernel counters,
//! and where the socket samples come from.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::sockets::{InboundCounts, InboundSample, OutboundDelta};

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
struct CloserLabels {
    closer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterNameLabels {
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// `tcp_*`, `listen_queue_*`, `inbound_unread_*`, `netns_tcp` and `socket_source`.
#[derive(Debug)]
pub struct ConnectionMetrics {
    outbound_opened: Counter,
    outbound_closed_locally: Counter,
    outbound_duration: Histogram,
    inbound_opened: Counter,
    inbound_closed: Family<CloserLabels, Counter>,
    listen_queue: Gauge,
    listen_queue_max: Gauge,
    inbound_unread: Gauge,
    inbound_unread_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    close_wait: Gauge,
    netns: Family<CounterNameLabels, Counter>,
    socket_source: Family<SourceLabels, Gauge>,
    accounting: Family<MethodLabels, Gauge>,
    end_notifications_lost: Counter,
    ends_presumed: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry) -> ConnectionMetrics {
        let m = ConnectionMetrics {
            outbound_opened: Counter::default(),
            outbound_closed_locally: Counter::default(),
            outbound_duration: Histogram::new([
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            inbound_opened: Counter::default(),
            inbound_closed: Family::default(),
            listen_queue: Gauge::default(),
            listen_queue_max: Gauge::default(),
            inbound_unread: Gauge::default(),
            inbound_unread_age: Gauge::default(),
            close_wait: Gauge::default(),
            netns: Family::default(),
            socket_source: Family::default(),
            accounting: Family::default(),
            end_notifications_lost: Counter::default(),
            ends_presumed: Counter::default(),
        };
        registry.register(
            "tcp_outbound_connections_opened",
            "Outbound TCP connections the app opened (a client per request shows as a high rate)",
            m.outbound_opened.clone(),
        );
        registry.register(
            "tcp_outbound_connections_closed_locally",
            "Outbound connections the app closed itself",
            m.outbound_closed_locally.clone(),
        );
        registry.register_with_unit(
            "tcp_outbound_connection_duration",
            "Lifetime of outbound connections (short means no pooling)",
            Unit::Seconds,
            m.outbound_duration.clone(),
        );
        registry.register(
            "tcp_inbound_connections_opened",
            "Connections accepted on the app's port",
            m.inbound_opened.clone(),
        );
        registry.register(
            "tcp_inbound_connections_closed",
            "Inbound connections by who closed them: server_idle (the server's keep-alive timed out on a connection the client kept; a 502 risk behind a load balancer), server, client",
            m.inbound_closed.clone(),
        );
        registry.register(
            "listen_queue_length",
            "Connections waiting in the app's accept queue",
            m.listen_queue.clone(),
        );
        registry.register(
            "listen_queue_max",
            "The accept queue's limit (the listen backlog)",
            m.listen_queue_max.clone(),
        );
        registry.register(
            "inbound_unread_connections",
            "Established inbound connections holding request bytes the app has not read",
            m.inbound_unread.clone(),
        );
        registry.register_with_unit(
            "inbound_unread_max_age",
            "How long the oldest unread request has waited, at least (a stall in progress when large)",
            Unit::Seconds,
            m.inbound_unread_age.clone(),
        );
        registry.register(
            "tcp_close_wait_connections",
            "The app's connections in CLOSE_WAIT (closed by the peer, not yet by the app)",
            m.close_wait.clone(),
        );
        registry.register(
            "netns_tcp",
            "Kernel TCP counters of the pod's network namespace (/proc/net/snmp, /proc/net/netstat; every container included)",
            m.netns.clone(),
        );
        registry.register(
            "socket_source",
            "1 for where socket samples come from: netlink (sock_diag), proc (/proc/net/tcp), or none (neither readable)",
            m.socket_source.clone(),
        );
        registry.register(
            "connection_accounting",
            "1 for how connections are counted: exact (every connection by its socket cookie, closes from the kernel's notifications) or sampled (what 1 s samples show: connections living between samples and closed by the peer are missed)",
            m.accounting.clone(),
        );
        registry.register(
            "connection_end_notifications_lost",
            "Times the kernel's connection-end notifications overflowed the sidecar's buffer (the connections they named are then counted from samples)",
            m.end_notifications_lost.clone(),
        );
        registry.register(
            "connection_ends_presumed",
            "Connections taken as ended without the kernel's notification (gone from 3 samples in a row): counted as closed by the peer",
            m.ends_presumed.clone(),
        );
        m
    }

    pub fn set_accounting(&self, exact: bool) {
        for (method, on) in [("exact", exact), ("sampled", !exact)] {
            self.accounting
                .get_or_create(&MethodLabels {
                    method: method.into(),
                })
                .set(i64::from(on));
        }
    }

    pub fn add_end_notifications_lost(&self, n: u64) {
        self.end_notifications_lost.inc_by(n);
    }

    pub fn add_ends_presumed(&self, n: u64) {
        self.ends_presumed.inc_by(n);
    }

    pub fn set_socket_source(&self, source: &str) {
        for s in ["netlink", "proc", "none"] {
            self.socket_source
                .get_or_create(&SourceLabels { source: s.into() })
                .set(i64::from(s == source));
        }
    }

    pub fn record_outbound(&self, delta: &OutboundDelta) {
        self.outbound_opened.inc_by(delta.opened);
        self.outbound_closed_locally.inc_by(delta.closed_locally);
        for lifetime in &delta.lifetimes {
            self.outbound_duration.observe(*lifetime);
        }
    }

    /// Inbound events since the last call and the latest inbound sample.
    pub fn record_inbound(&self, counts: &InboundCounts, sample: &InboundSample) {
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
        current: &BTreeMap<String, u64>,
        previous: Option<&BTreeMap<String, u64>>,
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
}
