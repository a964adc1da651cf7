//! Samples the pod's socket table every second: the app's outbound connections, the
//! server side of its inbound ones and its listening socket, plus the namespace's kernel
//! counters. Sockets of other UIDs (the sidecar's own, other sidecars') are left out.
//! With sock_diag, connections are counted exactly from the kernel's end notifications
//! ([`crate::ledger`]); the samples' own counts are the fallback.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tracing::warn;

use crate::{
    config::{Config, SocketSource},
    ledger::{Direction, Ended, Ledger},
    metrics::Metrics,
    procnet::{self, TcpRow},
    sockdiag::{DestroyFeed, SockDiag},
    sockets::{self, InboundTracker, OutboundTracker, Sides},
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
    let mut ends = table.netlink.as_ref().and_then(|_| EndFeed::start());
    let mut ledger = Ledger::default();
    let mut outbound = OutboundTracker::default();
    let mut inbound = InboundTracker::default();
    // Cookies of sockets other users held in the last two samples (the sidecar's own):
    // their end notifications are not the app's.
    let mut foreign: [HashSet<u64>; 2] = Default::default();
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
        if source != "netlink" || ends.as_ref().is_some_and(EndFeed::stopped) {
            ends = None;
        }
        metrics.connections.set_accounting(ends.is_some());
        let app_port = config.app.app_port;
        let sides = Sides::of(&rows, app_port, config.app.listen.port());
        foreign.rotate_left(1);
        foreign[1] = rows
            .iter()
            .filter(|r| r.local.port() != app_port && !r.state.is_orphan() && !is_app(r.uid))
            .filter_map(|r| r.cookie)
            .collect();
        let (to_app, from_app) =
            sockets::classify(rows, app_port, config.app.listen.port(), &is_app);
        let now = std::time::Instant::now();
        let directed = || {
            let inbound = to_app.iter().map(|r| (Direction::Inbound, r));
            inbound.chain(from_app.iter().map(|r| (Direction::Outbound, r)))
        };
        if std::mem::take(&mut first) {
            outbound.baseline(&from_app, now);
            inbound.baseline(&to_app, now);
            ledger.baseline(directed(), now);
        } else {
            outbound.observe(&from_app, now);
            ledger.observe(directed(), now);
        }
        let sample = inbound.observe(&to_app, now);
        // Sampling runs either way, so that it takes over at once if the feed stops.
        let (sampled_counts, sampled_delta) = (inbound.take_counts(), outbound.take_delta());
        let (counts, delta) = match &ends {
            Some(feed) => {
                for ended in feed.drain() {
                    let cookie = ended.row.cookie.unwrap_or_default();
                    if foreign.iter().any(|f| f.contains(&cookie)) {
                        continue;
                    }
                    if let Some(direction) = sides.direction(&ended.row) {
                        ledger.end(direction, &ended);
                    }
                }
                metrics
                    .connections
                    .add_end_notifications_lost(feed.take_lost());
                metrics
                    .connections
                    .add_ends_presumed(std::mem::take(&mut ledger.presumed_ended));
                (ledger.take_inbound(), ledger.take_outbound())
            }
            None => (sampled_counts, sampled_delta),
        };
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

/// The kernel's connection-end notifications, read on a thread of their own (the read
/// blocks) which looks up, for each, whether this side closed first while the answer
/// is still there.
struct EndFeed {
    ended: std::sync::mpsc::Receiver<Ended>,
    lost: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

/// `ENOBUFS`: notifications overflowed the socket's receive buffer.
const ENOBUFS: i32 = 105;

impl EndFeed {
    fn start() -> Option<EndFeed> {
        let subscribed = DestroyFeed::subscribe().and_then(|feed| Ok((feed, SockDiag::open()?)));
        let (mut feed, mut lookup) = match subscribed {
            Ok(both) => both,
            Err(e) => {
                warn!(error = %e, "connection-end notifications unavailable: connections are counted from samples");
                return None;
            }
        };
        let (tx, ended) = std::sync::mpsc::channel();
        let lost = Arc::new(AtomicU64::new(0));
        let lost_here = lost.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let stopped_here = stopped.clone();
        let mut read = move || loop {
            match feed.wait_ended() {
                Ok(rows) => {
                    for row in rows {
                        let closed_here = match lookup.closed_here(&row) {
                            Ok(here) => here,
                            Err(e) => {
                                warn!(error = %e, "sock_diag lookup failed: connections are counted from samples");
                                return;
                            }
                        };
                        let at = std::time::Instant::now();
                        if tx
                            .send(Ended {
                                row,
                                closed_here,
                                at,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                    lost_here.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(error = %e, "connection-end notifications failed: connections are counted from samples");
                    return;
                }
            }
        };
        let reader = move || {
            read();
            stopped_here.store(true, Ordering::Relaxed);
        };
        match std::thread::Builder::new()
            .name("connection-ends".into())
            .spawn(reader)
        {
            Ok(_) => Some(EndFeed {
                ended,
                lost,
                stopped,
            }),
            Err(e) => {
                warn!(error = %e, "no thread for connection-end notifications: connections are counted from samples");
                None
            }
        }
    }

    /// The notifications received so far.
    fn drain(&self) -> Vec<Ended> {
        self.ended.try_iter().collect()
    }

    /// Whether the reading thread has stopped.
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
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
