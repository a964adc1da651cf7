//! Faults of the control plane under the real operator binary, each on a private
//! cluster (the shared one keeps serving other tests while these kill theirs):
//! - etcd and kube-apiserver SIGKILLed in the middle of a 200-workload rollout, then
//!   started again on the same data: every workload converges with exactly one of each
//!   child, one ReplicaSet and one pod, and nothing orphaned;
//! - every watch expired (`410 Gone`, history compacted while the apiserver was down):
//!   the same process lists again and keeps reconciling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use apiworkload_e2e::operator::faults::*;
use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{PrivateCluster, TestNamespace, install_crds, wait_until};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::ListParams};

/// One fault at a time: each runs a control plane and 200 workloads on 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_and_etcd_killed_mid_rollout_converge_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const WORKLOADS: usize = 200;
    let cluster = PrivateCluster::up("faults-kill");
    install_crds(&cluster);
    let client = cluster.client().await;
    let mut op = Operator::start(&cluster, "faults", false, "default");
    let ns = TestNamespace::create(&client, "outage", &[]).await;
    create_many(&client, &ns.name, WORKLOADS, fixed_spec(1)).await;
    // Mid-rollout: some Deployments written, far from all.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(120),
        "the first 40 Deployments",
        || async {
            deployments
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len()
                >= 40
        },
    )
    .await;
    let before = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    cluster.control_plane(&["kill"]);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(op.running(), "the operator died with the control plane");
    cluster.control_plane(&["start"]);
    eprintln!(
        "killed etcd and kube-apiserver at {before}/{WORKLOADS} Deployments; back after {:?}",
        down.elapsed()
    );

    let took = wait_all_ready(&client, &ns.name, WORKLOADS).await;
    eprintln!("converged {took:?} after the restart");
    assert_converged_once(&client, &ns.name, 1).await;
    assert!(op.running(), "the operator restarted or crashed");
    let logs = op.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(op.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watches_list_again_without_a_restart() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = PrivateCluster::up("faults-gone");
    install_crds(&cluster);
    let client = cluster.client().await;
    let mut op = Operator::start(&cluster, "faults", false, "default");
    let ns = TestNamespace::create(&client, "gone", &[]).await;
    create_many(&client, &ns.name, 5, fixed_spec(1)).await;
    wait_all_ready(&client, &ns.name, 5).await;
    let kinds = [
        "ApiWorkload",
        "Deployment",
        "Pod",
        "Service",
        "ServiceAccount",
        "RoleBinding",
    ];
    let relists = |kind: &str| {
        op.metric(&format!(
            "apiworkload_operator_watch_relists_total{{kind=\"{kind}\"}}"
        ))
        .unwrap_or(0.0)
    };
    let listed: Vec<f64> = kinds.iter().map(|k| relists(k)).collect();
    assert!(listed.iter().all(|n| *n >= 1.0), "{kinds:?}: {listed:?}");

    // The apiserver goes away; meanwhile etcd forgets every revision the operator's
    // watches could resume from. When the apiserver is back, each resume is refused
    // with 410 Gone (too old a resourceVersion).
    cluster.control_plane(&["kill", "kube-apiserver"]);
    cluster.control_plane(&["compact"]);
    cluster.control_plane(&["start"]);
    let start = Instant::now();
    loop {
        let now: Vec<f64> = kinds.iter().map(|k| relists(k)).collect();
        if now.iter().zip(&listed).all(|(n, before)| n > before) {
            eprintln!(
                "relists after expiry ({:?}): {kinds:?} {now:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not every watch listed again within 60 s: {kinds:?} before {listed:?}, now {now:?}\n{}",
            op.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Still the same process, and it still reconciles: an edit reaches the Deployment,
    // a new workload gets its children.
    assert!(op.running());
    patch_workload(
        &client,
        &ns.name,
        "w000",
        serde_json::json!({"spec": {"image": "registry.example/app:2"}}),
    )
    .await;
    wait_deployment(&client, &ns.name, "w000", "the edit after expiry", |d| {
        app_container(d).image.as_deref() == Some("registry.example/app:2")
    })
    .await;
    create_workload(&client, &ns.name, "after", fixed_spec(1)).await;
    wait_deployment(
        &client,
        &ns.name,
        "after",
        "a workload created after expiry",
        |_| true,
    )
    .await;
    assert!(op.running());
}
