//! The Helm chart: lint and render (default and all-features values), least-privilege
//! RBAC, the alert rules under promtool, and on the real control plane `helm install`,
//! then the real operator binary running with the chart's ServiceAccount token (not
//! admin) through the scenario of the operator's e2e tests, then `helm uninstall`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, process::Command, time::Duration};

use apiworkload_e2e::operator::*;
use apiworkload_e2e::process::Operator;
use apiworkload_e2e::{Cluster, TestNamespace, poll_until, repo_root, unique_suffix};
use apiworkload_operator::api::ApiWorkload;
use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::RoleBinding,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

fn chart() -> PathBuf {
    repo_root().join("charts/apiworkload-operator")
}

fn all_features() -> String {
    chart()
        .join("ci/all-features-values.yaml")
        .to_string_lossy()
        .into_owned()
}

/// Runs helm (the cluster's build) and returns stdout; panics with stderr on failure.
fn helm(args: &[&str]) -> String {
    let out = Cluster::shared()
        .command("helm")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` → the rendered objects.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "apiworkload",
        chart.to_str().unwrap(),
        "--namespace",
        "apiworkload",
    ];
    args.extend_from_slice(extra);
    serde_yaml_ng::Deserializer::from_str(&helm(&args))
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize as _;

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

#[test]
fn chart_lints_and_renders_with_default_and_all_features_values() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for values in [None, Some(all_features())] {
        let mut args = vec!["lint", "--strict", chart];
        if let Some(v) = &values {
            args.extend(["-f", v]);
        }
        let out = helm(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    let default = render(&[]);
    assert_eq!(
        kinds(&default),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    );
    // The Prometheus Operator objects need both the values and the served API.
    let without_api = render(&["-f", &all_features()]);
    assert!(
        !kinds(&without_api)
            .iter()
            .any(|k| k.contains("Monitor") || k == "PrometheusRule")
    );
    let all = render(&[
        "-f",
        &all_features(),
        "--api-versions",
        "monitoring.coreos.com/v1",
    ]);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(kinds(&all).contains(&kind.to_string()), "{kind} missing");
    }
    // Two replicas turn leader election on; one does not.
    let args = |objects: &[Value]| {
        objects.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]
                ["containers"][0]["args"]
                .clone()
    };
    assert!(
        args(&all)
            .as_array()
            .unwrap()
            .contains(&json!("--leader-elect"))
    );
    assert!(
        !args(&default)
            .as_array()
            .unwrap()
            .contains(&json!("--leader-elect"))
    );
    // Restricted pod security for the operator itself.
    let deployment = default.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Dashboards for Grafana's sidecar, valid JSON with the promised variables.
    for cm in default.iter().filter(|o| o["kind"] == "ConfigMap") {
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let (_, json) = cm["data"].as_object().unwrap().iter().next().unwrap();
        let dashboard: Value = serde_json::from_str(json.as_str().unwrap()).unwrap();
        let vars: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(vars.starts_with(&["datasource", "namespace"]), "{vars:?}");
    }
    // Bad values are refused by values.schema.json with the field named.
    let out = Cluster::shared()
        .command("helm")
        .args(["template", "x", chart, "--set", "replicaCount=0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicaCount"));
}

/// Every rule of every Role and ClusterRole, listed: no wildcard verb, resource or API
/// group, nothing on Secrets or ConfigMaps, `bind` only on the sidecar's ClusterRole.
#[test]
fn rbac_is_least_privilege() {
    let objects = render(&["-f", &all_features()]);
    let mut listed = Vec::new();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let name = role["metadata"]["name"].as_str().unwrap();
        for rule in role["rules"].as_array().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            let (groups, resources, verbs) = (list("apiGroups"), list("resources"), list("verbs"));
            for field in [&groups, &resources, &verbs] {
                assert!(
                    !field.iter().any(|v| v.contains('*')),
                    "{name}: wildcard in {rule}"
                );
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{name}: {rule}");
            for forbidden in ["secrets", "configmaps"] {
                assert!(
                    !resources.iter().any(|r| r.starts_with(forbidden)),
                    "{name}: {rule}"
                );
            }
            for dangerous in ["escalate", "impersonate"] {
                assert!(!verbs.iter().any(|v| v == dangerous), "{name}: {rule}");
            }
            if verbs.iter().any(|v| v == "bind") {
                assert_eq!(
                    list("resourceNames"),
                    ["apiworkload-sidecar"],
                    "bind only the sidecar role: {rule}"
                );
            }
            listed.push(format!("{name}: {groups:?} {resources:?} {verbs:?}"));
        }
    }
    eprintln!("RBAC rules:\n  {}", listed.join("\n  "));
    assert!(listed.len() >= 14, "{listed:#?}");
}

/// The alert rules parse and their promtool unit tests pass (Debian's prometheus
/// package ships promtool; tests/run installs it).
#[test]
fn alert_rules_pass_promtool() {
    let rules = chart().join("files/alerts.yaml");
    for args in [
        vec!["check", "rules", rules.to_str().unwrap()],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(repo_root().join("tests/alerts"))
            .output()
            .expect("promtool is required (tests/run installs Debian's prometheus package)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `helm install` on the real control plane, then the operator with the chart's
/// ServiceAccount token runs the e2e scenario: the README example converges (every
/// child, the sidecar's identity, Ready), a CPU change re-sizes the workers, a delete
/// collects every child; no permission error on the way. Then `helm uninstall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_on_the_charts_service_account() {
    let cluster = Cluster::shared();
    let admin = cluster.client().await;
    let release = format!("apiw-chart-{}", unique_suffix());
    let system = TestNamespace::create(&admin, "apiworkload-system", &[]).await;
    let chart = chart();
    let out = helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &system.name,
        "--wait=false",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("kubectl get apiw"),
        "NOTES.txt says what to do next:\n{out}"
    );
    let fullname = format!("{release}-apiworkload-operator");
    let sidecar_role = format!("{fullname}-sidecar");

    let kubeconfig = cluster.token_kubeconfig(&system.name, &fullname, &[]);
    let mut operator = Operator::start_as(
        &kubeconfig,
        &[format!("--sidecar-cluster-role={sidecar_role}")],
        "chart-operator",
        &system.name,
    );

    let ns = apply_example(cluster, &admin, "chart-example").await;
    let name = "search-api";
    let d = wait_deployment(&admin, &ns.name, name, "the Deployment", |_| true).await;
    assert_eq!(flag(&app_command(&d), "--workers").as_deref(), Some("5"));
    let aw = wait_status(&admin, &ns.name, name, "Ready", |aw| {
        condition(aw, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(
        aw.status.as_ref().unwrap().observed_generation,
        aw.metadata.generation
    );
    Api::<Service>::namespaced(admin.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    let binding = Api::<RoleBinding>::namespaced(admin.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    assert_eq!(
        binding.role_ref.name, sidecar_role,
        "bound with the chart's ClusterRole"
    );

    // An edit: 3 CPUs → 7 workers.
    let workloads: Api<ApiWorkload> = Api::namespaced(admin.clone(), &ns.name);
    workloads
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"resources": {"limits": {"cpu": "3", "memory": "4Gi"}}}}),
            ),
        )
        .await
        .unwrap();
    wait_deployment(&admin, &ns.name, name, "7 workers", |d| {
        flag(&app_command(d), "--workers").as_deref() == Some("7")
    })
    .await;

    // No permission was missing on the way (other tests' namespaces may be terminating
    // meanwhile, and writes there are refused: only this test's namespaces count).
    let logs = operator.logs();
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .filter(|l| l.contains(&ns.name) || l.contains(&system.name))
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the operator:\n{}",
        refused.join("\n")
    );
    assert!(
        logs.contains("admin server listening"),
        "the log is captured:\n{logs}"
    );

    // Delete: every child goes with it.
    workloads
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), &ns.name);
    poll_until(Duration::from_secs(60), "garbage collection", || async {
        deployments
            .get_opt(name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(operator.terminate().success());

    helm(&["uninstall", &release, "--namespace", &system.name]);
    let (_, out, _) = cluster.kubectl(&[
        "get",
        "clusterrole",
        &fullname,
        &sidecar_role,
        "--ignore-not-found",
    ]);
    assert!(
        out.trim().is_empty(),
        "uninstall removed the cluster-scoped objects: {out}"
    );
    let _ = std::fs::remove_file(kubeconfig);
}
