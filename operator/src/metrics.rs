//! Operator metrics (OpenMetrics via prometheus-client), prefix `apiworkload_operator_`.

use std::sync::{Arc, atomic::AtomicI64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `applied` (wrote something), `noop` (nothing to write), `invalid` (spec broke a
    /// rule), `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// One ApiWorkload (not `namespace`: scrapes already carry the operator pod's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload_namespace: String,
    pub workload: String,
}

/// Every metric the operator exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Objects written (server-side apply or delete), by kind (status counts as `status`).
    pub writes: Family<KindLabels, Counter>,
    /// Every write of every kind (a kind missing from a list cannot hide a write).
    writes_all: Counter,
    pub noop_reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    /// Full lists per watched kind: one at start, one more after each watch that could
    /// not resume (expired, `410 Gone`) or reconnect.
    pub watch_relists: Family<KindLabels, Counter>,
    /// 1 while this replica holds the leader lease (or leader election is off).
    pub leader: Gauge<i64, AtomicI64>,
    /// ApiWorkloads whose last reconcile failed, waiting out their backoff.
    pub backoff_workloads: Gauge<i64, AtomicI64>,
    /// 1 when an ApiWorkload's Ready condition is True (for the ApiWorkloadNotReady alert).
    workload_ready: Family<WorkloadLabels, Gauge>,
    /// Which workloads have a `workload_ready` series, so deleted ones can be dropped.
    workloads_seen: Arc<std::sync::Mutex<std::collections::BTreeSet<WorkloadLabels>>>,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("apiworkload_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        let reconcile_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register_with_unit(
            "reconcile_duration",
            "Time to reconcile one ApiWorkload",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let writes = Family::<KindLabels, Counter>::default();
        registry.register("writes", "Objects written, by kind", writes.clone());
        let noop_reconciles = Counter::default();
        registry.register(
            "noop_reconciles",
            "Reconciles that wrote nothing",
            noop_reconciles.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Reconcile errors by kind", errors.clone());
        let watch_relists = Family::<KindLabels, Counter>::default();
        registry.register(
            "watch_relists",
            "Full lists per watched kind (start, then each watch that could not resume)",
            watch_relists.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "Whether this replica is the active leader",
            leader.clone(),
        );
        let backoff_workloads = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "backoff_workloads",
            "ApiWorkloads whose last reconcile failed, retried with exponential backoff",
            backoff_workloads.clone(),
        );
        // Every bounded label value exists from the start (at 0), so dashboards and
        // alerts see a series, not "no data", before the first error.
        for result in ["applied", "noop", "invalid", "error"] {
            let _ = reconciles.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        for error in [
            "Forbidden",
            "Kube",
            "Serialization",
            "ChildConflict",
            "NoNamespace",
        ] {
            let _ = errors.get_or_create(&ErrorLabels {
                error: error.into(),
            });
        }
        let workload_ready = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "workload_ready",
            "1 when the ApiWorkload's Ready condition is True, 0 otherwise",
            workload_ready.clone(),
        );
        for kind in [
            "ServiceAccount",
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ScaledObject",
            "ServiceAccount",
            "RoleBinding",
            "status",
        ] {
            let _ = writes.get_or_create(&KindLabels { kind: kind.into() });
        }
        Metrics {
            workload_ready,
            workloads_seen: Arc::default(),
            backoff_workloads,
            reconciles,
            reconcile_duration,
            writes,
            writes_all: Counter::default(),
            noop_reconciles,
            errors,
            watch_relists,
            leader,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn count_result(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn set_workload_ready(&self, namespace: &str, name: &str, ready: bool) {
        let labels = WorkloadLabels {
            workload_namespace: namespace.into(),
            workload: name.into(),
        };
        self.workload_ready
            .get_or_create(&labels)
            .set(i64::from(ready));
        if let Ok(mut seen) = self.workloads_seen.lock() {
            seen.insert(labels);
        }
    }

    /// Drops the series of workloads that no longer exist (`exists` says which do).
    pub fn prune_workloads(&self, exists: impl Fn(&str, &str) -> bool) {
        if let Ok(mut seen) = self.workloads_seen.lock() {
            seen.retain(|l| {
                let keep = exists(&l.workload_namespace, &l.workload);
                if !keep {
                    self.workload_ready.remove(l);
                }
                keep
            });
        }
    }

    pub fn count_write(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
        self.writes_all.inc();
    }

    /// Total writes of every kind so far (tests use it to prove a resync wrote nothing).
    pub fn total_writes(&self) -> u64 {
        self.writes_all.get()
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_writes_counts_every_kind() {
        let m = Metrics::default();
        for kind in ["ServiceAccount", "RoleBinding", "SomethingNew", "status"] {
            m.count_write(kind);
        }
        assert_eq!(m.total_writes(), 4);
    }
}
