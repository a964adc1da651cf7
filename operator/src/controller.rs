//! The reconcile loop: plan → render (pure) → apply what differs with server-side apply →
//! report status, conditions and events. It writes nothing when nothing changed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Pod, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::RoleBinding,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    api::{ApiWorkload, ApiWorkloadStatus},
    child_set::{apply_all, keda_installed, scaled_object_resource},
    children::{ChildIndex, PodReport, Readiness, track},
    conditions::{self, Desired},
    leader::Leadership,
    log::{MAX_LOGGED, bounded},
    metrics::Metrics,
    plan::plan,
    render::{RenderContext, WORKLOAD_LABEL, render},
    report::{ChildProblem, Found, report},
    unreadable,
};

/// The watched object: an ApiWorkload, or the metadata and error of one that does not
/// decode, so that one bad object is reported on itself instead of failing the list that
/// serves every namespace.
pub type Watched = DeserializeGuard<ApiWorkload>;

/// The one field manager for every write.
pub const FIELD_MANAGER: &str = "apiworkload-operator";
/// Periodic resync: a safety net (every child kind is watched).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles in flight at once. Unbounded, a thousand new workloads are a thousand
/// concurrent reconciles: as many HTTP/1.1 connections (and TLS handshakes) to the API
/// server, and their buffers all live at once. A bound keeps the operator's memory flat
/// and the API server busy with writes rather than handshakes.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Everything a reconcile can fail with; the variant name is the `error` metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error(
        "{kind} {name} exists and is not owned by this ApiWorkload: rename the ApiWorkload or delete the {kind}"
    )]
    ChildConflict { kind: &'static str, name: String },
    /// The API server refused a child (a 4xx other than a conflict: an admission policy,
    /// a quota, a value it cannot accept). Reported in status; nothing after it applied.
    #[error(
        "the API server refused {kind} {name}: {message}; nothing after it was applied, and the objects before it run as applied"
    )]
    ChildRefused {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("ApiWorkload has no namespace")]
    NoNamespace,
    /// Leader election is on and this replica's last renewal is older than the renew
    /// deadline: a standby may hold the lease, so nothing may be written.
    #[error("not the leader (no lease renewal within the renew deadline): nothing written")]
    NotLeader,
}

impl Error {
    /// The problem a child caused, for `Ready`'s reason and message; None for errors
    /// that retrying can fix (the API server unreachable, a stale read).
    pub fn child_problem(&self) -> Option<ChildProblem> {
        match self {
            Error::ChildConflict { .. } | Error::ChildRefused { .. } => Some(ChildProblem {
                reason: self.metric_label(),
                message: self.to_string(),
            }),
            _ => None,
        }
    }

    /// An apply of `kind` refused by the API server for a reason retrying cannot fix.
    pub(crate) fn from_apply(kind: &'static str, name: &str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => Error::ChildRefused {
                kind,
                name: name.to_string(),
                message: bounded(&s.message, 600),
            },
            e => Error::Kube(e),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => "Forbidden",
            Error::Kube(_) => "Kube",
            Error::Serialization(_) => "Serialization",
            Error::ChildConflict { .. } => "ChildConflict",
            Error::ChildRefused { .. } => "ChildRefused",
            Error::NoNamespace => "NoNamespace",
            Error::NotLeader => "NotLeader",
        }
    }
}

/// Our last status write to one ApiWorkload, as the server stored it (it keeps
/// timestamps to the second), so that the cache, once it holds the write, compares equal.
struct StatusWrite {
    hash: u64,
    /// The status itself, for the reconciles that start before the watch brings it
    /// back; kept for [`STATUS_COPY_TTL`].
    copy: Option<(Instant, ApiWorkloadStatus)>,
}

/// How long our own status write stands in for the cached one. Watch events trail a
/// write by milliseconds, by seconds on a saturated server; a cache still different
/// after this long has someone else's write, and the server is read.
const STATUS_COPY_TTL: Duration = Duration::from_secs(10);

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Operator-wide rendering settings (sidecar image, Prometheus address).
    pub render: RenderContext,
    /// Whether KEDA's ScaledObject API is served (refreshed in the background).
    pub keda: Arc<AtomicBool>,
    /// How often to re-check whether KEDA is served.
    pub keda_refresh: Duration,
    /// Reconciles in flight at once (see [`DEFAULT_CONCURRENCY`]).
    pub concurrency: u16,
    /// What the watches have seen of the children (see [`crate::children`]).
    pub children: Arc<ChildIndex>,
    /// Whether this replica may write (checked before every write).
    pub leadership: Leadership,
    /// Our last status write per ApiWorkload UID (pruned with the metrics).
    status_written: std::sync::Mutex<std::collections::HashMap<String, StatusWrite>>,
    /// Consecutive failures per ApiWorkload, for exponential backoff.
    failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<Watched>, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("render", &self.render)
            .field("keda", &self.keda)
            .finish()
    }
}

