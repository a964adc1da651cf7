//! Killing the operator in the middle of a rollout: a fresh one converges with no
//! duplicate, missing or orphaned child. Its own test binary (its own operators).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use apiworkload_e2e::{Cluster, TestNamespace, wait_until};
use apiworkload_operator::api::ApiWorkload;
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectList},
};
use support::*;

const WORKLOADS: usize = 30;

fn owned_once<K: Resource + Clone>(list: &ObjectList<K>, owners: &[ApiWorkload]) -> bool {
    list.items.len() == owners.len()
        && owners.iter().all(|aw| {
            list.items
                .iter()
                .filter(|c| {
                    c.meta()
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|o| Some(&o.uid) == aw.uid().as_ref()))
                        && c.meta().name == aw.metadata.name
                })
                .count()
                == 1
        })
}

#[tokio::test]
async fn operator_killed_mid_rollout_converges_after_restart() {
    let cluster = Cluster::shared();
    let client = cluster.client().await;
    let (first_metrics, first) = start_operator(cluster);
    let ns = TestNamespace::create(&client, "restart", &[]).await;
    let mut spec = fixed_spec(2);
    spec["scaling"]["maxReplicas"] = serde_json::json!(3);
    for i in 0..WORKLOADS {
        create_workload(&client, &ns.name, &format!("api-{i}"), spec.clone()).await;
    }
    // Kill it once it has started writing, well before it could have finished.
    wait_until(Duration::from_secs(30), "the first writes", || async {
        first_metrics.total_writes() > 0
    })
    .await;
    first.abort();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let done_by_first = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    eprintln!(
        "first operator applied {done_by_first}/{WORKLOADS} Deployments before it was killed"
    );

    let (_second_metrics, _second) = start_operator(cluster);
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), &ns.name);
    wait_until(Duration::from_secs(120), "every status current", || async {
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items.len() == WORKLOADS
            && list.items.iter().all(|aw| {
                aw.status.as_ref().is_some_and(|s| {
                    s.observed_generation == aw.metadata.generation && s.workers.is_some()
                })
            })
    })
    .await;
    let owners = api.list(&ListParams::default()).await.unwrap().items;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let lp = ListParams::default();
    assert!(
        owned_once(&deployments.list(&lp).await.unwrap(), &owners),
        "Deployments: one per workload, owned"
    );
    assert!(
        owned_once(&services.list(&lp).await.unwrap(), &owners),
        "Services: one per workload, owned"
    );
    assert!(
        owned_once(&pdbs.list(&lp).await.unwrap(), &owners),
        "PDBs: one per workload, owned"
    );
    assert!(
        owned_once(&hpas.list(&lp).await.unwrap(), &owners),
        "HPAs: one per workload, owned"
    );
}
