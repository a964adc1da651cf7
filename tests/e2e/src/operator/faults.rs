//! Checks shared by the fault tests: what "converged with no duplicate, missing or
//! orphaned child" means, object by object.

use apiworkload_operator::api::ApiWorkload;
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, Service, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use serde::de::DeserializeOwned;

use super::{condition, create_workload};

pub const LABEL: &str = "apiworkload.io/workload";

/// Creates `w000`, `w001`, … 16 at a time.
pub async fn create_many(client: &Client, ns: &str, count: usize, spec: serde_json::Value) {
    stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let spec = spec.clone();
            async move {
                create_workload(client, ns, &format!("w{i:03}"), spec).await;
            }
        })
        .await;
}

/// Every workload's status is current and Ready. Says how far along it is every 15 s.
pub async fn all_ready(api: &Api<ApiWorkload>, count: usize) -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return false; // the apiserver may still be coming back
    };
    let current = |aw: &&ApiWorkload| {
        aw.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == aw.metadata.generation)
    };
    let ready = |aw: &&ApiWorkload| condition(aw, "Ready").is_some_and(|c| c.status == "True");
    let n_current = list.items.iter().filter(current).count();
    let n_ready = list
        .items
        .iter()
        .filter(|aw| current(aw) && ready(aw))
        .count();
    if let Ok(mut last) = LAST.lock()
        && last.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(15))
    {
        eprintln!(
            "  {} workloads: {n_current} current, {n_ready} Ready",
            list.items.len()
        );
        *last = Some(std::time::Instant::now());
    }
    list.items.len() == count && n_ready == count
}

/// Waits (at most 5 minutes) until the `count` workloads in `ns` are all Ready and
/// current; returns how long that took.
pub async fn wait_all_ready(client: &Client, ns: &str, count: usize) -> std::time::Duration {
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), ns);
    let t = std::time::Instant::now();
    crate::wait_until(
        std::time::Duration::from_secs(300),
        "every workload Ready and current",
        || all_ready(&api, count),
    )
    .await;
    t.elapsed()
}

/// Labelled objects of kind `K` in `ns`: exactly one per workload, named after it and
/// controlled by it. Returns a description of what is wrong, if anything.
pub async fn one_each<K>(client: &Client, ns: &str, owners: &[ApiWorkload]) -> Vec<String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let items = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(LABEL))
        .await
        .unwrap()
        .items;
    let mut wrong = Vec::new();
    for aw in owners {
        let mine = items
            .iter()
            .filter(|c| c.name_any() == aw.name_any())
            .filter(|c| {
                c.meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == aw.uid().as_ref())
            })
            .count();
        if mine != 1 {
            wrong.push(format!("{} {}: {mine}", K::kind(&()), aw.name_any()));
        }
    }
    if items.len() != owners.len() {
        wrong.push(format!(
            "{} {} labelled for {} workloads (orphans or duplicates)",
            items.len(),
            K::kind(&()),
            owners.len()
        ));
    }
    wrong
}

/// Per workload: one ReplicaSet (no second rollout from a spurious template change)
/// and `pods_each` live pods.
pub async fn one_replicaset_and_pods(
    client: &Client,
    ns: &str,
    owners: &[ApiWorkload],
    pods_each: usize,
) -> Vec<String> {
    let lp = ListParams::default().labels(LABEL);
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
        .items;
    let of = |labels: &std::collections::BTreeMap<String, String>, aw: &ApiWorkload| {
        labels.get(LABEL) == Some(&aw.name_any())
    };
    let mut wrong = Vec::new();
    for aw in owners {
        let rs = sets.iter().filter(|r| of(r.labels(), aw)).count();
        let live = pods
            .iter()
            .filter(|p| of(p.labels(), aw) && p.metadata.deletion_timestamp.is_none())
            .count();
        if (rs, live) != (1, pods_each) {
            wrong.push(format!("{}: {rs} ReplicaSets, {live} pods", aw.name_any()));
        }
    }
    wrong
}

/// Exactly one of each child per workload, controlled by it, nothing orphaned; one
/// ReplicaSet and `pods_each` pods per workload.
pub async fn assert_converged_once(client: &Client, ns: &str, pods_each: usize) {
    let owners = Api::<ApiWorkload>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut wrong = one_each::<Deployment>(client, ns, &owners).await;
    wrong.extend(one_each::<Service>(client, ns, &owners).await);
    wrong.extend(one_each::<ServiceAccount>(client, ns, &owners).await);
    wrong.extend(one_each::<RoleBinding>(client, ns, &owners).await);
    wrong.extend(one_replicaset_and_pods(client, ns, &owners, pods_each).await);
    assert!(
        wrong.is_empty(),
        "after the fault:\n  {}",
        wrong.join("\n  ")
    );
}
