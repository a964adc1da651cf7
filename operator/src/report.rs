//! The status a reconcile reports, from what it planned, applied and observed: the
//! effective values, the conditions (Ready from the Deployment's counts, the roll-up of
//! the sidecars' pod conditions) and the headline reason. Pure, so that the scale
//! benchmark's baseline client reports exactly what the operator does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    api::{
        ApiWorkload, ApiWorkloadStatus, EffectiveTimings, ReplicasStatus, ServerKind, WorkersStatus,
    },
    budget::Violation,
    children::{PodReport, Readiness, Rollout},
    conditions::{self, Desired},
    plan::Plan,
    render::{Rendered, command::display_command},
    rollup::roll_up,
};

/// Why a child could not be applied: `Ready`'s reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildProblem {
    /// `ChildConflict` or `ChildRefused`.
    pub reason: &'static str,
    pub message: String,
}

/// What a reconcile found besides the plan.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The Deployment's readiness counts (None: it does not exist).
    pub readiness: Option<Readiness>,
    /// A child that could not be applied (its name taken, or refused by the API server).
    pub child_problem: Option<ChildProblem>,
    /// The workload's pods as the sidecars report them (None: diagnostics disabled).
    pub pods: Option<Vec<PodReport>>,
}

/// The new status, and the conditions whose status changed since `known` (the status
/// the server holds). An invalid spec (`planned` is its violations) keeps the last
/// effective values: they still describe what runs.
pub fn report(
    aw: &ApiWorkload,
    planned: Result<(&Plan, &Rendered), &[Violation]>,
    found: &Found,
    known: Option<&ApiWorkloadStatus>,
    now: Time,
) -> (ApiWorkloadStatus, Vec<Desired>) {
    let mut desired = Vec::new();
    let mut status = match planned {
        Ok((plan, rendered)) => {
            desired.push(if plan.warnings.is_empty() {
                Desired::new(
                    "ConfigConsistent",
                    Some(true),
                    "BudgetsFit",
                    "sizing, keep-alive and shutdown budgets fit together",
                )
            } else {
                Desired::new(
                    "ConfigConsistent",
                    Some(true),
                    "BudgetsFitWithWarnings",
                    plan.warnings.join("; "),
                )
            });
            let note = &rendered.autoscaling_note;
            desired.push(Desired::new(
                "AutoscalingReady",
                Some(note.ready),
                note.reason,
                note.message.clone(),
            ));
            status_from_plan(aw.spec.server, plan, rendered)
        }
        Err(violations) => {
            let reason = violations.first().map(|v| v.reason).unwrap_or("Invalid");
            let message = violations
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            desired.push(Desired::new(
                "ConfigConsistent",
                Some(false),
                reason,
                message,
            ));
            ApiWorkloadStatus {
                conditions: vec![],
                ..known.cloned().unwrap_or_default()
            }
        }
    };
    let (mut ready, replicas) = ready_condition(found.readiness, aw.spec.scaling.min_replicas);
    if let Some(problem) = &found.child_problem {
        ready = Desired::new(
            "Ready",
            Some(false),
            problem.reason,
            problem.message.clone(),
        );
    }
    desired.insert(0, ready);
    status.replicas = Some(replicas);
    if let Some(pods) = &found.pods {
        desired.extend(roll_up(pods));
    }
    let previous = known.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (conditions, transitions) =
        conditions::merge(previous, desired, aw.metadata.generation, now);
    status.reason = conditions::headline(&conditions);
    status.conditions = conditions;
    status.observed_generation = aw.metadata.generation;
    (status, transitions)
}

