//! Bounds on every field a user sets, checked by the apiserver: the widest range a real
//! service could need and no more (a grace period of days is a typo, a memory limit of
//! 512 bytes is a missing unit), each refused with "what it must be (example), and why".
//!
//! CEL rules rather than `pattern`/`minimum`: a pattern's refusal prints the bare regex,
//! and a float `minimum` lets an integer `0` through (the apiserver compares it as an
//! integer). Each range rule first checks the value's form (`!valid || in range`), so a
//! malformed value gets the form's message, never a CEL conversion error.

use apiworkload_contract::duration::DURATION_PATTERN;
use serde_json::{Value, json};

/// What a field must be.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// A duration (its form is checked by the type's own rule) from `min` to `max`.
    Duration {
        min: &'static str,
        max: &'static str,
    },
    /// A resource quantity from `min` to `max`.
    Quantity {
        min: &'static str,
        max: &'static str,
    },
    /// A number from `min` to `max`, inclusive.
    Number { min: f64, max: f64 },
    /// An integer from `min` to `max`, inclusive.
    Integer { min: i64, max: i64 },
    /// A string of a given form (`regex` without backslashes: CEL string escapes differ).
    Form {
        regex: &'static str,
        what: &'static str,
    },
}

/// One bounded field: its path below `.spec` (`[]` for list items), the bound, an example
/// and why the bound is what it is.
#[derive(Debug, Clone, Copy)]
pub struct FieldBound {
    pub path: &'static str,
    pub bound: Bound,
    pub example: &'static str,
    pub why: &'static str,
}

const fn field(
    path: &'static str,
    bound: Bound,
    example: &'static str,
    why: &'static str,
) -> FieldBound {
    FieldBound {
        path,
        bound,
        example,
        why,
    }
}

/// RFC 1123 host name, optionally fully qualified with a trailing dot.
pub const HOSTNAME: &str = "^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)([.][a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*[.]?$";
/// A container image reference: optional registry (host, port), path, tag, digest.
pub const IMAGE: &str = "^([a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";
const SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const HTTP_PATH: &str = "^/[!-~]*$";

