//! The sidecar's three conditions, decided per evaluation window from its measurements,
//! with hysteresis: a condition turns False after `FALSE_AFTER` bad windows in a row and
//! back to True after `TRUE_AFTER` good ones, so one slow probe does not flap it.

pub use apiworkload_contract::Thresholds;
use apiworkload_contract::{GoDuration, SidecarCondition};
use serde::Serialize;

use crate::window::Window;

/// Bad windows in a row before a condition turns False.
pub const FALSE_AFTER: u32 = 3;
/// Good windows in a row before it turns True again.
pub const TRUE_AFTER: u32 = 5;
/// CFS periods a window needs before its throttled share means anything (100 ms each:
/// a window's worth at the default 10 s is 100).
const MIN_CPU_PERIODS: u64 = 20;

/// The conditions, their reasons and these thresholds, for `--help`.
pub fn describe(t: &Thresholds) -> String {
    format!(
        "Conditions (a window is --window long; a condition turns False after {FALSE_AFTER} bad windows in a row and True after {TRUE_AFTER} good ones):
  EventLoopResponsive
    LoopStalled      the event loop stalled more than {stalled} % of a window (canary or heartbeat; --stalled-percent)
    CPUThrottled     the CPU quota paused the app in more than {throttled} % of its CFS periods (with the loop heartbeat; --cpu-throttled-percent)
    AcceptBacklog    {accept} or more connections waiting to be accepted (--accept-queue)
    AppUnreachable   no canary request answered in a window, after the app had answered
  DNSHealthy
    SearchAmplification  more than {queries} DNS queries per lookup (--dns-queries-per-lookup)
    Timeouts         DNS queries unanswered (some, or all)
    SlowResolution   a lookup slower than {slow} ms (--dns-slow)
  ConnectionsReused
    OutboundChurn    more than {outbound} new outbound connections a minute, most living under {lifetime} (--outbound-per-minute, --outbound-short-lifetime)
    KeepAliveChurn   more than {closes} server keep-alive closes a minute (--keep-alive-closes-per-minute)
    CloseWaitLeak    {close_wait} or more sockets in CLOSE_WAIT (--close-wait)",
        stalled = t.stalled_percent,
        accept = t.accept_queue,
        throttled = t.cpu_throttled_percent,
        queries = t.dns_queries_per_lookup,
        slow = t.dns_slow.as_millis(),
        outbound = t.outbound_per_minute,
        lifetime = GoDuration(t.outbound_short_lifetime),
        closes = t.keep_alive_closes_per_minute,
        close_wait = t.close_wait,
    )
}

