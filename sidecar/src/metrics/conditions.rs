//! Condition metrics: each condition's status as 0/1 gauges, and the writes of the pod's
//! conditions.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::conditions::Conditions;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// `condition{type,status}` and `condition_writes{result}`.
#[derive(Debug)]
pub struct ConditionMetrics {
    condition: Family<ConditionLabels, Gauge>,
    writes: Family<ResultLabels, Counter>,
}

impl ConditionMetrics {
    pub fn register(registry: &mut Registry) -> ConditionMetrics {
        let m = ConditionMetrics {
            condition: Family::default(),
            writes: Family::default(),
        };
        registry.register(
            "condition",
            "1 for each condition's current status",
            m.condition.clone(),
        );
        registry.register(
            "condition_writes",
            "Patches of the pod's conditions (result=error: refused or unreachable API server)",
            m.writes.clone(),
        );
        for result in ["ok", "error"] {
            let _ = m.writes.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        m
    }

    /// Mirrors the conditions as `condition{type,status}` 0/1 gauges (like NPD's).
    pub fn record(&self, conditions: &Conditions) {
        for c in conditions.all() {
            for status in ["True", "False"] {
                let on = (status == "True") == c.status;
                self.condition
                    .get_or_create(&ConditionLabels {
                        r#type: c.type_.into(),
                        status: status.into(),
                    })
                    .set(i64::from(on));
            }
        }
    }

    pub fn count_write(&self, ok: bool) {
        self.writes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }
}
