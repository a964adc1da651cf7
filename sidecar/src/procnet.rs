//! Parsers for the network namespace's `/proc/net` files: per-socket rows of
//! `/proc/net/tcp{,6}` (the fallback when netlink sock_diag, [`crate::sockdiag`], is
//! unavailable) and the
//! namespace-wide counters of `/proc/net/snmp` and `/proc/net/netstat`, which miss no
//! connection however short-lived.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// TCP states as the kernel numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    Other(u8),
}

impl TcpState {
    /// States of a connection closing on this side, where the process has usually closed
    /// the socket already: the kernel finishes the close alone and reports the orphaned
    /// socket with no owner (UID 0, inode 0).
    pub fn is_orphan(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::Closing
                | TcpState::LastAck
                | TcpState::TimeWait
        )
    }

    pub fn from_code(code: u8) -> TcpState {
        match code {
            0x01 => TcpState::Established,
            0x02 => TcpState::SynSent,
            0x03 => TcpState::SynRecv,
            0x04 => TcpState::FinWait1,
            0x05 => TcpState::FinWait2,
            0x06 => TcpState::TimeWait,
            0x07 => TcpState::Close,
            0x08 => TcpState::CloseWait,
            0x09 => TcpState::LastAck,
            0x0A => TcpState::Listen,
            0x0B => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// LISTEN: connections waiting in the accept queue. ESTABLISHED: bytes received and
    /// not yet read by the application.
    pub rx_queue: u32,
    pub tx_queue: u32,
    pub uid: u32,
    /// 0 for a connection still waiting in the accept queue.
    pub inode: u64,
    /// What `tcp_info` says (sock_diag only).
    pub tcp_info: Option<TcpInfo>,
    /// The kernel's socket cookie (sock_diag only): unique per socket for the kernel's
    /// uptime, kept by its TIME_WAIT successor, so a 4-tuple reused for a new connection
    /// is told apart.
    pub cookie: Option<u64>,
}

/// The fields of the kernel's `struct tcp_info` the sidecar reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// Time since data was last sent (kernel ticks: 1–10 ms resolution).
    pub last_data_sent: std::time::Duration,
    /// Time since data last arrived.
    pub last_data_recv: std::time::Duration,
    /// Bytes received over the connection's life (Linux ≥ 4.1).
    pub bytes_received: Option<u64>,
    /// Segments carrying data sent (Linux ≥ 4.6).
    pub data_segs_out: Option<u32>,
}

/// Why a row could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed /proc/net/tcp row: {0:?}")]
pub struct RowError(pub String);

/// `0100007F:1F40` → 127.0.0.1:8000. The kernel prints each 32-bit word of the address
/// in host byte order (little-endian here).
fn parse_address(hex: &str) -> Option<SocketAddr> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.swap_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in (0..4).map(|i| &addr[i * 8..i * 8 + 8]).enumerate() {
                let w = u32::from_str_radix(word, 16).ok()?.swap_bytes();
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn parse_row(line: &str) -> Result<TcpRow, RowError> {
    let err = || RowError(line.to_string());
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return Err(err());
    }
    let (tx, rx) = f[4].split_once(':').ok_or_else(err)?;
    Ok(TcpRow {
        local: parse_address(f[1]).ok_or_else(err)?,
        remote: parse_address(f[2]).ok_or_else(err)?,
        state: TcpState::from_code(u8::from_str_radix(f[3], 16).map_err(|_| err())?),
        tx_queue: u32::from_str_radix(tx, 16).map_err(|_| err())?,
        rx_queue: u32::from_str_radix(rx, 16).map_err(|_| err())?,
        uid: f[7].parse().map_err(|_| err())?,
        inode: f[9].parse().map_err(|_| err())?,
        tcp_info: None,
        cookie: None,
    })
}

/// All rows of a `/proc/net/tcp{,6}` file (the header line is skipped).
pub fn parse_tcp(text: &str) -> Result<Vec<TcpRow>, RowError> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(parse_row)
        .collect()
}

/// Counters of `/proc/net/snmp` or `/proc/net/netstat`, keyed `Tcp.ActiveOpens`,
/// `TcpExt.ListenOverflows`, … (each section is a header line then a value line).
pub fn parse_counters(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [header, values] = pair else { continue };
        let (Some((section, names)), Some((section2, numbers))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if section != section2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(numbers.split_whitespace()) {
            // Some fields (Tcp.MaxConn) are -1: not a counter, skipped.
            if let Ok(v) = value.parse::<u64>() {
                out.insert(format!("{section}.{name}"), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000003 00:00000000 00000000 10001        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F40 0100007F:D431 01 00000000:0000001B 00:00000000 00000000 10001        0 0 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn reads_listen_backlog_unread_bytes_uid_and_inode() {
        let rows = parse_tcp(TCP).unwrap();
        assert_eq!(rows[0].local, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            (rows[0].state, rows[0].rx_queue, rows[0].uid, rows[0].inode),
            (TcpState::Listen, 3, 10001, 4242)
        );
        assert_eq!(rows[1].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(
            (rows[1].state, rows[1].rx_queue, rows[1].inode),
            (TcpState::Established, 27, 0)
        );
    }

    #[test]
    fn reads_ipv6_addresses() {
        let line = "   0: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 77 1 0 100 0 0 10 0";
        let row = parse_row(line).unwrap();
        assert_eq!(row.local, "[::1]:8000".parse().unwrap());
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        assert!(parse_tcp("header\n 0: zz\n").is_err());
        assert!(parse_tcp("header\n 0: 0100007F:1F40 0100007F:XYZ 01 0:0 0 0 0 0 0\n").is_err());
    }

    #[test]
    fn reads_snmp_and_netstat_counters() {
        let snmp = "Tcp: RtoAlgorithm RtoMin MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab\nTcp: 1 200 -1 120 340 2 7 12\nUdp: InDatagrams\nUdp: 5\n";
        let c = parse_counters(snmp);
        assert_eq!(c["Tcp.ActiveOpens"], 120);
        assert_eq!(c["Tcp.PassiveOpens"], 340);
        assert!(!c.contains_key("Tcp.MaxConn"));
        assert_eq!(c["Udp.InDatagrams"], 5);
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 4 6\n";
        assert_eq!(parse_counters(netstat)["TcpExt.ListenOverflows"], 4);
    }

    /// The parser reads this machine's real files (any Linux has them).
    #[test]
    fn reads_the_real_proc_files() {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        parse_tcp(&tcp).unwrap();
        assert!(
            parse_counters(&std::fs::read_to_string("/proc/net/snmp").unwrap())
                .contains_key("Tcp.ActiveOpens")
        );
    }
}