/// A verdict for one window: None = healthy, Some((reason, message)) = a problem.
type Verdict = Option<(&'static str, String)>;

/// Whether no canary request got an answer in the window.
fn unanswered(w: &Window) -> bool {
    w.canary_probes > 0 && w.canary_failures == w.canary_probes
}

fn event_loop(w: &Window, t: &Thresholds, app_answered_before: bool) -> Verdict {
    // Only an app that answered once has gone away; before that it is still starting.
    if app_answered_before && unanswered(w) {
        return Some((
            "AppUnreachable",
            format!(
                "none of {} canary requests in the last {:.0}s got an answer: the app exited, is restarting, or stopped listening",
                w.canary_probes, w.window_seconds
            ),
        ));
    }
    let fraction = if w.window_seconds > 0.0 {
        w.stalled_seconds / w.window_seconds
    } else {
        0.0
    };
    // The quota first: its pauses are each shorter than a stall (at most a CFS period,
    // 100 ms) and only the cgroup's own counters show them, and when it also makes
    // probes wait past the stall threshold, the limit is the fix to try first.
    if w.cpu_periods >= MIN_CPU_PERIODS
        && w.cpu_throttled_periods as f64 > t.cpu_throttled_fraction() * w.cpu_periods as f64
    {
        let also = if fraction > t.stalled_fraction() {
            format!(
                "; the event loop was also stalled {:.0}% of the window",
                fraction * 100.0
            )
        } else {
            String::new()
        };
        return Some((
            "CPUThrottled",
            format!(
                "the CPU quota paused the app in {} of {} CFS periods ({:.1}s of the last {:.0}s){also}: requests wait for CPU time the limit does not give; raise resources.limits.cpu, or lower the workers",
                w.cpu_throttled_periods, w.cpu_periods, w.cpu_throttled_seconds, w.window_seconds
            ),
        ));
    }
    if fraction > t.stalled_fraction() {
        return Some((
            "LoopStalled",
            format!(
                "the event loop was stalled {:.0}% of the last {:.0}s: CPU-bound work or a blocking call in an async handler? Move it to a thread pool or a worker process",
                fraction * 100.0,
                w.window_seconds
            ),
        ));
    }
    (w.accept_queue_max >= t.accept_queue).then(|| {
        ("AcceptBacklog", format!(
            "{} connections waited in the accept queue: every worker was busy or stalled; add workers or replicas, or find what blocks them",
            w.accept_queue_max
        ))
    })
}

fn dns(w: &Window, t: &Thresholds) -> Verdict {
    // None answered: no server is there to race with (seen on a cluster without DNS,
    // where the conntrack advice sent users the wrong way).
    if w.dns_timeouts > 0 && w.dns_timeouts >= w.dns_queries {
        return Some((
            "Timeouts",
            format!(
                "none of {} DNS queries was answered: the pod's nameservers are unreachable or not running; check the cluster DNS Service and its pods, and the pod's dnsPolicy",
                w.dns_timeouts
            ),
        ));
    }
    if w.dns_timeouts > 0 {
        return Some((
            "Timeouts",
            format!(
                "{} of {} DNS queries timed out (the 5 s retry stall) while others were answered: check conntrack races (single-request-reopen) or use NodeLocal DNSCache",
                w.dns_timeouts, w.dns_queries
            ),
        ));
    }
    if let Some(q) = w
        .dns_queries_per_lookup
        .filter(|q| *q > f64::from(t.dns_queries_per_lookup))
    {
        return Some((
            "SearchAmplification",
            format!(
                "{q:.1} DNS queries per lookup: the search list is walked before external names; set spec.dns.ndots: 2 or use trailing-dot names"
            ),
        ));
    }
    w.dns_slowest_lookup_seconds
        .filter(|s| *s > t.dns_slow.as_secs_f64())
        .map(|s| {
            (
                "SlowResolution",
                format!("a lookup took {:.0} ms as the app sees it", s * 1000.0),
            )
        })
}

fn connections(w: &Window, t: &Thresholds) -> Verdict {
    let rate = if w.window_seconds > 0.0 {
        w.outbound_opened as f64 / w.window_seconds
    } else {
        0.0
    };
    let short = w
        .outbound_median_lifetime_seconds
        .is_some_and(|l| l < t.outbound_short_lifetime.as_secs_f64());
    if rate > t.outbound_per_second() && short {
        return Some((
            "OutboundChurn",
            // Lifetimes are known to the 1 s sample only (most of these are seen only
            // closed): say the bound, not a made-up "0 ms".
            format!(
                "{rate:.1} new outbound connections/s, most closed within {} of opening: an HTTP client created per request? Share one pooled client (httpx.AsyncClient, requests.Session)",
                GoDuration(t.outbound_short_lifetime)
            ),
        ));
    }
    let idle_closes = if w.window_seconds > 0.0 {
        w.inbound_idle_closes as f64 / w.window_seconds
    } else {
        0.0
    };
    if idle_closes > t.keep_alive_closes_per_second() {
        return Some((
            "KeepAliveChurn",
            format!(
                "the server closed {} idle client connections in {:.0}s that the client kept for reuse: behind a load balancer each is a possible 502; make the server's keep-alive longer than the balancer's idle timeout (spec.upstream)",
                w.inbound_idle_closes, w.window_seconds
            ),
        ));
    }
    (w.close_wait_max >= t.close_wait).then(|| {
        ("CloseWaitLeak", format!(
            "{} connections in CLOSE_WAIT: the peer closed them and the app never did; a response or client not closed (use `async with`)?",
            w.close_wait_max
        ))
    })
}

/// Kubernetes' timestamp format (RFC 3339, whole seconds, UTC).
fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

/// `2026-11-23T10:00:00Z`: what the API server stores for a condition's times.
pub fn format_time(t: std::time::SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// One condition's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    /// When the status last flipped (the sidecar's start for the first report).
    #[serde(rename = "lastTransitionTime", serialize_with = "rfc3339")]
    pub last_transition: std::time::SystemTime,
    #[serde(skip)]
    bad_streak: u32,
    #[serde(skip)]
    good_streak: u32,
}

impl Condition {
    fn new(type_: SidecarCondition, healthy_reason: &str) -> Self {
        Condition {
            type_: type_.as_str(),
            status: true,
            reason: healthy_reason.into(),
            message: String::new(),
            last_transition: std::time::SystemTime::now(),
            bad_streak: 0,
            good_streak: 0,
        }
    }

    /// Folds in one window's verdict; returns true when the status flipped.
    fn update(&mut self, verdict: Verdict, healthy_reason: &str) -> bool {
        match verdict {
            Some((reason, message)) => {
                self.bad_streak += 1;
                self.good_streak = 0;
                if self.status && self.bad_streak >= FALSE_AFTER {
                    (self.status, self.reason, self.message) = (false, reason.into(), message);
                    self.last_transition = std::time::SystemTime::now();
                    return true;
                }
                if !self.status {
                    (self.reason, self.message) = (reason.into(), message);
                }
            }
            None => {
                self.good_streak += 1;
                self.bad_streak = 0;
                if !self.status && self.good_streak >= TRUE_AFTER {
                    (self.status, self.reason, self.message) =
                        (true, healthy_reason.into(), String::new());
                    self.last_transition = std::time::SystemTime::now();
                    return true;
                }
            }
        }
        false
    }
}

/// The three conditions of one pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conditions {
    // Keyed by type in /report, as on the pod and the ApiWorkload.
    #[serde(rename = "EventLoopResponsive")]
    pub event_loop: Condition,
    #[serde(rename = "DNSHealthy")]
    pub dns: Condition,
    #[serde(rename = "ConnectionsReused")]
    pub connections: Condition,
    /// Whether any canary request was ever answered.
    #[serde(skip)]
    app_answered: bool,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            event_loop: Condition::new(SidecarCondition::EventLoopResponsive, "Responsive"),
            dns: Condition::new(SidecarCondition::DnsHealthy, "Healthy"),
            connections: Condition::new(SidecarCondition::ConnectionsReused, "Reused"),
            app_answered: false,
        }
    }
}

