//! Exact connection accounting: every connection counted once, by its socket cookie,
//! from the moment a sample first shows it or, at the latest, from the kernel's
//! notification that it ended ([`crate::sockdiag::DestroyFeed`]), with the side that
//! closed it first looked up right then ([`crate::sockdiag::SockDiag::closed_here`]) or
//! seen closing in a sample.
//!
//! Sampling alone ([`crate::sockets`]) misses what lives and dies between two samples and
//! leaves no TIME_WAIT on this side (a connection the peer closed first), loses a
//! connection whose 4-tuple is reused within the TIME_WAIT minute, and guesses the closer
//! from which states it happened to see. That read 187 of 200 unpooled calls, and most
//! of a server's keep-alive closes as the client's (#20).

use std::{collections::HashMap, time::Instant};

use crate::{
    procnet::{TcpRow, TcpState},
    sockets::{InboundCounts, KEEP_ALIVE_MIN_LIFETIME_SECONDS, OutboundDelta},
};

/// A connection the kernel has destroyed.
#[derive(Debug, Clone)]
pub struct Ended {
    pub row: TcpRow,
    /// This side closed first (its TIME_WAIT successor was there).
    pub closed_here: bool,
    pub at: Instant,
}

/// Which of the app's connections a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The server side of a connection to the app's port.
    Inbound,
    /// A connection the app opened.
    Outbound,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    direction: Direction,
    since: Instant,
    /// Samples in a row that did not show it (its end notification was lost).
    unseen: u8,
    /// A sample showed this side closing it first (FIN_WAIT1/2, CLOSING). The end
    /// lookup misses such a close when no TIME_WAIT follows: a peer that writes on the
    /// half-closed connection (a balancer reusing it as the server's keep-alive closes
    /// it) gets a reset, and the socket is destroyed without one.
    closing_seen: bool,
}

impl Open {
    fn new(direction: Direction, since: Instant) -> Open {
        Open {
            direction,
            since,
            unseen: 0,
            closing_seen: false,
        }
    }
}

/// A connection absent from this many samples in a row without an end notification is
/// taken as ended: the notification was lost (a full receive buffer).
const UNSEEN_SAMPLES_BEFORE_GIVING_UP: u8 = 3;

/// Counts opens and closes of the app's connections by socket cookie.
#[derive(Debug, Default)]
pub struct Ledger {
    open: HashMap<u64, Open>,
    inbound: InboundCounts,
    outbound: OutboundDelta,
    /// Connections taken as ended without a notification (not yet taken).
    pub presumed_ended: u64,
}

impl Ledger {
    /// Marks the connections open now as known: only later ones count as opened (their
    /// closes count).
    pub fn baseline<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (Direction, &'a TcpRow)>,
        now: Instant,
    ) {
        for (direction, row) in rows {
            if let Some(cookie) = open_cookie(row) {
                self.open.insert(cookie, Open::new(direction, now));
            }
        }
    }

