//! The whole decision for one spec, before any object is built: sizing + budget + the
//! cross-field checks CEL cannot express. Pure; an `Err` means nothing may be applied
//! (the reconciler reports it as `ConfigConsistent=False` and leaves the running
//! workload untouched).

use std::collections::BTreeSet;

use apiworkload_contract::SidecarArgs;

use crate::{
    api::{ApiWorkloadSpec, ServerKind},
    budget::{Budget, Violation, budget_for},
    render::deployment::APP_UID,
    sizing::{Sizing, size_workers},
};

/// Names the operator sets in the app container's environment.
pub const OWNED_ENV: &[&str] = &["WEB_CONCURRENCY", "PYTHON_CPU_COUNT"];
/// Volume and mount names the operator owns.
pub const RESERVED_VOLUMES: &[&str] = &["tmp"];

/// Everything derived from a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub sizing: Sizing,
    pub budget: Budget,
    /// Concurrent requests one worker is expected to handle (autoscaling capacity).
    pub per_worker_concurrency: i32,
    /// The sidecar's flags (rendered only when diagnostics are enabled).
    pub sidecar: SidecarArgs,
    pub warnings: Vec<String>,
}

/// Default concurrency per worker for the in-flight autoscaling target.
pub fn default_concurrency(server: ServerKind, threads: i32) -> i32 {
    match server {
        ServerKind::GunicornSync => 1,
        ServerKind::GunicornGthread => threads.max(1),
        _ => 10,
    }
}

/// Derives the plan or lists every rule the spec breaks.
pub fn plan(spec: &ApiWorkloadSpec) -> Result<Plan, Vec<Violation>> {
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
    for env in &spec.env {
        if env.name == "GUNICORN_CMD_ARGS" && spec.server.is_gunicorn() {
            warnings.push("spec.env sets GUNICORN_CMD_ARGS, which can override the rendered flags (workers, timeouts): move those settings into the spec".into());
        }
        if OWNED_ENV.contains(&env.name.as_str()) {
            warnings.push(format!(
                "spec.env sets {}, which the operator derives ({}); your value wins",
                env.name,
                if env.name == "WEB_CONCURRENCY" {
                    "the worker count"
                } else {
                    "the core count"
                }
            ));
        }
    }
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
        .unwrap_or_else(|| default_concurrency(spec.server, sizing.threads));
    Ok(Plan {
        sizing,
        budget,
        per_worker_concurrency,
        sidecar,
        warnings,
    })
}

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
        dns_probes: spec.dns.probe.clone(),
    })
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
                message: format!("spec.volumes[{}]: the name is reserved for the in-memory /tmp; rename the volume", v.name),
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
    fn gunicorn_cmd_args_is_warned() {
        let mut s = spec();
        s.env = vec![EnvVar {
            name: "GUNICORN_CMD_ARGS".into(),
            value: Some("-w 9".into()),
            ..Default::default()
        }];
        assert!(plan(&s).unwrap().warnings[0].contains("GUNICORN_CMD_ARGS"));
    }
}