/// Ready when the Deployment's pods are updated and ready, counting at least
/// `min_replicas` (right after creation an HPA has not yet raised the Deployment's
/// default of 1 to its minimum). While not ready, the reason says whether a rollout is
/// under way (`RollingOut`), stuck past its deadline (`ProgressDeadlineExceeded`), or
/// finished with pods since lost (`Unavailable`). The message counts ready pods only: a
/// count of updated pods would change, and cost a status write, each time the
/// Deployment controller moves a new rollout on by a step.
pub fn ready_condition(
    deployment: Option<Readiness>,
    min_replicas: i32,
) -> (Desired, ReplicasStatus) {
    let Some(d) = deployment else {
        return (
            Desired::new(
                "Ready",
                Some(false),
                "Pending",
                "the Deployment does not exist yet",
            ),
            ReplicasStatus::default(),
        );
    };
    let desired = d.replicas.unwrap_or(1).max(min_replicas);
    let (ready, updated) = (d.ready, d.updated);
    let current = d.observed_generation >= d.generation;
    let replicas = ReplicasStatus { desired, ready };
    let counts = format!("{ready}/{desired} pods ready");
    let cond = if current && ready >= desired && updated >= desired && desired > 0 {
        Desired::new("Ready", Some(true), "Available", counts)
    } else if desired == 0 {
        Desired::new("Ready", Some(true), "ScaledToZero", "no replicas requested")
    } else if current && d.rollout == Rollout::DeadlineExceeded {
        Desired::new(
            "Ready",
            Some(false),
            "ProgressDeadlineExceeded",
            format!(
                "the rollout made no progress within the Deployment's progress deadline: {counts}; see the pods' events"
            ),
        )
    } else if !current
        || updated < desired
        || d.rollout == Rollout::InProgress
        || (d.rollout == Rollout::Unknown && ready == 0)
    {
        Desired::new("Ready", Some(false), "RollingOut", counts)
    } else {
        Desired::new("Ready", Some(false), "Unavailable", counts)
    };
    (cond, replicas)
}

