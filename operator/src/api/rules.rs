//! Admission rules (CEL `x-kubernetes-validations`) for the coupled settings of
//! DOMAIN.md §8, and [`crd`], the CustomResourceDefinition with them attached.
//!
//! Each rule's message names the field and the fix. Per-upstream defaults come from
//! `budget::upstream_profile`, compiled into CEL map literals, so admission and the
//! reconciler agree. What CEL cannot express is checked by `budget`/`sizing` and
//! reported as `ConfigConsistent=False`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{
    ApiWorkload, GoDuration, ServerKind, UpstreamKind,
    bounds::{self, field_bounds, form_check},
};
use crate::budget::{
    DEFAULT_GRACEFUL, DEFAULT_REQUEST, GRACE_BUFFER, MIN_HEARTBEAT_SUBCORE, upstream_profile,
};

/// One CEL rule on `.spec`.
#[derive(Debug, Clone)]
pub struct SpecRule {
    pub rule: String,
    /// What is wrong and what to change. Static: CEL's cost estimator refuses message
    /// expressions that print field values, so the reconciler's condition messages
    /// carry the actual numbers.
    pub message: String,
    /// Field the error points at, relative to `.spec`.
    pub field_path: &'static str,
}

fn rule(rule: impl Into<String>, field_path: &'static str, message: impl Into<String>) -> SpecRule {
    SpecRule {
        rule: rule.into(),
        message: message.into(),
        field_path,
    }
}