/// Every bounded field.
pub fn field_bounds() -> Vec<FieldBound> {
    use Bound::*;
    let d = |min, max| Duration { min, max };
    let q = |min, max| Quantity { min, max };
    let i = |min, max| Integer { min, max };
    vec![
        field(
            "port",
            i(1024, 65535),
            "8000",
            "the pod runs without privileges, so it cannot bind below 1024",
        ),
        field(
            "diagnostics.port",
            i(1024, 65535),
            "9901",
            "the sidecar runs without privileges, so it cannot bind below 1024",
        ),
        field(
            "probes.timeoutSeconds",
            i(3, 60),
            "5",
            "with every worker busy a shorter timeout fails probes of healthy pods and kills them",
        ),
        field(
            "workers.count",
            i(1, 256),
            "4",
            "one pod cannot usefully run more Python processes",
        ),
        field(
            "workers.threads",
            i(1, 256),
            "4",
            "more threads per worker only contend for the GIL",
        ),
        field(
            "workers.max",
            i(1, 256),
            "12",
            "one pod cannot usefully run more Python processes",
        ),
        field(
            "recycling.maxRequests",
            i(0, 100_000_000),
            "10000",
            "0 turns recycling off",
        ),
        field(
            "recycling.jitter",
            i(0, 100_000_000),
            "1000",
            "about a tenth of maxRequests spreads the restarts",
        ),
        field(
            "scaling.minReplicas",
            i(0, 1000),
            "2",
            "0 needs a request buffer (spec.scaling.requestBuffer)",
        ),
        field(
            "scaling.maxReplicas",
            i(1, 1000),
            "10",
            "beyond that, split the service",
        ),
        field(
            "scaling.perWorkerConcurrency",
            i(1, 10_000),
            "10",
            "the requests one worker serves well at once",
        ),
        field(
            "concurrency.limit",
            i(0, 100_000),
            "100",
            "requests one worker takes on before the excess is refused; 0 means no limit",
        ),
        field(
            "concurrency.backlog",
            i(16, 65_535),
            "512",
            "connections waiting to be accepted; the kernel caps it at net.core.somaxconn anyway",
        ),
        field(
            "dns.ndots",
            i(1, 15),
            "2",
            "the resolver's own limit is 15; Kubernetes' default 5 multiplies external lookups",
        ),
        field(
            "image",
            Form {
                regex: IMAGE,
                what: "a container image reference",
            },
            "registry.example.com/team/api:1.4.2",
            "the kubelet could never pull anything else",
        ),
        field(
            "diagnostics.image",
            Form {
                regex: IMAGE,
                what: "a container image reference",
            },
            "ghcr.io/apiworkload/apiworkload-sidecar:0.1.0",
            "the kubelet could never pull anything else",
        ),
        field(
            "imagePullSecrets[]",
            Form {
                regex: SUBDOMAIN,
                what: "the name of a Secret",
            },
            "registry-credentials",
            "Secret names are DNS subdomains",
        ),
        field(
            "app",
            Form {
                regex: "^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*([(][)])?$",
                what: "module:attribute",
            },
            "app.main:app, or app.main:create_app() for a factory",
            "the server imports the module and looks the attribute up",
        ),
        field(
            "probes.path",
            Form {
                regex: HTTP_PATH,
                what: "an absolute HTTP path",
            },
            "/healthz",
            "the kubelet requests it as is",
        ),
        field(
            "probes.readinessPath",
            Form {
                regex: HTTP_PATH,
                what: "an absolute HTTP path",
            },
            "/ready",
            "the kubelet requests it as is",
        ),
        field(
            "probes.livenessPath",
            Form {
                regex: HTTP_PATH,
                what: "an absolute HTTP path",
            },
            "/livez",
            "the kubelet requests it as is",
        ),
        field(
            "dns.probe[]",
            Form {
                regex: HOSTNAME,
                what: "a host name (a trailing dot marks it fully qualified)",
            },
            "api.example.com",
            "the sidecar resolves it as the app would",
        ),
        field(
            "scaling.inflightMetric",
            Form {
                regex: "^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                what: "a Prometheus metric name",
            },
            "http_requests_inprogress",
            "the autoscaler queries it by name",
        ),
        field(
            "scaling.queryTarget",
            Form {
                regex: "^[0-9]{1,9}([.][0-9]{1,6})?$",
                what: "a positive number",
            },
            "100",
            "it is the custom query's target value per replica",
        ),
        field(
            "scaling.target",
            Number {
                min: 0.05,
                max: 1.0,
            },
            "0.7",
            "the share of each pod's capacity autoscaling aims for; at 0 no autoscaler is valid",
        ),
        field(
            "upstream.idleTimeout",
            d("1s", "2h"),
            "60s",
            "balancers' idle timeouts range from seconds to about an hour (AWS ALB allows up to 4000s)",
        ),
        field(
            "upstream.requestTimeout",
            d("1s", "2h"),
            "60s",
            "a proxy waiting longer than that for a response is misconfigured",
        ),
        field(
            "timeouts.request",
            d("100ms", "1h"),
            "30s",
            "longer requests belong in a job queue, not an HTTP worker",
        ),
        field(
            "timeouts.startup",
            d("1s", "1h"),
            "60s",
            "a process that needs longer to start is not coming up",
        ),
        field(
            "timeouts.gracefulShutdown",
            d("1s", "30m"),
            "30s",
            "the time in-flight requests get after SIGTERM; a rollout waits for it",
        ),
        field(
            "scaling.scaleDownWindow",
            d("0s", "1h"),
            "5m",
            "the HorizontalPodAutoscaler's stabilization window takes at most an hour",
        ),
        field(
            "timeouts.drain",
            d("0s", "10m"),
            "10s",
            "how long the pod keeps serving while balancers stop sending to it",
        ),
        field(
            "timeouts.keepAlive",
            d("1s", "2h"),
            "75s",
            "it must only outlive (or undercut) the balancer's idle timeout",
        ),
        field(
            "timeouts.terminationGracePeriod",
            d("1s", "1h"),
            "45s",
            "a grace period beyond an hour is a typo, and holds every rollout and node drain that long",
        ),
        field(
            "timeouts.workerHeartbeat",
            d("1s", "1h"),
            "30s",
            "gunicorn kills a worker silent for this long",
        ),
        field(
            "diagnostics.stallThreshold",
            d("10ms", "1m"),
            "100ms",
            "a canary slower than this counts as an event-loop stall; above a minute nothing would ever count",
        ),
        field(
            "diagnostics.thresholds.stalledPercent",
            i(1, 100),
            "5",
            "a share of the window, in percent",
        ),
        field(
            "diagnostics.thresholds.cpuThrottledPercent",
            i(1, 100),
            "25",
            "a share of the app's CFS periods, in percent",
        ),
        field(
            "diagnostics.thresholds.acceptQueue",
            i(1, 65535),
            "3",
            "the kernel's accept queue holds at most 65535 connections",
        ),
        field(
            "diagnostics.thresholds.dnsQueriesPerLookup",
            i(2, 100),
            "4",
            "every lookup takes at least 2 queries (A and AAAA), and no search list makes 100",
        ),
        field(
            "diagnostics.thresholds.dnsSlow",
            d("1ms", "1m"),
            "500ms",
            "a resolver gives up long before a minute",
        ),
        field(
            "diagnostics.thresholds.outboundPerMinute",
            i(1, 1000000),
            "60",
            "new outbound connections a minute; no pod opens a million",
        ),
        field(
            "diagnostics.thresholds.outboundShortLifetime",
            d("1ms", "1h"),
            "1s",
            "how short a connection's life counts as churn",
        ),
        field(
            "diagnostics.thresholds.keepAliveClosesPerMinute",
            i(1, 1000000),
            "3",
            "the app's keep-alive closes a minute; no pod closes a million",
        ),
        field(
            "diagnostics.thresholds.closeWait",
            i(1, 65535),
            "10",
            "sockets in CLOSE_WAIT at once; a pod holds at most 65535 on one port",
        ),
        field(
            "resources.requests.cpu",
            q("10m", "512"),
            "500m",
            "a Python server needs at least 10m to start; no node has more than 512 cores",
        ),
        field(
            "resources.limits.cpu",
            q("10m", "512"),
            "2",
            "a Python server needs at least 10m to start; no node has more than 512 cores",
        ),
        field(
            "resources.requests.memory",
            q("32Mi", "4Ti"),
            "1Gi",
            "a Python interpreter alone needs about 32Mi; a number without a unit is bytes",
        ),
        field(
            "resources.limits.memory",
            q("32Mi", "4Ti"),
            "2Gi",
            "a Python interpreter alone needs about 32Mi; a number without a unit is bytes",
        ),
        field(
            "workers.perWorkerMemory",
            q("16Mi", "256Gi"),
            "256Mi",
            "a worker process needs at least 16Mi; a number without a unit is bytes",
        ),
        field(
            "workers.supervisorMemory",
            q("16Mi", "64Gi"),
            "64Mi",
            "the supervisor and interpreter need at least 16Mi; a number without a unit is bytes",
        ),
    ]
}

