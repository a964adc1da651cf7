//! The whole decision for one spec, before any object is built: sizing + budget + the
//! cross-field checks CEL cannot express. Pure; an `Err` means nothing may be applied
//! (the reconciler reports it as `ConfigConsistent=False` and leaves the running
//! workload untouched).

use std::collections::BTreeSet;

use apiworkload_contract::{SidecarArgs, Thresholds};

use crate::{
    api::rules::DERIVED_FLAGS,
    api::{
        ApiWorkloadSpec, DiagnosisThresholds, GoDuration, Profile, ServerKind, UpstreamKind,
        bounds, quantity::parse_quantity,
    },
    budget::{Budget, Violation, budget_for, upstream_profile},
    overload::{Overload, overload},
    render::deployment::APP_UID,
    sizing::{Sizing, size_workers},
};

/// Names the operator sets in the app container's environment.
pub const OWNED_ENV: &[&str] = &["WEB_CONCURRENCY", "PYTHON_CPU_COUNT"];
/// Volume and mount names the operator owns.
pub const RESERVED_VOLUMES: &[&str] = &["tmp", crate::render::worker_class::VOLUME];

/// Everything derived from a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub sizing: Sizing,
    pub budget: Budget,
    /// Concurrent requests one worker is expected to handle (autoscaling capacity).
    pub per_worker_concurrency: i32,
    /// Requests a worker takes on before shedding, and the backlog.
    pub overload: Overload,
    /// The sidecar's flags (rendered only when diagnostics are enabled).
    pub sidecar: SidecarArgs,
    pub warnings: Vec<String>,
}

/// Default concurrency per worker for the in-flight autoscaling target: an async
/// worker waits on many I/O-bound requests at once, but CPU-bound ones only slow each
/// other down.
pub fn default_concurrency(server: ServerKind, profile: Profile, threads: i32) -> i32 {
    match (server, profile) {
        (ServerKind::GunicornSync, _) => 1,
        (ServerKind::GunicornGthread, _) => threads.max(1),
        (_, Profile::CpuBound) => 2,
        (_, Profile::IoBound) => 10,
    }
}

/// Derives the plan or lists every rule the spec breaks.
pub fn plan(spec: &ApiWorkloadSpec) -> Result<Plan, Vec<Violation>> {
    // What admission bounds, bounded here too: an object stored under an earlier CRD.
    let out_of_bounds = bounds::violations(spec);
    if !out_of_bounds.is_empty() {
        return Err(out_of_bounds);
    }
    let mut violations = Vec::new();
    let sizing = size_workers(spec).map_err(|v| violations.push(v)).ok();
    let budget = budget_for(spec, sizing.as_ref().and_then(|s| s.cpu))
        .map_err(|v| violations.extend(v))
        .ok();
    violations.extend(passthrough_conflicts(spec));
    let sidecar = sizing
        .as_ref()
        .and_then(|s| sidecar_args(spec, s).map_err(|v| violations.push(v)).ok());
    let (Some(sizing), Some(budget), Some(sidecar)) = (sizing, budget, sidecar) else {
        return Err(violations);
    };
    if !violations.is_empty() {
        return Err(violations);
    }

    let mut warnings = sizing.warnings.clone();
    warnings.extend(budget.warnings.iter().cloned());
    warnings.extend(risks(spec, &sizing, &budget));
    if spec.recycling.as_ref().is_some_and(|r| r.max_requests > 0)
        && spec.server == ServerKind::Granian
    {
        warnings.push(
            "granian cannot recycle workers by request count: spec.recycling is ignored".into(),
        );
    }
    let per_worker_concurrency = spec
        .scaling
        .per_worker_concurrency
        .unwrap_or_else(|| default_concurrency(spec.server, spec.profile, sizing.threads));
    let overload = overload(spec, sizing.workers, per_worker_concurrency);
    if let Some(limit) = overload.limit.filter(|l| *l < per_worker_concurrency) {
        warnings.push(format!(
            "spec.concurrency.limit ({limit}) is below scaling.perWorkerConcurrency ({per_worker_concurrency}): a worker refuses requests before the autoscaler sees it busy, so it never scales on in-flight requests; raise the limit or lower perWorkerConcurrency"
        ));
    }
    Ok(Plan {
        sizing,
        budget,
        per_worker_concurrency,
        overload,
        sidecar,
        warnings,
    })
}

