//! The operator against the real control plane: admission, convergence, updates,
//! garbage collection, Pod Security, and reconciler-side rejections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use apiworkload_e2e::operator::*;
use apiworkload_e2e::{Cluster, TestNamespace, install_crds, repo_root, wait_until};
use apiworkload_operator::api::ApiWorkload;
use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

/// The spec files of `tests/e2e/<dir>`, in name order.
fn spec_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("tests/e2e").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Every file in tests/e2e/bad-specs is refused by the apiserver with the message its
/// `# expect:` line names.
#[tokio::test]
async fn bad_specs_are_rejected_with_the_intended_message() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "bad-specs", &[]).await;
    let files = spec_files("bad-specs");
    assert!(
        files.len() >= 60,
        "keep at least 60 bad specs, found {}",
        files.len()
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .expect("an # expect: line");
        let (ok, out, err) =
            cluster.kubectl(&["apply", "-n", &ns.name, "-f", &file.to_string_lossy()]);
        assert!(!ok, "{} was accepted: {out}", file.display());
        assert!(
            err.contains(expected),
            "{}: expected {expected:?} in:\n{err}",
            file.display()
        );
        // What the field must be, never the machinery: no bare regex, no CEL error.
        for leak in [
            "should match",
            "type conversion",
            "evaluating rule",
            "no such overload",
            "internal error",
        ] {
            assert!(
                !err.contains(leak),
                "{}: {leak:?} leaked into:\n{err}",
                file.display()
            );
        }
    }
    let api: Api<ApiWorkload> = Api::namespaced(client, &ns.name);
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was stored"
    );
}

/// Every file in tests/e2e/warned-specs is accepted, reconciled, and warned about in
/// `.status.warnings` with the text its `# warn:` line names.
#[tokio::test]
async fn dangerous_but_legal_specs_are_accepted_and_warned() {
    let cluster = Cluster::shared();
    shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "warned-specs", &[]).await;
    let files = spec_files("warned-specs");
    assert!(files.len() >= 4, "found {} warned specs", files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# warn: "))
            .expect("a # warn: line");
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: "))
            .expect("a name");
        let (ok, out, err) =
            cluster.kubectl(&["apply", "-n", &ns.name, "-f", &file.to_string_lossy()]);
        assert!(ok, "{} was refused: {out}{err}", file.display());
        wait_status(&client, &ns.name, name, expected, |aw| {
            aw.status
                .as_ref()
                .is_some_and(|s| s.warnings.iter().any(|w| w.contains(expected)))
        })
        .await;
    }
}