/// The CEL rule that checks a value's form: the range rule applies only when it holds.
pub fn form_check(bound: Bound, value: &str) -> Option<String> {
    match bound {
        Bound::Duration { .. } => Some(format!(
            "size({value}) > 0 && {value}.matches('{DURATION_PATTERN}')"
        )),
        Bound::Quantity { .. } => Some(format!("isQuantity(string({value}))")),
        Bound::Number { .. } | Bound::Integer { .. } | Bound::Form { .. } => None,
    }
}

/// The rule and message for one field (`self` is the field's value).
pub fn rule(f: &FieldBound) -> (String, String) {
    let name = format!("spec.{}", f.path.trim_end_matches("[]"));
    let item = if f.path.ends_with("[]") {
        "each item of "
    } else {
        ""
    };
    match f.bound {
        Bound::Duration { min, max } => (
            format!(
                "!({}) || duration(self) >= duration('{min}') && duration(self) <= duration('{max}')",
                form_check(f.bound, "self").unwrap_or_default()
            ),
            format!(
                "{item}{name} must be a duration from {min} to {max} (e.g. {}): {}",
                f.example, f.why
            ),
        ),
        Bound::Quantity { min, max } => (
            format!(
                "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('{min}')) >= 0 && quantity(string(self)).compareTo(quantity('{max}')) <= 0"
            ),
            format!(
                "{item}{name} must be a quantity from {min} to {max} (e.g. {}): {}",
                f.example, f.why
            ),
        ),
        Bound::Number { min, max } => (
            format!("double(self) >= {min:?} && double(self) <= {max:?}"),
            format!(
                "{item}{name} must be a number from {min} to {max} (e.g. {}): {}",
                f.example, f.why
            ),
        ),
        Bound::Integer { min, max } => (
            format!("self >= {min} && self <= {max}"),
            format!(
                "{item}{name} must be an integer from {min} to {max} (e.g. {}): {}",
                f.example, f.why
            ),
        ),
        Bound::Form { regex, what } => (
            format!("self.matches('{regex}')"),
            format!(
                "{item}{name} must be {what} (e.g. {}): {}",
                f.example, f.why
            ),
        ),
    }
}