/// Settings that are legal but break under load or on rollouts: said in
/// `.status.warnings`, since refusing them would refuse real (if unwise) setups.
fn risks(spec: &ApiWorkloadSpec, sizing: &Sizing, budget: &Budget) -> Vec<String> {
    let mut out = Vec::new();
    let upstream = spec.upstream.kind;
    if upstream != UpstreamKind::None && budget.drain.0.is_zero() {
        out.push(format!(
            "spec.timeouts.drain is 0s behind {}: pods stop serving before the balancer stops sending to them, so every rollout answers 502s; remove it to derive {}",
            upstream.as_str(),
            upstream_profile(upstream).drain
        ));
    }
    let per_worker = parse_quantity(&spec.workers.per_worker_memory).unwrap_or(0.0);
    if per_worker < TYPICAL_WORKER_BYTES {
        out.push(format!(
            "spec.workers.perWorkerMemory ({}) is below 64Mi, less than a FastAPI worker uses at rest: the memory cap lets in more workers than fit, and the pod is OOM-killed under load",
            spec.workers.per_worker_memory.0
        ));
    }
    if let (Some(cores), Some(count)) = (sizing.cores, spec.workers.count) {
        let runnable = cores.saturating_mul(2).saturating_add(1);
        if count > runnable {
            out.push(format!(
                "spec.workers.count ({count}) is more than {cores} core(s) can run ({runnable} even for I/O-bound work): the processes contend for CPU and the CPU quota throttles the whole pod; lower it or raise spec.resources.limits.cpu"
            ));
        }
    }
    if spec.resources.limits.memory.is_none() {
        out.push("spec.resources.limits.memory is unset: nothing caps the worker count by memory, and the pod grows until the node evicts it; set it".into());
    }
    out
}

/// Below this a Python web worker cannot even hold its imports.
const TYPICAL_WORKER_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// What the sidecar is told of the app: the typed contract both binaries share, so every
/// value here is one the sidecar parses.
fn sidecar_args(spec: &ApiWorkloadSpec, sizing: &Sizing) -> Result<SidecarArgs, Violation> {
    let port = |field: &str, value: i32| {
        u16::try_from(value).map_err(|_| Violation {
            reason: "InvalidPort",
            message: format!("{field} must be a port from 1024 to 65535, not {value}"),
        })
    };
    Ok(SidecarArgs {
        app_port: port("spec.port", spec.port)?,
        listen: (
            [0, 0, 0, 0],
            port("spec.diagnostics.port", spec.diagnostics.port)?,
        )
            .into(),
        // Only the app's sockets count (not the sidecar's, nor another sidecar's).
        app_uid: u32::try_from(APP_UID).ok(),
        probe_path: spec.probes.path.clone(),
        workers: u32::try_from(sizing.workers.max(1)).unwrap_or(1),
        stall_threshold: spec.diagnostics.stall_threshold.0,
        // No names given: the hosts the app's environment points it at.
        dns_probes: if spec.dns.probe.is_empty() {
            crate::env_hosts::env_hosts(&spec.env)
        } else {
            spec.dns.probe.clone()
        },
        thresholds: thresholds(&spec.diagnostics.thresholds),
    })
}

/// The spec's thresholds over the sidecar's defaults. Bounds were checked before the
/// plan (`bounds::violations`), so every value converts.
fn thresholds(spec: &DiagnosisThresholds) -> Thresholds {
    let d = Thresholds::default();
    let int =
        |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
    let duration = |v: &Option<GoDuration>, default| v.as_ref().map_or(default, |v| v.0);
    Thresholds {
        stalled_percent: int(spec.stalled_percent, d.stalled_percent),
        cpu_throttled_percent: int(spec.cpu_throttled_percent, d.cpu_throttled_percent),
        accept_queue: int(spec.accept_queue, d.accept_queue),
        dns_queries_per_lookup: int(spec.dns_queries_per_lookup, d.dns_queries_per_lookup),
        dns_slow: duration(&spec.dns_slow, d.dns_slow),
        outbound_per_minute: int(spec.outbound_per_minute, d.outbound_per_minute),
        outbound_short_lifetime: duration(&spec.outbound_short_lifetime, d.outbound_short_lifetime),
        keep_alive_closes_per_minute: int(
            spec.keep_alive_closes_per_minute,
            d.keep_alive_closes_per_minute,
        ),
        close_wait: int(spec.close_wait, d.close_wait),
    }
}