/// The README's example, in a namespace that enforces Pod Security "restricted".
#[tokio::test]
async fn example_workload_converges_in_a_restricted_namespace() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = apply_example(cluster, &client, "example").await;

    let d = wait_deployment(&client, &ns.name, "search-api", "the Deployment", |_| true).await;
    let command = app_command(&d);
    assert_eq!(
        &command[..4],
        [
            "gunicorn",
            "app.main:app",
            "--worker-class",
            "apiworkload_uvicorn_worker.UvicornWorker"
        ]
    );
    assert_eq!(
        (
            flag(&command, "--worker-connections").as_deref(),
            flag(&command, "--pythonpath").as_deref()
        ),
        (Some("100"), Some("/etc/apiworkload/python")),
        "the concurrency limit, through the operator's worker class"
    );
    assert_eq!(
        flag(&command, "--workers").as_deref(),
        Some("5"),
        "2 cores → 2×2+1, under the memory cap of 7"
    );
    assert_eq!(
        flag(&command, "--keep-alive").as_deref(),
        Some("75"),
        "ALB idle 60s + 15s"
    );
    assert_eq!(
        flag(&command, "--max-requests-jitter").as_deref(),
        Some("1000")
    );
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(60),
        "25s drain + 30s graceful + 5s"
    );
    let app = &pod.containers[0];
    assert_eq!(
        app.lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap()
            .seconds,
        25
    );
    let startup = app.startup_probe.as_ref().unwrap();
    assert_eq!(
        startup.period_seconds.unwrap() * startup.failure_threshold.unwrap(),
        120,
        "the 2m startup budget"
    );
    assert_eq!(
        app.security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    let ours = d
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.manager.as_deref() == Some("apiworkload-operator"))
        .unwrap();
    let owned = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(
        owned.contains("f:template") && !owned.contains("f:replicas"),
        "the HPA, not the operator, owns spec.replicas: {owned}"
    );

    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("search-api")
        .await
        .unwrap();
    assert!(
        svc.spec
            .unwrap()
            .cluster_ip
            .is_some_and(|ip| ip.starts_with("10.96."))
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .get("search-api")
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns.name)
        .get("search-api")
        .await
        .unwrap();
    let hpa = hpa.spec.unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 20));
    assert_eq!(
        hpa.behavior
            .unwrap()
            .scale_down
            .unwrap()
            .stabilization_window_seconds,
        Some(300)
    );

    // The HPA raises the Deployment to minReplicas; the restricted namespace admits the pods.
    let aw = wait_status(
        &client,
        &ns.name,
        "search-api",
        "Ready=True with 2 pods",
        |aw| {
            condition(aw, "Ready").is_some_and(|c| c.status == "True")
                && aw
                    .status
                    .as_ref()
                    .and_then(|s| s.replicas.as_ref())
                    .is_some_and(|r| r.ready == 2)
        },
    )
    .await;
    let status = aw.status.unwrap();
    let workers = status.workers.unwrap();
    assert_eq!(
        (workers.count, workers.basis.as_str(), workers.memory_cap),
        (5, "limits.cpu", Some(7))
    );
    assert_eq!(status.effective.unwrap().keep_alive, "1m15s");
    assert_eq!(status.command.unwrap(), command.join(" "));
    assert_eq!(status.observed_generation, aw.metadata.generation);
    assert_eq!(
        condition_status(&status.conditions, "ConfigConsistent"),
        "True"
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("apiworkload.io/workload=search-api"))
        .await
        .unwrap();
    assert_eq!(
        pods.items.len(),
        2,
        "both pods admitted under Pod Security restricted"
    );
    assert!(
        pods.items
            .iter()
            .all(|p| p.status.as_ref().unwrap().phase.as_deref() == Some("Running"))
    );
}

fn condition_status(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn cpu_limit_change_moves_the_worker_count_and_back() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "resize", &[]).await;
    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    let workers = |n: &'static str| {
        move |d: &k8s_openapi::api::apps::v1::Deployment| {
            flag(&app_command(d), "--workers").as_deref() == Some(n)
        }
    };
    wait_deployment(
        &client,
        &ns.name,
        "api",
        "--workers 5 for 2 cores",
        workers("5"),
    )
    .await;

    let set_cpu = |cpu: &'static str| {
        patch_workload(
            &client,
            &ns.name,
            "api",
            json!({"spec": {"resources": {"limits": {"cpu": cpu}}}}),
        )
    };
    set_cpu("3").await;
    let d = wait_deployment(
        &client,
        &ns.name,
        "api",
        "--workers 7 for 3 cores",
        workers("7"),
    )
    .await;
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "PYTHON_CPU_COUNT" && e.value.as_deref() == Some("3"))
    );
    wait_status(&client, &ns.name, "api", "status.workers.count 7", |aw| {
        aw.status
            .as_ref()
            .and_then(|s| s.workers.as_ref())
            .is_some_and(|w| w.count == 7)
    })
    .await;
    set_cpu("2").await;
    wait_deployment(
        &client,
        &ns.name,
        "api",
        "--workers back to 5",
        workers("5"),
    )
    .await;
}

#[tokio::test]
async fn deleting_the_workload_garbage_collects_every_child() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "gc", &[]).await;
    let mut spec = fixed_spec(2);
    spec["scaling"]["maxReplicas"] = json!(4);
    create_workload(&client, &ns.name, "api", spec).await;
    wait_deployment(&client, &ns.name, "api", "the Deployment", |_| true).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    wait_until(Duration::from_secs(30), "Service, PDB and HPA", || async {
        services.get_opt("api").await.unwrap().is_some()
            && pdbs.get_opt("api").await.unwrap().is_some()
            && hpas.get_opt("api").await.unwrap().is_some()
    })
    .await;

    Api::<ApiWorkload>::namespaced(client.clone(), &ns.name)
        .delete("api", &DeleteParams::foreground())
        .await
        .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(60),
        "every child to be garbage-collected",
        || async {
            deployments.get_opt("api").await.unwrap().is_none()
                && services.get_opt("api").await.unwrap().is_none()
                && pdbs.get_opt("api").await.unwrap().is_none()
                && hpas.get_opt("api").await.unwrap().is_none()
        },
    )
    .await;
}

