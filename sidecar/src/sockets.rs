//! Connection reuse from successive socket samples.
//!
//! Outbound: a pooled HTTP client keeps a few connections for many requests; a client
//! created per request opens and closes one each time. Samples of the socket table
//! (sock_diag or `/proc/net/tcp`) show each connection while it lives, and for about a
//! minute after in TIME_WAIT on the side that closed it, so even connections that lived
//! and died between two samples are counted.
//!
//! Inbound: the server side of a connection is in TIME_WAIT when the server closed it.
//! A connection the server closes after it sat open for a while is its keep-alive timing
//! out on a client that meant to reuse it: behind a load balancer whose idle timeout is
//! longer, the balancer's next request on it races the close and gets a 502.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use crate::{
    ledger::Direction,
    procnet::{TcpRow, TcpState},
};

/// A connection's identity.
pub type ConnKey = (SocketAddr, SocketAddr);

/// Splits one sample of the namespace's sockets into the server side of connections to
/// the app's port (inbound) and the app's own outgoing connections (outbound).
///
/// - The server side of the app's port is the app's whatever UID the kernel shows.
/// - Elsewhere only sockets of the app's UID count (`is_app`), except sockets the app
///   has already closed ([`TcpState::is_orphan`]): they belong to no process, and the
///   kernel shows them under UID 0. Dropping them lost a server's keep-alive closes in
///   FIN_WAIT2 (seen as closed by the client: 2 of 9 counted in the keep-alive test).
/// - Connections from the sidecar's canaries ([`crate::canary::SOURCE_ADDRESS`]) are
///   not the app's, in any state, on either end (a canary's own side lingers in
///   LAST_ACK under UID 0 after the server's close).
/// - Outbound excludes the server side of any listening port in the namespace (another
///   server's accepted connections are not the app's calls), the client side of
///   connections to the app itself, and the sidecar's own port.
pub fn classify(
    rows: Vec<TcpRow>,
    app_port: u16,
    sidecar_port: u16,
    is_app: impl Fn(u32) -> bool,
) -> (Vec<TcpRow>, Vec<TcpRow>) {
    let sides = Sides::of(&rows, app_port, sidecar_port);
    rows.into_iter()
        .filter(|r| r.local.port() == app_port || r.state.is_orphan() || is_app(r.uid))
        .filter(|r| sides.direction(r).is_some())
        .partition(|r| r.local.port() == app_port)
}

/// Which of the app's connections a socket is, by its addresses alone (not its user):
/// see [`classify`].
#[derive(Debug, Clone, Default)]
pub struct Sides {
    app_port: u16,
    sidecar_port: u16,
    listening: HashSet<u16>,
}

impl Sides {
    /// With the listening ports of one sample of the namespace.
    pub fn of(rows: &[TcpRow], app_port: u16, sidecar_port: u16) -> Sides {
        Sides {
            app_port,
            sidecar_port,
            listening: rows
                .iter()
                .filter(|r| r.state == TcpState::Listen)
                .map(|r| r.local.port())
                .collect(),
        }
    }

    pub fn direction(&self, r: &TcpRow) -> Option<Direction> {
        if from_canary(r.remote) || from_canary(r.local) {
            return None;
        }
        if r.local.port() == self.app_port {
            return Some(Direction::Inbound);
        }
        let foreign = self.listening.contains(&r.local.port())
            || r.remote.port() == self.app_port
            || r.remote.port() == self.sidecar_port;
        (!foreign).then_some(Direction::Outbound)
    }
}

/// Which UIDs are the app's: `--app-uid` when given, else every UID but the sidecar's.
pub fn app_uid_filter(app_uid: Option<u32>) -> impl Fn(u32) -> bool + Clone {
    use std::os::unix::fs::MetadataExt;
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    move |uid| match app_uid {
        Some(app) => uid == app,
        None => Some(uid) != own_uid,
    }
}

/// Whether `peer` is a canary's address (also as an IPv4-mapped IPv6 address, where the
/// app listens on `::`).
fn from_canary(peer: SocketAddr) -> bool {
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    ip == crate::canary::SOURCE_ADDRESS
}

