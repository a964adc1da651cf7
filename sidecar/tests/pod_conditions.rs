//! On the real control plane: the sidecar, given a kwok pod's identity and bound token,
//! writes that pod's `apiworkload.io/` conditions, the operator rolls them up into the
//! ApiWorkload's status, and the API server refuses anything else those credentials try
//! (another pod, a kubelet-owned condition, the pod itself, Secrets).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

mod support;

use apiworkload_e2e::operator::{
    condition, create_workload, fixed_spec, shared_operator, wait_status,
};
use apiworkload_e2e::process::Sidecar;
use apiworkload_e2e::{
    Cluster, PythonServer, TestNamespace, http_get, pod_condition, poll_until, repo_root,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

/// The chart's sidecar ClusterRole and admission policy, as `helm template` renders them.
fn install_sidecar_policy(cluster: &Cluster) {
    let chart = repo_root().join("charts/apiworkload-operator");
    let out = cluster
        .command("helm")
        .args(["template", "apiworkload"])
        .arg(&chart)
        .args(["--show-only", "templates/sidecar-rbac.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::env::temp_dir().join(format!(
        "apiw-sidecar-rbac-{}.yaml",
        apiworkload_e2e::unique_suffix()
    ));
    std::fs::write(&file, &out.stdout).unwrap();
    let (ok, stdout, stderr) = cluster.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "applying the sidecar policy failed: {stdout}{stderr}");
}

/// A kubeconfig holding only a token bound to `pod` (as the kubelet would project it).
fn pod_kubeconfig(cluster: &Cluster, ns: &str, account: &str, pod: &Pod) -> PathBuf {
    cluster.token_kubeconfig(
        ns,
        account,
        &[
            "--bound-object-kind=Pod",
            &format!(
                "--bound-object-name={}",
                pod.metadata.name.as_ref().unwrap()
            ),
            &format!("--bound-object-uid={}", pod.metadata.uid.as_ref().unwrap()),
        ],
    )
}

