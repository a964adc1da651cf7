//! Pure worker sizing: cores and memory → worker processes and threads (DOMAIN.md §1).
//!
//! The basis is the pod's CPU (`limits.cpu`, else `requests.cpu`), never the node's:
//! `os.cpu_count()` inside a `500m` pod on a 20-core node gives 41 workers and OOM kills.

use crate::{
    api::{ApiWorkloadSpec, Profile, ServerKind, quantity::parse_quantity},
    budget::Violation,
};

/// Where the worker count came from (shown in `.status.workers.basis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Explicit,
    LimitsCpu,
    RequestsCpu,
    /// Plain uvicorn: one process per pod, scale with replicas.
    SingleProcess,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Explicit => "workers.count",
            Basis::LimitsCpu => "limits.cpu",
            Basis::RequestsCpu => "requests.cpu",
            Basis::SingleProcess => "single-process",
        }
    }
}

/// The sizing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub workers: i32,
    pub threads: i32,
    pub basis: Basis,
    /// The CPU amount the pod has (limits, else requests), in cores.
    pub cpu: Option<f64>,
    /// `cpu` rounded half-up, at least 1: what `PYTHON_CPU_COUNT` reports.
    pub cores: Option<i32>,
    /// Most workers the memory limit allows.
    pub memory_cap: Option<i32>,
    /// Whether the count follows the CPU (then a CPU resize must restart the container).
    pub derived_from_cpu: bool,
    pub warnings: Vec<String>,
}

/// Threads for gunicorn-gthread when none are given (gunicorn's docs suggest 2–4 × cores
/// across workers; 4 per worker keeps memory flat).
pub const DEFAULT_GTHREAD_THREADS: i32 = 4;

/// Half-up rounding with a floor of 1, the rule coreutils `nproc` uses for `cpu.max`.
pub fn round_cores(cpu: f64) -> i32 {
    ((cpu + 0.5).floor() as i32).max(1)
}

/// Worker formula for a number of cores.
pub fn workers_for_cores(cores: i32, profile: Profile) -> i32 {
    match profile {
        Profile::IoBound => cores.saturating_mul(2).saturating_add(1),
        Profile::CpuBound => cores,
    }
}

/// Decides workers and threads for a spec.
pub fn size_workers(spec: &ApiWorkloadSpec) -> Result<Sizing, Violation> {
    let invalid = |field: &str, e: &dyn std::fmt::Display| Violation {
        reason: "InvalidQuantity",
        message: format!("{field}: {e}"),
    };
    let quantity =
        |field: &str, q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
            q.as_ref()
                .map(|q| parse_quantity(q).map_err(|e| invalid(field, &e)))
                .transpose()
        };
    let limit_cpu = quantity("spec.resources.limits.cpu", &spec.resources.limits.cpu)?;
    let request_cpu = quantity("spec.resources.requests.cpu", &spec.resources.requests.cpu)?;
    let limit_memory = quantity(
        "spec.resources.limits.memory",
        &spec.resources.limits.memory,
    )?;
    let per_worker = parse_quantity(&spec.workers.per_worker_memory)
        .map_err(|e| invalid("spec.workers.perWorkerMemory", &e))?;
    let supervisor = parse_quantity(&spec.workers.supervisor_memory)
        .map_err(|e| invalid("spec.workers.supervisorMemory", &e))?;

    let (cpu, cpu_basis) = match (limit_cpu, request_cpu) {
        (Some(c), _) if c > 0.0 => (Some(c), Some(Basis::LimitsCpu)),
        (_, Some(c)) if c > 0.0 => (Some(c), Some(Basis::RequestsCpu)),
        _ => (None, None),
    };
    let cores = cpu.map(round_cores);

    let memory_cap = match limit_memory {
        Some(limit) if per_worker > 0.0 => {
            let cap = ((limit - supervisor) / per_worker).floor();
            if cap < 1.0 {
                return Err(Violation {
                    reason: "MemoryTooSmall",
                    message: format!(
                        "spec.resources.limits.memory ({}) does not fit one worker: spec.workers.supervisorMemory ({}) + spec.workers.perWorkerMemory ({}); raise limits.memory or lower perWorkerMemory",
                        q_str(&spec.resources.limits.memory),
                        spec.workers.supervisor_memory.0,
                        spec.workers.per_worker_memory.0
                    ),
                });
            }
            Some(cap.min(f64::from(i32::MAX)) as i32)
        }
        _ => None,
    };

    let mut warnings = Vec::new();
    let (workers, basis) = if let Some(count) = spec.workers.count {
        if let Some(cap) = memory_cap.filter(|cap| count > *cap) {
            return Err(Violation {
                reason: "WorkersExceedMemory",
                message: format!(
                    "spec.workers.count ({count}) × spec.workers.perWorkerMemory ({}) + spec.workers.supervisorMemory ({}) exceeds spec.resources.limits.memory ({}): at most {cap} workers fit; lower the count or raise limits.memory",
                    spec.workers.per_worker_memory.0,
                    spec.workers.supervisor_memory.0,
                    q_str(&spec.resources.limits.memory)
                ),
            });
        }
        (count, Basis::Explicit)
    } else if spec.server == ServerKind::Uvicorn {
        (1, Basis::SingleProcess)
    } else {
        let (Some(cores), Some(basis)) = (cores, cpu_basis) else {
            return Err(Violation {
                reason: "NoCpuBasis",
                message: "cannot size workers: spec.resources sets no CPU limit or request, and the node's core count is the wrong basis; set spec.resources.limits.cpu (or requests.cpu), or spec.workers.count".into(),
            });
        };
        let mut n = workers_for_cores(cores, spec.profile);
        if let Some(cap) = memory_cap.filter(|cap| n > *cap) {
            warnings.push(format!(
                "{n} workers for {cores} cores do not fit spec.resources.limits.memory ({}); capped at {cap}",
                q_str(&spec.resources.limits.memory)
            ));
            n = cap;
        }
        if let Some(max) = spec.workers.max {
            n = n.min(max);
        }
        (n.max(1), basis)
    };

    let threads = match spec.server {
        ServerKind::GunicornGthread => spec.workers.threads.unwrap_or(DEFAULT_GTHREAD_THREADS),
        ServerKind::GunicornSync => {
            if spec.workers.threads.is_some_and(|t| t > 1) {
                warnings.push(
                    "spec.workers.threads > 1 with gunicorn-sync makes gunicorn switch to gthread workers: use server gunicorn-gthread to say so".into(),
                );
            }
            1
        }
        _ => {
            if spec.workers.threads.is_some_and(|t| t > 1) {
                warnings.push(format!(
                    "spec.workers.threads is ignored by {} (an ASGI event loop does not use worker threads): remove it, and raise workers instead",
                    spec.server.as_str()
                ));
            }
            1
        }
    };

    Ok(Sizing {
        workers,
        threads,
        basis,
        cpu,
        cores,
        memory_cap,
        derived_from_cpu: matches!(basis, Basis::LimitsCpu | Basis::RequestsCpu),
        warnings,
    })
}