impl Context {
    /// Before every write: a replica whose leadership lapsed writes nothing, even with
    /// work queued from before it was paused.
    pub fn ensure_leader(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    pub fn new(client: Client, metrics: Metrics, render: RenderContext) -> Arc<Context> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Arc::new(Context {
            client,
            recorder,
            metrics,
            render,
            keda: Arc::new(AtomicBool::new(false)),
            keda_refresh: Duration::from_secs(30),
            concurrency: DEFAULT_CONCURRENCY,
            children: Default::default(),
            leadership: Leadership::default(),
            status_written: Default::default(),
            failures: Default::default(),
        })
    }
}

/// Reconciles one ApiWorkload; one that does not decode is reported on itself.
pub async fn reconcile(watched: Arc<Watched>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let aw = match &watched.0 {
        Ok(aw) => aw,
        Err(invalid) => {
            let result = unreadable::report(invalid, &ctx).await;
            ctx.metrics
                .count_result(if result.is_ok() { "invalid" } else { "error" });
            // Only an edit can make it readable, and an edit is a watch event.
            return result.map(|()| Action::await_change());
        }
    };
    let result = reconcile_inner(aw, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(outcome) => ctx.metrics.count_result(outcome),
        Err(e) => {
            ctx.metrics.count_result("error");
            ctx.metrics
                .errors
                .get_or_create(&crate::metrics::ErrorLabels {
                    error: e.metric_label().into(),
                })
                .inc();
        }
    }
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from(watched.as_ref()));
        ctx.metrics.backoff_workloads.set(failures.len() as i64);
    }
    result.map(|_| Action::requeue(RESYNC))
}

/// Retry delay after `failures` consecutive failures: 2 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    Duration::from_secs(2)
        .checked_mul(1 << failures.min(16).saturating_sub(1))
        .map_or(MAX, |d| d.min(MAX))
}

async fn reconcile_inner(aw: &ApiWorkload, ctx: &Context) -> Result<&'static str, Error> {
    let ns = aw.namespace().ok_or(Error::NoNamespace)?;
    let name = aw.name_any();
    let keda = ctx.keda.load(Ordering::Relaxed);
    let mut wrote = false;
    let mut deployment = None;
    // A child's name taken by someone else's object, or a child the API server refuses:
    // reported like any other problem, then returned as the error (its backoff starts at
    // a minute).
    let mut child_error = None;
    let planned = plan(&aw.spec).map(|plan| {
        let rctx = RenderContext {
            keda_available: keda,
            ..ctx.render.clone()
        };
        let rendered = render(aw, &plan, &rctx);
        (plan, rendered)
    });
    // An invalid spec applies nothing: the running workload keeps its last good
    // configuration.
    if let Ok((_, rendered)) = &planned {
        match apply_all(aw, rendered, keda, ctx).await {
            Err(e) if e.child_problem().is_some() => child_error = Some(e),
            other => (wrote, deployment) = other?,
        }
    }

    // The status as the server holds it (read after the children, which do not depend on
    // it, so that reading it never delays them). The cached object can predate our own
    // last status write (a reconcile can start the moment the last one ended, before the
    // watch brings that write back): built on it, the new status would carry fresh
    // transition times and be written again for nothing.
    let status_api = Api::<ApiWorkload>::namespaced(ctx.client.clone(), &ns);
    let uid = aw.uid().unwrap_or_default();
    let known = match known_status(aw, ctx, &status_api, &uid).await {
        Ok(known) => known,
        // Deleted while we reconciled: garbage collection takes the children.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok("noop"),
        Err(e) => return Err(e.into()),
    };

    // Readiness as fresh as we know it: what we just read or wrote, else what the
    // Deployment watch saw, else (before it synced) a read.
    let readiness = match (deployment, ctx.children.readiness(&ns, &name)) {
        (Some(d), _) => Some(Readiness::of(&d)),
        (None, Some(seen)) => seen,
        (None, None) => Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .as_ref()
            .map(Readiness::of),
    };
    let pods = if aw.spec.diagnostics.enabled {
        Some(match ctx.children.pods(&ns, &name) {
            Some(pods) => pods,
            None => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={name}")))
                .await?
                .items
                .iter()
                .map(PodReport::of)
                .collect(),
        })
    } else {
        None
    };
    let found = Found {
        readiness,
        child_problem: child_error.as_ref().and_then(Error::child_problem),
        pods,
    };
    let (status, transitions) = report(
        aw,
        planned.as_ref().map(|(p, r)| (p, r)).map_err(Vec::as_slice),
        &found,
        known.as_ref(),
        Time(Timestamp::now()),
    );
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ctx.metrics.set_workload_ready(&ns, &name, ready);

    if known.as_ref() != Some(&status) {
        ctx.ensure_leader()?;
        let patch = json!({"apiVersion": ApiWorkload::api_version(&()), "kind": ApiWorkload::kind(&()), "status": status});
        let written = match status_api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            // Deleted while we reconciled: garbage collection takes the children.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok("noop"),
            result => result?,
        };
        ctx.metrics.count_write("status");
        // The status as the server stored it (it keeps timestamps to the second), so
        // that the cache, once it holds our write, compares equal.
        if let (Ok(mut w), Some(stored)) = (ctx.status_written.lock(), written.status) {
            let write = StatusWrite {
                hash: hash_status(&stored),
                copy: Some((Instant::now(), stored)),
            };
            w.insert(uid, write);
        }
        wrote = true;
    }
    let previous = known
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let worth: Vec<Desired> = transitions
        .into_iter()
        .filter(|t| conditions::worth_an_event(previous, t))
        .collect();
    publish_transitions(aw, &worth, ctx).await;
    if let Some(e) = child_error {
        return Err(e);
    }

    Ok(if planned.is_err() {
        "invalid"
    } else if wrote {
        "applied"
    } else {
        ctx.metrics.noop_reconciles.inc();
        "noop"
    })
}

