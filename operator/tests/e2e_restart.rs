//! SIGKILL of the operator binary in the middle of a 200-workload rollout: a fresh
//! process converges with no duplicate, missing or orphaned child. Its own test binary
//! (its own operators).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use apiworkload_e2e::operator::faults::*;
use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{Cluster, TestNamespace, install_crds, wait_until};
use apiworkload_operator::api::ApiWorkload;
use k8s_openapi::api::{apps::v1::Deployment, policy::v1::PodDisruptionBudget};
use kube::{
    Api,
    api::{ListParams, ObjectList},
};

const WORKLOADS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_rollout_converges_after_restart() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let mut first = Operator::start(cluster, "first", false, "default");
    let ns = TestNamespace::create(&client, "restart", &[]).await;
    // Two replicas each: a PodDisruptionBudget too, and two pods to count.
    create_many(&client, &ns.name, WORKLOADS, fixed_spec(2)).await;
    // Kill it once it has written some, well before it could have finished.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let count = |list: ObjectList<Deployment>| list.items.len();
    wait_until(
        Duration::from_secs(120),
        "the first 40 Deployments",
        || async { count(deployments.list(&ListParams::default()).await.unwrap()) >= 40 },
    )
    .await;
    first.kill();
    let done_by_first = count(deployments.list(&ListParams::default()).await.unwrap());
    eprintln!("first operator applied {done_by_first}/{WORKLOADS} Deployments before SIGKILL");
    assert!(
        done_by_first < WORKLOADS,
        "killed too late to test anything"
    );

    let mut second = Operator::start(cluster, "second", false, "default");
    let took = wait_all_ready(&client, &ns.name, WORKLOADS).await;
    eprintln!("the second operator converged in {took:?}");
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), &ns.name);
    assert_converged_once(&client, &ns.name, 2).await;
    let owners = api.list(&ListParams::default()).await.unwrap().items;
    let pdbs = one_each::<PodDisruptionBudget>(&client, &ns.name, &owners).await;
    assert!(pdbs.is_empty(), "{pdbs:?}");
    assert!(second.running());
    assert!(second.terminate().success());
}
