//! Settings, from flags or env (the operator renders the flags into the pod spec).

use std::{net::SocketAddr, path::PathBuf};

use apiworkload_contract::{DEFAULT_HEARTBEAT_LISTEN, SidecarArgs, parse_duration};
use clap::Parser;

/// Diagnostics for a Python API server in the same pod.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Config {
    /// What the operator tells the sidecar of the app (the shared contract: the operator
    /// renders exactly these flags).
    #[command(flatten)]
    pub app: SidecarArgs,
    /// Canary period per connection (4 Hz: a stall's duration is known to ±period/2).
    #[arg(long, env = "APIW_CANARY_PERIOD", default_value = "250ms", value_parser = parse_duration)]
    pub canary_period: std::time::Duration,
    /// UDP address for the app's opt-in heartbeat (sidecar/python/apiworkload_heartbeat.py);
    /// each worker's datagrams reveal its own stalls exactly.
    #[arg(long, env = "APIW_HEARTBEAT_LISTEN", default_value = DEFAULT_HEARTBEAT_LISTEN)]
    pub heartbeat_listen: SocketAddr,
    /// Evaluation window of the conditions: one turns False after 3 bad windows in a row
    /// and True after 5 good ones.
    #[arg(long, env = "APIW_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub window: std::time::Duration,
    /// How often each DNS name is probed. DNSHealthy turns False after 3 windows with bad
    /// DNS evidence, so a fault is named within about 3 intervals plus a window (55 s
    /// with the defaults); each query that times out is evidence as it happens.
    #[arg(long, env = "APIW_DNS_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub dns_interval: std::time::Duration,
    /// With no configuration, DNS is still probed: the search-list names the app's
    /// resolver would ask before this external name (its own query is not sent). Empty:
    /// no walk.
    #[arg(long, env = "APIW_DNS_WALK_NAME", default_value = crate::dns::TYPICAL_EXTERNAL_NAME)]
    pub dns_walk_name: String,
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
            "--app-uid=10001",
            "--dns-probe=api.example.com",
            "--dns-probe=db.internal",
        ])
        .unwrap();
        assert_eq!(c.app.workers, 5);
        assert_eq!(c.app.dns_probes, ["api.example.com", "db.internal"]);
    }

    /// The sidecar's own parser (the contract's flags flattened into its `Config`) reads
    /// every duration form the CRD accepts: `1m30s` used to exit the sidecar with status 2.
    #[test]
    fn compound_and_hour_durations_start_the_sidecar() {
        for stall in ["1m30s", "1h", "1.5s"] {
            let c = Config::try_parse_from([
                "apiworkload-sidecar".to_string(),
                format!("--stall-threshold={stall}"),
                format!("--window={stall}"),
            ])
            .unwrap_or_else(|e| panic!("{stall}: {e}"));
            assert_eq!(c.app.stall_threshold, parse_duration(stall).unwrap());
        }
    }

    /// What the operator renders for a whole pod parses as the sidecar's `Config`.
    #[test]
    fn rendered_contract_args_parse_as_the_config() {
        let args = SidecarArgs::parse_args(["--workers=3", "--stall-threshold=1m30s"]).unwrap();
        let c = Config::try_parse_from(
            std::iter::once("apiworkload-sidecar".to_string()).chain(args.to_args()),
        )
        .unwrap();
        assert_eq!(c.app, args);
    }
}
