//! The sidecar's diagnosis thresholds: flags the operator renders from
//! `spec.diagnostics.thresholds` and the sidecar's conditions read. Rates are per minute
//! and shares are whole percents, so the CRD holds only integers and durations (a float
//! in an API is a rounding argument waiting to happen).

use std::time::Duration;

use clap::Args;
use serde::{Serialize, Serializer};

use crate::{GoDuration, parse_duration};

/// When a window of evidence counts as bad, per reason. The defaults are what the
/// README's condition table and `apiworkload-sidecar --help` list.
/// Serialized as the spec writes them (`/report` shows the ones in force).
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// LoopStalled: share of a window the event loop was stalled, in percent.
    #[arg(long, env = "APIW_STALLED_PERCENT", default_value_t = DEFAULT.stalled_percent,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub stalled_percent: u32,
    /// CPUThrottled: share of the app's CFS periods its CPU quota throttled, in percent.
    #[arg(long, env = "APIW_CPU_THROTTLED_PERCENT", default_value_t = DEFAULT.cpu_throttled_percent,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub cpu_throttled_percent: u32,
    /// AcceptBacklog: connections waiting to be accepted (every worker busy or stalled).
    #[arg(long, env = "APIW_ACCEPT_QUEUE_THRESHOLD", default_value_t = DEFAULT.accept_queue,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub accept_queue: u32,
    /// SearchAmplification: DNS queries per lookup above this (2 = A and AAAA once).
    #[arg(long, env = "APIW_DNS_QUERIES_PER_LOOKUP", default_value_t = DEFAULT.dns_queries_per_lookup,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub dns_queries_per_lookup: u32,
    /// SlowResolution: a lookup slower than this.
    #[arg(long, env = "APIW_DNS_SLOW", default_value = "500ms", value_parser = parse_duration)]
    #[serde(serialize_with = "go_duration")]
    pub dns_slow: Duration,
    /// OutboundChurn: new outbound connections per minute above this…
    #[arg(long, env = "APIW_OUTBOUND_PER_MINUTE", default_value_t = DEFAULT.outbound_per_minute,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_per_minute: u32,
    /// …when most of them also live shorter than this.
    #[arg(long, env = "APIW_OUTBOUND_SHORT_LIFETIME", default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "go_duration")]
    pub outbound_short_lifetime: Duration,
    /// KeepAliveChurn: the server's keep-alive closes per minute above this.
    #[arg(long, env = "APIW_KEEP_ALIVE_CLOSES_PER_MINUTE", default_value_t = DEFAULT.keep_alive_closes_per_minute,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_alive_closes_per_minute: u32,
    /// CloseWaitLeak: sockets in CLOSE_WAIT at once (the app does not close what its
    /// peers closed).
    #[arg(long, env = "APIW_CLOSE_WAIT_THRESHOLD", default_value_t = DEFAULT.close_wait,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub close_wait: u32,
}

fn go_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    GoDuration(*d).serialize(s)
}

/// The defaults, documented in the README and `--help`. Constants, not clap's parse of
/// nothing: that would read `APIW_*` variables of whichever process asks (the operator's).
const DEFAULT: Thresholds = Thresholds {
    stalled_percent: 5,
    cpu_throttled_percent: 25,
    accept_queue: 3,
    dns_queries_per_lookup: 4,
    dns_slow: Duration::from_millis(500),
    outbound_per_minute: 60,
    outbound_short_lifetime: Duration::from_secs(1),
    keep_alive_closes_per_minute: 3,
    close_wait: 10,
};

impl Default for Thresholds {
    fn default() -> Self {
        DEFAULT
    }
}

impl Thresholds {
    pub fn stalled_fraction(&self) -> f64 {
        f64::from(self.stalled_percent) / 100.0
    }

    pub fn cpu_throttled_fraction(&self) -> f64 {
        f64::from(self.cpu_throttled_percent) / 100.0
    }

    pub fn outbound_per_second(&self) -> f64 {
        f64::from(self.outbound_per_minute) / 60.0
    }

    pub fn keep_alive_closes_per_second(&self) -> f64 {
        f64::from(self.keep_alive_closes_per_minute) / 60.0
    }

    /// The container's flags for these values: every one, explicitly, so a sidecar image
    /// with other defaults still judges by what the operator reports.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--stalled-percent={}", self.stalled_percent),
            format!("--cpu-throttled-percent={}", self.cpu_throttled_percent),
            format!("--accept-queue={}", self.accept_queue),
            format!("--dns-queries-per-lookup={}", self.dns_queries_per_lookup),
            format!("--dns-slow={}", GoDuration(self.dns_slow)),
            format!("--outbound-per-minute={}", self.outbound_per_minute),
            format!(
                "--outbound-short-lifetime={}",
                GoDuration(self.outbound_short_lifetime)
            ),
            format!(
                "--keep-alive-closes-per-minute={}",
                self.keep_alive_closes_per_minute
            ),
            format!("--close-wait={}", self.close_wait),
        ]
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    #[command(no_binary_name = true)]
    struct Only {
        #[command(flatten)]
        thresholds: Thresholds,
    }

    fn parse(args: &[String]) -> Result<Thresholds, clap::Error> {
        Only::try_parse_from(args).map(|o| o.thresholds)
    }

    /// The values the README and `--help` document, and the flags' defaults (the
    /// durations' are written as text in their attributes).
    #[test]
    fn defaults_are_the_documented_ones() {
        let t = Thresholds::default();
        assert_eq!(parse(&[]).unwrap(), t);
        assert_eq!(t.stalled_fraction(), 0.05);
        assert_eq!(t.cpu_throttled_fraction(), 0.25);
        assert_eq!(t.accept_queue, 3);
        assert_eq!(t.dns_queries_per_lookup, 4);
        assert_eq!(t.dns_slow, Duration::from_millis(500));
        assert_eq!(t.outbound_per_second(), 1.0);
        assert_eq!(t.outbound_short_lifetime, Duration::from_secs(1));
        assert_eq!(t.keep_alive_closes_per_second(), 0.05);
        assert_eq!(t.close_wait, 10);
    }

    #[test]
    fn rendered_flags_parse_back() {
        let t = Thresholds {
            stalled_percent: 100,
            cpu_throttled_percent: 1,
            accept_queue: 64,
            dns_queries_per_lookup: 2,
            dns_slow: Duration::from_millis(1500),
            outbound_per_minute: 600,
            outbound_short_lifetime: Duration::from_secs(90),
            keep_alive_closes_per_minute: 1,
            close_wait: 1,
        };
        assert_eq!(parse(&t.to_args()).unwrap(), t);
        assert_eq!(
            parse(&Thresholds::default().to_args()).unwrap(),
            Thresholds::default()
        );
    }

    /// As `spec.diagnostics.thresholds` writes them.
    #[test]
    fn serialized_as_the_spec_writes_them() {
        let json = serde_json::to_value(Thresholds::default()).unwrap();
        assert_eq!(json["stalledPercent"], 5);
        assert_eq!(json["dnsSlow"], "500ms");
        assert_eq!(json["outboundShortLifetime"], "1s");
        assert_eq!(json["keepAliveClosesPerMinute"], 3);
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        for bad in [
            "--stalled-percent=0",
            "--stalled-percent=101",
            "--dns-queries-per-lookup=1",
            "--close-wait=0",
        ] {
            let err = parse(&[bad.to_string()]).unwrap_err().to_string();
            let flag = bad.split('=').next().unwrap();
            assert!(err.contains(flag), "{bad}: {err}");
        }
    }
}