impl Conditions {
    /// Evaluates one window; returns the types whose status flipped.
    pub fn evaluate(&mut self, w: &Window, t: &Thresholds) -> Vec<&'static str> {
        let mut flipped = Vec::new();
        let verdict = event_loop(w, t, self.app_answered);
        self.app_answered |= w.canary_probes > w.canary_failures;
        // A window without a finished canary probe or a stall (a probe outstanding past
        // the threshold is one), in which no lookup finished (a round of timeouts can
        // outlast it), or without a socket table sample is no evidence either way: it
        // neither counts toward False nor toward True.
        let loop_evidence = w.canary_probes > 0 || w.stalled_seconds > 0.0;
        if loop_evidence && self.event_loop.update(verdict, "Responsive") {
            flipped.push(self.event_loop.type_);
        }
        let dns_evidence = w.dns_queries_per_lookup.is_some() || w.dns_timeouts > 0;
        if dns_evidence && self.dns.update(dns(w, t), "Healthy") {
            flipped.push(self.dns.type_);
        }
        let socket_evidence = w.socket_samples > 0;
        if socket_evidence && self.connections.update(connections(w, t), "Reused") {
            flipped.push(self.connections.type_);
        }
        flipped
    }

    pub fn all(&self) -> [&Condition; 3] {
        [&self.event_loop, &self.dns, &self.connections]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(stalled: f64) -> Window {
        Window {
            stalled_seconds: stalled,
            window_seconds: 10.0,
            canary_probes: 40,
            socket_samples: 10,
            ..Default::default()
        }
    }

    /// A window in which nothing was measured (the socket watcher gone, the canary not
    /// probing) must not count as good evidence: it once turned a False condition True.
    #[test]
    fn windows_without_measurements_count_neither_way() {
        let (mut c, t) = (Conditions::default(), Thresholds::default());
        let churn = Window {
            close_wait_max: 1_000,
            ..window(5.0)
        };
        for _ in 0..3 {
            c.evaluate(&churn, &t);
        }
        assert!(!c.connections.status && !c.event_loop.status);
        let nothing = Window {
            window_seconds: 10.0,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(c.evaluate(&nothing, &t), Vec::<&str>::new());
        }
        assert!(!c.connections.status, "no socket samples is no evidence");
        assert!(!c.event_loop.status, "no canary probe is no evidence");
    }

    /// A stall longer than the window finishes no probe in it, and is still evidence.
    #[test]
    fn a_stall_that_outlasts_the_window_is_evidence() {
        let (mut c, t) = (Conditions::default(), Thresholds::default());
        let stalled = Window {
            stalled_seconds: 1.0,
            window_seconds: 1.0,
            ..Default::default()
        };
        for _ in 0..3 {
            c.evaluate(&stalled, &t);
        }
        assert!(!c.event_loop.status);
    }

    #[test]
    fn one_slow_window_does_not_flap() {
        let (mut c, t) = (Conditions::default(), Thresholds::default());
        assert!(c.evaluate(&window(3.0), &t).is_empty());
        assert!(c.evaluate(&window(0.0), &t).is_empty());
        assert!(c.event_loop.status);
    }

    #[test]
    fn three_bad_windows_turn_false_five_good_turn_true() {
        let (mut c, t) = (Conditions::default(), Thresholds::default());
        c.evaluate(&window(2.0), &t);
        c.evaluate(&window(2.0), &t);
        assert_eq!(c.evaluate(&window(2.0), &t), ["EventLoopResponsive"]);
        assert_eq!(
            (c.event_loop.status, c.event_loop.reason.as_str()),
            (false, "LoopStalled")
        );
        assert!(
            c.event_loop.message.contains("stalled 20%"),
            "{}",
            c.event_loop.message
        );
        for _ in 0..4 {
            assert!(c.evaluate(&window(0.0), &t).is_empty());
        }
        assert_eq!(c.evaluate(&window(0.0), &t), ["EventLoopResponsive"]);
        assert!(c.event_loop.status);
    }

    /// The spec's thresholds, not the defaults, decide (`spec.diagnostics.thresholds`).
    #[test]
    fn raised_thresholds_let_the_same_evidence_pass() {
        let w = Window {
            window_seconds: 10.0,
            stalled_seconds: 2.0,
            dns_queries_per_lookup: Some(8.0),
            outbound_opened: 120,
            outbound_median_lifetime_seconds: Some(0.01),
            ..Default::default()
        };
        let defaults = Thresholds::default();
        assert_eq!(event_loop(&w, &defaults, true).unwrap().0, "LoopStalled");
        assert_eq!(dns(&w, &defaults).unwrap().0, "SearchAmplification");
        assert_eq!(connections(&w, &defaults).unwrap().0, "OutboundChurn");
        let raised = Thresholds {
            stalled_percent: 25,
            dns_queries_per_lookup: 8,
            outbound_per_minute: 720,
            ..Thresholds::default()
        };
        assert_eq!(event_loop(&w, &raised, true), None);
        assert_eq!(dns(&w, &raised), None);
        assert_eq!(connections(&w, &raised), None);
    }

    #[test]
    fn dns_and_connection_reasons() {
        let t = Thresholds::default();
        let amplified = Window {
            dns_queries_per_lookup: Some(8.0),
            window_seconds: 10.0,
            ..Default::default()
        };
        assert_eq!(dns(&amplified, &t).unwrap().0, "SearchAmplification");
        assert!(dns(&amplified, &t).unwrap().1.contains("ndots: 2"));
        let timeouts = Window {
            dns_queries: 16,
            dns_timeouts: 2,
            ..amplified.clone()
        };
        assert_eq!(dns(&timeouts, &t).unwrap().0, "Timeouts");
        assert!(dns(&timeouts, &t).unwrap().1.contains("conntrack"));
        // Nothing answered at all: no server, not a race.
        let silent = Window {
            dns_queries: 4,
            dns_timeouts: 4,
            ..amplified.clone()
        };
        let (reason, message) = dns(&silent, &t).unwrap();
        assert_eq!(reason, "Timeouts");
        assert!(
            message.contains("none of 4") && !message.contains("conntrack"),
            "{message}"
        );
        let churn = Window {
            outbound_opened: 50,
            outbound_median_lifetime_seconds: Some(0.02),
            window_seconds: 10.0,
            ..Default::default()
        };
        let (reason, message) = connections(&churn, &t).unwrap();
        assert_eq!(reason, "OutboundChurn");
        assert!(
            message.starts_with("5.0 new outbound connections/s, most closed within 1s of opening"),
            "a bound, not a measurement: {message}"
        );
        let pooled = Window {
            outbound_median_lifetime_seconds: Some(120.0),
            ..churn
        };
        assert!(
            connections(&pooled, &t).is_none(),
            "many long-lived connections are not churn"
        );
        let keep_alive = Window {
            inbound_idle_closes: 4,
            ..pooled.clone()
        };
        assert_eq!(connections(&keep_alive, &t).unwrap().0, "KeepAliveChurn");
        let leak = Window {
            close_wait_max: 12,
            ..pooled
        };
        assert_eq!(connections(&leak, &t).unwrap().0, "CloseWaitLeak");
        let backlog = Window {
            accept_queue_max: 5,
            window_seconds: 10.0,
            ..Default::default()
        };
        assert_eq!(event_loop(&backlog, &t, true).unwrap().0, "AcceptBacklog");
    }

    #[test]
    fn a_window_without_evidence_neither_fails_nor_heals() {
        let t = Thresholds::default();
        let timeouts = Window {
            dns_timeouts: 2,
            window_seconds: 2.0,
            ..Default::default()
        };
        // Slow rounds of timeouts: one window in two sees a lookup finish.
        let idle = Window {
            window_seconds: 2.0,
            ..Default::default()
        };
        let mut c = Conditions::default();
        for _ in 0..FALSE_AFTER {
            c.evaluate(&timeouts, &t);
            c.evaluate(&idle, &t);
        }
        assert_eq!((c.dns.status, c.dns.reason.as_str()), (false, "Timeouts"));
        for _ in 0..10 {
            c.evaluate(&idle, &t);
        }
        assert!(!c.dns.status, "no lookups is not a recovery");
        let unreadable = Window {
            socket_sample_failures: 2,
            outbound_opened: 500,
            outbound_median_lifetime_seconds: Some(0.01),
            ..idle.clone()
        };
        for _ in 0..5 {
            c.evaluate(&unreadable, &t);
        }
        assert!(c.connections.status, "nothing measured, nothing concluded");
    }

    #[test]
    fn an_app_that_answered_and_stopped_is_unreachable_one_still_starting_is_not() {
        let t = Thresholds::default();
        let silent = Window {
            canary_probes: 40,
            canary_failures: 40,
            window_seconds: 10.0,
            ..Default::default()
        };
        let answering = Window {
            canary_failures: 3,
            ..silent.clone()
        };
        let mut starting = Conditions::default();
        for _ in 0..5 {
            starting.evaluate(&silent, &t);
        }
        assert!(starting.event_loop.status, "never answered: still starting");
        let mut c = Conditions::default();
        c.evaluate(&answering, &t);
        for _ in 0..FALSE_AFTER {
            c.evaluate(&silent, &t);
        }
        assert_eq!(
            (c.event_loop.status, c.event_loop.reason.as_str()),
            (false, "AppUnreachable")
        );
        for _ in 0..TRUE_AFTER {
            c.evaluate(&answering, &t);
        }
        assert!(
            c.event_loop.status,
            "back after {TRUE_AFTER} answering windows"
        );
    }

    #[test]
    fn help_lists_every_reason_with_its_threshold() {
        let text = describe(&Thresholds::default());
        for needle in [
            "more than 5 % of a window",
            "3 or more connections waiting",
            "more than 4 DNS queries per lookup",
            "slower than 500 ms",
            "more than 60 new outbound connections a minute, most living under 1s",
            "more than 3 server keep-alive closes a minute",
            "10 or more sockets in CLOSE_WAIT",
            "more than 25 % of its CFS periods",
            "AppUnreachable",
            "Timeouts",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }

    #[test]
    fn a_quota_that_throttles_most_periods_is_cpu_throttled() {
        let t = Thresholds::default();
        let throttled = |periods, throttled| Window {
            window_seconds: 10.0,
            canary_probes: 40,
            cpu_periods: periods,
            cpu_throttled_periods: throttled,
            cpu_throttled_seconds: throttled as f64 * 0.06,
            ..Default::default()
        };
        let (reason, message) = event_loop(&throttled(99, 97), &t, true).unwrap();
        assert_eq!(reason, "CPUThrottled");
        assert!(message.contains("97 of 99 CFS periods") && message.contains("limits.cpu"));
        assert_eq!(
            event_loop(&throttled(99, 10), &t, true),
            None,
            "10 % is fine"
        );
        assert_eq!(
            event_loop(&throttled(5, 5), &t, true),
            None,
            "too few periods to say"
        );
        assert_eq!(
            event_loop(&throttled(0, 0), &t, true),
            None,
            "no heartbeat, no verdict"
        );
    }
}