/// Passthrough volumes and env must not collide with what the operator owns
/// (a duplicate name would make the apply fail half-way).
fn passthrough_conflicts(spec: &ApiWorkloadSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for v in &spec.volumes {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            out.push(Violation {
                reason: "ReservedVolumeName",
                message: format!("spec.volumes[{}]: the name is reserved for the operator's volumes ({}); rename the volume", v.name, RESERVED_VOLUMES.join(", ")),
            });
        }
        if !seen.insert(v.name.as_str()) {
            out.push(Violation {
                reason: "DuplicateVolume",
                message: format!(
                    "spec.volumes: {} appears twice; volume names must be unique",
                    v.name
                ),
            });
        }
    }
    let mut mounts = BTreeSet::new();
    for m in &spec.volume_mounts {
        if m.mount_path == "/tmp" {
            out.push(Violation {
                reason: "ReservedMountPath",
                message: "spec.volumeMounts: /tmp is the operator's in-memory volume (needed with a read-only root filesystem); mount elsewhere".into(),
            });
        }
        if m.mount_path.trim_end_matches('/') == crate::render::worker_class::PYTHON_DIR {
            out.push(Violation {
                reason: "ReservedMountPath",
                message: format!(
                    "spec.volumeMounts: {} holds the operator's Python modules; mount elsewhere",
                    crate::render::worker_class::PYTHON_DIR
                ),
            });
        }
        if !mounts.insert(m.mount_path.as_str()) {
            out.push(Violation {
                reason: "DuplicateMountPath",
                message: format!("spec.volumeMounts: {} is mounted twice", m.mount_path),
            });
        }
        let declared = spec.volumes.iter().any(|v| v.name == m.name);
        if !declared {
            out.push(Violation {
                reason: "UnknownVolume",
                message: format!(
                    "spec.volumeMounts: volume {} is not declared in spec.volumes",
                    m.name
                ),
            });
        }
    }
    // The admission rules refuse these too; an object stored under an earlier CRD may
    // still hold them, and running it would make status untrue.
    for e in &spec.env {
        let owned = OWNED_ENV.contains(&e.name.as_str());
        if owned || (e.name == "GUNICORN_CMD_ARGS" && spec.server.is_gunicorn()) {
            out.push(Violation {
                reason: "DerivedSettingOverridden",
                message: format!("spec.env sets {}, which would override what the operator derives: set the matching spec field instead (spec.workers.count, spec.resources.limits.cpu, spec.timeouts)", e.name),
            });
        }
    }
    for arg in &spec.extra_args {
        let flag = arg.split('=').next().unwrap_or_default();
        let derived = DERIVED_FLAGS.iter().find(|(flags, _)| {
            flags.iter().any(|f| {
                if f.starts_with("--") {
                    *f == flag
                } else {
                    arg.starts_with(f)
                }
            })
        });
        if let Some((_, field)) = derived {
            out.push(Violation {
                reason: "DerivedSettingOverridden",
                message: format!("spec.extraArgs sets {flag}, which the operator derives from {field}: set {field} instead"),
            });
        }
    }
    let mut env_names = BTreeSet::new();
    for e in &spec.env {
        if !env_names.insert(e.name.as_str()) {
            out.push(Violation {
                reason: "DuplicateEnv",
                message: format!("spec.env: {} is set twice", e.name),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EnvVar, Volume, VolumeMount};

    use super::*;
    use crate::api::tests_support::spec;

    #[test]
    fn default_spec_plans_cleanly() {
        let p = plan(&spec()).unwrap();
        assert_eq!(p.sizing.workers, 5);
        assert_eq!(p.per_worker_concurrency, 10);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn the_sidecar_probes_the_envs_hosts_unless_the_spec_names_some() {
        let mut s = spec();
        s.env = vec![EnvVar {
            name: "DATABASE_URL".into(),
            value: Some("postgresql://db.prod.svc:5432/app".into()),
            value_from: None,
        }];
        assert_eq!(plan(&s).unwrap().sidecar.dns_probes, ["db.prod.svc"]);
        s.dns.probe = vec!["api.example.com".into()];
        assert_eq!(plan(&s).unwrap().sidecar.dns_probes, ["api.example.com"]);
    }

    #[test]
    fn collects_every_violation_at_once() {
        let mut s = spec();
        s.resources.limits.cpu = None;
        s.timeouts.termination_grace_period = Some(crate::api::GoDuration::from_secs(1));
        let v = plan(&s).unwrap_err();
        let reasons: Vec<_> = v.iter().map(|v| v.reason).collect();
        assert_eq!(reasons, ["NoCpuBasis", "GracePeriodTooShort"]);
    }

    #[test]
    fn reserved_and_dangling_passthrough_is_refused() {
        let mut s = spec();
        s.volumes = vec![Volume {
            name: "tmp".into(),
            ..Default::default()
        }];
        s.volume_mounts = vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..Default::default()
        }];
        let reasons: Vec<_> = plan(&s).unwrap_err().iter().map(|v| v.reason).collect();
        assert_eq!(reasons, ["ReservedVolumeName", "UnknownVolume"]);
    }

    #[test]
    fn legal_but_dangerous_settings_are_warned() {
        let mut s = spec();
        s.upstream.kind = UpstreamKind::AwsAlb;
        s.timeouts.drain = Some(crate::api::GoDuration::from_secs(0));
        s.workers.per_worker_memory =
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("32Mi".into());
        s.workers.count = Some(9);
        s.resources.limits.memory = None;
        let w = plan(&s).unwrap().warnings;
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w[0].starts_with("spec.timeouts.drain is 0s behind aws-alb"));
        assert!(w[1].contains("perWorkerMemory (32Mi)"));
        assert!(w[2].contains("more than 2 core(s) can run (5"));
        assert!(w[3].starts_with("spec.resources.limits.memory is unset"));
    }

    #[test]
    fn derived_settings_in_env_or_extra_args_are_refused() {
        let mut s = spec();
        s.env = vec![EnvVar {
            name: "GUNICORN_CMD_ARGS".into(),
            value: Some("-w 9".into()),
            ..Default::default()
        }];
        s.extra_args = vec![
            "--workers=9".into(),
            "-w9".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        let v = plan(&s).unwrap_err();
        let messages: Vec<_> = v.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(v.len(), 3, "{messages:?}");
        assert!(messages[0].contains("GUNICORN_CMD_ARGS"));
        assert!(messages[1].contains("spec.workers.count"));
    }
}
