//! Settings, from flags or env (the operator renders the flags into the pod spec).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// Diagnostics for a Python API server in the same pod.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Config {
    /// Port the app listens on (same network namespace).
    #[arg(long, env = "APIW_APP_PORT", default_value_t = 8000)]
    pub app_port: u16,
    /// Address of /metrics, /healthz and /report.
    #[arg(long, env = "APIW_LISTEN", default_value = "0.0.0.0:9901")]
    pub listen: SocketAddr,
    /// UID the app runs as: only its sockets count (the operator renders 10001). Without
    /// it, every socket but the sidecar's own counts.
    #[arg(long, env = "APIW_APP_UID")]
    pub app_uid: Option<u32>,
    /// Cheap endpoint for canary requests.
    #[arg(long, env = "APIW_PROBE_PATH", default_value = "/healthz")]
    pub probe_path: String,
    /// Worker processes of the app (one persistent canary connection each).
    #[arg(long, env = "APIW_WORKERS", default_value_t = 1)]
    pub workers: u32,
    /// A canary slower than this counts as an event-loop stall.
    #[arg(long, env = "APIW_STALL_THRESHOLD", default_value = "100ms", value_parser = parse_duration)]
    pub stall_threshold: std::time::Duration,
    /// Canary period per connection (4 Hz: a stall's duration is known to ±period/2).
    #[arg(long, env = "APIW_CANARY_PERIOD", default_value = "250ms", value_parser = parse_duration)]
    pub canary_period: std::time::Duration,
    /// UDP address for the app's opt-in heartbeat (sidecar/python/apiworkload_heartbeat.py);
    /// each worker's datagrams reveal its own stalls exactly.
    #[arg(long, env = "APIW_HEARTBEAT_LISTEN", default_value = "127.0.0.1:9902")]
    pub heartbeat_listen: SocketAddr,
    /// Keep-alive the operator rendered; inbound closes after about this idle time are
    /// the server's keep-alive.
    #[arg(long, env = "APIW_UPSTREAM_IDLE", default_value = "5s")]
    pub upstream_idle: String,
    /// A name to resolve as the app would (repeatable).
    #[arg(long = "dns-probe", env = "APIW_DNS_PROBE", value_delimiter = ',')]
    pub dns_probes: Vec<String>,
    /// Evaluation window of the conditions: one turns False after 3 bad windows in a row
    /// and True after 5 good ones.
    #[arg(long, env = "APIW_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub window: std::time::Duration,
    /// How often each DNS name is probed.
    #[arg(long, env = "APIW_DNS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub dns_interval: std::time::Duration,
    /// Port of the nameservers in resolv.conf (53; tests use a local server).
    #[arg(long, env = "APIW_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// The pod's resolver configuration (tests point it elsewhere).
    #[arg(long, env = "APIW_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// The pod the conditions are written on (the operator sets it from the downward API).
    /// Without it, or without credentials, the sidecar only measures and serves.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Conditions are written on every change and refreshed this often otherwise.
    #[arg(long, env = "APIW_CONDITIONS_HEARTBEAT", default_value = "5m", value_parser = parse_duration)]
    pub conditions_heartbeat: std::time::Duration,
    /// Where socket samples come from: netlink sock_diag, /proc/net/tcp{,6}, or auto
    /// (sock_diag, falling back to /proc when the platform refuses it, e.g. gVisor).
    #[arg(long, env = "APIW_SOCKET_SOURCE", value_enum, default_value_t = SocketSource::Auto)]
    pub socket_source: SocketSource,
    /// Root of /proc (tests point it elsewhere).
    #[arg(long, env = "APIW_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSource {
    Auto,
    Netlink,
    Proc,
}

/// `30s`, `500ms`, `2m` → Duration.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_flags_the_operator_renders() {
        let c = Config::try_parse_from([
            "apiworkload-sidecar",
            "--app-port=8000",
            "--listen=0.0.0.0:9901",
            "--probe-path=/healthz",
            "--workers=5",
            "--stall-threshold=100ms",
            "--upstream-idle=1m15s",
            "--app-uid=10001",
            "--dns-probe=api.example.com",
            "--dns-probe=db.internal",
        ])
        .unwrap();
        assert_eq!(c.workers, 5);
        assert_eq!(c.dns_probes, ["api.example.com", "db.internal"]);
    }
}
