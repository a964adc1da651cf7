//! Shared by the sidecar tests: a real DNS server (dnsmasq). The sidecar process itself
//! is `apiworkload_e2e::process::Sidecar`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use apiworkload_sidecar::{
    dns::{Mode, lookup},
    resolv::parse,
};

/// dnsmasq serving `api.example.test` (A only) and empty `cluster.local` / `example.test`
/// zones (NXDOMAIN for everything else); killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Dnsmasq {
    /// Starts it on a free port. dnsmasq binds TCP and UDP on that port, and the port
    /// was only checked free for UDP: when TCP's is taken (a busy machine's outgoing
    /// connection), dnsmasq exits at once, and it is started again on another port.
    pub fn start() -> Dnsmasq {
        let mut exits = Vec::new();
        for _ in 0..5 {
            match Dnsmasq::try_start() {
                Ok(server) => return server,
                Err(why) => exits.push(why),
            }
        }
        panic!("dnsmasq did not start: {exits:?}");
    }

    fn try_start() -> Result<Dnsmasq, String> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("dnsmasq-{port}.log"));
        let child = apiworkload_e2e::dnsmasq_command(port)
            .args(["--log-queries", "--log-facility=-"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("dnsmasq is required (tests/run installs dnsmasq-base)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut server = Dnsmasq { child, addr, log };
        // Ready when it answers.
        let conf = parse("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..50 {
            if let Ok(Some(status)) = server.child.try_wait() {
                let said = std::fs::read_to_string(&server.log).unwrap_or_default();
                return Err(format!("port {port}: exited {status}: {}", said.trim()));
            }
            let l = rt.block_on(lookup(&conf, &[addr], "api.example.test", Mode::Fqdn));
            if l.answered_by.is_some() {
                let _ = std::fs::write(&server.log, "");
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("port {port}: no answer within 5 s"))
    }

    /// Queries dnsmasq logged since it started (or was last reset), e.g. `query[A]`.
    pub fn logged_queries(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .matches("query[")
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What a [`relay`] does with each query, changeable while it runs.
pub const RELAY_PASS: u64 = 0;
/// Drops every query (a silent nameserver).
pub const RELAY_DROP: u64 = u64::MAX;

/// A UDP relay in front of `upstream` on a free loopback port: each query waits
/// `delay_ms` milliseconds before it is passed on ([`RELAY_DROP`]: never answered), read
/// as each query arrives, so a test can inject delays or silence mid-run.
pub async fn relay(
    upstream: SocketAddr,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> SocketAddr {
    use std::sync::{Arc, atomic::Ordering};
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let packet = buf[..len].to_vec();
            let (front, delay) = (front.clone(), delay_ms.load(Ordering::Relaxed));
            tokio::spawn(async move {
                if delay == RELAY_DROP {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&packet, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), back.recv(&mut reply)).await
                {
                    let _ = front.send_to(&reply[..n], client).await;
                }
            });
        }
    });
    addr
}
