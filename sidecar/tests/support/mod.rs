//! Shared by the sidecar tests: the real sidecar binary and a real DNS server (dnsmasq).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apiworkload_sidecar::{
    dns::{Mode, lookup},
    resolv::parse,
};

/// The `apiworkload-sidecar` binary listening on a free loopback port; killed on drop,
/// so a failed assertion never leaves it running.
pub struct Sidecar {
    child: Child,
    pub addr: SocketAddr,
}

impl Sidecar {
    /// Starts it with `--listen` set and the given extra flags.
    pub fn start(args: &[String]) -> Sidecar {
        Sidecar::start_with_env(args, &[])
    }

    /// As [`Sidecar::start`], with environment variables. No credentials leak in from
    /// the test's own environment: KUBECONFIG is only what `env` says.
    ///
    /// As in a pod, it runs under a different UID from the app when the tests run as
    /// root (the apps and clients here run as the test's user): then its own sockets,
    /// and those of other tests' sidecars, are not mistaken for the app's.
    pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Sidecar {
        let port = apiworkload_e2e::free_port();
        // Sidecars of concurrent tests must not share the default heartbeat port.
        let heartbeat = (!args.iter().any(|a| a.starts_with("--heartbeat-listen")))
            .then_some("--heartbeat-listen=127.0.0.1:0");
        let mut command = match sidecar_uid() {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(runnable_binary());
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_apiworkload-sidecar")),
        };
        let child = command
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(args)
            .args(heartbeat)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("APIW_SIDECAR_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        Sidecar {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }
}

/// The UID the sidecar runs as, when the tests can switch (as root): nobody's.
pub fn sidecar_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    (std::fs::metadata("/proc/self").ok()?.uid() == 0).then_some(65534)
}

/// A copy of the binary another UID can execute (the target dir may sit under a
/// private home directory).
fn runnable_binary() -> &'static std::path::Path {
    static COPY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let built = std::fs::metadata(env!("CARGO_BIN_EXE_apiworkload-sidecar")).unwrap();
        // One copy per build, reused by every test binary of the run.
        let dir =
            std::env::temp_dir().join(format!("apiw-sidecar-{}-{}", built.len(), built.mtime()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("apiworkload-sidecar");
        if !path.exists() {
            // Copied under a temporary name, then renamed: concurrent test binaries
            // never run a half-written file.
            let partial = dir.join(format!("partial-{}", std::process::id()));
            std::fs::copy(env!("CARGO_BIN_EXE_apiworkload-sidecar"), &partial).unwrap();
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&partial, &path).unwrap();
        }
        path
    })
}

impl Sidecar {
    /// Resident memory of the sidecar process (setpriv execs it: same PID), by
    /// `/proc/<pid>/status` field: `VmRSS` (all) or `RssAnon` (heap and stacks, without
    /// the mapped binary).
    pub fn memory_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// SIGTERM, as the kubelet stops a pod; the exit status once it has stopped.
    pub fn terminate(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sidecar did not stop within {within:?} of SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether it is still running (never exited or crashed).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// GET /report, parsed (blocking).
    pub fn report(&self) -> Option<serde_json::Value> {
        let text = apiworkload_e2e::http_get_blocking(self.addr, "/report")?;
        serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
    }

    /// (status, reason) of one condition (`event_loop`, `dns`, `connections`) in /report.
    pub fn condition(&self, key: &str) -> Option<(bool, String)> {
        let c = &self.report()?["conditions"][key];
        Some((c["status"].as_bool()?, c["reason"].as_str()?.to_string()))
    }

    /// The value of one sample in /metrics (`name{labels}` exactly as exported).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = apiworkload_e2e::http_get_blocking(self.addr, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
