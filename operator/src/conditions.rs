//! Condition bookkeeping in the `metav1.Condition` shape: transitions keep their time
//! when nothing changed (so status stays byte-identical and causes no write), and the
//! most severe condition gives the `Reason` printer column.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as decided this reconcile (time and generation are filled in on merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    /// "True", "False" or "Unknown".
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        ok: Option<bool>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        Desired {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Builds the new condition list. `lastTransitionTime` is kept from `previous` unless
/// the status flipped; returns the list and the conditions whose status changed.
pub fn merge(
    previous: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: Time,
) -> (Vec<Condition>, Vec<Desired>) {
    let mut transitions = Vec::new();
    let list = desired
        .into_iter()
        .map(|d| {
            let old = previous.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match old {
                Some(o) if o.status == d.status => o.last_transition_time.clone(),
                _ => {
                    transitions.push(d.clone());
                    now.clone()
                }
            };
            Condition {
                type_: d.type_.to_string(),
                status: d.status.to_string(),
                reason: d.reason,
                message: truncate(d.message, 32_000),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    (list, transitions)
}

/// Whether a transition deserves an Event: a problem, or the recovery from one. A
/// condition's progress is not one (`Ready` going to `Pending` or `RollingOut`, or from
/// there to `True`): the Deployment reports its rollouts itself, and at a thousand
/// workloads created at once those Events were a thousand writes. Neither is a
/// condition set for the first time unless it reports a problem: a new workload's
/// `ConfigConsistent=True` tells nobody anything.
pub fn worth_an_event(previous: &[Condition], transition: &Desired) -> bool {
    const PROGRESS: [&str; 2] = ["Pending", "RollingOut"];
    let progress = |reason: &str| PROGRESS.contains(&reason);
    let before = previous.iter().find(|c| c.type_ == transition.type_);
    match (transition.status, before) {
        ("Unknown", _) => false,
        ("False", _) => !progress(&transition.reason),
        (_, Some(b)) => b.status == "False" && !progress(&b.reason),
        (_, None) => false,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The reason to show in `kubectl get`: a broken spec first (it is the root cause of
/// whatever else fails), then the first False condition, else Ready's reason.
pub fn headline(conditions: &[Condition]) -> Option<String> {
    let is_false = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "False")
    };
    is_false("ConfigConsistent")
        .or_else(|| conditions.iter().find(|c| c.status == "False"))
        .or_else(|| conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn events_for_problems_and_recoveries_not_for_progress() {
        let d = |type_, ok, reason: &str| Desired::new(type_, ok, reason, "");
        let (known, _) = merge(
            &[],
            vec![d("Ready", Some(false), "Pending")],
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        let worth = |prev: &[Condition], x: Desired| worth_an_event(prev, &x);
        assert!(!worth(&[], d("Ready", Some(false), "Pending")));
        assert!(!worth(&[], d("Ready", Some(false), "RollingOut")));
        assert!(!worth(&[], d("ConfigConsistent", Some(true), "BudgetsFit")));
        assert!(!worth(&[], d("DNSHealthy", None, "AwaitingSidecarReports")));
        assert!(worth(
            &[],
            d("ConfigConsistent", Some(false), "KeepAliveTooShort")
        ));
        assert!(
            !worth(&known, d("Ready", Some(true), "Available")),
            "a rollout finishing"
        );
        assert!(!worth(&known, d("Ready", None, "Unknown")));
        let (broken, _) = merge(
            &known,
            vec![d("Ready", Some(false), "Unavailable")],
            Some(1),
            t("2026-01-01T00:01:00Z"),
        );
        assert!(worth(&known, d("Ready", Some(false), "Unavailable")));
        assert!(
            worth(&broken, d("Ready", Some(true), "Available")),
            "the recovery from a problem"
        );
        let (healthy, _) = merge(
            &[],
            vec![d("EventLoopResponsive", Some(true), "Responsive")],
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert!(worth(
            &healthy,
            d("EventLoopResponsive", Some(false), "LoopStalled")
        ));
        assert!(!worth(
            &healthy,
            d("EventLoopResponsive", None, "NoReports")
        ));
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let d = || vec![Desired::new("Ready", Some(true), "Available", "2/2 ready")];
        let (first, tr1) = merge(&[], d(), Some(1), t("2026-01-01T00:00:00Z"));
        assert_eq!(tr1.len(), 1);
        let (second, tr2) = merge(&first, d(), Some(1), t("2026-01-01T00:05:00Z"));
        assert_eq!(
            first, second,
            "no change, no new timestamp: status stays identical"
        );
        assert!(tr2.is_empty());
        let flipped = vec![Desired::new(
            "Ready",
            Some(false),
            "Unavailable",
            "0/2 ready",
        )];
        let (third, tr3) = merge(&second, flipped, Some(2), t("2026-01-01T00:10:00Z"));
        assert_eq!(third[0].last_transition_time, t("2026-01-01T00:10:00Z"));
        assert_eq!(tr3[0].reason, "Unavailable");
    }

    #[test]
    fn headline_is_the_first_false_else_ready() {
        let (c, _) = merge(
            &[],
            vec![
                Desired::new("Ready", Some(true), "Available", ""),
                Desired::new("ConfigConsistent", Some(true), "BudgetsFit", ""),
                Desired::new("EventLoopResponsive", Some(false), "LoopStalled", ""),
            ],
            None,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(headline(&c).as_deref(), Some("LoopStalled"));
        assert_eq!(headline(&c[..2]).as_deref(), Some("Available"));
    }
}
