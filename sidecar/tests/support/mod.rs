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
    pub fn start() -> Dnsmasq {
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
        let server = Dnsmasq { child, addr, log };
        // Ready when it answers.
        let conf = parse("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..50 {
            let l = rt.block_on(lookup(&conf, &[addr], "api.example.test", Mode::Fqdn));
            if l.answered_by.is_some() {
                let _ = std::fs::write(&server.log, "");
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not start on {addr}");
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
    }
}
