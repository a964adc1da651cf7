//! Outbound connection churn from successive socket samples.
//!
//! A pooled HTTP client keeps a few connections for many requests; a client created per
//! request opens and closes one each time. Samples of the socket table (sock_diag or
//! `/proc/net/tcp`) show each connection while it lives, and for about a minute after
//! in TIME_WAIT on the side that closed it, so even connections that lived and died
//! between two samples are counted.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use crate::procnet::{TcpRow, TcpState};

/// A connection's identity.
pub type ConnKey = (SocketAddr, SocketAddr);

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
}

fn key(row: &TcpRow) -> ConnKey {
    (row.local, row.remote)
}

impl OutboundTracker {
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
