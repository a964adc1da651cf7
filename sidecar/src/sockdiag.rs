//! The pod's TCP sockets from netlink `sock_diag` (`NETLINK_SOCK_DIAG`, `INET_DIAG_INFO`):
//! the main source, with `/proc/net/tcp{,6}` as the fallback ([`crate::procnet`]).
//!
//! It needs no capability for the caller's own network namespace, costs one syscall
//! round trip per ~30 KiB of sockets instead of formatting and parsing text, and adds
//! `tcp_info`, whose `last_data_recv` tells how long the oldest unread request bytes of
//! a connection have been waiting. `tcp_info` is decoded by offset with a length check
//! (not as a fixed struct), so older node kernels with a shorter struct still work.

use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::procnet::{TcpInfo, TcpRow, TcpState};

/// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h; fields are only ever
/// appended): `tcpi_last_data_sent` and `tcpi_last_data_recv` (u32 ms, Linux 2.6),
/// `tcpi_bytes_received` (u64, 4.1), `tcpi_data_segs_out` (u32, 4.6).
const LAST_DATA_SENT_OFFSET: usize = 44;
const LAST_DATA_RECV_OFFSET: usize = 52;
const BYTES_RECEIVED_OFFSET: usize = 128;
const DATA_SEGS_OUT_OFFSET: usize = 156;

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// The fields read from a `tcp_info` attribute, if it is long enough to hold the times;
/// later fields are `None` on kernels whose struct ends before them.
pub fn tcp_info(bytes: &[u8]) -> Option<TcpInfo> {
    let ms = |offset| u32_at(bytes, offset).map(|v| Duration::from_millis(u64::from(v)));
    Some(TcpInfo {
        last_data_sent: ms(LAST_DATA_SENT_OFFSET)?,
        last_data_recv: ms(LAST_DATA_RECV_OFFSET)?,
        bytes_received: u64_at(bytes, BYTES_RECEIVED_OFFSET),
        data_segs_out: u32_at(bytes, DATA_SEGS_OUT_OFFSET),
    })
}

fn row(response: &InetResponse) -> TcpRow {
    let h = &response.header;
    let id = &h.socket_id;
    let tcp_info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => Some(bytes.as_slice()),
        _ => None,
    });
    TcpRow {
        local: (id.source_address, id.source_port).into(),
        remote: (id.destination_address, id.destination_port).into(),
        state: TcpState::from_code(h.state),
        rx_queue: h.recv_queue,
        tx_queue: h.send_queue,
        uid: h.uid,
        inode: u64::from(h.inode),
        tcp_info: tcp_info.and_then(self::tcp_info),
        cookie: Some(u64::from_ne_bytes(id.cookie)),
    }
}

