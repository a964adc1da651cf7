//! Samples the pod's socket table every second: the app's outbound connections, the
//! server side of its inbound ones and its listening socket, plus the namespace's kernel
//! counters. Sockets of other UIDs (the sidecar's own, other sidecars') are left out.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tracing::warn;

use crate::{
    config::{Config, SocketSource},
    metrics::Metrics,
    procnet::{self, TcpRow},
    sockdiag::SockDiag,
    sockets::{self, InboundTracker, OutboundTracker},
    window::{Evidence, EvidenceSink, SocketEvidence},
};

/// Where socket rows come from: sock_diag while it works, else /proc/net/tcp{,6} (unless
/// `--socket-source=netlink` forbids the fallback).
struct SocketTable {
    netlink: Option<SockDiag>,
    proc_allowed: bool,
    proc_root: PathBuf,
    /// The tables were unreadable at the last sample (one log line per outage).
    unreadable: bool,
}

impl SocketTable {
    fn open(source: SocketSource, proc_root: PathBuf) -> SocketTable {
        let netlink = match source {
            SocketSource::Proc => None,
            _ => match SockDiag::open() {
                Ok(d) => Some(d),
                Err(e) if source == SocketSource::Auto => {
                    warn!(error = %e, "sock_diag unavailable: sampling /proc/net/tcp instead");
                    None
                }
                Err(e) => {
                    // Every window then says it has no socket evidence (and /metrics says
                    // `socket_source{source="none"}`), rather than the watcher ending.
                    warn!(error = %e, "sock_diag unavailable (--socket-source=netlink): no socket samples");
                    None
                }
            },
        };
        SocketTable {
            netlink,
            proc_allowed: source != SocketSource::Netlink,
            proc_root,
            unreadable: false,
        }
    }

    /// One sample and where it came from (`netlink`, `proc`), or `None` when no source
    /// is readable.
    fn sample(&mut self) -> Option<(&'static str, Vec<TcpRow>)> {
        match self.netlink.as_mut().map(SockDiag::dump) {
            Some(Ok(rows)) => return Some(("netlink", rows)),
            Some(Err(e)) => {
                // Fall back for good: a refusal will not go away between polls.
                warn!(error = %e, "sock_diag dump failed: sampling /proc/net/tcp from now on");
                self.netlink = None;
            }
            None => {}
        }
        if !self.proc_allowed {
            return None;
        }
        let tables: Vec<_> = ["net/tcp", "net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.proc_root.join(f)).ok())
            .filter_map(|text| procnet::parse_tcp(&text).ok())
            .collect();
        if tables.is_empty() {
            if !self.unreadable {
                warn!(proc_root = %self.proc_root.display(), "no socket table readable (netlink unavailable, /proc/net/tcp{{,6}} unreadable)");
            }
            self.unreadable = true;
            return None;
        }
        self.unreadable = false;
        Some(("proc", tables.into_iter().flatten().collect()))
    }
}

pub async fn watch(config: Config, metrics: Arc<Metrics>, evidence: EvidenceSink) {
    let is_app = sockets::app_uid_filter(config.app.app_uid);
    let mut table = SocketTable::open(config.socket_source, config.proc_root.clone());
    let mut outbound = OutboundTracker::default();
    let mut inbound = InboundTracker::default();
    let mut counters: Option<BTreeMap<String, u64>> = None;
    let mut first = true;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let deadline = ticker.tick().await;
        // This timer's lag is the sidecar's own: its latencies are inflated by as much.
        metrics
            .own
            .record_timer_lag(tokio::time::Instant::now().saturating_duration_since(deadline));
        // Unreadable: said in the metric and the window; the trackers keep their state
        // for when the tables come back.
        let Some((source, rows)) = table.sample() else {
            metrics.connections.set_socket_source("none");
            evidence.send(Evidence::SocketSampleFailed);
            continue;
        };
        metrics.connections.set_socket_source(source);
        let (to_app, from_app) =
            sockets::classify(rows, config.app.app_port, config.app.listen.port(), &is_app);
        let now = std::time::Instant::now();
        if std::mem::take(&mut first) {
            outbound.baseline(&from_app, now);
            inbound.baseline(&to_app, now);
        } else {
            outbound.observe(&from_app, now);
        }
        let sample = inbound.observe(&to_app, now);
        let counts = inbound.take_counts();
        let delta = outbound.take_delta();
        metrics.connections.record_outbound(&delta);
        metrics.connections.record_inbound(&counts, &sample);
        evidence.send(Evidence::Sockets(SocketEvidence {
            outbound_opened: delta.opened,
            outbound_lifetimes: delta.lifetimes,
            inbound_idle_closes: counts.closed_idle_by_server,
            accept_queue: sample.accept_queue,
            close_wait: sample.close_wait,
        }));
        let current = kernel_counters(&config.proc_root);
        metrics
            .connections
            .record_netns(&current, counters.as_ref());
        counters = Some(current);
    }
}

/// The namespace's TCP counters (`/proc/net/snmp`, `/proc/net/netstat`).
fn kernel_counters(proc_root: &std::path::Path) -> BTreeMap<String, u64> {
    let mut current = BTreeMap::new();
    for file in ["net/snmp", "net/netstat"] {
        if let Ok(text) = std::fs::read_to_string(proc_root.join(file)) {
            current.extend(procnet::parse_counters(&text));
        }
    }
    current
}
