//! What the watches have seen of the operator's children, so that a reconcile reads
//! nothing from the API server when nothing changed since it last applied or verified
//! a child, and so that a change that cannot matter triggers no reconcile at all: a
//! Deployment status update that leaves readiness alone, a pod update that leaves the
//! sidecar's conditions alone, our own writes echoed back.
//!
//! Only a few facts per object are kept (a version hash, the controller's UID, the
//! Deployment's readiness counts, the pods' `apiworkload.io/` conditions), never the
//! objects: at 1,000 workloads the index holds well under a megabyte, where caching the
//! objects whole would hold a hundred.
//!
//! The index is a hint, never the truth: a child it does not know, or knows at another
//! version than the one we last applied or verified, is read from the API server first.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Resource, ResourceExt,
    api::ObjectMeta,
    runtime::watcher::{self, Event},
};

use apiworkload_contract::CONDITION_PREFIX;

use crate::render::WORKLOAD_LABEL;

/// A child: its kind, namespace and name (for pods, `<workload>/<pod>` so that one
/// range scan finds a workload's pods).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// The readiness counts of a Deployment, all that `Ready` is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub ready: i32,
    pub updated: i32,
    /// Where the Deployment controller says the rollout is (its `Progressing`
    /// condition's reason, kept only for the reasons `Ready` distinguishes).
    pub rollout: Rollout,
}

/// The Deployment controller's view of the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rollout {
    /// No `Progressing` condition (not reported yet, or no progress deadline).
    #[default]
    Unknown,
    /// Replacing or starting pods.
    InProgress,
    /// The new ReplicaSet has been available: the rollout finished.
    Complete,
    /// No progress within `progressDeadlineSeconds`.
    DeadlineExceeded,
}

impl Readiness {
    pub fn of(d: &Deployment) -> Readiness {
        let status = d.status.as_ref();
        Readiness {
            generation: d.metadata.generation,
            observed_generation: status.and_then(|s| s.observed_generation),
            replicas: d.spec.as_ref().and_then(|s| s.replicas),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            rollout: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"))
                .map_or(Rollout::Unknown, |c| {
                    match (c.status.as_str(), c.reason.as_deref()) {
                        ("True", Some("NewReplicaSetAvailable")) => Rollout::Complete,
                        ("False", Some("ProgressDeadlineExceeded")) => Rollout::DeadlineExceeded,
                        _ => Rollout::InProgress,
                    }
                }),
        }
    }
}

/// One of a pod's `apiworkload.io/` conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCondition {
    /// Without the `apiworkload.io/` prefix.
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
}

/// What the roll-up needs of a pod: its name, whether it is going away, and the
/// conditions the sidecar wrote on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    pub name: String,
    pub deleting: bool,
    pub conditions: Vec<PodCondition>,
}