/// Counts outbound connections opened and closed across samples.
#[derive(Debug, Default)]
pub struct OutboundTracker {
    open: HashMap<ConnKey, Instant>,
    time_wait: HashSet<ConnKey>,
    /// Connections seen for the first time.
    pub opened: u64,
    /// Connections this side closed (TIME_WAIT is on our side).
    pub closed_locally: u64,
    /// Lifetimes (seconds) of connections that ended, lower bounds at sample resolution.
    pub lifetimes: Vec<f64>,
    /// (opened, closed_locally) already handed out by [`OutboundTracker::take_delta`].
    reported: (u64, u64),
}

/// Outbound connections since the previous [`OutboundTracker::take_delta`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboundDelta {
    pub opened: u64,
    pub closed_locally: u64,
    /// Lifetimes (seconds) of the connections that ended.
    pub lifetimes: Vec<f64>,
}

fn key(row: &TcpRow) -> ConnKey {
    (row.local, row.remote)
}

impl OutboundTracker {
    /// Everything new since the last call.
    pub fn take_delta(&mut self) -> OutboundDelta {
        let (opened, closed) =
            std::mem::replace(&mut self.reported, (self.opened, self.closed_locally));
        OutboundDelta {
            opened: self.opened.saturating_sub(opened),
            closed_locally: self.closed_locally.saturating_sub(closed),
            lifetimes: std::mem::take(&mut self.lifetimes),
        }
    }

    /// Marks everything in `rows` as already known, so only later connections count.
    pub fn baseline(&mut self, rows: &[TcpRow], now: Instant) {
        for row in rows {
            match row.state {
                TcpState::TimeWait => {
                    self.time_wait.insert(key(row));
                }
                TcpState::Listen => {}
                _ => {
                    self.open.insert(key(row), now);
                }
            }
        }
    }

    /// Folds in one sample of the (already filtered) outbound rows.
    pub fn observe(&mut self, rows: &[TcpRow], now: Instant) {
        let mut present = HashSet::new();
        let mut waiting = HashSet::new();
        for row in rows {
            let k = key(row);
            match row.state {
                TcpState::Listen => {}
                TcpState::TimeWait => {
                    waiting.insert(k);
                    if self.time_wait.insert(k) {
                        self.closed_locally += 1;
                        match self.open.remove(&k) {
                            Some(since) => {
                                self.lifetimes.push(now.duration_since(since).as_secs_f64())
                            }
                            // Opened and closed between two samples.
                            None => {
                                self.opened += 1;
                                self.lifetimes.push(0.0);
                            }
                        }
                    }
                }
                _ => {
                    present.insert(k);
                    if !self.open.contains_key(&k) && !self.time_wait.contains(&k) {
                        self.opened += 1;
                        self.open.insert(k, now);
                    }
                }
            }
        }
        // Gone without TIME_WAIT on our side: the peer closed (or the row expired).
        let gone: Vec<ConnKey> = self
            .open
            .keys()
            .filter(|k| !present.contains(*k) && !waiting.contains(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(since) = self.open.remove(&k) {
                self.lifetimes.push(now.duration_since(since).as_secs_f64());
            }
        }
        // TIME_WAIT entries that expired no longer need remembering (bounded memory).
        self.time_wait.retain(|k| waiting.contains(k));
        if self.lifetimes.len() > 4096 {
            self.lifetimes.drain(..self.lifetimes.len() - 4096);
        }
    }
}

/// A server-closed connection counts as a keep-alive close when it was seen open in an
/// earlier sample (1 s apart): one closed right after its response (`Connection: close`,
/// kubelet probes) lives milliseconds and is almost never caught open. With 1 s samples
/// a lifetime is known to ±1 s, so a bound any higher would miss 2 s keep-alives.
pub const KEEP_ALIVE_MIN_LIFETIME_SECONDS: f64 = 0.5;

/// What the app's listening socket and its accepted connections show in one sample.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InboundSample {
    /// Connections waiting in the accept queue (LISTEN row's rx_queue).
    pub accept_queue: u32,
    /// The listen backlog the kernel applies.
    pub accept_queue_max: u32,
    /// Established connections with request bytes the app has not read.
    pub unread_connections: u32,
    /// How long the oldest of them has had unread bytes, at least (sample resolution).
    pub unread_max_age_seconds: f64,
    pub close_wait: u32,
}

