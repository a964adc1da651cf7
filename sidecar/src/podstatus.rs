//! Publishes the three conditions on the sidecar's own Pod as
//! `apiworkload.io/EventLoopResponsive`, `apiworkload.io/DNSHealthy` and
//! `apiworkload.io/ConnectionsReused`, where `kubectl describe pod` and the operator's
//! roll-up read them.
//!
//! A strategic-merge patch of `pods/status` merges conditions by `type`, so the
//! kubelet's own conditions are left alone (a JSON merge patch would replace the whole
//! list). Writes happen on transitions and as a slow heartbeat that refreshes
//! `lastProbeTime`, NPD-style: a few writes per pod per hour when nothing changes.
//!
//! The credentials are the pod's bound service-account token, mounted into the sidecar
//! only. What they may do is limited by the API server, not by this code: RBAC grants
//! `patch` on `pods/status` and a ValidatingAdmissionPolicy (in the chart) refuses any
//! other pod than the one named in the token, and any condition outside `apiworkload.io/`.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::conditions::{Conditions, format_time};

/// Prefix of every condition type the sidecar writes (shared with the operator).
pub use apiworkload_contract::CONDITION_PREFIX;

/// The strategic-merge patch that sets the three conditions.
pub fn condition_patch(conditions: &Conditions, probed_at: SystemTime) -> Value {
    let list: Vec<Value> = conditions
        .all()
        .iter()
        .map(|c| {
            let mut v = json!({
                "type": format!("{CONDITION_PREFIX}{}", c.type_),
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "lastTransitionTime": format_time(c.last_transition),
                "lastProbeTime": format_time(probed_at),
            });
            if !c.message.is_empty() {
                v["message"] = json!(c.message);
            }
            v
        })
        .collect();
    json!({ "status": { "conditions": list } })
}

/// When the next write is due: on any change of what is published, after a failed
/// write, and otherwise every `heartbeat`.
#[derive(Debug)]
pub struct WritePolicy {
    heartbeat: Duration,
    /// (status, reason) of each condition as last written.
    written: Option<Vec<(bool, String)>>,
    last_write: Option<Instant>,
}

impl WritePolicy {
    pub fn new(heartbeat: Duration) -> WritePolicy {
        WritePolicy {
            heartbeat,
            written: None,
            last_write: None,
        }
    }

    fn published(conditions: &Conditions) -> Vec<(bool, String)> {
        conditions
            .all()
            .iter()
            .map(|c| (c.status, c.reason.clone()))
            .collect()
    }

    pub fn due(&self, conditions: &Conditions, now: Instant) -> bool {
        self.written.as_ref() != Some(&Self::published(conditions))
            || self
                .last_write
                .is_none_or(|t| now.duration_since(t) >= self.heartbeat)
    }

    /// Records a successful write (a failed one is simply retried when next due).
    pub fn wrote(&mut self, conditions: &Conditions, now: Instant) {
        self.written = Some(Self::published(conditions));
        self.last_write = Some(now);
    }
}

/// The pod to patch and a client holding the sidecar's credentials.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // kube's Api<Pod> has no Debug
pub struct PodStatusWriter {
    pods: Api<Pod>,
    name: String,
}

impl PodStatusWriter {
    /// None (with the reason logged) when the sidecar has no pod identity or no
    /// credentials: it then measures and serves metrics without writing conditions.
    pub async fn from_environment(
        pod_name: Option<&str>,
        namespace: Option<&str>,
    ) -> Option<PodStatusWriter> {
        let (Some(name), Some(namespace)) = (pod_name, namespace) else {
            tracing::info!("no --pod-name/--pod-namespace: pod conditions are not written");
            return None;
        };
        let config = match kube::Config::infer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes credentials: pod conditions are not written");
                return None;
            }
        };
        match Client::try_from(config) {
            Ok(client) => Some(PodStatusWriter {
                pods: Api::namespaced(client, namespace),
                name: name.to_string(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a Kubernetes client: pod conditions are not written");
                None
            }
        }
    }

    pub async fn write(&self, conditions: &Conditions) -> Result<(), kube::Error> {
        let patch = condition_patch(conditions, SystemTime::now());
        self.pods
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conditions::Thresholds, window::Window};

    fn stalled(c: &mut Conditions) {
        let w = Window {
            stalled_seconds: 5.0,
            window_seconds: 10.0,
            canary_probes: 40,
            ..Default::default()
        };
        for _ in 0..3 {
            c.evaluate(&w, &Thresholds::default());
        }
    }

    #[test]
    fn the_patch_names_only_our_prefixed_types() {
        let mut c = Conditions::default();
        stalled(&mut c);
        let patch = condition_patch(&c, SystemTime::UNIX_EPOCH);
        let list = patch["status"]["conditions"].as_array().unwrap();
        let types: Vec<&str> = list.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "apiworkload.io/EventLoopResponsive",
                "apiworkload.io/DNSHealthy",
                "apiworkload.io/ConnectionsReused"
            ]
        );
        assert_eq!(list[0]["status"], "False");
        assert_eq!(list[0]["reason"], "LoopStalled");
        assert!(list[0]["message"].as_str().unwrap().contains("stalled"));
        assert_eq!(list[0]["lastProbeTime"], "1970-01-01T00:00:00Z");
        assert_eq!(list[1]["status"], "True");
        assert!(list[1].get("message").is_none(), "no empty message");
        assert!(
            patch.as_object().unwrap().len() == 1,
            "only status is patched"
        );
    }

    #[test]
    fn writes_on_change_and_heartbeat_only() {
        let t0 = Instant::now();
        let mut c = Conditions::default();
        let mut policy = WritePolicy::new(Duration::from_secs(300));
        assert!(policy.due(&c, t0), "the first report is due at once");
        policy.wrote(&c, t0);
        assert!(!policy.due(&c, t0 + Duration::from_secs(10)));
        stalled(&mut c);
        assert!(policy.due(&c, t0 + Duration::from_secs(30)), "a transition");
        policy.wrote(&c, t0 + Duration::from_secs(30));
        assert!(!policy.due(&c, t0 + Duration::from_secs(329)));
        assert!(
            policy.due(&c, t0 + Duration::from_secs(330)),
            "the heartbeat"
        );
    }
}