impl PodReport {
    pub fn of(pod: &Pod) -> PodReport {
        PodReport {
            name: pod.name_any(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            conditions: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some(PodCondition {
                        type_: c.type_.strip_prefix(CONDITION_PREFIX)?.to_string(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// The facts kept per object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Changes with the spec or metadata (see [`version`]).
    version: u64,
    /// UID of the controlling owner.
    controller: Option<String>,
    readiness: Option<Readiness>,
    pod: Option<PodReport>,
}

/// A hash that changes when anything we apply could have drifted: the generation (or,
/// for kinds without one, the resourceVersion), labels, annotations (our fingerprint
/// among them) and owner references. A Deployment's status updates leave it alone, and
/// so do the Deployment controller's own annotations (`deployment.kubernetes.io/…`,
/// the revision it sets on every new Deployment): they are not ours, and counting them
/// cost a read of every new Deployment.
pub fn version(meta: &ObjectMeta) -> u64 {
    let mut h = DefaultHasher::new();
    match meta.generation {
        Some(g) => g.hash(&mut h),
        None => meta.resource_version.hash(&mut h),
    }
    meta.labels.hash(&mut h);
    for annotation in meta.annotations.iter().flatten() {
        if !annotation.0.starts_with("deployment.kubernetes.io/") {
            annotation.hash(&mut h);
        }
    }
    for o in meta.owner_references.iter().flatten() {
        (&o.uid, o.controller).hash(&mut h);
    }
    h.finish()
}

fn controller_uid(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// A child as we last applied or verified it.
#[derive(Debug)]
struct Verified {
    /// Fingerprint of the desired object.
    print: String,
    /// [`version`] of the object we wrote or read.
    version: u64,
    /// Its resourceVersion: the watch event that carries it is the echo of our own
    /// write (or read), which the reconcile that made it already knows.
    resource_version: Option<String>,
    /// UID of its controlling owner.
    controller: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: BTreeMap<Key, Seen>,
    /// What we last applied or verified per child.
    verified: HashMap<Key, Verified>,
    /// Kinds whose watch has listed everything at least once.
    synced: HashSet<&'static str>,
    /// Keys listed since a (re)list began, per kind: the rest are gone at its end.
    relisting: HashMap<&'static str, HashSet<Key>>,
    /// A pod's current key, so a pod moving between workloads leaves no stale entry.
    pod_keys: HashMap<(String, String), Key>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ChildIndex {
    inner: Mutex<Inner>,
}

impl ChildIndex {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock cannot leave the facts half-written in a way
        // that matters: every entry is replaced whole. Keep serving.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner)
    }

    /// Whether the child is exactly as we last applied or verified it, for `desired`'s
    /// fingerprint, and still controlled by `owner`. A child we wrote whose watch event
    /// is not in yet counts as we wrote it: were it changed or deleted meanwhile, those
    /// events follow ours and trigger a reconcile (a delete forgets what we wrote). Only
    /// a kind whose watch has listed everything is vouched for: without a watch nothing
    /// would ever tell us of an edit or a delete.
    pub fn unchanged(&self, key: &Key, fingerprint: &str, owner: &str) -> bool {
        self.with(|i| {
            if !i.synced.contains(key.kind) {
                return false;
            }
            let Some(v) = i.verified.get(key) else {
                return false;
            };
            let as_written = match i.seen.get(key) {
                Some(seen) => {
                    seen.version == v.version && seen.controller.as_deref() == Some(owner)
                }
                None => v.controller.as_deref() == Some(owner),
            };
            v.print == fingerprint && as_written
        })
    }

    /// Records that the child holds `fingerprint`'s object at `meta`'s version.
    pub fn verified(&self, key: Key, fingerprint: String, meta: &ObjectMeta) {
        let verified = Verified {
            print: fingerprint,
            version: version(meta),
            resource_version: meta.resource_version.clone(),
            controller: controller_uid(meta),
        };
        self.with(|i| i.verified.insert(key, verified));
    }

    /// Forgets what we wrote of a child we just deleted (its watch event may trail).
    pub fn forget(&self, key: &Key) {
        self.with(|i| i.verified.remove(key));
    }

    /// Whether the child is certainly absent: its kind's watch has listed everything
    /// and has not seen it. (Children carry the workload label; an unlabelled object of
    /// the same name is not ours, and is never deleted.)
    pub fn absent(&self, key: &Key) -> bool {
        self.with(|i| i.synced.contains(key.kind) && !i.seen.contains_key(key))
    }

    /// The UID of the child's controller, as last seen.
    pub fn controller(&self, key: &Key) -> Option<String> {
        self.with(|i| i.seen.get(key).and_then(|s| s.controller.clone()))
    }

    /// The Deployment's readiness as last seen, when the Deployment watch has synced.
    pub fn readiness(&self, namespace: &str, name: &str) -> Option<Option<Readiness>> {
        let key = Key::new("Deployment", namespace, name);
        self.with(|i| {
            i.synced
                .contains("Deployment")
                .then(|| i.seen.get(&key).and_then(|s| s.readiness))
        })
    }

    /// The workload's pods as last seen, when the pod watch has synced.
    pub fn pods(&self, namespace: &str, workload: &str) -> Option<Vec<PodReport>> {
        let from = Key::new("Pod", namespace, &format!("{workload}/"));
        let to = Key::new("Pod", namespace, &format!("{workload}0")); // '0' follows '/'
        self.with(|i| {
            i.synced.contains("Pod").then(|| {
                i.seen
                    .range(from..to)
                    .filter_map(|(_, s)| s.pod.clone())
                    .collect()
            })
        })
    }

    /// Applies one watch event. Returns whether it changed a fact a reconcile reads.
    fn observe(&self, kind: &'static str, event: Event<Observed>) -> bool {
        self.with(|i| match event {
            Event::Init => {
                i.relisting.insert(kind, HashSet::new());
                false
            }
            Event::InitApply(o) => {
                if let Some(listed) = i.relisting.get_mut(kind) {
                    listed.insert(o.key.clone());
                }
                i.upsert(o)
            }
            Event::InitDone => {
                let listed = i.relisting.remove(kind).unwrap_or_default();
                let gone: Vec<Key> = i
                    .seen
                    .keys()
                    .filter(|k| k.kind == kind && !listed.contains(k))
                    .cloned()
                    .collect();
                for key in &gone {
                    i.remove(key);
                }
                i.synced.insert(kind);
                !gone.is_empty()
            }
            Event::Apply(o) => i.upsert(o),
            Event::Delete(o) => {
                i.remove(&o.key);
                true
            }
        })
    }
}

/// One object as a watch event carries it.
#[derive(Debug)]
pub struct Observed {
    key: Key,
    seen: Seen,
    resource_version: Option<String>,
}

impl Inner {
    /// Records `o`; returns whether a fact a reconcile reads changed, other than by our
    /// own write.
    fn upsert(&mut self, o: Observed) -> bool {
        let Observed {
            key,
            seen,
            resource_version,
        } = o;
        let echo = resource_version.is_some()
            && self
                .verified
                .get(&key)
                .is_some_and(|v| v.resource_version == resource_version);
        if key.kind == "Pod"
            && let Some(pod) = &seen.pod
        {
            let id = (key.namespace.clone(), pod.name.clone());
            if let Some(old) = self.pod_keys.insert(id, key.clone())
                && old != key
            {
                self.seen.remove(&old);
            }
        }
        let changed = self.seen.get(&key) != Some(&seen);
        self.seen.insert(key, seen);
        changed && !echo
    }

    fn remove(&mut self, key: &Key) {
        if let Some(Seen { pod: Some(pod), .. }) = self.seen.remove(key) {
            self.pod_keys.remove(&(key.namespace.clone(), pod.name));
        }
        self.verified.remove(key);
    }
}

/// How a watched kind is indexed.
pub trait Indexed: Resource + Sized {
    const KIND: &'static str;
    fn key(&self) -> Option<Key> {
        Some(Key::new(Self::KIND, &self.namespace()?, &self.name_any()))
    }
    fn seen(&self) -> Seen {
        Seen {
            version: version(self.meta()),
            controller: controller_uid(self.meta()),
            readiness: None,
            pod: None,
        }
    }
    fn observed(&self) -> Option<Observed> {
        Some(Observed {
            key: self.key()?,
            seen: self.seen(),
            resource_version: self.meta().resource_version.clone(),
        })
    }
}

impl Indexed for Deployment {
    const KIND: &'static str = "Deployment";
    fn seen(&self) -> Seen {
        Seen {
            version: version(&self.metadata),
            controller: controller_uid(&self.metadata),
            readiness: Some(Readiness::of(self)),
            pod: None,
        }
    }
}

impl Indexed for Pod {
    const KIND: &'static str = "Pod";
    fn key(&self) -> Option<Key> {
        let workload = self.labels().get(WORKLOAD_LABEL)?;
        Some(Key::new(
            Self::KIND,
            &self.namespace()?,
            &format!("{workload}/{}", self.name_any()),
        ))
    }
    fn seen(&self) -> Seen {
        // Only the conditions matter: a pod's metadata and other status churn no reconcile.
        Seen {
            version: 0,
            controller: None,
            readiness: None,
            pod: Some(PodReport::of(self)),
        }
    }
}

// Metadata-only children (Services, PDBs, HPAs, ServiceAccounts, RoleBindings).
macro_rules! indexed_metadata {
    ($($t:ty => $kind:literal),* $(,)?) => {$(
        impl Indexed for kube::core::PartialObjectMeta<$t> {
            const KIND: &'static str = $kind;
        }
    )*};
}
/// ScaledObjects, watched as metadata through the dynamic API (KEDA's types are not
/// compiled in); the one dynamic kind the operator watches.
impl Indexed for kube::core::PartialObjectMeta<kube::api::DynamicObject> {
    const KIND: &'static str = "ScaledObject";
}

indexed_metadata!(
    k8s_openapi::api::core::v1::Service => "Service",
    k8s_openapi::api::core::v1::ServiceAccount => "ServiceAccount",
    k8s_openapi::api::rbac::v1::RoleBinding => "RoleBinding",
    k8s_openapi::api::policy::v1::PodDisruptionBudget => "PodDisruptionBudget",
    k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
);

/// Feeds a watch into the index and passes on only the objects whose indexed facts
/// changed (or that were deleted), as reconcile triggers.
///
/// Watch errors are logged and dropped here: the watch retries on its own backoff. Passed
/// on, they would reach the controller's trigger stream, whose one backoff pauses *every*
/// watch after an error of any: after an API server restart, eight watches each failing
/// a few times kept the others paused for minutes.
pub fn track<K, S>(
    events: S,
    index: std::sync::Arc<ChildIndex>,
    relists: prometheus_client::metrics::counter::Counter,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Indexed + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    events.filter_map(move |event| {
        let trigger = match event {
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %crate::log::bounded(&e.to_string(), crate::log::MAX_LOGGED), "watch failed; retrying");
                None
            }
            Ok(Event::Init) => {
                relists.inc();
                index.observe(K::KIND, Event::Init);
                None
            }
            Ok(Event::InitDone) => {
                index.observe(K::KIND, Event::InitDone);
                None
            }
            // What a (re)list merely confirms triggers nothing.
            Ok(Event::InitApply(obj)) => obj
                .observed()
                .is_some_and(|o| index.observe(K::KIND, Event::InitApply(o)))
                .then_some(Ok(obj)),
            Ok(Event::Apply(obj)) => obj
                .observed()
                .is_some_and(|o| index.observe(K::KIND, Event::Apply(o)))
                .then_some(Ok(obj)),
            Ok(Event::Delete(obj)) => {
                if let Some(o) = obj.observed() {
                    index.observe(K::KIND, Event::Delete(o));
                }
                Some(Ok(obj))
            }
        };
        future::ready(trigger)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, ready: i32, owner: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "ns", "generation": generation,
                "resourceVersion": format!("{}", generation * 10 + ready as i64),
                "labels": {WORKLOAD_LABEL: "api"},
                "ownerReferences": [{"apiVersion": "apiworkload.io/v1alpha1", "kind": "ApiWorkload",
                    "name": "api", "uid": owner, "controller": true}]},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": generation, "readyReplicas": ready, "updatedReplicas": 2}
        }))
        .unwrap()
    }

    fn pod(name: &str, workload: &str, stalled: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {WORKLOAD_LABEL: workload}},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "apiworkload.io/EventLoopResponsive", "status": if stalled {"False"} else {"True"}, "reason": "x"},
            ]}
        }))
        .unwrap()
    }

    fn feed<K: Indexed + Clone + Send + 'static>(
        index: &std::sync::Arc<ChildIndex>,
        events: Vec<Event<K>>,
    ) -> usize {
        let stream = track(
            futures::stream::iter(events.into_iter().map(Ok)),
            index.clone(),
            Default::default(),
        );
        futures::executor::block_on(stream.collect::<Vec<_>>()).len()
    }

    #[test]
    fn a_status_update_that_keeps_readiness_triggers_nothing() {
        let index = std::sync::Arc::new(ChildIndex::default());
        let d = deployment(1, 1, "u1");
        assert_eq!(
            feed(
                &index,
                vec![Event::Init, Event::InitApply(d.clone()), Event::InitDone]
            ),
            1
        );
        let mut same = d.clone();
        same.metadata.resource_version = Some("999".into());
        assert_eq!(
            feed(&index, vec![Event::Apply(same)]),
            0,
            "only the rv moved"
        );
        assert_eq!(feed(&index, vec![Event::Apply(deployment(1, 2, "u1"))]), 1);
        assert_eq!(index.readiness("ns", "api").unwrap().unwrap().ready, 2);
    }

    #[test]
    fn a_child_is_unchanged_only_at_the_verified_version_and_owner() {
        let index = std::sync::Arc::new(ChildIndex::default());
        let d = deployment(1, 1, "u1");
        let key = d.key().unwrap();
        feed(
            &index,
            vec![Event::Init, Event::InitApply(d.clone()), Event::InitDone],
        );
        assert!(!index.unchanged(&key, "f1", "u1"), "never verified");
        index.verified(key.clone(), "f1".into(), &d.metadata);
        assert!(index.unchanged(&key, "f1", "u1"));
        assert!(!index.unchanged(&key, "f2", "u1"), "another desired object");
        assert!(!index.unchanged(&key, "f1", "u2"), "another owner");
        feed(&index, vec![Event::Apply(deployment(2, 1, "u1"))]);
        assert!(
            !index.unchanged(&key, "f1", "u1"),
            "someone edited the spec"
        );
        index.verified(key.clone(), "f1".into(), &deployment(2, 1, "u1").metadata);
        let annotated = |name: &str| {
            let mut d = deployment(2, 1, "u1");
            d.metadata
                .annotations
                .get_or_insert_default()
                .insert(name.into(), "2".into());
            d
        };
        feed(
            &index,
            vec![Event::Apply(annotated("deployment.kubernetes.io/revision"))],
        );
        assert!(
            index.unchanged(&key, "f1", "u1"),
            "the Deployment controller's revision is not ours"
        );
        feed(&index, vec![Event::Apply(annotated("example.com/note"))]);
        assert!(
            !index.unchanged(&key, "f1", "u1"),
            "any other annotation may be drift"
        );
        feed(&index, vec![Event::Delete(deployment(2, 1, "u1"))]);
        assert!(index.absent(&key));
        assert!(
            !index.unchanged(&key, "f1", "u1"),
            "a deleted child is no longer as we wrote it"
        );
    }

    /// A ScaledObject was once trusted forever: nothing watched it, so the index vouched
    /// for what it last wrote and a hand-deleted one never came back.
    #[test]
    fn a_kind_without_a_synced_watch_is_never_vouched_for() {
        let index = ChildIndex::default();
        let key = Key::new("ScaledObject", "ns", "api");
        let written = deployment(1, 1, "u1").metadata;
        index.verified(key.clone(), "f1".into(), &written);
        assert!(!index.unchanged(&key, "f1", "u1"), "no watch: read it");
        index.observe("ScaledObject", Event::Init);
        index.observe("ScaledObject", Event::InitDone);
        assert!(
            index.unchanged(&key, "f1", "u1"),
            "watched and just written"
        );
        let observed = Observed {
            key: key.clone(),
            seen: Seen {
                version: version(&written),
                controller: controller_uid(&written),
                readiness: None,
                pod: None,
            },
            resource_version: None,
        };
        assert!(
            index.observe("ScaledObject", Event::Delete(observed)),
            "a delete triggers"
        );
        assert!(
            !index.unchanged(&key, "f1", "u1"),
            "deleted by hand: not as we wrote it"
        );
    }

    #[test]
    fn the_echo_of_our_own_write_triggers_nothing() {
        let index = std::sync::Arc::new(ChildIndex::default());
        feed::<Deployment>(&index, vec![Event::Init, Event::InitDone]);
        let ours = deployment(1, 0, "u1");
        let key = ours.key().unwrap();
        index.verified(key.clone(), "f1".into(), &ours.metadata);
        assert!(
            index.unchanged(&key, "f1", "u1"),
            "our own write, before its watch event"
        );
        assert!(!index.unchanged(&key, "f1", "u2"));
        assert_eq!(
            feed(&index, vec![Event::Apply(ours.clone())]),
            0,
            "the object our apply returned"
        );
        assert!(index.unchanged(&key, "f1", "u1"));
        // The same object, once the Deployment controller has moved it on.
        assert_eq!(feed(&index, vec![Event::Apply(deployment(1, 1, "u1"))]), 1);
        // Someone else's write of the same name, never verified by us.
        let other = Key::new("Deployment", "ns", "other");
        let mut theirs = deployment(1, 0, "u1");
        theirs.metadata.name = Some("other".into());
        assert_eq!(feed(&index, vec![Event::Apply(theirs)]), 1);
        assert!(!index.unchanged(&other, "f1", "u1"));
    }

    #[test]
    fn absence_is_known_only_after_the_first_list() {
        let index = std::sync::Arc::new(ChildIndex::default());
        let key = Key::new("Deployment", "ns", "api");
        assert!(!index.absent(&key));
        assert_eq!(index.readiness("ns", "api"), None);
        feed::<Deployment>(&index, vec![Event::Init, Event::InitDone]);
        assert!(index.absent(&key));
        assert_eq!(index.readiness("ns", "api"), Some(None));
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists() {
        let index = std::sync::Arc::new(ChildIndex::default());
        feed(
            &index,
            vec![
                Event::Init,
                Event::InitApply(pod("p1", "api", false)),
                Event::InitApply(pod("p2", "api", false)),
                Event::InitDone,
            ],
        );
        assert_eq!(index.pods("ns", "api").unwrap().len(), 2);
        feed(
            &index,
            vec![
                Event::Init,
                Event::InitApply(pod("p2", "api", false)),
                Event::InitDone,
            ],
        );
        let pods = index.pods("ns", "api").unwrap();
        assert_eq!(
            pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["p2"]
        );
    }

    #[test]
    fn pods_trigger_only_when_their_sidecar_conditions_change() {
        let index = std::sync::Arc::new(ChildIndex::default());
        feed::<Pod>(&index, vec![Event::Init, Event::InitDone]);
        assert_eq!(feed(&index, vec![Event::Apply(pod("p1", "api", false))]), 1);
        let mut relabelled = pod("p1", "api", false);
        relabelled.metadata.resource_version = Some("7".into());
        assert_eq!(feed(&index, vec![Event::Apply(relabelled)]), 0);
        assert_eq!(feed(&index, vec![Event::Apply(pod("p1", "api", true))]), 1);
        assert_eq!(
            index.pods("ns", "api").unwrap()[0].conditions[0].status,
            "False"
        );
        // Another workload's pods, and a name sharing the prefix, stay apart.
        feed(
            &index,
            vec![
                Event::Apply(pod("q1", "api-2", false)),
                Event::Apply(pod("r1", "ap", false)),
            ],
        );
        assert_eq!(index.pods("ns", "api").unwrap().len(), 1);
        // The workload label moved: the pod belongs to the other workload only.
        feed(&index, vec![Event::Apply(pod("p1", "api-2", false))]);
        assert_eq!(index.pods("ns", "api").unwrap().len(), 0);
        assert_eq!(index.pods("ns", "api-2").unwrap().len(), 2);
    }
}
