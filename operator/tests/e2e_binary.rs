//! The real `apiworkload-operator` binary: admin endpoints, clean shutdown on SIGTERM,
//! and leader election between two replicas. Its own test binary (its own operators).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{Cluster, TestNamespace, install_crds, poll_until, wait_until};

#[tokio::test]
async fn binary_serves_admin_endpoints_reconciles_and_stops_on_sigterm() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "binary", &[]).await;
    let mut op = Operator::start(cluster, "binary-test", false, "default");
    wait_until(Duration::from_secs(30), "/readyz", || async {
        op.get("/readyz").is_some_and(|r| r.ok())
    })
    .await;
    assert_eq!(op.get("/healthz").unwrap().status, 200);

    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    wait_deployment(&client, &ns.name, "api", "the Deployment", |_| true).await;
    let applied = poll_until(
        Duration::from_secs(30),
        "an applied reconcile in /metrics",
        || async {
            op.metric("apiworkload_operator_reconciles_total{result=\"applied\"}")
                .filter(|v| *v >= 1.0)
        },
    )
    .await;
    assert!(applied >= 1.0);
    let body = op.get("/metrics").unwrap().body;
    assert!(
        body.contains("apiworkload_operator_reconcile_duration_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(op.terminate().success(), "clean shutdown exits 0");
}

#[tokio::test]
async fn a_standby_replica_takes_over_the_lease_when_the_leader_stops() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "leader", &[]).await;
    let holder = || lease_holder(&client, &ns.name);

    let mut a = Operator::start(cluster, "replica-a", true, &ns.name);
    let first = poll_until(Duration::from_secs(30), "a lease holder", holder).await;
    assert_eq!(first, "replica-a");
    let mut b = Operator::start(cluster, "replica-b", true, &ns.name);
    wait_until(
        Duration::from_secs(30),
        "replica-b up as a standby",
        || async { b.metric("apiworkload_operator_leader").is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await; // beyond one renewal period
    assert_eq!(
        b.metric("apiworkload_operator_leader"),
        Some(0.0),
        "only one leader at a time"
    );
    assert_eq!(a.metric("apiworkload_operator_leader"), Some(1.0));

    let stopped = Instant::now();
    assert!(a.terminate().success());
    poll_until(
        Duration::from_secs(20),
        "replica-b to take over within 20 s",
        || async { (holder().await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "replica-b to report leadership",
        || async { b.metric("apiworkload_operator_leader") == Some(1.0) },
    )
    .await;
    eprintln!("takeover after a clean stop: {:?}", stopped.elapsed());

    // Now a crash: SIGKILL, no lease release. A third replica waits as a standby and
    // reconciles nothing while replica-b holds the lease (no workload reconciled by two
    // replicas at once), then takes over within 20 s of the kill.
    create_workload(&client, &ns.name, "probe", fixed_spec(1)).await;
    let reconciles = "apiworkload_operator_reconciles_total";
    wait_until(Duration::from_secs(30), "replica-b reconciling", || async {
        b.metric_sum(reconciles) > 0.0
    })
    .await;
    let c = Operator::start(cluster, "replica-c", true, &ns.name);
    wait_until(
        Duration::from_secs(30),
        "replica-c up as a standby",
        || async { c.metric("apiworkload_operator_leader").is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.metric("apiworkload_operator_leader"), Some(0.0));
    assert_eq!(c.metric_sum(reconciles), 0.0, "a standby reconciled");
    let killed = Instant::now();
    b.kill();
    poll_until(
        Duration::from_secs(20),
        "replica-c to take over within 20 s of SIGKILL",
        || async { (holder().await.as_deref() == Some("replica-c")).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    wait_until(Duration::from_secs(10), "replica-c reconciling", || async {
        c.metric("apiworkload_operator_leader") == Some(1.0) && c.metric_sum(reconciles) > 0.0
    })
    .await;
    eprintln!("takeover after SIGKILL: {takeover:?}");
    assert!(takeover <= Duration::from_secs(20));
}
