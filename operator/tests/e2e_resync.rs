//! A resync of an unchanged workload writes nothing. Its own test binary, so the
//! operator's write counters see only this workload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use apiworkload_e2e::operator::*;
use apiworkload_e2e::{Cluster, TestNamespace, wait_until};
use apiworkload_operator::api::ApiWorkload;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

#[tokio::test]
async fn resync_of_an_unchanged_workload_performs_zero_writes() {
    let cluster = Cluster::shared();
    let (metrics, _op) = start_operator(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "resync", &[]).await;
    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    wait_status(&client, &ns.name, "api", "Ready=True", |aw| {
        condition(aw, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    // Settled: no write for 5 s (pods and the Deployment stop changing).
    let mut last = (metrics.total_writes(), tokio::time::Instant::now());
    wait_until(Duration::from_secs(60), "5 s without a write", || {
        let now = metrics.total_writes();
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        }
        let quiet = last.1.elapsed() >= Duration::from_secs(5);
        async move { quiet }
    })
    .await;

    let writes_before = metrics.total_writes();
    let writes_text = || {
        metrics
            .encode()
            .lines()
            .filter(|l| l.contains("writes_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before_text = writes_text();
    let noops_before = metrics.noop_reconciles.get();
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), &ns.name);
    let before = api.get("api").await.unwrap();
    // A metadata-only change triggers a reconcile without changing the spec.
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "a no-op reconcile", || async {
        metrics.noop_reconciles.get() > noops_before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = api.get("api").await.unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&before.status).unwrap(),
        serde_json::to_string_pretty(&after.status).unwrap(),
        "status must be byte-identical"
    );
    assert_eq!(
        metrics.total_writes(),
        writes_before,
        "a resync of an unchanged workload wrote something:\nbefore:\n{before_text}\nafter:\n{}",
        writes_text()
    );
    assert!(metrics.noop_reconciles.get() > noops_before);
}