/// A spec CEL accepts but the reconciler refuses (a passthrough volume named like the
/// operator's /tmp) is reported, and nothing is applied.
#[tokio::test]
async fn reconciler_side_rejection_applies_nothing_and_says_why() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "reserved", &[]).await;
    let mut spec = fixed_spec(1);
    spec["volumes"] = json!([{"name": "tmp", "emptyDir": {}}]);
    create_workload(&client, &ns.name, "api", spec).await;
    let aw = wait_status(&client, &ns.name, "api", "ConfigConsistent=False", |aw| {
        condition(aw, "ConfigConsistent").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&aw, "ConfigConsistent").unwrap();
    assert_eq!(c.reason, "ReservedVolumeName");
    assert!(c.message.contains("rename the volume"), "{}", c.message);
    assert_eq!(
        aw.status.as_ref().unwrap().reason.as_deref(),
        Some("ReservedVolumeName"),
        "the root cause heads kubectl get"
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("api").await.unwrap().is_none(),
        "a broken spec must not be half-applied"
    );
}

/// Removing a setting removes it from the child (server-side apply drops fields the
/// operator stops setting; a subset comparison alone would never re-apply).
#[tokio::test]
async fn removing_a_setting_removes_it_from_the_deployment() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "removal", &[]).await;
    let mut spec = fixed_spec(1);
    spec["imagePullPolicy"] = json!("Always");
    create_workload(&client, &ns.name, "api", spec).await;
    let policy = |want: &'static str| {
        move |d: &k8s_openapi::api::apps::v1::Deployment| {
            app_container(d).image_pull_policy.as_deref() == Some(want)
        }
    };
    wait_deployment(
        &client,
        &ns.name,
        "api",
        "imagePullPolicy Always",
        policy("Always"),
    )
    .await;
    patch_workload(
        &client,
        &ns.name,
        "api",
        json!({"spec": {"imagePullPolicy": null}}),
    )
    .await;
    // The apiserver's default for a tagged image.
    wait_deployment(
        &client,
        &ns.name,
        "api",
        "imagePullPolicy back to the default",
        policy("IfNotPresent"),
    )
    .await;
}

