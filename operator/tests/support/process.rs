//! The real `apiworkload-operator` binary as a child process (only for this package's
//! tests: it needs `CARGO_BIN_EXE_apiworkload-operator`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apiworkload_e2e::Cluster;

/// A running operator process; SIGKILLed on drop if the test did not stop it.
pub struct Operator {
    child: Child,
    /// Its log (tracing writes to stdout).
    log: std::path::PathBuf,
    port: u16,
}

impl Operator {
    pub fn start(
        cluster: &Cluster,
        identity: &str,
        leader_elect: bool,
        lease_ns: &str,
    ) -> Operator {
        let args: Vec<String> = leader_elect
            .then(|| "--leader-elect".to_string())
            .into_iter()
            .collect();
        Operator::start_as(&cluster.kubeconfig, &args, identity, lease_ns)
    }

    /// With the credentials of `kubeconfig` (e.g. a ServiceAccount token) and `args`.
    pub fn start_as(
        kubeconfig: &Path,
        args: &[String],
        identity: &str,
        lease_ns: &str,
    ) -> Operator {
        let port = apiworkload_e2e::free_port();
        let log = std::env::temp_dir().join(format!(
            "operator-{identity}-{}.log",
            apiworkload_e2e::unique_suffix()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_apiworkload-operator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", lease_ns)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Operator { child, port, log }
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on the admin server: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
        ))
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Sum over every label set of `name` (0 when the metric is not served).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the process is still running (not exited, not restarted).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `signal` (`STOP`, `CONT`, …): SIGSTOP pauses it as a frozen node or a long
    /// GC pause would, the classic split-brain case.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL: no shutdown, no lease release, as a node failure or OOM kill.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
