//! Pure timing decisions: keep-alive from the upstream, request/heartbeat timeouts,
//! the shutdown budget (preStop drain → SIGTERM → graceful → kill) and the startup
//! probe budget; plus the coupled checks CEL cannot express.
//!
//! The per-upstream table is also what `api::rules` compiles into CEL maps, so the
//! admission webhook and the reconciler agree on every default.

use crate::api::{ApiWorkloadSpec, GoDuration, UpstreamKind};

/// Keep-alive distance from the upstream's idle timeout (DOMAIN.md §2: `upstreamIdle + margin`).
pub const KEEP_ALIVE_MARGIN: GoDuration = GoDuration::from_secs(15);
/// Slack between the end of the graceful timeout and SIGKILL.
pub const GRACE_BUFFER: GoDuration = GoDuration::from_secs(5);
/// gunicorn's heartbeat floor: below one core, throttling pauses the loop long enough
/// to kill healthy workers (DOMAIN.md §2).
pub const MIN_HEARTBEAT_SUBCORE: GoDuration = GoDuration::from_secs(30);
pub const DEFAULT_HEARTBEAT: GoDuration = GoDuration::from_secs(30);
pub const DEFAULT_REQUEST: GoDuration = GoDuration::from_secs(30);
pub const DEFAULT_GRACEFUL: GoDuration = GoDuration::from_secs(30);
pub const DEFAULT_STARTUP: GoDuration = GoDuration::from_secs(60);
/// Keep-alive when nothing is known in front (uvicorn's own default).
pub const KEEP_ALIVE_NO_UPSTREAM: GoDuration = GoDuration::from_secs(5);
/// How much shorter the derived request timeout is than the upstream's.
pub const REQUEST_MARGIN: GoDuration = GoDuration::from_secs(5);

/// What is known about a kind of upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamProfile {
    /// Idle timeout of its connections to the pods.
    pub idle: Option<GoDuration>,
    /// How long it waits for a response before answering 504.
    pub request_timeout: Option<GoDuration>,
    /// L7 proxies pool and reuse idle connections; L4 balancers pass the client's through.
    pub pooling: bool,
    /// preStop sleep long enough for it to stop sending new requests.
    pub drain: GoDuration,
}

/// Published defaults per upstream kind (DOMAIN.md §2).
pub fn upstream_profile(kind: UpstreamKind) -> UpstreamProfile {
    let s = GoDuration::from_secs;
    let p = |idle, req: Option<u64>, pooling, drain| UpstreamProfile {
        idle: Some(s(idle)),
        request_timeout: req.map(s),
        pooling,
        drain: s(drain),
    };
    match kind {
        UpstreamKind::None => UpstreamProfile {
            idle: None,
            request_timeout: None,
            pooling: false,
            drain: s(5),
        },
        // ALB idle 60s; IP targets needed ~25s of drain before SIGTERM.
        UpstreamKind::AwsAlb => p(60, Some(60), true, 25),
        UpstreamKind::AwsNlb => p(350, None, false, 25),
        // Fixed 600s keep-alive; backend service timeout defaults to 30s.
        UpstreamKind::GcpLb => p(600, Some(30), true, 10),
        UpstreamKind::AzureLb => p(240, None, false, 10),
        // upstream-keepalive-timeout 60s, proxy-read-timeout 60s.
        UpstreamKind::IngressNginx => p(60, Some(60), true, 10),
        // Cluster idle 1h; route timeout 15s.
        UpstreamKind::Envoy => p(3600, Some(15), true, 10),
        UpstreamKind::Custom => UpstreamProfile {
            idle: None,
            request_timeout: None,
            pooling: true,
            drain: s(10),
        },
    }
}

/// The spec's upstream with its explicit fields applied over the kind's defaults.
pub fn effective_upstream(spec: &ApiWorkloadSpec) -> UpstreamProfile {
    let mut profile = upstream_profile(spec.upstream.kind);
    if spec.upstream.kind != UpstreamKind::None {
        if let Some(idle) = spec.upstream.idle_timeout {
            profile.idle = Some(idle);
        }
        if let Some(req) = spec.upstream.request_timeout {
            profile.request_timeout = Some(req);
        }
        if let Some(pooling) = spec.upstream.pooling {
            profile.pooling = pooling;
        }
    }
    profile
}

/// Keep-alive the server should use in front of `upstream`.
pub fn keep_alive_for(upstream: &UpstreamProfile) -> GoDuration {
    match upstream.idle {
        None => KEEP_ALIVE_NO_UPSTREAM,
        // Outlive the proxy's idle timeout so the proxy always closes first.
        Some(idle) if upstream.pooling => idle.saturating_add(KEEP_ALIVE_MARGIN),
        // Behind an L4 balancer close before it silently forgets the flow.
        Some(idle) => GoDuration(
            idle.0
                .saturating_sub(KEEP_ALIVE_MARGIN.0)
                .max(KEEP_ALIVE_NO_UPSTREAM.0),
        ),
    }
}

