//! Optional children follow the cluster: when KEDA's ScaledObject API appears, a running
//! workload moves from its HPA to a ScaledObject (and back when it goes). A stand-in CRD
//! plays KEDA: the operator only needs the API to be served. Its own test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use apiworkload_e2e::operator::*;
use apiworkload_e2e::{Cluster, TestNamespace, poll_until, wait_until};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};

const KEDA_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scaledobjects.keda.sh}
spec:
  group: keda.sh
  names: {kind: ScaledObject, plural: scaledobjects, singular: scaledobject}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// Removes the stand-in CRD even when the test fails.
struct KedaCrd(&'static Cluster);

impl KedaCrd {
    fn install(cluster: &'static Cluster) -> KedaCrd {
        let crd: serde_json::Value = serde_yaml_ng::from_str(KEDA_CRD).unwrap();
        let (ok, out, err) = cluster.apply(&crd);
        assert!(ok, "{out}{err}");
        cluster.wait_crd_established("scaledobjects.keda.sh");
        KedaCrd(cluster)
    }
}

impl Drop for KedaCrd {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl(&["delete", "crd", "scaledobjects.keda.sh", "--wait=true"]);
    }
}

/// The tests install and remove the one stand-in CRD: one at a time.
static KEDA_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn workload_moves_from_hpa_to_scaled_object_when_keda_appears() {
    let _turn = KEDA_TESTS.lock().await;
    let cluster = Cluster::shared();
    let _ = cluster.kubectl(&[
        "delete",
        "crd",
        "scaledobjects.keda.sh",
        "--ignore-not-found",
    ]);
    let (_metrics, _op) = start_operator_with(cluster, Duration::from_secs(1));
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "keda", &[]).await;
    let mut spec = fixed_spec(2);
    spec["scaling"]["maxReplicas"] = serde_json::json!(6);
    create_workload(&client, &ns.name, "api", spec).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    wait_until(Duration::from_secs(30), "an HPA without KEDA", || async {
        hpas.get_opt("api").await.unwrap().is_some()
    })
    .await;
    let aw = wait_status(
        &client,
        &ns.name,
        "api",
        "AutoscalingReady=KEDANotInstalled",
        |aw| condition(aw, "AutoscalingReady").is_some_and(|c| c.reason == "KEDANotInstalled"),
    )
    .await;
    assert_eq!(
        aw.status.unwrap().autoscaler.as_deref(),
        Some("HorizontalPodAutoscaler")
    );

    let _keda = KedaCrd::install(cluster);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    let scaled: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let so = poll_until(
        Duration::from_secs(60),
        "a ScaledObject once KEDA is served",
        || async { scaled.get_opt("api").await.ok().flatten() },
    )
    .await;
    let trigger = &so.data["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metadata"]["ignoreNullValues"], "false");
    assert!(
        trigger["metadata"]["query"]
            .as_str()
            .unwrap()
            .contains(&format!("namespace=\"{}\"", ns.name))
    );
    assert_eq!(so.data["spec"]["fallback"]["replicas"], 4);
    assert_eq!(so.data["spec"]["minReplicaCount"], 2);
    wait_until(
        Duration::from_secs(30),
        "the HPA to be removed (exactly one autoscaler)",
        || async { hpas.get_opt("api").await.unwrap().is_none() },
    )
    .await;
    wait_status(
        &client,
        &ns.name,
        "api",
        "status.autoscaler=ScaledObject",
        |aw| {
            aw.status.as_ref().and_then(|s| s.autoscaler.as_deref()) == Some("ScaledObject")
                && condition(aw, "AutoscalingReady").is_some_and(|c| c.reason == "KEDAInflight")
        },
    )
    .await;
}

/// A ScaledObject is a child like any other: deleted by hand it comes back, and flipping
/// `scaling.metric` inflight → cpu → inflight leaves exactly one autoscaler after every
/// step (it once left none: the index vouched for a ScaledObject it had deleted).
#[tokio::test]
async fn scaled_objects_are_repaired_and_the_metric_flips_both_ways() {
    let _turn = KEDA_TESTS.lock().await;
    let cluster = Cluster::shared();
    let _keda = KedaCrd::install(cluster);
    let (_metrics, _op) = start_operator_with(cluster, Duration::from_secs(1));
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "keda-flip", &[]).await;
    let mut spec = fixed_spec(2);
    spec["scaling"]["maxReplicas"] = serde_json::json!(6);
    create_workload(&client, &ns.name, "api", spec).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    let scaled: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    // (HPA, ScaledObject) present; waits for `want`, then checks it holds for 3 s.
    let exactly = |want: (bool, bool), what: &'static str| {
        let (hpas, scaled) = (hpas.clone(), scaled.clone());
        async move {
            let now = || async {
                (
                    hpas.get_opt("api").await.unwrap().is_some(),
                    scaled.get_opt("api").await.unwrap().is_some(),
                )
            };
            wait_until(Duration::from_secs(60), what, || async {
                now().await == want
            })
            .await;
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(now().await, want, "{what}: exactly one autoscaler");
            }
        }
    };
    exactly((false, true), "a ScaledObject (inflight with KEDA)").await;

    scaled.delete("api", &Default::default()).await.unwrap();
    exactly((false, true), "the hand-deleted ScaledObject back").await;

    let metric = |m: &str| serde_json::json!({"spec": {"scaling": {"metric": m}}});
    patch_workload(&client, &ns.name, "api", metric("cpu")).await;
    exactly((true, false), "an HPA for cpu").await;
    patch_workload(&client, &ns.name, "api", metric("inflight")).await;
    exactly((false, true), "a ScaledObject again for inflight").await;
    patch_workload(&client, &ns.name, "api", metric("cpu")).await;
    exactly((true, false), "an HPA again for cpu").await;
}