/// The JSON pointer of a field path below the spec's schema.
fn pointer(path: &str) -> String {
    path.split('.')
        .map(|part| match part.strip_suffix("[]") {
            Some(list) => format!("/properties/{list}/items"),
            None => format!("/properties/{part}"),
        })
        .collect()
}

/// Attaches every field's rule to the spec's schema and drops the keywords the rule
/// replaces.
pub fn attach(spec: &mut Value) {
    for f in field_bounds() {
        let Some(node) = spec
            .pointer_mut(&pointer(f.path))
            .and_then(Value::as_object_mut)
        else {
            continue; // a unit test checks that every path exists
        };
        for replaced in ["pattern", "minimum", "maximum"] {
            node.remove(replaced);
        }
        let (rule, message) = rule(&f);
        let rules = node
            .entry("x-kubernetes-validations")
            .or_insert_with(|| json!([]));
        if let Some(rules) = rules.as_array_mut() {
            rules.push(json!({"rule": rule, "message": message}));
        }
    }
}

/// Whether every field path names a node of `spec` (used by the tests).
pub fn missing_paths(spec: &Value) -> Vec<&'static str> {
    field_bounds()
        .into_iter()
        .filter(|f| spec.pointer(&pointer(f.path)).is_none())
        .map(|f| f.path)
        .collect()
}

/// The bounds the apiserver checks, checked again when planning (durations, quantities,
/// numbers; forms are left to admission): an object stored under an earlier, looser CRD
/// is refused with the same message instead of being run.
pub fn violations(spec: &super::ApiWorkloadSpec) -> Vec<crate::budget::Violation> {
    let Ok(json) = serde_json::to_value(spec) else {
        return Vec::new();
    };
    field_bounds()
        .into_iter()
        .filter(|f| !f.path.contains("[]"))
        .filter_map(|f| {
            let pointer: String = f.path.split('.').map(|p| format!("/{p}")).collect();
            let value = json.pointer(&pointer)?;
            let within = match f.bound {
                Bound::Duration { min, max } => {
                    let parse = |s: &str| s.parse::<super::GoDuration>().ok();
                    match (value.as_str().and_then(parse), parse(min), parse(max)) {
                        (Some(v), Some(lo), Some(hi)) => lo <= v && v <= hi,
                        _ => false,
                    }
                }
                Bound::Quantity { min, max } => {
                    let parse = |s: &str| {
                        super::quantity::parse_quantity(
                            &k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.into()),
                        )
                        .ok()
                    };
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match (parse(&text), parse(min), parse(max)) {
                        (Some(v), Some(lo), Some(hi)) => lo <= v && v <= hi,
                        _ => false,
                    }
                }
                Bound::Number { min, max } => value.as_f64().is_some_and(|v| min <= v && v <= max),
                Bound::Integer { min, max } => value.as_i64().is_some_and(|v| min <= v && v <= max),
                Bound::Form { .. } => true,
            };
            (!within).then(|| crate::budget::Violation {
                reason: "OutOfBounds",
                message: rule(&f).1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests_support::spec;

    #[test]
    fn every_path_names_a_field_of_the_schema() {
        let crd = serde_json::to_value(crate::api::rules::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(missing_paths(spec), Vec::<&str>::new());
    }

    #[test]
    fn planning_refuses_what_admission_refuses() {
        assert!(violations(&spec()).is_empty());
        let mut s = spec();
        s.workers.count = Some(i32::MIN);
        s.timeouts.termination_grace_period = Some(crate::api::GoDuration::from_secs(3 * 86_400));
        s.resources.limits.memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "2048".into(),
        ));
        s.scaling.target = 0.0;
        let v: Vec<String> = violations(&s).into_iter().map(|v| v.message).collect();
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(
            v.iter()
                .any(|m| m.starts_with("spec.workers.count must be an integer from 1 to 256"))
        );
        assert!(v.iter().any(|m| {
            m.starts_with("spec.timeouts.terminationGracePeriod must be a duration from 1s to 1h")
        }));
    }
}
