//! The real node (`tests/cluster/node`) runs real containers: a pod from the test app
//! image under Pod Security "restricted" becomes Ready by its real readiness probe and
//! answers on its pod IP and through its Service's ClusterIP (kube-proxy) from inside
//! the node's network namespace; a pod reaches the API server through the `kubernetes`
//! Service with its projected token. Nothing of this is kwok.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step fails the test

use std::time::Duration;

use apiworkload_e2e::{Cluster, PrivateCluster, RealNode, TestNamespace, poll_until};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

const APP_IMAGE: &str = "localhost/apiworkload/testapp:1";

fn restricted_container(name: &str, command: Value) -> Value {
    json!({
        "name": name,
        "image": APP_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
    })
}

fn pod(name: &str, labels: Value, container: Value, restart: &str) -> Pod {
    let mut spec: Value = serde_json::from_str(RealNode::POD_PLACEMENT).unwrap();
    spec["containers"] = json!([container]);
    spec["restartPolicy"] = json!(restart);
    spec["volumes"] = json!([{"name": "tmp", "emptyDir": {}}]);
    spec["terminationGracePeriodSeconds"] = json!(2);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec
    }))
    .unwrap()
}

async fn restricted_namespace(cluster: &Cluster, prefix: &str) -> TestNamespace {
    TestNamespace::create(
        &cluster.client().await,
        prefix,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await
}

#[tokio::test]
async fn a_restricted_pod_runs_for_real_and_answers_on_its_pod_ip_and_service() {
    let cluster = Cluster::shared();
    let node = RealNode::up(cluster);
    let client = cluster.client().await;
    let ns = restricted_namespace(cluster, "real-pod").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut app = restricted_container(
        "app",
        json!(["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"]),
    );
    app["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 1});
    app["ports"] = json!([{"containerPort": 8000}]);
    pods.create(
        &PostParams::default(),
        &pod("web", json!({"app": "web"}), app, "Always"),
    )
    .await
    .unwrap();
    let ip = poll_until(
        Duration::from_secs(90),
        "pod Ready on the real node",
        || async {
            let p = pods.get("web").await.ok()?;
            let status = p.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip?)
        },
    )
    .await;
    let p = pods.get("web").await.unwrap();
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some(RealNode::NAME)
    );
    let started = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(started.started == Some(true) && started.container_id.is_some());

    let direct = node.http_get(&format!("http://{ip}:8000/healthz"));
    assert!(
        direct.as_ref().is_some_and(|r| r.ok()),
        "GET on the pod IP from the node's namespace: {direct:?}"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    // kube-proxy programs the rules once it sees the EndpointSlice.
    poll_until(
        Duration::from_secs(30),
        "GET through the ClusterIP",
        || async {
            node.http_get(&format!("http://{cluster_ip}/healthz"))
                .filter(|r| r.ok())
        },
    )
    .await;
    pods.delete("web", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let cluster = Cluster::shared();
    let _node = RealNode::up(cluster);
    let client = cluster.client().await;
    let ns = restricted_namespace(cluster, "real-api").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // In-cluster config as every client library reads it: the Service's address from
    // the environment, the projected token and the cluster's CA.
    let script = r#"
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
req = urllib.request.Request(f"https://{host}:{port}/version",
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read()})
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"])
"#;
    pods.create(
        &PostParams::default(),
        &pod(
            "api-client",
            json!({}),
            restricted_container("client", json!(["python", "-c", script])),
            "Never",
        ),
    )
    .await
    .unwrap();
    let phase = poll_until(
        Duration::from_secs(90),
        "the API client pod finished",
        || async {
            let phase = pods.get("api-client").await.ok()?.status?.phase?;
            ["Succeeded", "Failed"]
                .contains(&phase.as_str())
                .then_some(phase)
        },
    )
    .await;
    let logs = pods
        .logs("api-client", &Default::default())
        .await
        .unwrap_or_else(|e| format!("(no logs: {e})"));
    assert_eq!(
        phase, "Succeeded",
        "the pod could not reach the API server: {logs}"
    );
}

/// What a node leaves on the host: its network namespaces, processes, mounts, cgroups,
/// and the kernel settings the kubelet changes.
fn host_traces(state_dir: &std::path::Path) -> Vec<String> {
    let dir = state_dir.join("node").to_string_lossy().into_owned();
    let mut traces = Vec::new();
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let own = format!(
        "apiw-{}",
        &sha256_hex(&format!("{}\n", state_dir.display()))[..8]
    );
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(&own) {
            traces.push(format!("netns {line}"));
        }
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&dir)
        {
            traces.push(format!(
                "process {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    for mount in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if mount.contains(&dir) {
            traces.push(format!("mount {mount}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if hierarchy.path().join(&own).exists() {
            traces.push(format!("cgroup {}", hierarchy.path().join(&own).display()));
        }
    }
    traces
}

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

fn kernel_settings() -> Vec<String> {
    [
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
    ]
    .iter()
    .map(|k| std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap())
    .collect()
}

#[tokio::test]
async fn node_down_leaves_nothing_behind() {
    let cluster = PrivateCluster::up("real-node-down");
    let state_dir = cluster.state_dir.clone().unwrap();
    let settings = kernel_settings();
    let node = RealNode::up(&cluster);
    let client = cluster.client().await;
    let ns = restricted_namespace(&cluster, "real-down").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // A running pod: a sandbox, a veth, volume mounts and cgroups to clean up.
    pods.create(
        &PostParams::default(),
        &pod(
            "sleeper",
            json!({}),
            restricted_container("app", json!(["sleep", "3600"])),
            "Always",
        ),
    )
    .await
    .unwrap();
    poll_until(Duration::from_secs(60), "pod Running", || async {
        (pods.get("sleeper").await.ok()?.status?.phase? == "Running").then_some(())
    })
    .await;
    assert!(
        !host_traces(&state_dir).is_empty(),
        "a running node must be visible to the check, or the check proves nothing"
    );
    node.down();
    assert_eq!(host_traces(&state_dir), Vec::<String>::new());
    assert_eq!(kernel_settings(), settings, "kernel settings restored");
}