/// One dump request per address family, for `states`, with `tcp_info`.
fn request(family: u8, states: StateFlags) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// The request for the socket on a 4-tuple (no dump flag, any cookie): the kernel answers
/// with that socket, TIME_WAIT included, or an error when there is none.
fn lookup_request(row: &TcpRow) -> Vec<u8> {
    let family = match row.local {
        std::net::SocketAddr::V4(_) => AF_INET,
        std::net::SocketAddr::V6(_) => AF_INET6,
    };
    let mut socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    socket_id.source_address = row.local.ip();
    socket_id.source_port = row.local.port();
    socket_id.destination_address = row.remote.ip();
    socket_id.destination_port = row.remote.port();
    // INET_DIAG_NOCOOKIE: a TIME_WAIT socket has the cookie of the connection it
    // succeeds only if one was generated before the close (by a dump); otherwise its own.
    socket_id.cookie = [0xff; 8];
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// A netlink socket kept open across polls.
#[derive(Debug)]
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> std::io::Result<SockDiag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(SockDiag {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every TCP socket of the network namespace (IPv4 and IPv6).
    pub fn dump(&mut self) -> std::io::Result<Vec<TcpRow>> {
        self.dump_states(StateFlags::all())
    }

    /// The sockets in `states` (the kernel filters: cheaper than a full dump).
    pub fn dump_states(&mut self, states: StateFlags) -> std::io::Result<Vec<TcpRow>> {
        let mut rows = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.socket.send(&request(family, states.clone()), 0)?;
            self.receive(&mut rows)?;
        }
        Ok(rows)
    }

    /// Whether the connection a destroyed socket ended lives on in a timewait socket on
    /// this side, i.e. this side closed it first. The kernel moves a connection this side
    /// closed first to a timewait socket before it destroys the full one: in TIME_WAIT,
    /// or still in FIN_WAIT2 when the process closed it while the peer had not (a
    /// server's keep-alive close: notified at the close, not when the peer answers). One
    /// on the 4-tuple is this connection's: an older one was removed when this connection
    /// reused the 4-tuple, and a newer one cannot exist before the kernel reuses it, a
    /// second later at the soonest. Asked right after the destroy notification, the
    /// answer is exact.
    pub fn closed_here(&mut self, ended: &TcpRow) -> std::io::Result<bool> {
        self.socket.send(&lookup_request(ended), 0)?;
        let mut rows = Vec::new();
        match self.receive_one(&mut rows) {
            Ok(()) => Ok(rows.iter().any(|r| {
                matches!(
                    r.state,
                    TcpState::TimeWait | TcpState::FinWait2 | TcpState::Closing
                )
            })),
            // ENOENT: no socket on that 4-tuple (the peer closed first, or a reset).
            Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The answer to a single-socket request: one response or an error, no Done.
    fn receive_one(&mut self, rows: &mut Vec<TcpRow>) -> std::io::Result<()> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[..size])
            .map_err(|e| invalid(e.to_string()))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                rows.push(row(&r));
                Ok(())
            }
            NetlinkPayload::Error(e) => Err(e.to_io()),
            _ => Ok(()),
        }
    }

    fn receive(&mut self, rows: &mut Vec<TcpRow>) -> std::io::Result<()> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..size])
                        .map_err(|e| invalid(e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        rows.push(row(&r))
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// The kernel's notification of every TCP socket of the namespace as it is destroyed
/// (multicast group `SKNLGRP_INET_TCP_DESTROY` of `NETLINK_SOCK_DIAG`; no capability
/// needed), with its 4-tuple, cookie and final `tcp_info`. Sampling sees a connection only
/// if it lives across a sample or leaves TIME_WAIT on this side; this sees every one.
#[derive(Debug)]
pub struct DestroyFeed {
    socket: Socket,
    buf: Vec<u8>,
}

/// What a single-socket request answers when there is none (Linux errno).
const ENOENT: i32 = 2;

/// `SKNLGRP_INET_TCP_DESTROY` (include/uapi/linux/sock_diag.h).
const TCP_DESTROY_GROUP: u32 = 1;

impl DestroyFeed {
    pub fn subscribe() -> std::io::Result<DestroyFeed> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        // Room for bursts (about 200 bytes a socket): what overflows is lost (ENOBUFS).
        let _ = socket.set_rx_buf_sz(4 << 20);
        socket.add_membership(TCP_DESTROY_GROUP)?;
        Ok(DestroyFeed {
            socket,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Blocks for the next notifications; the sockets they name (listeners left out).
    /// `ENOBUFS` means some were lost to a full receive buffer.
    pub fn wait_ended(&mut self) -> std::io::Result<Vec<TcpRow>> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut rows = Vec::new();
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..size])
                .map_err(|e| invalid(e.to_string()))?;
            let length = message.header.length as usize;
            if let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) = message.payload
            {
                let ended = row(&r);
                if ended.remote.port() != 0 {
                    rows.push(ended);
                }
            }
            if length == 0 {
                break;
            }
            offset += length.next_multiple_of(4);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_is_read_by_offset_with_length_checks() {
        let mut info = vec![0u8; 160];
        info[44..48].copy_from_slice(&20u32.to_ne_bytes());
        info[52..56].copy_from_slice(&1500u32.to_ne_bytes());
        info[128..136].copy_from_slice(&18u64.to_ne_bytes());
        info[156..160].copy_from_slice(&3u32.to_ne_bytes());
        let read = tcp_info(&info).unwrap();
        assert_eq!(
            (
                read.last_data_sent,
                read.last_data_recv,
                read.bytes_received,
                read.data_segs_out
            ),
            (
                Duration::from_millis(20),
                Duration::from_millis(1500),
                Some(18),
                Some(3)
            )
        );
        // A kernel before 4.6 (struct ends earlier): the times, without the counters.
        let old = tcp_info(&info[..104]).unwrap();
        assert_eq!((old.bytes_received, old.data_segs_out), (None, None));
        assert_eq!(tcp_info(&info[..55]), None, "a short struct is no error");
    }

    /// The real kernel: a listener and an accepted connection with unread bytes are
    /// reported as /proc/net/tcp reports them, plus how long the bytes have waited.
    #[test]
    fn dumps_this_namespaces_sockets() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let rows = SockDiag::open().unwrap().dump().unwrap();
        let listen = rows
            .iter()
            .find(|r| r.local.port() == port && r.state == TcpState::Listen)
            .expect("the listener");
        assert!(listen.tx_queue > 0, "the backlog limit: {listen:?}");
        let server = rows
            .iter()
            .find(|r| r.local.port() == port && r.state == TcpState::Established)
            .expect("the accepted connection");
        assert_eq!(server.rx_queue, 18, "unread request bytes");
        let info = server.tcp_info.expect("tcp_info");
        let waited = info.last_data_recv;
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // The offsets of this kernel's struct: 18 bytes in, nothing sent yet.
        assert_eq!(
            (info.bytes_received, info.data_segs_out),
            (Some(18), Some(0))
        );
        // The same socket, as /proc/net/tcp shows it.
        let proc_rows =
            crate::procnet::parse_tcp(&std::fs::read_to_string("/proc/net/tcp").unwrap()).unwrap();
        let same = proc_rows
            .iter()
            .find(|r| r.local == server.local && r.remote == server.remote)
            .unwrap();
        assert_eq!(
            (same.state, same.rx_queue, same.uid, same.inode),
            (server.state, server.rx_queue, server.uid, server.inode)
        );
        // Answered: one data segment out, sent after the request arrived.
        use std::io::Read;
        let mut request = [0u8; 18];
        let mut accepted = _server;
        accepted.read_exact(&mut request).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        accepted
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let rows = SockDiag::open().unwrap().dump().unwrap();
        let answered = rows
            .iter()
            .find(|r| r.local == server.local && r.remote == server.remote)
            .and_then(|r| r.tcp_info)
            .unwrap();
        assert_eq!(answered.data_segs_out, Some(1));
        assert!(
            answered.last_data_sent < answered.last_data_recv,
            "{answered:?}"
        );
    }

    /// The end notifications of both sockets of the one connection to `port` (server's,
    /// client's), waited for up to 5 s.
    fn both_ends(feed: &mut DestroyFeed, port: u16) -> (TcpRow, TcpRow) {
        let mut ended = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ended.len() < 2 && std::time::Instant::now() < deadline {
            ended.extend(
                feed.wait_ended()
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.local.port() == port || r.remote.port() == port),
            );
        }
        let end = |server: bool| {
            ended
                .iter()
                .find(|r| (r.local.port() == port) == server)
                .cloned()
                .unwrap()
        };
        (end(true), end(false))
    }

    /// The real kernel: every socket of a connection is reported as it is destroyed, with
    /// the cookie a dump showed while it was open and its final `tcp_info`; the side that
    /// closed first lives on in TIME_WAIT and is told apart from the other.
    #[test]
    fn destroyed_sockets_are_notified_with_their_cookie_and_who_closed() {
        use std::io::{Read, Write};
        let mut feed = DestroyFeed::subscribe().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        let open = diag.dump().unwrap();
        let cookie_of = |rows: &[TcpRow], local_port: u16| {
            rows.iter()
                .find(|r| r.local.port() == local_port && r.remote.port() != 0)
                .and_then(|r| r.cookie)
                .expect("a cookie")
        };
        let (client_cookie, server_cookie) =
            (cookie_of(&open, client_addr.port()), cookie_of(&open, port));
        client.write_all(b"ping").unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).unwrap();
        // The server closes first (as a keep-alive timeout does), then the client.
        drop(server);
        let mut rest = vec![];
        client.read_to_end(&mut rest).unwrap();
        drop(client);
        let (server_end, client_end) = both_ends(&mut feed, port);
        assert_eq!(
            (server_end.cookie, client_end.cookie),
            (Some(server_cookie), Some(client_cookie)),
            "the cookies a dump showed while open"
        );
        let info = server_end.tcp_info.expect("the final tcp_info");
        // The 4 bytes, plus the client's FIN, which counts in sequence space.
        assert_eq!(info.bytes_received, Some(5));
        assert!(
            diag.closed_here(&server_end).unwrap(),
            "the server closed first"
        );
        assert!(
            !diag.closed_here(&client_end).unwrap(),
            "the client closed second"
        );

        // A connection no dump saw while it was open, closed by the client first: its
        // TIME_WAIT socket then has a cookie of its own (found by the 4-tuple).
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client.write_all(b"ping"));
        server.read_exact(&mut four).unwrap();
        drop(client);
        server.read_to_end(&mut rest).unwrap();
        drop(server);
        let (server_end, client_end) = both_ends(&mut feed, port);
        assert_eq!(
            (
                diag.closed_here(&client_end).unwrap(),
                diag.closed_here(&server_end).unwrap()
            ),
            (true, false),
            "the client closed first"
        );
    }
}
