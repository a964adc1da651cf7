//! The flags the operator renders into the sidecar container and the sidecar parses: one
//! clap struct, flattened into the sidecar's own `Config`, and rendered by
//! [`SidecarArgs::to_args`], so that what one side writes the other reads.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser};

use crate::{GoDuration, Thresholds, parse_duration};

/// What the sidecar must know of the app it sits beside.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SidecarArgs {
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
    /// A canary slower than this counts as an event-loop stall (`100ms`, `1s`, `1m30s`).
    #[arg(long, env = "APIW_STALL_THRESHOLD", default_value = "100ms", value_parser = parse_duration)]
    pub stall_threshold: Duration,
    /// A name to resolve as the app would (repeatable).
    #[arg(long = "dns-probe", env = "APIW_DNS_PROBE", value_delimiter = ',')]
    pub dns_probes: Vec<String>,
    /// When a window of evidence counts as bad (`spec.diagnostics.thresholds`).
    #[command(flatten)]
    pub thresholds: Thresholds,
}

/// A parser of just these flags (the sidecar flattens them into its `Config`).
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
struct Only {
    #[command(flatten)]
    args: SidecarArgs,
}

impl SidecarArgs {
    /// The container's `args`: every field, explicitly, so a sidecar image with other
    /// defaults still runs what the operator reports.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--app-port={}", self.app_port),
            format!("--listen={}", self.listen),
            format!("--probe-path={}", self.probe_path),
            format!("--workers={}", self.workers),
            format!("--stall-threshold={}", GoDuration(self.stall_threshold)),
        ];
        if let Some(uid) = self.app_uid {
            args.push(format!("--app-uid={uid}"));
        }
        args.extend(self.dns_probes.iter().map(|n| format!("--dns-probe={n}")));
        args.extend(self.thresholds.to_args());
        args
    }

    /// Parses container args (without the program name) as the sidecar does.
    pub fn parse_args<I, T>(args: I) -> Result<SidecarArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Only::try_parse_from(args).map(|o| o.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(stall: &str) -> SidecarArgs {
        SidecarArgs {
            app_port: 8000,
            listen: "0.0.0.0:9901".parse().unwrap(),
            app_uid: Some(10001),
            probe_path: "/healthz".into(),
            workers: 5,
            stall_threshold: parse_duration(stall).unwrap(),
            dns_probes: vec!["api.example.com".into(), "db.internal".into()],
            thresholds: Thresholds {
                stalled_percent: 20,
                dns_slow: parse_duration(stall).unwrap(),
                ..Thresholds::default()
            },
        }
    }

    /// The first defect this crate exists for: the CRD accepted `1h` and `1m30s`, the
    /// operator rendered them, and the sidecar's own parser refused them at start.
    #[test]
    fn every_duration_form_the_crd_accepts_parses() {
        for stall in ["100ms", "1s", "1m30s", "1h", "1.5s", "2m", "250ms"] {
            let args = sample(stall);
            assert_eq!(
                SidecarArgs::parse_args(args.to_args()).unwrap(),
                args,
                "{stall}"
            );
        }
    }

    #[test]
    fn a_malformed_duration_names_the_flag() {
        let err = SidecarArgs::parse_args(["--stall-threshold=10 seconds"]).unwrap_err();
        assert!(err.to_string().contains("--stall-threshold"), "{err}");
    }

    #[test]
    fn without_uid_or_probes_nothing_is_rendered_for_them() {
        let mut args = sample("100ms");
        args.app_uid = None;
        args.dns_probes.clear();
        let rendered = args.to_args();
        assert!(!rendered.iter().any(|a| a.starts_with("--app-uid")));
        assert_eq!(SidecarArgs::parse_args(rendered).unwrap(), args);
    }
}
