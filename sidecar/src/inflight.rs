//! Requests in flight on the app's port, from one socket sample: no app change, and
//! nothing in the request path (the KEDA HTTP add-on and Knative's queue-proxy count
//! concurrency by proxying every request; this reads the kernel's view beside it).
//!
//! On an HTTP/1.1 connection a request is in flight from its arrival to its response:
//! the server side holds unread request bytes, or has received data and sent nothing
//! since. `tcp_info` gives the time since data last arrived and was last sent, in
//! kernel ticks (1–10 ms): a request that arrives in the same tick as the previous
//! response on its connection (a client that sends the next request at once, on
//! loopback) reads as answered until it is. Connections waiting in the accept queue
//! count too. Not exact for HTTP/2 (many streams per connection), pipelining, or a
//! streaming response (in flight only until its first bytes go out).

use crate::procnet::{TcpRow, TcpState};

/// Whether the server side `row` of an accepted connection has a request in flight.
pub fn request_in_flight(row: &TcpRow) -> bool {
    if row.state != TcpState::Established {
        return false;
    }
    if row.rx_queue > 0 {
        return true; // request bytes the app has not read yet
    }
    let Some(info) = row.tcp_info else {
        return false;
    };
    match (info.bytes_received, info.data_segs_out) {
        (Some(0), _) => false,      // no request yet
        (Some(_), Some(0)) => true, // read, nothing answered
        // Data arrived more recently than any was sent (a tie reads as answered: an
        // idle pooled connection must not count).
        _ => info.last_data_recv < info.last_data_sent,
    }
}

/// Requests in flight among the rows of the app's port (its listener and the server
/// side of its connections, as [`crate::sockets::classify`] hands them out).
pub fn count(inbound: &[TcpRow]) -> u32 {
    inbound
        .iter()
        .map(|row| match row.state {
            TcpState::Listen => row.rx_queue,
            _ => u32::from(request_in_flight(row)),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::procnet::TcpInfo;

    fn conn(rx_queue: u32, info: Option<(u64, u32, u64, u64)>) -> TcpRow {
        TcpRow {
            local: ([127, 0, 0, 1], 8000).into(),
            remote: ([127, 0, 0, 1], 50000).into(),
            state: TcpState::Established,
            rx_queue,
            tx_queue: 0,
            uid: 10001,
            inode: 1,
            tcp_info: info.map(|(received, segs_out, sent_ms, recv_ms)| TcpInfo {
                last_data_sent: Duration::from_millis(sent_ms),
                last_data_recv: Duration::from_millis(recv_ms),
                bytes_received: Some(received),
                data_segs_out: Some(segs_out),
            }),
            cookie: None,
        }
    }

    #[test]
    fn a_request_is_in_flight_from_arrival_to_response() {
        let cases = [
            (
                conn(120, None),
                true,
                "unread request bytes (also from /proc)",
            ),
            (conn(0, None), false, "nothing known without tcp_info"),
            (
                conn(0, Some((0, 0, 5, 5))),
                false,
                "accepted, no request yet",
            ),
            (
                conn(0, Some((120, 0, 5, 5))),
                true,
                "read, nothing sent (same tick as the accept)",
            ),
            (
                conn(0, Some((240, 2, 300, 40))),
                true,
                "the next request came after the response",
            ),
            (
                conn(0, Some((240, 2, 40, 300))),
                false,
                "answered: idle keep-alive",
            ),
            (
                conn(0, Some((240, 2, 40, 40))),
                false,
                "same tick: read as answered",
            ),
        ];
        for (row, expected, why) in cases {
            assert_eq!(request_in_flight(&row), expected, "{why}");
        }
    }

    #[test]
    fn the_accept_queue_counts_and_closing_connections_do_not() {
        let listen = TcpRow {
            state: TcpState::Listen,
            rx_queue: 3,
            ..conn(0, None)
        };
        let closing = TcpRow {
            state: TcpState::FinWait2,
            ..conn(0, Some((120, 0, 5, 5)))
        };
        let rows = [
            listen,
            closing,
            conn(10, None),
            conn(0, Some((240, 2, 40, 300))),
        ];
        assert_eq!(count(&rows), 4);
    }
}