/// Inbound connection events counted since the last [`InboundTracker::take_counts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InboundCounts {
    /// Connections first seen (accepted).
    pub opened: u64,
    /// Connections the server closed after living at least
    /// [`KEEP_ALIVE_MIN_LIFETIME_SECONDS`]: keep-alive closes.
    pub closed_idle_by_server: u64,
    /// Connections the server closed younger than that.
    pub closed_early_by_server: u64,
    /// Connections the client closed.
    pub closed_by_client: u64,
}

/// Tracks the server side of inbound connections on the app's port.
#[derive(Debug, Default)]
pub struct InboundTracker {
    open: HashMap<ConnKey, Instant>,
    /// Connections seen closing from the server's side (already counted).
    closing: HashSet<ConnKey>,
    unread_since: HashMap<ConnKey, Instant>,
    counts: InboundCounts,
}

impl InboundTracker {
    /// The counts since the last call.
    pub fn take_counts(&mut self) -> InboundCounts {
        std::mem::take(&mut self.counts)
    }

    /// Marks everything in `rows` as already known.
    pub fn baseline(&mut self, rows: &[TcpRow], now: Instant) {
        for row in rows {
            match row.state {
                TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::Closing
                | TcpState::TimeWait => {
                    self.closing.insert(key(row));
                }
                TcpState::Listen => {}
                _ => {
                    self.open.insert(key(row), now);
                }
            }
        }
    }

