//! Shared pieces of the operator's end-to-end tests (the operator's own and the
//! sidecar's roll-up tests): the controller runs in-process on a background runtime (it
//! dies with the test binary, and its metrics are readable).

pub mod faults;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use crate::{Cluster, TestNamespace, install_crds, poll_until, repo_root};
use apiworkload_operator::{
    api::ApiWorkload,
    controller::{self, Context},
    metrics::Metrics,
    render::RenderContext,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};

/// Starts the controller on its own runtime thread; returns its metrics and a handle
/// that aborts it (a crash, as far as the cluster can tell).
pub fn start_operator(cluster: &Cluster) -> (Metrics, tokio::task::AbortHandle) {
    start_operator_with(cluster, Duration::from_secs(30))
}

/// As [`start_operator`], re-checking for KEDA every `keda_refresh`.
pub fn start_operator_with(
    cluster: &Cluster,
    keda_refresh: Duration,
) -> (Metrics, tokio::task::AbortHandle) {
    install_crds(cluster);
    let metrics = Metrics::default();
    let cluster = cluster.clone();
    let m = metrics.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = cluster.client().await;
            let mut ctx = Context::new(client, m, RenderContext::default());
            Arc::get_mut(&mut ctx).unwrap().keda_refresh = keda_refresh;
            let task = tokio::spawn(controller::run(ctx));
            tx.send(task.abort_handle()).unwrap();
            let _ = task.await;
        });
    });
    (metrics, rx.recv().unwrap())
}

/// One controller for every test in this binary.
pub fn shared_operator() -> &'static Metrics {
    static OP: OnceLock<Metrics> = OnceLock::new();
    OP.get_or_init(|| start_operator(Cluster::shared()).0)
}

/// Creates an ApiWorkload from JSON (name and spec).
pub async fn create_workload(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> ApiWorkload {
    let aw: ApiWorkload = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiworkload.io/v1alpha1", "kind": "ApiWorkload",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<ApiWorkload>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &aw)
        .await
        .unwrap()
}

/// Merge-patches an ApiWorkload (a spec edit, an annotation).
pub async fn patch_workload(client: &Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<ApiWorkload>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// The README's example (`examples/search-api.yaml`) in a new namespace that enforces
/// Pod Security "restricted"; returns the namespace.
pub async fn apply_example(cluster: &Cluster, client: &Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(
        client,
        prefix,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let example = repo_root().join("examples/search-api.yaml");
    let (ok, out, err) =
        cluster.kubectl(&["apply", "-n", &ns.name, "-f", &example.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    ns
}

/// A small valid spec with a fixed replica count (no HPA needed to reach Ready).
pub fn fixed_spec(replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "registry.example/app:1", "app": "app.main:app",
        // Small requests so hundreds of test pods fit the fake node; workers follow limits.cpu.
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
    })
}

/// Waits for the Deployment and returns it once `check` holds.
pub async fn wait_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Deployment) -> bool,
) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    poll_until(Duration::from_secs(60), what, || async {
        api.get_opt(name).await.unwrap().filter(|d| check(d))
    })
    .await
}

/// Waits until the ApiWorkload's status satisfies `check`.
pub async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ApiWorkload) -> bool,
) -> ApiWorkload {
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), ns);
    poll_until(Duration::from_secs(90), what, || async {
        api.get_opt(name).await.unwrap().filter(|a| check(a))
    })
    .await
}

pub fn condition<'a>(
    aw: &'a ApiWorkload,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    aw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The Deployment's application container.
pub fn app_container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

pub fn app_command(d: &Deployment) -> Vec<String> {
    app_container(d).command.clone().unwrap()
}

pub fn flag(command: &[String], name: &str) -> Option<String> {
    command
        .iter()
        .position(|a| a == name)
        .and_then(|i| command.get(i + 1).cloned())
}

/// Waits for a Warning Event with `reason` about the object named `regarding`.
pub async fn wait_warning_event(client: &Client, ns: &str, reason: &str, regarding: &str) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let what = format!("a {reason} Warning Event about {regarding}");
    crate::wait_until(Duration::from_secs(30), &what, || async {
        events
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
            })
    })
    .await;
}

/// Who holds the operator's leader Lease in `ns`, if anyone.
pub async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), ns)
        .get_opt("apiworkload-operator")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

/// Waits for `Ready=False` with `reason`; returns the workload and that condition.
pub async fn wait_not_ready(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> (
    ApiWorkload,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    let what = format!("Ready=False ({reason})");
    let aw = wait_status(client, ns, name, &what, |aw| {
        condition(aw, "Ready").is_some_and(|c| c.status == "False" && c.reason == reason)
    })
    .await;
    let ready = condition(&aw, "Ready").cloned().unwrap();
    (aw, ready)
}