    /// Folds in one sample: connections seen for the first time are opened. TIME_WAIT
    /// rows are connections whose end is (or was) notified: not counted here.
    pub fn observe<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (Direction, &'a TcpRow)>,
        now: Instant,
    ) {
        for open in self.open.values_mut() {
            open.unseen = open.unseen.saturating_add(1);
        }
        for (direction, row) in rows {
            let Some(cookie) = open_cookie(row) else {
                continue;
            };
            let open = self.open.entry(cookie).or_insert_with(|| {
                match direction {
                    Direction::Inbound => self.inbound.opened += 1,
                    Direction::Outbound => self.outbound.opened += 1,
                }
                Open::new(direction, now)
            });
            open.unseen = 0;
            open.closing_seen |= matches!(
                row.state,
                TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing
            );
        }
        let lost: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, o)| o.unseen >= UNSEEN_SAMPLES_BEFORE_GIVING_UP)
            .map(|(cookie, _)| *cookie)
            .collect();
        for cookie in lost {
            let Some(open) = self.open.remove(&cookie) else {
                continue;
            };
            self.presumed_ended += 1;
            // As sampling would read it: gone without TIME_WAIT seen here.
            match open.direction {
                Direction::Inbound => self.inbound.closed_by_client += 1,
                Direction::Outbound => self
                    .outbound
                    .lifetimes
                    .push(now.duration_since(open.since).as_secs_f64()),
            }
        }
    }

    /// Folds in one ended connection of the app.
    pub fn end(&mut self, direction: Direction, ended: &Ended) {
        let Some(cookie) = ended.row.cookie else {
            return;
        };
        let seen = self.open.remove(&cookie);
        let lifetime = seen.map_or(0.0, |o| {
            ended.at.saturating_duration_since(o.since).as_secs_f64()
        });
        let closed_here = ended.closed_here || seen.is_some_and(|o| o.closing_seen);
        match direction {
            Direction::Inbound => {
                let c = &mut self.inbound;
                c.opened += u64::from(seen.is_none());
                if !closed_here {
                    c.closed_by_client += 1;
                } else if idle_before_close(&ended.row).unwrap_or(lifetime)
                    >= KEEP_ALIVE_MIN_LIFETIME_SECONDS
                {
                    c.closed_idle_by_server += 1;
                } else {
                    c.closed_early_by_server += 1;
                }
            }
            Direction::Outbound => {
                let d = &mut self.outbound;
                d.opened += u64::from(seen.is_none());
                d.closed_locally += u64::from(closed_here);
                d.lifetimes.push(lifetime);
            }
        }
    }

    /// Inbound counts since the last call.
    pub fn take_inbound(&mut self) -> InboundCounts {
        std::mem::take(&mut self.inbound)
    }

    /// Outbound counts since the last call.
    pub fn take_outbound(&mut self) -> OutboundDelta {
        std::mem::take(&mut self.outbound)
    }
}

/// The cookie of a row that is a connection still open: a full socket (sock_diag gives
/// those `tcp_info`), not a listener. A closed connection the kernel keeps as a timewait
/// socket (TIME_WAIT, or FIN_WAIT2 after this side's close, already notified as ended)
/// has none, nor has a half-open one in the SYN queue; and the timewait socket's cookie is
/// the connection's only if one was generated before the close.
fn open_cookie(row: &TcpRow) -> Option<u64> {
    match row.state {
        TcpState::Listen | TcpState::TimeWait => None,
        _ => row.tcp_info.and(row.cookie),
    }
}