/// The workload's status as the server holds it: the cached one, unless it differs
/// from our last write; then that write while the watch may not have brought it back
/// yet (no read, no wait), else the server's (someone else wrote since).
async fn known_status(
    aw: &ApiWorkload,
    ctx: &Context,
    api: &Api<ApiWorkload>,
    uid: &str,
) -> Result<Option<ApiWorkloadStatus>, kube::Error> {
    let cached = aw.status.as_ref().map(hash_status);
    let ours = match ctx.status_written.lock() {
        Ok(mut written) => match written.get_mut(uid) {
            None => return Ok(aw.status.clone()),
            // The watch brought our write back: the copy has done its job.
            Some(w) if Some(w.hash) == cached => {
                w.copy = None;
                return Ok(aw.status.clone());
            }
            Some(w) => w
                .copy
                .as_ref()
                .filter(|(at, _)| at.elapsed() < STATUS_COPY_TTL)
                .map(|(_, status)| status.clone()),
        },
        Err(_) => None,
    };
    match ours {
        Some(status) => Ok(Some(status)),
        None => Ok(api.get_status(&aw.name_any()).await?.status),
    }
}

fn hash_status(status: &ApiWorkloadStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(status)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

async fn publish_transitions(aw: &ApiWorkload, transitions: &[Desired], ctx: &Context) {
    if !ctx.leadership.is_leader() {
        return;
    }
    for t in transitions {
        let event = Event {
            type_: if t.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: t.reason.clone(),
            note: Some(
                format!("{}={}: {}", t.type_, t.status, t.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &aw.object_ref(&())).await {
            warn!(error = %bounded(&e.to_string(), MAX_LOGGED), "could not publish event");
        }
    }
}

/// Retry with exponential backoff per ApiWorkload: conflicts and outages resolve
/// themselves quickly; a ChildConflict needs a human, so it starts at a minute.
pub fn error_policy(aw: Arc<Watched>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(ObjectRef::from(aw.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            let n = *n;
            ctx.metrics.backoff_workloads.set(f.len() as i64);
            n
        })
        .unwrap_or(1);
    let delay = match err {
        Error::ChildConflict { .. } | Error::ChildRefused { .. } => {
            backoff(failures).max(Duration::from_secs(60))
        }
        _ => backoff(failures),
    };
    warn!(apiworkload = %aw.name_any(), namespace = ?aw.namespace(), error = %bounded(&err.to_string(), MAX_LOGGED), failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    ctx.keda
        .store(keda_installed(&client).await, Ordering::Relaxed);
    let (refresh_tx, refresh_rx) = futures::channel::mpsc::channel::<()>(1);
    tokio::spawn(watch_keda(
        client.clone(),
        ctx.keda.clone(),
        ctx.keda_refresh,
        refresh_tx,
    ));

    // The workloads, cached without managedFields (a third of each object, never read).
    // Our own status writes come back as watch events; only a change to the spec or
    // metadata needs a reconcile (the periodic resync covers the rest).
    let relists = |kind: &str| {
        ctx.metrics
            .watch_relists
            .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
            .clone()
    };
    let (reader, writer) = reflector::store();
    let workloads = watcher(Api::<Watched>::all(client.clone()), watcher::Config::default())
    .default_backoff()
    .modify(|aw| aw.managed_fields_mut().clear())
    .inspect({
        let relists = relists("ApiWorkload");
        move |e| {
            if matches!(e, Ok(watcher::Event::Init)) {
                relists.inc();
            }
        }
    })
    .reflect(writer)
    .applied_objects()
    .predicate_filter(spec_or_metadata, Default::default())
    // Retried by the watch's own backoff; see `children::track` for why not passed on.
    .filter(|r| {
        if let Err(e) = r {
            warn!(kind = "ApiWorkload", error = %bounded(&e.to_string(), MAX_LOGGED), "watch failed; retrying");
        }
        futures::future::ready(r.is_ok())
    });
    let controller = Controller::for_stream(workloads, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency));
    // Deleted workloads leave no per-workload series behind (no finalizer tells us).
    let store = controller.store();
    let pruned = ctx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            pruned.metrics.prune_workloads(|ns, name| {
                store
                    .get(&ObjectRef::<Watched>::new(name).within(ns))
                    .is_some()
            });
            let live: std::collections::HashSet<String> =
                store.state().iter().filter_map(|aw| aw.uid()).collect();
            if let Ok(mut written) = pruned.status_written.lock() {
                written.retain(|uid, _| live.contains(uid));
                for w in written.values_mut() {
                    w.copy.take_if(|(at, _)| at.elapsed() >= STATUS_COPY_TTL);
                }
            }
        }
    });
    // Children: Deployments whole (for readiness, kept as counts), the rest as
    // metadata only, pods for the sidecars' conditions. Each feeds the index and
    // triggers a reconcile only when a fact it reads changed.
    let labelled = watcher::Config::default().labels(WORKLOAD_LABEL);
    let index = ctx.children.clone();
    let watch = |cfg: &watcher::Config| cfg.clone();
    macro_rules! metadata_child {
        ($t:ty) => {
            track(
                watcher(
                    Api::<PartialObjectMeta<$t>>::all(client.clone()),
                    watch(&labelled),
                )
                .default_backoff(),
                index.clone(),
                relists(stringify!($t)),
            )
        };
    }
    // ScaledObjects, as metadata, once KEDA's API is served (it may be installed after
    // the operator starts): a hand-deleted or edited one is repaired like any child.
    let scaled_objects = {
        let (keda, every) = (ctx.keda.clone(), ctx.keda_refresh);
        let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(
            client.clone(),
            &scaled_object_resource(),
        );
        let (cfg, index, relists) = (watch(&labelled), index.clone(), relists("ScaledObject"));
        futures::stream::once(async move {
            while !keda.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
            }
        })
        .flat_map(move |()| {
            track(
                watcher(api.clone(), cfg.clone()).default_backoff(),
                index.clone(),
                relists.clone(),
            )
        })
    };
    controller
        .owns_stream(track(
            watcher(Api::<Deployment>::all(client.clone()), watch(&labelled)).default_backoff(),
            index.clone(),
            relists("Deployment"),
        ))
        .owns_stream_with(scaled_objects, scaled_object_resource())
        .owns_stream(metadata_child!(Service))
        .owns_stream(metadata_child!(PodDisruptionBudget))
        .owns_stream(metadata_child!(HorizontalPodAutoscaler))
        .owns_stream(metadata_child!(ServiceAccount))
        .owns_stream(metadata_child!(RoleBinding))
        // Sidecar conditions live on pods: map a pod to its workload by label.
        .watches_stream(
            track(
                watcher(Api::<Pod>::all(client.clone()), watch(&labelled)).default_backoff(),
                index.clone(),
                relists("Pod"),
            ),
            |pod: Pod| {
                let name = pod.labels().get(WORKLOAD_LABEL)?.clone();
                Some(ObjectRef::<Watched>::new(&name).within(&pod.namespace()?))
            },
        )
        .reconcile_all_on(refresh_rx)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            // Reconcile errors are logged by error_policy; a watch error is retried with
            // backoff (a 410 Gone by a fresh list), but say so.
            if let Err(kube::runtime::controller::Error::QueueError(e)) = result {
                warn!(error = %bounded(&e.to_string(), MAX_LOGGED), "watch failed; retrying");
            }
            futures::future::ready(())
        })
        .await;
    info!("controller stopped");
}

/// What a reconcile of a workload depends on, of the workload itself: its spec
/// (generation), labels and annotations. Status is ours.
fn spec_or_metadata(aw: &Watched) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    let meta = aw.meta();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Re-checks whether KEDA is served; a change re-renders every workload.
async fn watch_keda(
    client: Client,
    flag: Arc<AtomicBool>,
    every: Duration,
    mut refresh: futures::channel::mpsc::Sender<()>,
) {
    loop {
        tokio::time::sleep(every).await;
        let now = keda_installed(&client).await;
        if flag.swap(now, Ordering::Relaxed) != now {
            info!(
                keda = now,
                "KEDA availability changed; reconciling every ApiWorkload"
            );
            let _ = refresh.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