/// Drift made by someone else is undone: an edited Deployment, a relabelled Service and
/// a deleted RoleBinding all come back as rendered. (The operator keeps only a few facts
/// per child and skips reads when they are unchanged; each of these changes them.)
#[tokio::test]
async fn drift_in_children_is_corrected() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "drift", &[]).await;
    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    wait_deployment(&client, &ns.name, "api", "rendered", |_| true).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client.clone(), &ns.name);
    wait_until(Duration::from_secs(30), "the RoleBinding", || async {
        bindings.get_opt("api").await.unwrap().is_some()
    })
    .await;

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    let rendered = app_container(&deployments.get("api").await.unwrap()).clone();
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": rendered.name, "image": "registry.example/edited:1"}]}}}})),
        )
        .await
        .unwrap();
    services
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/name": "edited"}}})),
        )
        .await
        .unwrap();
    bindings
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();

    wait_deployment(&client, &ns.name, "api", "the edit undone", |d| {
        app_container(d).image == rendered.image
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "the Service's label restored",
        || async {
            let s = services.get("api").await.unwrap();
            s.metadata
                .labels
                .unwrap_or_default()
                .get("app.kubernetes.io/name")
                != Some(&"edited".to_string())
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the RoleBinding recreated",
        || async { bindings.get_opt("api").await.unwrap().is_some() },
    )
    .await;
}

/// A child's name taken by an object the workload does not own (a Service made by
/// hand) is never adopted: the operator leaves it exactly as it was, creates nothing
/// that would run behind it, and says what to change in the status and an Event. Once
/// the name is free, the next reconcile (an edit of the workload retries at once)
/// converges.
#[tokio::test]
async fn a_name_taken_by_someone_elses_object_is_left_alone_and_reported() {
    let cluster = Cluster::shared();
    let _ = shared_operator();
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "taken", &[]).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Service = serde_json::from_value(json!({
        "metadata": {"name": "api", "labels": {"owner": "someone"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    services
        .create(&kube::api::PostParams::default(), &theirs)
        .await
        .unwrap();
    let before = services.get("api").await.unwrap();

    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    let (aw, ready) = wait_not_ready(&client, &ns.name, "api", "ChildConflict").await;
    assert!(
        ready
            .message
            .contains("Service api exists and is not owned by this ApiWorkload")
            && ready
                .message
                .contains("rename the ApiWorkload or delete the Service"),
        "{}",
        ready.message
    );
    assert_eq!(
        aw.status.as_ref().unwrap().reason.as_deref(),
        Some("ChildConflict"),
        "kubectl get shows it"
    );
    let after = services.get("api").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "their Service was not written to"
    );
    assert!(after.metadata.owner_references.is_none());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("api").await.unwrap().is_none(),
        "no pods behind someone else's Service"
    );
    wait_warning_event(&client, &ns.name, "ChildConflict", "api").await;

    services
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    patch_workload(
        &client,
        &ns.name,
        "api",
        json!({"metadata": {"annotations": {"retry": "now"}}}),
    )
    .await;
    wait_deployment(
        &client,
        &ns.name,
        "api",
        "the Deployment, once the name is free",
        |_| true,
    )
    .await;
    let ours = services.get("api").await.unwrap();
    assert!(
        ours.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "ApiWorkload"),
        "the new Service is the workload's"
    );
}

/// A child the API server refuses (here an admission policy that denies autoscalers in
/// the namespace): the workload says so in `Ready` with the server's own message and a
/// Warning Event, instead of only the operator's log; once the policy is gone it converges.
#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_in_status_and_events() {
    let cluster = Cluster::shared();
    shared_operator();
    let client = cluster.client().await;
    let suffix = apiworkload_e2e::unique_suffix();
    let label = format!("deny-hpa-{suffix}");
    let ns = TestNamespace::create(&client, "refused", &[("apiworkload-test", &label)]).await;
    let policy = format!("deny-hpa-{suffix}");
    let manifest = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [autoscaling]
      apiVersions: ["*"]
      operations: [CREATE, UPDATE]
      resources: [horizontalpodautoscalers]
  validations:
  - expression: "false"
    message: autoscalers are frozen in this namespace by policy {policy}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{apiworkload-test: {label}}}
"#
    );
    let path = std::env::temp_dir().join(format!("{policy}.yaml"));
    std::fs::write(&path, manifest).unwrap();
    let (ok, out, err) = cluster.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    // A policy takes effect a moment after it is created: wait until a dry run is denied.
    let probe = format!(
        r#"{{"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler","metadata":{{"name":"probe","namespace":"{}"}},"spec":{{"scaleTargetRef":{{"apiVersion":"apps/v1","kind":"Deployment","name":"x"}},"maxReplicas":2}}}}"#,
        ns.name
    );
    let probe_path = std::env::temp_dir().join(format!("{policy}-probe.json"));
    std::fs::write(&probe_path, probe).unwrap();
    wait_until(Duration::from_secs(30), "the policy in effect", || async {
        let (ok, _, err) = cluster.kubectl(&[
            "create",
            "--dry-run=server",
            "-f",
            &probe_path.to_string_lossy(),
        ]);
        !ok && err.contains("autoscalers are frozen")
    })
    .await;

    let mut spec = fixed_spec(1);
    spec["scaling"] = json!({"minReplicas": 1, "maxReplicas": 3, "metric": "cpu"});
    create_workload(&client, &ns.name, "api", spec).await;
    let (aw, ready) = wait_not_ready(&client, &ns.name, "api", "ChildRefused").await;
    assert!(
        ready
            .message
            .contains("the API server refused HorizontalPodAutoscaler api")
            && ready
                .message
                .contains("autoscalers are frozen in this namespace"),
        "{}",
        ready.message
    );
    assert_eq!(
        aw.status.as_ref().unwrap().reason.as_deref(),
        Some("ChildRefused")
    );
    wait_warning_event(&client, &ns.name, "ChildRefused", "api").await;

    let (ok, out, err) = cluster.kubectl(&["delete", "-f", &path.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    wait_until(Duration::from_secs(120), "the autoscaler once the policy is gone", || async {
        // The retry after a refusal waits a minute; an edit retries at once.
        let _ = Api::<ApiWorkload>::namespaced(client.clone(), &ns.name)
            .patch("api", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"retry": apiworkload_e2e::unique_suffix()}}})))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns.name)
            .get_opt("api")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    wait_status(
        &client,
        &ns.name,
        "api",
        "Ready no longer ChildRefused",
        |aw| condition(aw, "Ready").is_some_and(|c| c.reason != "ChildRefused"),
    )
    .await;
}