/// How long the connection had carried no data either way when it ended (the final
/// `tcp_info`): a server's keep-alive close ends a connection idle for its keep-alive
/// timeout; a close after a response (`Connection: close`) one idle for milliseconds.
fn idle_before_close(row: &TcpRow) -> Option<f64> {
    let info = row.tcp_info?;
    Some(info.last_data_sent.min(info.last_data_recv).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::procnet::TcpInfo;

    /// A full socket, as sock_diag shows it (with `tcp_info`).
    fn conn(cookie: u64, state: TcpState) -> TcpRow {
        TcpRow {
            local: ([127, 0, 0, 1], 8000).into(),
            remote: ([127, 0, 0, 1], 50000).into(),
            state,
            rx_queue: 0,
            tx_queue: 0,
            uid: 10001,
            inode: 1,
            tcp_info: Some(TcpInfo::default()),
            cookie: Some(cookie),
        }
    }

    fn ended(cookie: u64, closed_here: bool, idle_ms: Option<u64>, at: Instant) -> Ended {
        let idle = idle_ms.map(|ms| TcpInfo {
            last_data_sent: Duration::from_millis(ms),
            last_data_recv: Duration::from_millis(ms + 3),
            bytes_received: Some(100),
            data_segs_out: Some(1),
        });
        Ended {
            row: TcpRow {
                tcp_info: idle,
                ..conn(cookie, TcpState::Close)
            },
            closed_here,
            at,
        }
    }

    #[test]
    fn every_connection_counts_once_whether_a_sample_saw_it_or_not() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let seen = conn(1, TcpState::Established);
        ledger.observe([(Direction::Outbound, &seen)], t0);
        ledger.observe([(Direction::Outbound, &seen)], t0);
        // 1 ends after two samples; 2 lived and died between samples; 1's 4-tuple
        // reused at once by 3 (another cookie), still open.
        ledger.end(
            Direction::Outbound,
            &ended(1, true, None, t0 + Duration::from_secs(2)),
        );
        ledger.end(Direction::Outbound, &ended(2, false, None, t0));
        let reused = conn(3, TcpState::Established);
        ledger.observe(
            [
                (Direction::Outbound, &reused),
                // 1's TIME_WAIT successor: already counted by its notification.
                (Direction::Outbound, &conn(1, TcpState::TimeWait)),
            ],
            t0,
        );
        let d = ledger.take_outbound();
        assert_eq!((d.opened, d.closed_locally), (3, 1));
        assert_eq!(d.lifetimes, [2.0, 0.0]);
        assert_eq!(
            ledger.take_outbound(),
            OutboundDelta::default(),
            "taken once"
        );
    }

    #[test]
    fn the_closer_and_the_idle_time_name_the_kind_of_close() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        // A keep-alive close (server first, idle 5 s), a close right after the
        // response (server first, idle 2 ms), a client's close; and one with no
        // tcp_info, judged by how long it was seen open.
        ledger.end(Direction::Inbound, &ended(1, true, Some(5000), t0));
        ledger.end(Direction::Inbound, &ended(2, true, Some(2), t0));
        ledger.end(Direction::Inbound, &ended(3, false, Some(5000), t0));
        ledger.observe([(Direction::Inbound, &conn(4, TcpState::Established))], t0);
        ledger.end(
            Direction::Inbound,
            &ended(4, true, None, t0 + Duration::from_secs(3)),
        );
        let c = ledger.take_inbound();
        assert_eq!(
            (
                c.opened,
                c.closed_idle_by_server,
                c.closed_early_by_server,
                c.closed_by_client
            ),
            (4, 2, 1, 1)
        );
    }

    /// Seen on the real kernel: a server's keep-alive close of an idle connection is
    /// notified at once (the orphaned FIN_WAIT2 socket becomes a timewait socket), which
    /// then shows in samples as FIN_WAIT2 without `tcp_info`, under the same cookie.
    #[test]
    fn a_timewait_socket_after_the_end_is_no_new_connection() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        ledger.observe([(Direction::Inbound, &conn(8, TcpState::Established))], t0);
        ledger.end(Direction::Inbound, &ended(8, true, Some(5000), t0));
        let timewait = |state| TcpRow {
            tcp_info: None,
            ..conn(8, state)
        };
        for state in [TcpState::FinWait2, TcpState::TimeWait] {
            ledger.observe([(Direction::Inbound, &timewait(state))], t0);
        }
        let c = ledger.take_inbound();
        assert_eq!((c.opened, c.closed_idle_by_server), (1, 1));
    }

    #[test]
    fn a_server_close_seen_in_a_sample_counts_when_a_reset_leaves_no_time_wait() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        ledger.observe([(Direction::Inbound, &conn(5, TcpState::Established))], t0);
        ledger.observe([(Direction::Inbound, &conn(5, TcpState::FinWait2))], t0);
        ledger.end(Direction::Inbound, &ended(5, false, Some(2000), t0));
        let c = ledger.take_inbound();
        assert_eq!((c.closed_idle_by_server, c.closed_by_client), (1, 0));
    }

    #[test]
    fn a_lost_notification_ends_the_connection_after_three_samples_without_it() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let open = conn(7, TcpState::Established);
        ledger.baseline([(Direction::Inbound, &open)], t0);
        for _ in 0..2 {
            ledger.observe([], t0);
        }
        assert_eq!(
            ledger.presumed_ended, 0,
            "two samples may race its notification"
        );
        ledger.observe([], t0);
        assert_eq!(ledger.presumed_ended, 1);
        let c = ledger.take_inbound();
        assert_eq!(
            (c.opened, c.closed_by_client),
            (0, 1),
            "a baseline connection's close counts"
        );
    }
}