/// `has(self.a) && has(self.a.b) && has(self.a.b.c)` for `a.b.c`.
fn has(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    (1..=parts.len())
        .map(|n| format!("has(self.{})", parts[..n].join(".")))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// A quantity field (int-or-string) as a double in base units.
fn qty(path: &str) -> String {
    format!("quantity(string(self.{path})).asApproximateFloat()")
}

fn cel_duration(d: GoDuration) -> String {
    format!("duration('{d}')")
}

/// `{'aws-alb': duration('60s'), …}[self.upstream.kind]` over the kinds that define `field`.
fn per_kind_map(field: impl Fn(UpstreamKind) -> Option<GoDuration>) -> (String, Vec<&'static str>) {
    let mut entries = Vec::new();
    let mut kinds = Vec::new();
    for kind in UpstreamKind::ALL {
        if let Some(d) = field(kind) {
            entries.push(format!("'{}': {}", kind.as_str(), cel_duration(d)));
            kinds.push(kind.as_str());
        }
    }
    (
        format!("{{{}}}[self.upstream.kind]", entries.join(", ")),
        kinds,
    )
}

/// `aws-alb 1m, gcp-lb 10m, …` for messages.
fn defaults_text(
    field: impl Fn(UpstreamKind) -> Option<GoDuration>,
    pick: impl Fn(UpstreamKind) -> bool,
) -> String {
    UpstreamKind::ALL
        .into_iter()
        .filter(|k| pick(*k))
        .filter_map(|k| field(k).map(|d| format!("{} {d}", k.as_str())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cel_list(items: &[&str]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Every spec-level rule, in the order DOMAIN.md §8 lists them.
pub fn spec_rules() -> Vec<SpecRule> {
    let (idle_map, idle_kinds) = per_kind_map(|k| upstream_profile(k).idle);
    let (req_map, req_kinds) = per_kind_map(|k| upstream_profile(k).request_timeout);
    let (drain_map, _) = per_kind_map(|k| Some(upstream_profile(k).drain));
    let pooling_kinds: Vec<&str> = UpstreamKind::ALL
        .into_iter()
        .filter(|k| upstream_profile(*k).pooling && *k != UpstreamKind::Custom)
        .map(|k| k.as_str())
        .collect();

    let idle = format!(
        "(has(self.upstream.idleTimeout) ? duration(self.upstream.idleTimeout) : {idle_map})"
    );
    let idle_known = format!(
        "self.upstream.kind != 'none' && (has(self.upstream.idleTimeout) || self.upstream.kind in {})",
        cel_list(&idle_kinds)
    );
    let pooling = format!(
        "(has(self.upstream.pooling) ? self.upstream.pooling : self.upstream.kind in {})",
        cel_list(&pooling_kinds)
    );
    let upstream_request = format!(
        "(has(self.upstream.requestTimeout) ? duration(self.upstream.requestTimeout) : {req_map})"
    );
    let upstream_request_known = format!(
        "self.upstream.kind != 'none' && (has(self.upstream.requestTimeout) || self.upstream.kind in {})",
        cel_list(&req_kinds)
    );
    let drain = format!("(has(self.timeouts.drain) ? duration(self.timeouts.drain) : {drain_map})");
    let graceful = format!(
        "(has(self.timeouts.gracefulShutdown) ? duration(self.timeouts.gracefulShutdown) : {})",
        cel_duration(DEFAULT_GRACEFUL)
    );
    let request = format!(
        "(has(self.timeouts.request) ? duration(self.timeouts.request) : {})",
        cel_duration(DEFAULT_REQUEST)
    );
    let sync_servers = cel_list(
        &ServerKind::ALL
            .into_iter()
            .filter(|s| !s.is_async())
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    let gunicorn_servers = cel_list(
        &ServerKind::ALL
            .into_iter()
            .filter(|s| s.is_gunicorn())
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    let pooling_idle = defaults_text(
        |k| upstream_profile(k).idle,
        |k| upstream_profile(k).pooling,
    );
    let l4_idle = defaults_text(
        |k| upstream_profile(k).idle,
        |k| !upstream_profile(k).pooling,
    );
    let request_defaults = defaults_text(|k| upstream_profile(k).request_timeout, |_| true);
    let limit_mem = has("resources.limits.memory");
    let limit_cpu = has("resources.limits.cpu");
    let request_cpu = has("resources.requests.cpu");
    let cores = format!(
        "({limit_cpu} ? {} : ({request_cpu} ? {} : 1000.0))",
        qty("resources.limits.cpu"),
        qty("resources.requests.cpu")
    );

    let loop_heartbeat = format!(
        "{} && self.diagnostics.loopHeartbeat",
        has("diagnostics.loopHeartbeat")
    );
    vec![
        // The no-code heartbeat needs an event loop to watch and a sidecar to hear it.
        rule(
            format!("!({loop_heartbeat}) || !(self.server in {sync_servers})"),
            ".diagnostics.loopHeartbeat",
            "spec.diagnostics.loopHeartbeat needs an async server (uvicorn, gunicorn-uvicorn, granian or hypercorn): a sync worker has no event loop to send it; remove it or change spec.server",
        ),
        rule(
            format!(
                "!({loop_heartbeat}) || !has(self.diagnostics.enabled) || self.diagnostics.enabled"
            ),
            ".diagnostics.loopHeartbeat",
            "spec.diagnostics.loopHeartbeat needs the sidecar, which receives the heartbeat: set spec.diagnostics.enabled: true or remove loopHeartbeat",
        ),
        // §1: never size from the node's CPUs.
        rule(
            format!(
                "self.server == 'uvicorn' || has(self.workers) && has(self.workers.count) || ({limit_cpu}) || ({request_cpu})"
            ),
            ".resources",
            "cannot size workers: spec.resources sets no CPU limit or request, and the node's core count is the wrong basis (it causes OOM kills); set spec.resources.limits.cpu (or spec.resources.requests.cpu), or set spec.workers.count",
        ),
        // §8.1: workers × perWorkerMemory + overhead ≤ limits.memory.
        rule(
            format!(
                "!(has(self.workers.count) && {limit_mem}) || double(self.workers.count) * {} + {} <= {}",
                qty("workers.perWorkerMemory"),
                qty("workers.supervisorMemory"),
                qty("resources.limits.memory")
            ),
            ".workers.count",
            "spec.workers.count × spec.workers.perWorkerMemory + spec.workers.supervisorMemory exceeds spec.resources.limits.memory, so the pod is OOM-killed under load: lower spec.workers.count, or raise spec.resources.limits.memory",
        ),
        rule(
            format!(
                "!({limit_mem}) || {} + {} <= {}",
                qty("workers.perWorkerMemory"),
                qty("workers.supervisorMemory"),
                qty("resources.limits.memory")
            ),
            ".resources.limits.memory",
            "spec.resources.limits.memory does not fit even one worker (spec.workers.perWorkerMemory + spec.workers.supervisorMemory): raise limits.memory or lower perWorkerMemory",
        ),
        rule(
            "!(has(self.workers.count) && has(self.workers.max)) || self.workers.count <= self.workers.max",
            ".workers.count",
            "spec.workers.count is above spec.workers.max: lower the count or raise the max",
        ),
        // §8.2: keep-alive outlives a pooling proxy's idle timeout …
        rule(
            format!(
                "!has(self.timeouts.keepAlive) || !({idle_known}) || !{pooling} || duration(self.timeouts.keepAlive) > {idle}"
            ),
            ".timeouts.keepAlive",
            format!(
                "spec.timeouts.keepAlive must be longer than spec.upstream.idleTimeout (defaults: {pooling_idle}), or the proxy reuses connections the server already closed and answers 502: remove spec.timeouts.keepAlive to derive idle + 15s, or raise it above the idle timeout"
            ),
        ),
        // … and closes before an L4 balancer silently drops the flow.
        rule(
            format!(
                "!has(self.timeouts.keepAlive) || !({idle_known}) || {pooling} || duration(self.timeouts.keepAlive) < {idle}"
            ),
            ".timeouts.keepAlive",
            format!(
                "spec.timeouts.keepAlive must be shorter than the L4 balancer's idle timeout (spec.upstream.idleTimeout; defaults: {l4_idle}) so the server closes idle connections before the balancer drops them: remove spec.timeouts.keepAlive to derive idle − 15s, or lower it"
            ),
        ),
        rule(
            "self.upstream.kind != 'custom' || has(self.upstream.idleTimeout) && has(self.upstream.pooling)",
            ".upstream",
            "spec.upstream.kind custom needs spec.upstream.idleTimeout and spec.upstream.pooling (true for L7 proxies that reuse connections, false for L4 balancers)",
        ),
        // Request-timeout chain: app < upstream, else 504 while the worker keeps writing.
        rule(
            format!(
                "!has(self.timeouts.request) || !({upstream_request_known}) || duration(self.timeouts.request) < {upstream_request}"
            ),
            ".timeouts.request",
            format!(
                "spec.timeouts.request must be shorter than spec.upstream.requestTimeout (defaults: {request_defaults}), or the upstream answers 504 while the worker keeps working: lower spec.timeouts.request or raise spec.upstream.requestTimeout"
            ),
        ),
        // §8.3: grace ≥ drain + graceful + buffer.
        rule(
            format!(
                "!has(self.timeouts.terminationGracePeriod) || duration(self.timeouts.terminationGracePeriod) >= {drain} + {graceful} + {}",
                cel_duration(GRACE_BUFFER)
            ),
            ".timeouts.terminationGracePeriod",
            format!(
                "spec.timeouts.terminationGracePeriod must be at least spec.timeouts.drain + spec.timeouts.gracefulShutdown (default {DEFAULT_GRACEFUL}) + {GRACE_BUFFER}, or pods are killed mid-request on every rollout: raise it, or remove it to derive it"
            ),
        ),
        // §2: the heartbeat is not a request timeout, but for sync workers it kills the request.
        rule(
            format!(
                "!(self.server in {sync_servers}) || !has(self.timeouts.workerHeartbeat) || duration(self.timeouts.workerHeartbeat) > {request}"
            ),
            ".timeouts.workerHeartbeat",
            "spec.timeouts.workerHeartbeat must exceed spec.timeouts.request for sync gunicorn workers, which are killed when a request outlives it: raise workerHeartbeat or remove it",
        ),
        rule(
            format!(
                "!(self.server in {gunicorn_servers}) || !has(self.timeouts.workerHeartbeat) || duration(self.timeouts.workerHeartbeat) >= {} || {cores} >= 1.0",
                cel_duration(MIN_HEARTBEAT_SUBCORE)
            ),
            ".timeouts.workerHeartbeat",
            format!(
                "spec.timeouts.workerHeartbeat is below {MIN_HEARTBEAT_SUBCORE} on a pod with less than one core: CPU throttling pauses workers and gunicorn kills healthy ones; raise it to at least {MIN_HEARTBEAT_SUBCORE} or remove it"
            ),
        ),
        // §8.4 and §8.5: recycling.
        rule(
            "!(self.server == 'uvicorn' && has(self.recycling) && self.recycling.maxRequests > 0 && (!has(self.workers.count) || self.workers.count == 1))",
            ".recycling.maxRequests",
            "spec.recycling.maxRequests with single-process uvicorn exits the whole container after that many requests (probes and scrapes count too): use server gunicorn-uvicorn, set spec.workers.count ≥ 2 so uvicorn supervises its workers, or remove spec.recycling",
        ),
        rule(
            "!has(self.recycling) || self.recycling.maxRequests == 0 || self.recycling.jitter > 0",
            ".recycling.jitter",
            "spec.recycling.jitter must be above 0 when maxRequests is set, or every worker restarts at the same moment: set jitter to about a tenth of maxRequests",
        ),
        // §8.9 and replica bounds.
        rule(
            "self.scaling.minReplicas > 0 || self.scaling.requestBuffer",
            ".scaling.minReplicas",
            "spec.scaling.minReplicas: 0 drops requests while no pod runs: set spec.scaling.requestBuffer: true only when a buffer (e.g. the KEDA HTTP add-on) holds them, or set minReplicas to at least 1",
        ),
        rule(
            "self.scaling.minReplicas <= self.scaling.maxReplicas",
            ".scaling.maxReplicas",
            "spec.scaling.maxReplicas must be at least spec.scaling.minReplicas",
        ),
        rule(
            "self.scaling.metric != 'custom' || has(self.scaling.query) && has(self.scaling.queryTarget)",
            ".scaling.query",
            "spec.scaling.metric custom needs spec.scaling.query (PromQL scoped to this workload) and spec.scaling.queryTarget",
        ),
        // Resource sanity.
        rule(
            format!(
                "!({request_cpu} && {limit_cpu}) || {} <= {}",
                qty("resources.requests.cpu"),
                qty("resources.limits.cpu")
            ),
            ".resources.requests.cpu",
            "spec.resources.requests.cpu must not exceed spec.resources.limits.cpu",
        ),
        rule(
            format!(
                "!({} && {limit_mem}) || {} <= {}",
                has("resources.requests.memory"),
                qty("resources.requests.memory"),
                qty("resources.limits.memory")
            ),
            ".resources.requests.memory",
            "spec.resources.requests.memory must not exceed spec.resources.limits.memory",
        ),
        rule(
            "!self.diagnostics.enabled || self.diagnostics.port != self.port",
            ".diagnostics.port",
            "spec.diagnostics.port must differ from spec.port (the sidecar shares the pod's network namespace): pick another port for either",
        ),
        rule(
            "!has(self.workers.threads) || self.workers.threads == 1 || self.server == 'gunicorn-gthread'",
            ".workers.threads",
            "spec.workers.threads above 1 is only used by server gunicorn-gthread (an event loop does not use worker threads, and gunicorn-sync would silently switch to gthread): set server gunicorn-gthread, or remove threads and raise spec.workers.count",
        ),
        // What the operator derives is set by the spec's fields alone: a second value in
        // env or extraArgs would run while status and the sidecar report the derived one.
        rule(
            format!(
                "!has(self.env) || !self.env.exists(e, e.name in {})",
                cel_list(crate::plan::OWNED_ENV)
            ),
            ".env",
            format!(
                "spec.env must not set {}: the operator derives them from the worker count and the CPU limit, and a second value would run while .status reports the derived one; set spec.workers.count or spec.resources.limits.cpu instead",
                crate::plan::OWNED_ENV.join(" or ")
            ),
        ),
        rule(
            format!(
                "!(self.server in {gunicorn_servers}) || !has(self.env) || !self.env.exists(e, e.name == 'GUNICORN_CMD_ARGS')"
            ),
            ".env",
            "spec.env must not set GUNICORN_CMD_ARGS with a gunicorn server: it overrides the rendered flags (workers, timeouts, bind) behind the operator's back; set the matching spec fields, or put other gunicorn flags in spec.extraArgs",
        ),
    ]
    .into_iter()
    .chain(DERIVED_FLAGS.iter().map(|(flags, field)| {
        let long = flags
            .iter()
            .filter(|f| f.starts_with("--"))
            .map(|f| &f[2..])
            .collect::<Vec<_>>()
            .join("|");
        let short = flags
            .iter()
            .filter(|f| !f.starts_with("--"))
            .map(|f| format!(" || a.startsWith('{f}')"))
            .collect::<String>();
        rule(
            format!("!has(self.extraArgs) || !self.extraArgs.exists(a, a.matches('^--({long})(=.*)?$'){short})"),
            ".extraArgs",
            format!(
                "spec.extraArgs must not set {}: the operator derives it from {field}, and a second value would run while .status and the sidecar report the derived one; set {field} instead",
                flags.join(" or ")
            ),
        )
    }))
    .collect()
}

/// Server flags the operator renders, and the field that sets each group.
pub const DERIVED_FLAGS: &[(&[&str], &str)] = &[
    (&["--workers", "-w"], "spec.workers.count"),
    (&["--threads"], "spec.workers.threads"),
    (&["--worker-class", "-k"], "spec.server"),
    (&["--bind", "-b", "--host", "--port"], "spec.port"),
    (
        &["--keep-alive", "--timeout-keep-alive"],
        "spec.timeouts.keepAlive",
    ),
    (&["--timeout", "-t"], "spec.timeouts.workerHeartbeat"),
    (
        &[
            "--graceful-timeout",
            "--timeout-graceful-shutdown",
            "--workers-kill-timeout",
        ],
        "spec.timeouts.gracefulShutdown",
    ),
    (
        &[
            "--max-requests",
            "--max-requests-jitter",
            "--limit-max-requests",
        ],
        "spec.recycling",
    ),
    (
        &[
            "--limit-concurrency",
            "--backpressure",
            "--worker-connections",
            "--backlog",
        ],
        "spec.concurrency",
    ),
    (
        &["--pythonpath"],
        "spec.env PYTHONPATH (the operator's --pythonpath carries its uvicorn worker class)",
    ),
    (&["--worker-tmp-dir"], "the in-memory /tmp (not settable)"),
];

/// `rule` evaluated only when every duration and quantity it reads is well-formed: a
/// malformed one is refused by its own field's rule, and parsing it here would add a CEL
/// conversion error to that message.
fn guarded(rule: &str) -> String {
    let checks: Vec<String> = field_bounds()
        .into_iter()
        .filter(|f| !f.path.contains("[]"))
        .filter_map(|f| {
            let reference = format!("self.{}", f.path);
            let read = rule.match_indices(&reference).any(|(at, _)| {
                !rule[at + reference.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            let check = form_check(f.bound, &reference).filter(|_| read)?;
            Some(format!("(!({}) || {check})", has(f.path)))
        })
        .collect();
    if checks.is_empty() {
        rule.to_string()
    } else {
        format!("!({}) || ({rule})", checks.join(" && "))
    }
}

/// The CRD with the spec rules attached (what `crdgen` writes to `crds/`).
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(ApiWorkload::crd()).unwrap_or(Value::Null);
    let rules: Vec<Value> = spec_rules()
        .into_iter()
        .map(|r| json!({"rule": guarded(&r.rule), "message": r.message, "fieldPath": r.field_path}))
        .collect();
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(spec) = version.pointer_mut("/schema/openAPIV3Schema/properties/spec") {
                spec["x-kubernetes-validations"] = Value::Array(rules.clone());
                bound_strings_read_by_rules(spec);
                bounds::attach(spec);
            }
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                unwrap_descriptions(schema);
            }
        }
    }
    // The round trip cannot fail: only a string-keyed list of plain objects was added.
    serde_json::from_value(value).unwrap_or_else(|_| ApiWorkload::crd())
}

/// Doc comments are wrapped at 90 columns; `kubectl explain` wraps text itself, so a
/// line break inside a paragraph printed mid-sentence. Joins the lines of each
/// paragraph; blank-line paragraph breaks stay.
fn unwrap_descriptions(node: &mut Value) {
    match node {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => *text = unwrap(text),
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Joins wrapped lines; a line that starts a list item (Kubernetes' own types list enum
/// values as ` - "Always" …`) keeps its break.
fn unwrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        let item = line.trim_start().starts_with(['-', '*']);
        if i > 0 {
            let paragraph_break = line.is_empty() || out.ends_with('\n');
            out.push(if paragraph_break || item { '\n' } else { ' ' });
        }
        out.push_str(if item { line } else { line.trim() });
    }
    out
}

/// CEL estimates a rule's cost from the longest string it may read, so strings the
/// rules parse (enums, quantities) get a declared bound; they have none by default.
fn bound_strings_read_by_rules(spec: &mut Value) {
    const BOUNDED: &[(&str, u32)] = &[
        ("/properties/server", 32),
        ("/properties/profile", 32),
        ("/properties/upstream/properties/kind", 32),
        ("/properties/scaling/properties/metric", 32),
        (
            "/properties/resources/properties/requests/properties/cpu",
            64,
        ),
        (
            "/properties/resources/properties/requests/properties/memory",
            64,
        ),
        ("/properties/resources/properties/limits/properties/cpu", 64),
        (
            "/properties/resources/properties/limits/properties/memory",
            64,
        ),
        ("/properties/workers/properties/perWorkerMemory", 64),
        ("/properties/workers/properties/supervisorMemory", 64),
        // Environment variable names (Kubernetes' EnvVar declares no bound).
        ("/properties/env/items/properties/name", 256),
    ];
    for (pointer, max) in BOUNDED {
        if let Some(node) = spec.pointer_mut(pointer).and_then(Value::as_object_mut) {
            node.insert("maxLength".into(), json!(max));
        }
    }
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> String {
    let body = serde_yaml_ng::to_string(&crd()).unwrap_or_default();
    format!(
        "# Generated by `cargo run -p apiworkload-operator --bin crdgen`; do not edit.\n---\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_message_naming_a_spec_field() {
        for r in spec_rules() {
            assert!(
                r.message.contains("spec."),
                "message must name the field: {}",
                r.message
            );
            assert!(r.field_path.starts_with('.'));
        }
    }

    #[test]
    fn crd_carries_the_rules_and_the_status_subresource() {
        let crd = serde_json::to_value(crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["x-kubernetes-validations"].as_array().unwrap().len(),
            spec_rules().len()
        );
        assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "apiw");
    }

    #[test]
    fn descriptions_have_no_line_breaks_inside_a_paragraph() {
        assert_eq!(
            unwrap("one\ntwo three\n\nfour\nfive"),
            "one two three\n\nfour five"
        );
        assert_eq!(
            unwrap("values:\n - \"A\" a\n - \"B\" b"),
            "values:\n - \"A\" a\n - \"B\" b"
        );
        let crd = serde_json::to_value(crd()).unwrap();
        let image = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["server"]["description"];
        let text = image.as_str().unwrap();
        assert!(text.len() > 90 && !text.contains('\n'), "{text:?}");
    }

    #[test]
    fn upstream_maps_come_from_the_budget_table() {
        let all = spec_rules()
            .into_iter()
            .map(|r| r.rule)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all.contains("'aws-alb': duration('1m')"), "{all}");
        assert!(all.contains("'gcp-lb': duration('10m')"));
    }

    /// `kubectl explain` must help on every field we define (Kubernetes' own types under
    /// env, volumes, volumeMounts and conditions bring their own docs).
    #[test]
    fn every_field_we_define_has_a_description() {
        fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
            let Some(props) = node.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (name, child) in props {
                let here = format!("{path}.{name}");
                if ["env", "volumes", "volumeMounts", "conditions"].contains(&name.as_str()) {
                    continue;
                }
                if child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(child, &here, missing);
                if let Some(items) = child.get("items") {
                    walk(items, &here, missing);
                }
            }
        }
        let crd = serde_json::to_value(crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(&root["properties"]["spec"], "spec", &mut missing);
        walk(&root["properties"]["status"], "status", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:#?}"
        );
    }

    /// `crds/` and the chart's `crds/` are generated: fail when either drifts from the
    /// Rust types (so the chart installs exactly the top-level CRD).
    #[test]
    fn committed_crds_match_the_types() {
        for dir in ["crds", "charts/apiworkload-operator/crds"] {
            // The run-time manifest directory first: a build reused from another clone
            // of the repository carries that clone's compile-time path.
            let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
            let path = format!("{manifest_dir}/../{dir}/apiworkloads.apiworkload.io.yaml");
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == crd_yaml(),
                "{dir}/ is stale: run `cargo run -p apiworkload-operator --bin crdgen`"
            );
        }
    }
}
