//! Rolls the sidecars' pod conditions (`apiworkload.io/EventLoopResponsive`, …) up into
//! ApiWorkload conditions: any pod reporting False makes the roll-up False, with how many
//! pods and which; pods that report nothing yet leave it Unknown.

use apiworkload_contract::SidecarCondition;

use crate::{children::PodReport, conditions::Desired};

/// Condition types the sidecar writes on its pod (without the `apiworkload.io/` prefix).
/// The contract crate is the one list both binaries use.
pub const SIDECAR_CONDITIONS: [&str; 3] = [
    SidecarCondition::EventLoopResponsive.as_str(),
    SidecarCondition::DnsHealthy.as_str(),
    SidecarCondition::ConnectionsReused.as_str(),
];

/// At most this many pod names in a message.
const NAMES_SHOWN: usize = 3;

/// One roll-up condition per sidecar condition type.
pub fn roll_up(pods: &[PodReport]) -> Vec<Desired> {
    let live: Vec<&PodReport> = pods.iter().filter(|p| !p.deleting).collect();
    SIDECAR_CONDITIONS
        .into_iter()
        .map(|type_| {
            let mut failing = Vec::new();
            let mut reasons = Vec::new();
            let mut reporting = 0;
            for pod in &live {
                let cond = pod.conditions.iter().find(|c| c.type_ == type_);
                let Some(cond) = cond else { continue };
                reporting += 1;
                if cond.status == "False" {
                    failing.push(pod.name.clone());
                    if let Some(r) = &cond.reason
                        && !reasons.contains(r) {
                            reasons.push(r.clone());
                        }
                }
            }
            let total = live.len();
            if !failing.is_empty() {
                failing.sort();
                let shown = failing.iter().take(NAMES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
                let more = if failing.len() > NAMES_SHOWN { ", …" } else { "" };
                let reason = reasons.first().cloned().unwrap_or_else(|| "PodsReportProblems".into());
                Desired::new(
                    static_type(type_),
                    Some(false),
                    reason,
                    format!("{}/{total} pods report {type_}=False ({}): {shown}{more}; see each pod's condition message or the sidecar's /report", failing.len(), reasons.join(", ")),
                )
            } else if reporting == 0 {
                Desired::new(static_type(type_), None, "AwaitingSidecarReports", "no pod has reported this condition yet")
            } else {
                Desired::new(static_type(type_), Some(true), "AllPodsHealthy", format!("{reporting}/{total} pods report {type_}=True"))
            }
        })
        .collect()
}

fn static_type(t: &str) -> &'static str {
    SIDECAR_CONDITIONS
        .into_iter()
        .find(|s| *s == t)
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, conds: &[(&str, &str, &str)]) -> PodReport {
        let conditions: Vec<_> = conds
            .iter()
            .map(|(t, s, r)| json!({"type": format!("apiworkload.io/{t}"), "status": s, "reason": r}))
            .collect();
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name}, "status": {"conditions": conditions}}),
        )
        .unwrap();
        PodReport::of(&pod)
    }

    #[test]
    fn any_false_pod_makes_the_rollup_false_and_names_it() {
        let pods = vec![
            pod("a", &[("EventLoopResponsive", "True", "Responsive")]),
            pod("b", &[("EventLoopResponsive", "False", "LoopStalled")]),
            pod("c", &[]),
        ];
        let r = roll_up(&pods);
        let loop_ = &r[0];
        assert_eq!(
            (loop_.status, loop_.reason.as_str()),
            ("False", "LoopStalled")
        );
        assert!(
            loop_
                .message
                .starts_with("1/3 pods report EventLoopResponsive=False"),
            "{}",
            loop_.message
        );
        assert!(loop_.message.contains(": b;"));
        assert_eq!(r[1].status, "Unknown", "nobody reported DNSHealthy");
    }

    #[test]
    fn all_true_is_true() {
        let r = roll_up(&[pod("a", &[("DNSHealthy", "True", "Fast")])]);
        assert_eq!(
            (r[1].status, r[1].reason.as_str()),
            ("True", "AllPodsHealthy")
        );
    }
}
