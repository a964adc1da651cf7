//! The project's binaries as child processes, for the tests: the operator and the
//! sidecar, each on a free loopback port and killed on drop, so a failed assertion never
//! leaves one running.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Cluster, HttpResponse, http_get, metric_sample, metric_sum};

/// A binary of the workspace as cargo built it for the running test: cargo builds a
/// package's binaries before its integration tests, beside their `deps/` directory.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join(name))
        .expect("the test binary sits in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test` (tests/run) so that cargo builds it",
        path.display()
    );
    path
}

/// A running operator process; SIGKILLed on drop if the test did not stop it.
#[derive(Debug)]
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
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!(
            "operator-{identity}-{}.log",
            crate::unique_suffix()
        ));
        let child = Command::new(built_binary("apiworkload-operator"))
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

    /// GET a path on the admin server.
    pub fn get(&self, path: &str) -> Option<HttpResponse> {
        http_get(([127, 0, 0, 1], self.port).into(), path)
    }

    /// The value of one sample of its /metrics (`name{labels}` as exported).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_sample(&self.get("/metrics")?.body, sample)
    }

    /// The sum over every label set of `name` (0 when the metric is not served).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.get("/metrics")
            .map_or(0.0, |r| metric_sum(&r.body, name))
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

/// The `apiworkload-sidecar` binary listening on a free loopback port; killed on drop,
/// so a failed assertion never leaves it running.
#[derive(Debug)]
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
        let port = crate::free_port();
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
            None => Command::new(built_binary("apiworkload-sidecar")),
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
        let binary = built_binary("apiworkload-sidecar");
        let built = std::fs::metadata(&binary).unwrap();
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
            std::fs::copy(&binary, &partial).unwrap();
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
        serde_json::from_str(&http_get(self.addr, "/report")?.body).ok()
    }

    /// (status, reason) of one condition (`event_loop`, `dns`, `connections`) in /report.
    pub fn condition(&self, key: &str) -> Option<(bool, String)> {
        let c = &self.report()?["conditions"][key];
        Some((c["status"].as_bool()?, c["reason"].as_str()?.to_string()))
    }

    /// The value of one sample in /metrics (`name{labels}` exactly as exported).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_sample(&http_get(self.addr, "/metrics")?.body, sample)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
