//! One ApiWorkload the operator cannot decode never affects any other: it is reported on
//! itself (`ConfigConsistent=False`, reason `UnreadableSpec`, naming the field) while every
//! other workload is reconciled, whether it was there when the operator started or
//! arrived later; log lines stay bounded, and SIGTERM stops the operator promptly.
//!
//! Such an object gets past today's CRD no more, so the test installs the CRD of an
//! earlier release (the stall threshold bounded by its pattern alone, which let
//! `99999999999999999999999h` through) on a private control plane, as a cluster upgraded
//! from that release would hold it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{PrivateCluster, TestNamespace, poll_until};
use apiworkload_operator::api::rules::crd;
use serde_json::{Value, json};

/// The duration pattern of the earlier release: any number of digits.
const EARLIER_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Today's CRD with the stall threshold as an earlier release declared it.
fn earlier_crd() -> Value {
    let mut crd = serde_json::to_value(crd()).unwrap();
    let node = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/diagnostics/properties/stallThreshold")
        .unwrap();
    let description = node["description"].clone();
    *node = json!({"type": "string", "pattern": EARLIER_PATTERN, "maxLength": 32, "description": description});
    crd
}

fn install(cluster: &PrivateCluster, crd: &Value) {
    let (ok, out, err) = cluster.apply(crd);
    assert!(ok, "{out}{err}");
    cluster.wait_crd_established("apiworkloads.apiworkload.io");
}

/// `kubectl apply` of one workload (retried while discovery catches up with the CRD).
async fn apply(cluster: &PrivateCluster, ns: &str, name: &str, spec: Value) {
    let doc = json!({"apiVersion": "apiworkload.io/v1alpha1", "kind": "ApiWorkload",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    poll_until(Duration::from_secs(30), "kubectl apply", || async {
        cluster.apply(&doc).0.then_some(())
    })
    .await;
}

/// The ConfigConsistent condition of a workload, read without decoding its spec.
fn config_consistent(cluster: &PrivateCluster, ns: &str, name: &str) -> Option<Value> {
    let (ok, out, _) = cluster.kubectl(&["get", "apiw", name, "-n", ns, "-o", "json"]);
    let aw: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    aw.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "ConfigConsistent")
        .cloned()
}

fn bad_spec() -> Value {
    let mut spec = fixed_spec(1);
    spec["diagnostics"] = json!({"stallThreshold": "99999999999999999999999h"});
    spec
}

#[tokio::test]
async fn an_undecodable_workload_is_reported_on_itself_and_stops_no_other() {
    let cluster = PrivateCluster::up("unreadable");
    install(&cluster, &earlier_crd());
    let client = cluster.client().await;
    let team_a = TestNamespace::create(&client, "team-a", &[]).await;
    let team_b = TestNamespace::create(&client, "team-b", &[]).await;

    // There before the operator starts: its initial list holds the bad object.
    apply(&cluster, &team_a.name, "broken", bad_spec()).await;
    apply(&cluster, &team_b.name, "healthy", fixed_spec(1)).await;
    let mut op = Operator::start(&cluster, "unreadable-test", false, "default");

    wait_deployment(
        &client,
        &team_b.name,
        "healthy",
        "the other team's Deployment",
        |_| true,
    )
    .await;
    let reported = poll_until(
        Duration::from_secs(60),
        "UnreadableSpec on the bad object",
        || async {
            config_consistent(&cluster, &team_a.name, "broken")
                .filter(|c| c["reason"] == "UnreadableSpec")
        },
    )
    .await;
    assert_eq!(reported["status"], "False");
    let message = reported["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.diagnostics.stallThreshold: invalid duration"),
        "{message}"
    );
    assert!(message.contains("nothing of it is applied"), "{message}");
    let (_, column, _) = cluster.kubectl(&[
        "get",
        "apiw",
        "broken",
        "-n",
        &team_a.name,
        "-o",
        "jsonpath={.status.reason}",
    ]);
    assert_eq!(column, "UnreadableSpec", "the Reason column of kubectl get");
    let (_, events, _) = cluster.kubectl(&[
        "get",
        "events",
        "-n",
        &team_a.name,
        "--field-selector",
        "reason=UnreadableSpec",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "a Warning Event on the object");
    let (_, deployments, _) =
        cluster.kubectl(&["get", "deployments", "-n", &team_a.name, "-o", "name"]);
    assert_eq!(
        deployments.trim(),
        "",
        "nothing is applied for an object that cannot be read"
    );

    // Arriving while it runs: reported too, and a workload created after it still converges.
    apply(&cluster, &team_b.name, "broken-later", bad_spec()).await;
    apply(&cluster, &team_b.name, "after", fixed_spec(1)).await;
    wait_deployment(
        &client,
        &team_b.name,
        "after",
        "a Deployment created after the bad objects",
        |_| true,
    )
    .await;
    poll_until(
        Duration::from_secs(60),
        "UnreadableSpec on the later bad object",
        || async {
            config_consistent(&cluster, &team_b.name, "broken-later")
                .filter(|c| c["reason"] == "UnreadableSpec")
        },
    )
    .await;

    // Fixed by its owner: read and reconciled like any other.
    let (ok, out, err) = cluster.kubectl(&[
        "patch",
        "apiw",
        "broken",
        "-n",
        &team_a.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"diagnostics":{"stallThreshold":"200ms"}}}"#,
    ]);
    assert!(ok, "{out}{err}");
    wait_deployment(
        &client,
        &team_a.name,
        "broken",
        "the fixed workload's Deployment",
        |_| true,
    )
    .await;
    poll_until(
        Duration::from_secs(60),
        "ConfigConsistent=True after the fix",
        || async {
            config_consistent(&cluster, &team_a.name, "broken").filter(|c| c["status"] == "True")
        },
    )
    .await;

    let logs = op.logs();
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    assert!(
        op.terminate().success(),
        "SIGTERM stops it cleanly and promptly"
    );
}