/// Every effective timing for a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub keep_alive: GoDuration,
    pub request_timeout: GoDuration,
    /// gunicorn `--timeout`.
    pub worker_heartbeat: GoDuration,
    pub graceful_shutdown: GoDuration,
    /// preStop sleep.
    pub drain: GoDuration,
    pub termination_grace_period: GoDuration,
    pub startup: GoDuration,
    /// Accepted settings that are probably mistakes.
    pub warnings: Vec<String>,
}

/// A coupled rule the spec breaks (the reconciler reports these as ConfigConsistent=False).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// CamelCase reason for the condition.
    pub reason: &'static str,
    /// What is wrong and what to change.
    pub message: String,
}

/// Derives the timing budget. `cores` is the CPU basis (None when no CPU is set).
pub fn budget_for(spec: &ApiWorkloadSpec, cores: Option<f64>) -> Result<Budget, Vec<Violation>> {
    let t = &spec.timeouts;
    let upstream = effective_upstream(spec);
    let mut violations = Vec::new();
    let mut warnings = Vec::new();

    let keep_alive = t.keep_alive.unwrap_or_else(|| keep_alive_for(&upstream));
    if let (Some(idle), true) = (upstream.idle, spec.upstream.kind != UpstreamKind::None) {
        if upstream.pooling && keep_alive <= idle {
            violations.push(Violation {
                reason: "KeepAliveShorterThanUpstream",
                message: format!(
                    "spec.timeouts.keepAlive ({keep_alive}) must be longer than the upstream's idle timeout ({idle}), or {} reuses connections the server already closed and answers 502: remove spec.timeouts.keepAlive or raise it above {idle}",
                    spec.upstream.kind.as_str()
                ),
            });
        }
        if !upstream.pooling && keep_alive >= idle {
            violations.push(Violation {
                reason: "KeepAliveLongerThanBalancer",
                message: format!(
                    "spec.timeouts.keepAlive ({keep_alive}) must be shorter than the {} idle timeout ({idle}) so the server closes idle connections before the balancer drops them: remove spec.timeouts.keepAlive or lower it below {idle}",
                    spec.upstream.kind.as_str()
                ),
            });
        }
    }

    // Derived request timeout stays below what the upstream waits for (else it answers
    // 504 while the worker keeps writing).
    let request_timeout = match (t.request, upstream.request_timeout) {
        (Some(r), _) => r,
        (None, Some(up)) => GoDuration(
            DEFAULT_REQUEST
                .0
                .min(up.0.saturating_sub(REQUEST_MARGIN.0).max(REQUEST_MARGIN.0)),
        ),
        (None, None) => DEFAULT_REQUEST,
    };
    if let (Some(up), Some(r)) = (upstream.request_timeout, t.request)
        && r >= up
    {
        violations.push(Violation {
                reason: "RequestTimeoutExceedsUpstream",
                message: format!(
                    "spec.timeouts.request ({r}) must be shorter than the upstream's request timeout ({up}), or the upstream answers 504 while the worker keeps working: lower spec.timeouts.request or raise spec.upstream.requestTimeout"
                ),
            });
    }

    let sub_core = cores.is_some_and(|c| c < 1.0);
    let worker_heartbeat = match t.worker_heartbeat {
        Some(hb) => hb,
        None if spec.server.is_async() => DEFAULT_HEARTBEAT,
        // Sync workers are killed mid-request at --timeout: it must cover the request.
        None => request_timeout
            .saturating_add(REQUEST_MARGIN)
            .max(DEFAULT_HEARTBEAT),
    };
    if spec.server.is_gunicorn() {
        if sub_core && worker_heartbeat < MIN_HEARTBEAT_SUBCORE {
            violations.push(Violation {
                reason: "HeartbeatTooShort",
                message: format!(
                    "spec.timeouts.workerHeartbeat ({worker_heartbeat}) is below {MIN_HEARTBEAT_SUBCORE} on a pod with less than one core: CPU throttling pauses workers and gunicorn kills healthy ones; raise it to at least {MIN_HEARTBEAT_SUBCORE} or remove it"
                ),
            });
        }
        if !spec.server.is_async() && worker_heartbeat <= request_timeout {
            violations.push(Violation {
                reason: "HeartbeatShorterThanRequest",
                message: format!(
                    "spec.timeouts.workerHeartbeat ({worker_heartbeat}) must exceed spec.timeouts.request ({request_timeout}) for {}: a sync worker is killed when a request outlives it; raise workerHeartbeat or remove it",
                    spec.server.as_str()
                ),
            });
        }
    }

    let graceful_shutdown = t.graceful_shutdown.unwrap_or(DEFAULT_GRACEFUL);
    let drain = t.drain.unwrap_or(upstream.drain);
    let needed = drain
        .saturating_add(graceful_shutdown)
        .saturating_add(GRACE_BUFFER);
    let termination_grace_period = t.termination_grace_period.unwrap_or(needed);
    if termination_grace_period < needed {
        violations.push(Violation {
            reason: "GracePeriodTooShort",
            message: format!(
                "spec.timeouts.terminationGracePeriod ({termination_grace_period}) must be at least drain ({drain}) + gracefulShutdown ({graceful_shutdown}) + {GRACE_BUFFER} = {needed}, or pods are killed mid-request on every rollout: raise it to {needed} or remove it"
            ),
        });
    }
    if graceful_shutdown < request_timeout {
        warnings.push(format!(
            "spec.timeouts.gracefulShutdown ({graceful_shutdown}) is shorter than the request timeout ({request_timeout}): requests longer than {graceful_shutdown} are cut at every rollout"
        ));
    }

    if violations.is_empty() {
        Ok(Budget {
            keep_alive,
            request_timeout,
            worker_heartbeat,
            graceful_shutdown,
            drain,
            termination_grace_period,
            startup: t.startup.unwrap_or(DEFAULT_STARTUP),
            warnings,
        })
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServerKind, Upstream, tests_support::spec};

    #[test]
    fn keep_alive_outlives_pooling_proxies_and_undercuts_l4_balancers() {
        let alb = upstream_profile(UpstreamKind::AwsAlb);
        assert_eq!(keep_alive_for(&alb), GoDuration::from_secs(75));
        let gcp = upstream_profile(UpstreamKind::GcpLb);
        assert_eq!(keep_alive_for(&gcp), GoDuration::from_secs(615));
        let azure = upstream_profile(UpstreamKind::AzureLb);
        assert_eq!(keep_alive_for(&azure), GoDuration::from_secs(225));
        assert_eq!(
            keep_alive_for(&upstream_profile(UpstreamKind::None)),
            GoDuration::from_secs(5)
        );
    }

    #[test]
    fn default_budget_behind_alb_fits_together() {
        let mut s = spec();
        s.upstream = Upstream {
            kind: UpstreamKind::AwsAlb,
            ..Default::default()
        };
        let b = budget_for(&s, Some(2.0)).unwrap();
        assert_eq!(b.keep_alive.to_string(), "1m15s");
        assert_eq!(b.drain.to_string(), "25s");
        assert_eq!(b.termination_grace_period.to_string(), "1m");
        assert_eq!(b.request_timeout.to_string(), "30s");
        assert_eq!(b.worker_heartbeat.to_string(), "30s");
    }

    #[test]
    fn derived_request_timeout_stays_under_short_upstreams() {
        let mut s = spec();
        s.upstream.kind = UpstreamKind::Envoy;
        let b = budget_for(&s, Some(1.0)).unwrap();
        assert_eq!(b.request_timeout, GoDuration::from_secs(10));
    }

    #[test]
    fn explicit_keep_alive_below_alb_idle_is_a_violation_naming_the_fix() {
        let mut s = spec();
        s.upstream.kind = UpstreamKind::AwsAlb;
        s.timeouts.keep_alive = Some(GoDuration::from_secs(30));
        let v = budget_for(&s, Some(2.0)).unwrap_err();
        assert_eq!(v[0].reason, "KeepAliveShorterThanUpstream");
        assert!(
            v[0].message.contains("raise it above 1m"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn grace_period_must_cover_drain_and_graceful() {
        let mut s = spec();
        s.timeouts.termination_grace_period = Some(GoDuration::from_secs(20));
        s.timeouts.drain = Some(GoDuration::from_secs(10));
        let v = budget_for(&s, Some(2.0)).unwrap_err();
        assert!(
            v.iter()
                .any(|v| v.reason == "GracePeriodTooShort" && v.message.contains("= 45s"))
        );
    }

    #[test]
    fn sync_workers_heartbeat_covers_the_request() {
        let mut s = spec();
        s.server = ServerKind::GunicornSync;
        s.timeouts.request = Some(GoDuration::from_secs(90));
        let b = budget_for(&s, Some(2.0)).unwrap();
        assert_eq!(b.worker_heartbeat, GoDuration::from_secs(95));
        s.timeouts.worker_heartbeat = Some(GoDuration::from_secs(60));
        let v = budget_for(&s, Some(2.0)).unwrap_err();
        assert_eq!(v[0].reason, "HeartbeatShorterThanRequest");
    }

    #[test]
    fn sub_core_pods_keep_a_30s_heartbeat() {
        let mut s = spec();
        s.timeouts.worker_heartbeat = Some(GoDuration::from_secs(10));
        assert!(budget_for(&s, Some(2.0)).is_ok());
        let v = budget_for(&s, Some(0.5)).unwrap_err();
        assert_eq!(v[0].reason, "HeartbeatTooShort");
    }
}
