//! Proves the test control plane is a real Kubernetes: controllers, scheduler and kwok
//! run pods; admission (Pod Security, CEL) is live; the tools report the pinned release.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step fails the test

use std::time::Duration;

use apiworkload_e2e::{Cluster, TestNamespace, repo_root, wait_until};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::json;

fn pinned_version() -> String {
    let v = std::fs::read_to_string(repo_root().join("tests/cluster/k8s-version")).unwrap();
    format!("v{}", v.trim())
}

#[tokio::test]
async fn deployment_pods_run_on_kwok_node_and_service_gets_cluster_ip() {
    let client = Cluster::shared().client().await;
    let ns = TestNamespace::create(&client, "cp-deploy", &[]).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(60),
        "2 Running pods on kwok-node-0",
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap();
            list.items
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("kwok-node-0")
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count()
                == 2
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "deployment to report 2 ready replicas",
        || async {
            let d = deployments.get("web").await.unwrap();
            d.status.and_then(|s| s.ready_replicas) == Some(2)
        },
    )
    .await;

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]}
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let ip = created.spec.unwrap().cluster_ip.unwrap();
    let parsed: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(
        parsed.octets()[0] == 10 && parsed.octets()[1] == 96,
        "ClusterIP {ip} is not in 10.96.0.0/16"
    );
}

fn pod(name: &str, security: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "app", "image": "example.invalid/app:1", "securityContext": security
        }]}
    }))
    .unwrap()
}

#[tokio::test]
async fn restricted_namespace_rejects_privileged_pod_and_admits_restricted_one() {
    let client = Cluster::shared().client().await;
    let ns = TestNamespace::create(
        &client,
        "cp-psa",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let err = pods
        .create(
            &PostParams::default(),
            &pod("privileged", json!({"privileged": true})),
        )
        .await
        .expect_err("a privileged pod must be rejected in a restricted namespace");
    let msg = err.to_string();
    assert!(
        msg.contains("violates PodSecurity \"restricted:"),
        "unexpected error: {msg}"
    );
    assert!(msg.contains("privileged"), "unexpected error: {msg}");

    let restricted = json!({
        "runAsNonRoot": true, "runAsUser": 10001, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    });
    pods.create(&PostParams::default(), &pod("restricted", restricted))
        .await
        .expect("a restricted pod must be admitted");
}

#[tokio::test]
async fn crd_cel_rule_rejects_violating_object_with_its_message() {
    let client = Cluster::shared().client().await;
    let group = format!("cel{}.apiworkload.test", apiworkload_e2e::unique_suffix());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("windows.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Window", "plural": "windows", "singular": "window"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                        "x-kubernetes-validations": [{
                            "rule": "self.min <= self.max",
                            "message": "spec.min must not exceed spec.max"
                        }]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let name = format!("windows.{group}");
    Cluster::shared().wait_crd_established(&name);

    let ns = TestNamespace::create(&client, "cp-cel", &[]).await;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Window"));
    let windows: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let object = |name: &str, min: i64, max: i64| {
        DynamicObject::new(name, &ar).data(json!({"spec": {"min": min, "max": max}}))
    };
    // Discovery of a new CRD can lag a moment behind Established.
    let mut ok = None;
    for _ in 0..50 {
        match windows
            .create(&PostParams::default(), &object("fits", 1, 2))
            .await
        {
            Ok(o) => {
                ok = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(ok.is_some(), "a valid object must be accepted");

    let err = windows
        .create(&PostParams::default(), &object("inverted", 5, 2))
        .await
        .expect_err("the CEL rule must reject min > max");
    assert!(
        err.to_string()
            .contains("spec.min must not exceed spec.max"),
        "got: {err}"
    );
    crds.delete(&name, &Default::default()).await.unwrap();
}

#[test]
fn kubectl_and_helm_report_the_pinned_release() {
    let cluster = Cluster::shared();
    let expected = pinned_version();

    let (ok, out, err) = cluster.kubectl(&["version", "-o", "json"]);
    assert!(ok, "kubectl version failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clientVersion"]["gitVersion"], expected, "{out}");
    assert_eq!(v["serverVersion"]["gitVersion"], expected, "{out}");

    let helm = cluster
        .command("helm")
        .args(["version", "--short"])
        .output()
        .unwrap();
    assert!(
        helm.status.success(),
        "{}",
        String::from_utf8_lossy(&helm.stderr)
    );
    let helm_version = String::from_utf8_lossy(&helm.stdout);
    let pinned_helm = std::fs::read_to_string(repo_root().join("tests/cluster/tools/helm/go.mod"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("helm.sh/helm/v3 ")
                .map(|v| v.to_string())
        })
        .unwrap();
    let pinned_helm = pinned_helm.split_whitespace().next().unwrap();
    assert!(
        helm_version.starts_with(pinned_helm),
        "helm says {helm_version}, pinned {pinned_helm}"
    );

    // helm's idea of the cluster's version (used by chart kubeVersion checks) is the server's.
    let minor = expected.split('.').nth(1).unwrap();
    let tpl = cluster
        .command("helm")
        .args(["template", "probe", "--show-only", "templates/v.yaml"])
        .arg(write_probe_chart())
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&tpl.stdout);
    assert!(
        rendered.contains(&format!("minor: \"{minor}\"")),
        "helm template without a cluster should default to the pinned minor {minor}: {rendered}{}",
        String::from_utf8_lossy(&tpl.stderr)
    );
}

/// A one-template chart that prints helm's default Capabilities.KubeVersion.
fn write_probe_chart() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("helm-probe-{}", apiworkload_e2e::unique_suffix()));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/v.yaml"),
        "minor: {{ .Capabilities.KubeVersion.Minor | quote }}\n",
    )
    .unwrap();
    dir
}

/// Without a renewed node Lease the node-lifecycle controller marks the node NotReady
/// after its grace period and flips running pods to Ready=False.
#[tokio::test]
async fn kwok_renews_the_node_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = Cluster::shared().client().await;
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let renewed = || async {
        leases
            .get_opt("kwok-node-0")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .map(|t| t.0)
    };
    let first =
        apiworkload_e2e::poll_until(Duration::from_secs(30), "a Lease for kwok-node-0", renewed)
            .await;
    wait_until(
        Duration::from_secs(60),
        "the node Lease to be renewed",
        || async { renewed().await > Some(first) },
    )
    .await;
}