fn q_str(q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> &str {
    q.as_ref().map(|q| q.0.as_str()).unwrap_or("unset")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::api::tests_support::spec;

    fn q(s: &str) -> Option<Quantity> {
        Some(Quantity(s.into()))
    }

    #[test]
    fn rounds_half_up_with_floor_one() {
        assert_eq!(round_cores(0.25), 1);
        assert_eq!(round_cores(0.5), 1);
        assert_eq!(round_cores(1.49), 1);
        assert_eq!(round_cores(1.5), 2);
        assert_eq!(round_cores(2.0), 2);
    }

    #[test]
    fn io_bound_uses_limits_cpu_two_c_plus_one_capped_by_memory() {
        let s = spec(); // 2 cores, 2Gi
        let z = size_workers(&s).unwrap();
        assert_eq!(
            (z.workers, z.basis, z.cores),
            (5, Basis::LimitsCpu, Some(2))
        );
        assert_eq!(z.memory_cap, Some(7), "(2048 - 64) / 256 = 7.75");
        assert!(z.derived_from_cpu);
    }

    #[test]
    fn falls_back_to_requests_cpu_then_requires_a_count() {
        let mut s = spec();
        s.resources.limits.cpu = None;
        s.resources.requests.cpu = q("500m");
        let z = size_workers(&s).unwrap();
        assert_eq!((z.workers, z.basis), (3, Basis::RequestsCpu));
        s.resources.requests.cpu = None;
        assert_eq!(size_workers(&s).unwrap_err().reason, "NoCpuBasis");
        s.workers.count = Some(2);
        assert_eq!(size_workers(&s).unwrap().basis, Basis::Explicit);
    }

    #[test]
    fn memory_caps_the_formula_and_rejects_explicit_overcommit() {
        let mut s = spec();
        s.resources.limits.cpu = q("8"); // 17 workers wanted
        let z = size_workers(&s).unwrap();
        assert_eq!(z.workers, 7);
        assert_eq!(z.warnings.len(), 1);
        s.workers.count = Some(9);
        assert_eq!(size_workers(&s).unwrap_err().reason, "WorkersExceedMemory");
    }

    #[test]
    fn cpu_bound_and_max() {
        let mut s = spec();
        s.profile = Profile::CpuBound;
        assert_eq!(size_workers(&s).unwrap().workers, 2);
        s.profile = Profile::IoBound;
        s.workers.max = Some(3);
        assert_eq!(size_workers(&s).unwrap().workers, 3);
    }

    #[test]
    fn plain_uvicorn_is_single_process() {
        let mut s = spec();
        s.server = ServerKind::Uvicorn;
        let z = size_workers(&s).unwrap();
        assert_eq!((z.workers, z.basis), (1, Basis::SingleProcess));
        assert!(!z.derived_from_cpu);
    }

    #[test]
    fn threads_are_for_gthread_and_warned_elsewhere() {
        let mut s = spec();
        s.workers.threads = Some(8);
        let z = size_workers(&s).unwrap();
        assert_eq!(z.threads, 1);
        assert!(z.warnings[0].contains("ignored"));
        s.server = ServerKind::GunicornGthread;
        assert_eq!(size_workers(&s).unwrap().threads, 8);
    }

    #[test]
    fn memory_too_small_for_one_worker() {
        let mut s = spec();
        s.resources.limits.memory = q("200Mi");
        assert_eq!(size_workers(&s).unwrap_err().reason, "MemoryTooSmall");
    }
}