async fn client_from(kubeconfig: &Path) -> Client {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

fn refusal(result: Result<Pod, kube::Error>) -> String {
    match result {
        Ok(_) => panic!("the API server accepted what it must refuse"),
        Err(kube::Error::Api(status)) => format!("{} {}", status.code, status.message),
        Err(e) => panic!("expected an API refusal, got {e}"),
    }
}

fn conditions_patch(type_: &str, status: &str) -> serde_json::Value {
    json!({"status": {"conditions": [{"type": type_, "status": status, "reason": "Test"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_writes_its_own_pods_conditions_and_the_operator_rolls_them_up() {
    let cluster = Cluster::shared();
    install_sidecar_policy(cluster);
    shared_operator();
    let admin = cluster.client().await;
    let ns = TestNamespace::create(
        &admin,
        "sidecar-conds",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let name = "conds";
    create_workload(&admin, &ns.name, name, fixed_spec(2)).await;
    let pods_api: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let selector = format!("apiworkload.io/workload={name}");
    let pods = poll_until(Duration::from_secs(60), "2 running pods", || async {
        let list = pods_api
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    let (mine, other) = (&pods[0], &pods[1]);
    let mine_name = mine.metadata.name.clone().unwrap();
    let other_name = other.metadata.name.clone().unwrap();
    assert_eq!(
        mine.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some(name),
        "pods run as the workload's own ServiceAccount"
    );

    let kubeconfig = pod_kubeconfig(cluster, &ns.name, name, mine);
    let sidecar_creds: Api<Pod> = Api::namespaced(client_from(&kubeconfig).await, &ns.name);
    let strategic = |v: &serde_json::Value| Patch::Strategic(v.clone());

    // What the credentials may do: their own pod's apiworkload.io/ conditions.
    sidecar_creds
        .patch_status(
            &mine_name,
            &PatchParams::default(),
            &strategic(&conditions_patch("apiworkload.io/Probe", "True")),
        )
        .await
        .expect("a sidecar may set its own pod's apiworkload.io/ conditions");

    // An admission policy takes effect a moment after it is created (the API server
    // loads it asynchronously): wait until a dry run (which writes nothing) is refused.
    poll_until(
        Duration::from_secs(30),
        "the admission policy in effect",
        || async {
            sidecar_creds
                .patch_status(
                    &other_name,
                    &PatchParams::default().dry_run(),
                    &strategic(&conditions_patch("apiworkload.io/Probe", "False")),
                )
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    // What the API server refuses.
    let other_pod = refusal(
        sidecar_creds
            .patch_status(
                &other_name,
                &PatchParams::default(),
                &strategic(&conditions_patch("apiworkload.io/Probe", "False")),
            )
            .await,
    );
    assert!(other_pod.contains("only its own pod"), "{other_pod}");
    let kubelet_condition = refusal(
        sidecar_creds
            .patch_status(
                &mine_name,
                &PatchParams::default(),
                &strategic(&conditions_patch("Ready", "False")),
            )
            .await,
    );
    assert!(
        kubelet_condition.contains("starts with apiworkload.io/"),
        "{kubelet_condition}"
    );
    let pod_itself = refusal(
        sidecar_creds
            .patch(
                &mine_name,
                &PatchParams::default(),
                &strategic(&json!({"metadata": {"labels": {"hijacked": "yes"}}})),
            )
            .await,
    );
    assert!(pod_itself.starts_with("403"), "RBAC: {pod_itself}");
    let secrets: Api<Secret> = Api::namespaced(client_from(&kubeconfig).await, &ns.name);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{}", s.message),
        other => panic!("the sidecar's credentials listed Secrets: {other:?}"),
    }
    // Nothing was written by the refused requests.
    let other_now = pods_api.get(&other_name).await.unwrap();
    assert!(pod_condition(&other_now, "apiworkload.io/Probe").is_none());
    assert_eq!(
        pod_condition(&pods_api.get(&mine_name).await.unwrap(), "Ready")
            .unwrap()
            .status,
        "True"
    );

    // The real sidecar next to a real app, with those credentials and a 1 s window.
    let app = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let _sidecar = Sidecar::start_with_env(
        &[
            format!("--app-port={}", app.addr.port()),
            "--window=1s".into(),
        ],
        &[
            ("KUBECONFIG", &kubeconfig.to_string_lossy()),
            ("POD_NAME", &mine_name),
            ("POD_NAMESPACE", &ns.name),
        ],
    );
    let loop_type = "apiworkload.io/EventLoopResponsive";
    let pod_reports = |status: &'static str| {
        let pods_api = pods_api.clone();
        let mine_name = mine_name.clone();
        async move {
            poll_until(
                Duration::from_secs(30),
                &format!("{loop_type}={status} on the pod"),
                || async {
                    let pod = pods_api.get(&mine_name).await.unwrap();
                    pod_condition(&pod, loop_type)
                        .filter(|c| c.status == status)
                        .cloned()
                        .map(|c| (pod, c))
                },
            )
            .await
        }
    };
    let (pod, healthy) = pod_reports("True").await;
    assert_eq!(healthy.reason.as_deref(), Some("Responsive"));
    for t in [
        "apiworkload.io/DNSHealthy",
        "apiworkload.io/ConnectionsReused",
    ] {
        assert_eq!(pod_condition(&pod, t).unwrap().status, "True", "{t}");
    }
    assert!(
        pod_condition(&pod, "Ready").is_some(),
        "the strategic merge left the kubelet's conditions in place"
    );
    let aw = wait_status(&admin, &ns.name, name, "roll-up True", |aw| {
        condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True")
    })
    .await;
    assert!(
        condition(&aw, "EventLoopResponsive")
            .unwrap()
            .message
            .contains("1/2 pods"),
        "one of two pods reports"
    );

    // Block the app's event loop, 600 ms of every ~650 ms, until told to stop (≤ 40 s).
    let stop = Arc::new(AtomicBool::new(false));
    let blocker = {
        let (stop, addr) = (stop.clone(), app.addr);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let _ = http_get(addr, "/block?seconds=0.6");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (_, stalled) = pod_reports("False").await;
    assert_eq!(stalled.reason.as_deref(), Some("LoopStalled"));
    assert!(
        stalled.message.as_deref().unwrap_or("").contains("stalled"),
        "{stalled:?}"
    );
    let aw = wait_status(&admin, &ns.name, name, "roll-up False", |aw| {
        condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "False")
    })
    .await;
    let rolled = condition(&aw, "EventLoopResponsive").unwrap();
    assert_eq!(rolled.reason, "LoopStalled");
    assert!(
        rolled.message.contains("1/2 pods") && rolled.message.contains(&mine_name),
        "{}",
        rolled.message
    );
    assert!(!rolled.message.contains(&other_name), "{}", rolled.message);

    // The loop recovers: five good windows later the pod and the roll-up are True again.
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || blocker.join().unwrap())
        .await
        .unwrap();
    pod_reports("True").await;
    wait_status(&admin, &ns.name, name, "roll-up True again", |aw| {
        condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True")
    })
    .await;
    let _ = std::fs::remove_file(kubeconfig);
}