    /// Folds in one sample of the rows whose local port is the app's.
    ///
    /// A server-side socket in FIN_WAIT1/2, CLOSING or TIME_WAIT is one the server closed
    /// first. It does not always reach TIME_WAIT: a client that writes on it after the
    /// server's FIN (the load balancer's 502 race) gets a reset, and it just vanishes.
    pub fn observe(&mut self, rows: &[TcpRow], now: Instant) -> InboundSample {
        let mut sample = InboundSample::default();
        let mut present = HashSet::new();
        let mut unread = HashSet::new();
        for row in rows {
            let k = key(row);
            if row.state == TcpState::Listen {
                sample.accept_queue += row.rx_queue;
                sample.accept_queue_max = sample.accept_queue_max.max(row.tx_queue);
                continue;
            }
            present.insert(k);
            let server_closed = matches!(
                row.state,
                TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait
            );
            if server_closed {
                if self.closing.insert(k) {
                    match self.open.remove(&k) {
                        Some(since)
                            if now.duration_since(since).as_secs_f64()
                                >= KEEP_ALIVE_MIN_LIFETIME_SECONDS =>
                        {
                            self.counts.closed_idle_by_server += 1
                        }
                        Some(_) => self.counts.closed_early_by_server += 1,
                        // Accepted and closed between two samples.
                        None => {
                            self.counts.opened += 1;
                            self.counts.closed_early_by_server += 1;
                        }
                    }
                }
                continue;
            }
            if !self.open.contains_key(&k) && !self.closing.contains(&k) {
                self.counts.opened += 1;
                self.open.insert(k, now);
            }
            if row.state == TcpState::CloseWait {
                sample.close_wait += 1;
            }
            if row.state == TcpState::Established && row.rx_queue > 0 {
                unread.insert(k);
                let since = *self.unread_since.entry(k).or_insert(now);
                // Seen unread across samples, or (sock_diag) since the bytes arrived.
                let age = now
                    .duration_since(since)
                    .max(row.tcp_info.map(|i| i.last_data_recv).unwrap_or_default());
                sample.unread_connections += 1;
                sample.unread_max_age_seconds =
                    sample.unread_max_age_seconds.max(age.as_secs_f64());
            }
        }
        let gone: Vec<ConnKey> = self
            .open
            .keys()
            .filter(|k| !present.contains(*k))
            .copied()
            .collect();
        for k in gone {
            self.open.remove(&k);
            self.counts.closed_by_client += 1;
        }
        self.closing.retain(|k| present.contains(k));
        self.unread_since.retain(|k, _| unread.contains(k));
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(local: u16, remote: u16, state: TcpState) -> TcpRow {
        TcpRow {
            local: ([127, 0, 0, 1], local).into(),
            remote: ([127, 0, 0, 1], remote).into(),
            state,
            rx_queue: 0,
            tx_queue: 0,
            uid: 10001,
            inode: 1,
            tcp_info: None,
            cookie: None,
        }
    }

    #[test]
    fn a_connection_per_request_is_counted_even_between_samples() {
        let t0 = Instant::now();
        let mut t = OutboundTracker::default();
        t.observe(
            &[
                row(40001, 9000, TcpState::TimeWait),
                row(40002, 9000, TcpState::TimeWait),
            ],
            t0,
        );
        t.observe(
            &[
                row(40001, 9000, TcpState::TimeWait),
                row(40002, 9000, TcpState::TimeWait),
                row(40003, 9000, TcpState::TimeWait),
            ],
            t0,
        );
        assert_eq!(
            (t.opened, t.closed_locally),
            (3, 3),
            "each TIME_WAIT counted once"
        );
        let delta = t.take_delta();
        assert_eq!((delta.opened, delta.closed_locally), (3, 3));
        t.observe(&[row(40004, 9000, TcpState::TimeWait)], t0);
        let delta = t.take_delta();
        assert_eq!(
            (delta.opened, delta.closed_locally),
            (1, 1),
            "only what is new since the last delta"
        );
    }

    #[test]
    fn canary_addresses_are_recognised_in_both_families() {
        let v4: SocketAddr = (crate::canary::SOURCE_ADDRESS, 50000).into();
        let mapped: SocketAddr = (crate::canary::SOURCE_ADDRESS.to_ipv6_mapped(), 50000).into();
        assert!(from_canary(v4) && from_canary(mapped));
        assert!(!from_canary(([127, 0, 0, 1], 50000).into()));
        assert!(!from_canary((std::net::Ipv6Addr::LOCALHOST, 50000).into()));
    }

    #[test]
    fn a_pooled_connection_is_one_open() {
        let t0 = Instant::now();
        let mut t = OutboundTracker::default();
        for _ in 0..10 {
            t.observe(&[row(40010, 9000, TcpState::Established)], t0);
        }
        assert_eq!((t.opened, t.closed_locally), (1, 0));
        t.observe(&[], t0);
        assert_eq!(t.lifetimes.len(), 1, "its end is recorded");
    }

    #[test]
    fn classify_keeps_the_apps_calls_and_its_servers_side() {
        let uid = |r: TcpRow, uid| TcpRow { uid, ..r };
        let from_canary = |r: TcpRow| TcpRow {
            remote: (crate::canary::SOURCE_ADDRESS, r.remote.port()).into(),
            ..r
        };
        let rows = vec![
            // The app's listener and an accepted connection: inbound.
            uid(row(8000, 0, TcpState::Listen), 10001),
            uid(row(8000, 50001, TcpState::Established), 10001),
            // The app's server closed a keep-alive connection (orphaned: UID 0).
            uid(row(8000, 50005, TcpState::FinWait2), 0),
            // The app calling an upstream: outbound, also once closed (UID 0).
            uid(row(40001, 5432, TcpState::Established), 10001),
            uid(row(40002, 5432, TcpState::TimeWait), 0),
            uid(row(40005, 5432, TcpState::FinWait1), 0),
            // Another server in the pod (say a metrics port) and its closed connection.
            uid(row(9090, 0, TcpState::Listen), 10001),
            uid(row(9090, 50002, TcpState::TimeWait), 0),
            // The sidecar's own sockets (another UID) and a client scraping it.
            uid(row(40003, 8000, TcpState::Established), 10002),
            uid(row(40004, 9901, TcpState::Established), 10001),
            // The server side of the canaries' connections, open and after the close.
            from_canary(uid(row(8000, 50003, TcpState::Established), 10001)),
            from_canary(uid(row(8000, 50004, TcpState::TimeWait), 0)),
            // A canary's own side, closing after the server's close.
            TcpRow {
                local: (crate::canary::SOURCE_ADDRESS, 50006).into(),
                ..uid(row(0, 8000, TcpState::LastAck), 0)
            },
        ];
        let (inbound, outbound) = classify(rows, 8000, 9901, |u| u == 10001);
        let ports = |rows: &[TcpRow]| -> Vec<(u16, u16)> {
            rows.iter()
                .map(|r| (r.local.port(), r.remote.port()))
                .collect()
        };
        assert_eq!(ports(&inbound), [(8000, 0), (8000, 50001), (8000, 50005)]);
        assert_eq!(
            ports(&outbound),
            [(40001, 5432), (40002, 5432), (40005, 5432)]
        );
    }

    fn server_row(remote: u16, state: TcpState, rx_queue: u32) -> TcpRow {
        TcpRow {
            rx_queue,
            ..row(8000, remote, state)
        }
    }

    #[test]
    fn server_closes_after_idle_are_keep_alive_churn_and_quick_closes_are_not() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + std::time::Duration::from_secs_f64(s);
        let mut t = InboundTracker::default();
        t.observe(
            &[
                server_row(50001, TcpState::Established, 0),
                server_row(50002, TcpState::Established, 0),
            ],
            at(0.0),
        );
        // 50001: closed by the server 2 s later (keep-alive); 50002: by the client;
        // 50003: accepted and closed by the server between two samples (a probe).
        let s = t.observe(
            &[
                server_row(50001, TcpState::FinWait2, 0),
                server_row(50003, TcpState::TimeWait, 0),
            ],
            at(2.0),
        );
        // 50001 then vanishes without TIME_WAIT (the client wrote on it: a reset).
        t.observe(&[server_row(50003, TcpState::TimeWait, 0)], at(3.0));
        assert_eq!(s.close_wait, 0);
        let c = t.take_counts();
        assert_eq!(
            (
                c.opened,
                c.closed_idle_by_server,
                c.closed_early_by_server,
                c.closed_by_client
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(t.take_counts(), InboundCounts::default(), "taken once");
    }

    #[test]
    fn accept_queue_and_unread_age() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + std::time::Duration::from_secs_f64(s);
        let mut t = InboundTracker::default();
        let listen = TcpRow {
            remote: ([0, 0, 0, 0], 0).into(),
            tx_queue: 2048,
            ..server_row(0, TcpState::Listen, 4)
        };
        let rows = [listen, server_row(50010, TcpState::Established, 120)];
        let first = t.observe(&rows, at(0.0));
        assert_eq!(
            (
                first.accept_queue,
                first.accept_queue_max,
                first.unread_connections
            ),
            (4, 2048, 1)
        );
        assert_eq!(first.unread_max_age_seconds, 0.0);
        let later = t.observe(&rows, at(1.5));
        assert_eq!(
            later.unread_max_age_seconds, 1.5,
            "unread for 1.5 s at least"
        );
        let read = t.observe(&[server_row(50010, TcpState::Established, 0)], at(2.0));
        assert_eq!(
            (read.unread_connections, read.unread_max_age_seconds),
            (0, 0.0)
        );
    }

    #[test]
    fn the_baseline_is_not_counted() {
        let t0 = Instant::now();
        let mut t = OutboundTracker::default();
        let old = [
            row(40020, 9000, TcpState::TimeWait),
            row(40021, 9000, TcpState::Established),
        ];
        t.baseline(&old, t0);
        t.observe(&old, t0);
        assert_eq!(t.opened, 0);
    }
}