pub fn status_from_plan(server: ServerKind, plan: &Plan, rendered: &Rendered) -> ApiWorkloadStatus {
    let s = &plan.sizing;
    let b = &plan.budget;
    ApiWorkloadStatus {
        workers: Some(WorkersStatus {
            count: s.workers,
            threads: s.threads,
            basis: s.basis.as_str().into(),
            cores: s.cores,
            memory_cap: s.memory_cap,
        }),
        effective: Some(EffectiveTimings {
            // granian has no keep-alive timeout to set: say so rather than report a value
            // that no flag carries.
            keep_alive: if server == ServerKind::Granian {
                "granian default (not settable)".into()
            } else {
                b.keep_alive.to_string()
            },
            request_timeout: b.request_timeout.to_string(),
            worker_heartbeat: b.worker_heartbeat.to_string(),
            graceful_shutdown: b.graceful_shutdown.to_string(),
            pre_stop_sleep: b.drain.to_string(),
            termination_grace_period: b.termination_grace_period.to_string(),
            startup_budget: b.startup.to_string(),
            concurrency_limit: plan.overload.describe(server),
            backlog: Some(plan.overload.backlog),
        }),
        command: Some(display_command(&rendered.command)),
        autoscaler: Some(rendered.autoscaler.kind().into()),
        warnings: plan.warnings.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    use super::*;

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": replicas}
        }))
        .unwrap()
    }

    fn progressing(status: &str, reason: &str) -> Readiness {
        let mut d = Readiness::of(&deployment(2, 1));
        d.rollout = Readiness::of(
            &serde_json::from_value::<Deployment>(json!({
                "metadata": {"generation": 1},
                "status": {"conditions": [{"type": "Progressing", "status": status, "reason": reason}]}
            }))
            .unwrap(),
        )
        .rollout;
        d
    }

    #[test]
    fn not_ready_says_whether_a_rollout_runs_is_stuck_or_is_done() {
        let reason = |d: Readiness| ready_condition(Some(d), 1).0.reason;
        for (status, progressing_reason, expected) in [
            ("True", "ReplicaSetUpdated", "RollingOut"),
            ("True", "NewReplicaSetCreated", "RollingOut"),
            ("True", "NewReplicaSetAvailable", "Unavailable"),
            (
                "False",
                "ProgressDeadlineExceeded",
                "ProgressDeadlineExceeded",
            ),
        ] {
            assert_eq!(
                reason(progressing(status, progressing_reason)),
                expected,
                "Progressing={status} ({progressing_reason})"
            );
        }
        // No Progressing condition: pods lost after a rollout, or none ever ready.
        assert_eq!(reason(Readiness::of(&deployment(2, 1))), "Unavailable");
        assert_eq!(reason(Readiness::of(&deployment(2, 0))), "RollingOut");
    }

    #[test]
    fn a_new_rollout_moving_on_keeps_the_condition_as_it_is() {
        // As applied (no status yet), then as the Deployment controller reports it.
        let applied: Deployment = serde_json::from_value(json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {}}
        }))
        .unwrap();
        let mut started = Readiness::of(&deployment(1, 0));
        started.rollout = Rollout::InProgress;
        let first = ready_condition(Some(Readiness::of(&applied)), 1);
        let second = ready_condition(Some(started), 1);
        assert_eq!(first.0, second.0);
        assert_eq!(first.1, second.1);
    }

    #[test]
    fn ready_counts_at_least_the_minimum() {
        let (c, r) = ready_condition(Some(Readiness::of(&deployment(1, 1))), 2);
        assert_eq!(
            (c.status, r.desired),
            ("False", 2),
            "the HPA has not raised replicas yet"
        );
        let (c, _) = ready_condition(Some(Readiness::of(&deployment(2, 2))), 2);
        assert_eq!((c.status, c.reason.as_str()), ("True", "Available"));
        let (c, _) = ready_condition(None, 2);
        assert_eq!(c.reason, "Pending");
    }

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    /// A new workload's first report, as the reconcile that created its Deployment makes it.
    fn first_report() -> (ApiWorkload, Plan, Rendered, ApiWorkloadStatus, Vec<Desired>) {
        let mut aw = crate::render::test_support::workload(crate::api::tests_support::spec());
        aw.metadata.generation = Some(1);
        let plan = crate::plan::plan(&aw.spec).unwrap();
        let rendered = crate::render::render(&aw, &plan, &Default::default());
        let found = Found {
            readiness: Some(Readiness::of(&rendered.deployment)),
            child_problem: None,
            pods: Some(vec![]),
        };
        let (status, transitions) = report(&aw, Ok((&plan, &rendered)), &found, None, at(100));
        (aw, plan, rendered, status, transitions)
    }

    #[test]
    fn a_new_workload_reports_its_effective_values_and_every_condition() {
        let (_, plan, _, status, transitions) = first_report();
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            status.workers.as_ref().map(|w| w.count),
            Some(plan.sizing.workers)
        );
        let summary: Vec<(&str, &str, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            summary[..2],
            [
                ("Ready", "False", "RollingOut"),
                ("ConfigConsistent", "True", "BudgetsFit")
            ]
        );
        assert_eq!(summary[2].0, "AutoscalingReady");
        assert_eq!(
            summary[3..],
            [
                ("EventLoopResponsive", "Unknown", "AwaitingSidecarReports"),
                ("DNSHealthy", "Unknown", "AwaitingSidecarReports"),
                ("ConnectionsReused", "Unknown", "AwaitingSidecarReports"),
            ]
        );
        assert_eq!(
            transitions.len(),
            status.conditions.len(),
            "all set for the first time"
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.last_transition_time == at(100))
        );
        assert_eq!(status.reason.as_deref(), Some("RollingOut"));
    }

    #[test]
    fn the_same_findings_later_report_the_same_status() {
        let (aw, plan, rendered, first, _) = first_report();
        let found = Found {
            readiness: Some(Readiness::of(&rendered.deployment)),
            child_problem: None,
            pods: Some(vec![]),
        };
        let (again, transitions) =
            report(&aw, Ok((&plan, &rendered)), &found, Some(&first), at(200));
        assert_eq!(again, first, "no write for nothing new");
        assert!(transitions.is_empty());
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_effective_values() {
        let (aw, _, _, first, _) = first_report();
        let violations = [Violation {
            reason: "KeepAliveTooShort",
            message: "raise timeouts.keepAlive".into(),
        }];
        let (status, transitions) = report(
            &aw,
            Err(&violations),
            &Found::default(),
            Some(&first),
            at(200),
        );
        assert_eq!(status.workers, first.workers, "what still runs");
        assert_eq!(status.command, first.command);
        let consistent = status
            .conditions
            .iter()
            .find(|c| c.type_ == "ConfigConsistent");
        assert_eq!(
            consistent.map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str())),
            Some(("False", "KeepAliveTooShort", "raise timeouts.keepAlive"))
        );
        assert!(
            !status
                .conditions
                .iter()
                .any(|c| c.type_ == "EventLoopResponsive"),
            "no roll-up without the pods"
        );
        assert!(transitions.iter().any(|t| t.type_ == "ConfigConsistent"));
    }

    #[test]
    fn a_conflict_is_the_ready_condition() {
        let (aw, plan, rendered, first, _) = first_report();
        let found = Found {
            readiness: None,
            child_problem: Some(ChildProblem {
                reason: "ChildConflict",
                message: "Service search-api belongs to someone else".into(),
            }),
            pods: None,
        };
        let (status, _) = report(&aw, Ok((&plan, &rendered)), &found, Some(&first), at(200));
        let ready = &status.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "False", "ChildConflict")
        );
        assert_eq!(ready.message, "Service search-api belongs to someone else");
        assert_eq!(
            ready.last_transition_time,
            at(100),
            "still False: the transition time stays"
        );
    }
}
