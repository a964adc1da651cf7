//! Starting the real sidecar binary in tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
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
    pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Sidecar {
        let port = apiworkload_e2e::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_apiworkload-sidecar"))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(args)
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

impl Sidecar {
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
