//! The whole chain on real pods, as a user runs it: `helm install` with the images
//! `tests/images/build` made puts the operator on the real node (`tests/cluster/node`),
//! Ready by its own probes and talking to the API through the `kubernetes` Service with
//! the chart's ServiceAccount; the README example then runs as real containers (the test
//! app image): the server runs the command the operator rendered with the worker count
//! it derived, the sidecar runs as a native sidecar and writes `apiworkload.io/*` pod
//! conditions with its projected token, and the ApiWorkload rolls them up. Every server
//! kind boots and every upstream kind's sidecar starts. A blocking handler is diagnosed
//! from inside the pod (`LoopStalled`) and recovers; an edit of the CPU limit rolls out
//! pods that really run the new worker count. A rollout under continuous load through
//! the Service drops no request, and one with its shutdown budget defeated does. The
//! probes do their job: a slow start within the startup budget is not killed (one past it
//! is), a worker blocked past its heartbeat is replaced by gunicorn and the pod is not
//! restarted, and a dead server is restarted. A healthy app stays healthy beside all of
//! it, and in-flight requests scale a workload through Prometheus and KEDA, whose
//! fallback holds the replicas while Prometheus is down.
//!
//! One private cluster for the file (the operator installed by helm would otherwise
//! reconcile the workloads of every other test on the shared one); the scenarios run
//! concurrently on it, each in its own namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step fails the test

use std::time::{Duration, Instant};

use apiworkload_e2e::operator::{app_command, app_container, condition};
use apiworkload_e2e::{
    Cluster, PrivateCluster, RealNode, TestNamespace, pod_condition, poll_until, repo_root,
};
use apiworkload_operator::{
    api::ApiWorkload,
    render::{APP_CONTAINER, SIDECAR_CONTAINER, WORKLOAD_LABEL},
};
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use serde_json::{Value, json};

const APP_IMAGE: &str = "localhost/apiworkload/testapp:1";
const RELEASE_NAMESPACE: &str = "apiworkload-system";

/// Real containers start in seconds, but a node with two cores boots many Python
/// workers at once here.
const READY_WITHIN: Duration = Duration::from_secs(240);

// Several threads: the scenarios wait on processes and files as well as on the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_and_the_readme_example_run_on_real_pods() {
    let started = Instant::now();
    let cluster = PrivateCluster::up("real-pods");
    let node = RealNode::up(&cluster);
    // Before the operator starts: it renders ScaledObjects once KEDA's API is served.
    node.keda();
    eprintln!(
        "cluster, real node, KEDA and Prometheus up in {:?}",
        started.elapsed()
    );

    let t = Instant::now();
    helm_install(&cluster);
    operator_runs_on_the_real_node(&cluster).await;
    eprintln!("helm install: operator Ready in {:?}", t.elapsed());

    // The autoscaling load waits for the rollout to finish, so that the rollout's figures
    // are not measured on a node busy with it. The throttling load waits for every
    // server kind to have booted: with it, a full run's boots took long enough on the
    // two cores that hypercorn's startup probe killed it once.
    let (rolled_out, after_rollout) = tokio::sync::oneshot::channel();
    let (rolled_out_too, after_rollout_too) = tokio::sync::oneshot::channel();
    let (booted, after_boots) = tokio::sync::oneshot::channel();
    tokio::join!(
        scenario("readme", readme_example(&cluster, &node)),
        scenario("server-kinds", async {
            every_server_kind_boots(&cluster, &node).await;
            let _ = booted.send(());
        }),
        scenario(
            "stall",
            a_stall_is_diagnosed_inside_the_pod(&cluster, &node)
        ),
        scenario("healthy", a_healthy_app_stays_healthy(&cluster, &node)),
        scenario("workers", workers_follow_the_cpu_limit(&cluster, &node)),
        scenario("rollout", async {
            a_rollout_drops_no_request(&cluster, &node).await;
            let _ = rolled_out.send(());
            let _ = rolled_out_too.send(());
        }),
        scenario("probes", probes_do_their_job(&cluster, &node)),
        scenario("overload", overload_is_refused_not_queued(&cluster, &node)),
        scenario(
            "throttling",
            cpu_throttling_is_named(&cluster, &node, after_boots)
        ),
        scenario(
            "autoscaling",
            cpu_autoscaling_scales_real_pods(&cluster, &node, after_rollout)
        ),
        scenario(
            "keda",
            inflight_autoscaling_through_keda(&cluster, &node, after_rollout_too)
        ),
    );
    eprintln!("real-pod scenarios done in {:?}", started.elapsed());
}

/// Runs a scenario unless `APIW_REAL_POD_SCENARIOS` (comma-separated names) leaves it
/// out: a developer's shortcut to one scenario on a fresh cluster. Unset, as in CI and
/// `tests/run`, every scenario runs.
async fn scenario(name: &str, run: impl std::future::Future<Output = ()>) {
    let chosen = std::env::var("APIW_REAL_POD_SCENARIOS").ok();
    if chosen.is_some_and(|names| !names.split(',').any(|n| n.trim() == name)) {
        eprintln!("scenario {name}: left out by APIW_REAL_POD_SCENARIOS");
        return;
    }
    run.await
}

/// `helm install` from the repository's chart, as the README says, with values that
/// place the operator on the real node and never pull (the images are imported).
fn helm_install(cluster: &Cluster) {
    let chart = repo_root().join("charts/apiworkload-operator");
    let values = repo_root().join("tests/cluster/real-node-values.yaml");
    let out = cluster
        .command("helm")
        .args(["install", "apiworkload"])
        .arg(&chart)
        .args(["--namespace", RELEASE_NAMESPACE, "--create-namespace", "-f"])
        .arg(&values)
        .args(["--wait", "--timeout", "180s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install failed (the operator pod never became Ready?):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's pod: on the real node, its container started from the image and never
/// restarted (its liveness probe is satisfied), Ready by its readiness probe.
async fn operator_runs_on_the_real_node(cluster: &Cluster) {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, RELEASE_NAMESPACE);
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1, "one operator pod");
    let pod = &list[0];
    assert_eq!(pod_node(pod), RealNode::NAME);
    assert!(pod_ready(pod), "{:?}", pod.status);
    let status = container_status(pod, "operator");
    assert_eq!(
        status.image, "ghcr.io/apiworkload/apiworkload-operator:0.1.0",
        "the chart's default image"
    );
    assert_eq!(status.restart_count, 0, "{status:?}");
}

/// The README's example with the test app's image (the only edit besides requests that
/// fit a two-core node): two real pods serve, the server runs the rendered command with
/// the derived worker count, and every pod's sidecar reports.
async fn readme_example(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "readme").await;
    let client = cluster.client().await;
    let mut example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("examples/search-api.yaml")).unwrap(),
    )
    .unwrap();
    example["metadata"]["namespace"] = json!(ns.name);
    example["spec"]["image"] = json!(APP_IMAGE);
    example["spec"]["app"] = json!("app:app");
    example["spec"]["resources"]["requests"] = json!({"cpu": "100m", "memory": "128Mi"});
    let (ok, out, err) = cluster.apply(&example);
    assert!(ok, "{out}{err}");

    let t = Instant::now();
    let aw = wait_ready(cluster, &ns, "search-api").await;
    eprintln!("README example Ready on real pods in {:?}", t.elapsed());
    let status = aw.status.clone().unwrap();
    assert_eq!(status.replicas.as_ref().unwrap().ready, 2);
    let workers = status.workers.as_ref().unwrap().count;

    let rendered = app_command(&deployment_of(cluster, &ns, "search-api").await);
    let pods = workload_pods(cluster, &ns, "search-api").await;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        assert_eq!(pod_node(pod), RealNode::NAME);
        // A native sidecar: an init container that keeps running beside the app.
        let sidecar = container_status(pod, SIDECAR_CONTAINER);
        assert!(sidecar.started == Some(true), "{name}: {sidecar:?}");
        for c in [sidecar, container_status(pod, APP_CONTAINER)] {
            assert_eq!(c.restart_count, 0, "{name}: {c:?}");
        }

        let (argv, running) = server_processes(pod, workers).await;
        assert_eq!(argv, rendered, "{name} runs the rendered command");
        assert_eq!(running, workers, "{name}");
    }
    // Each sidecar writes its conditions on its own pod, with its own token, after its
    // first window of measurements.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        let types = ["EventLoopResponsive", "DNSHealthy", "ConnectionsReused"]
            .map(|t| format!("apiworkload.io/{t}"));
        let t = Instant::now();
        let mut reported = None;
        while reported.is_none() && t.elapsed() < READY_WITHIN {
            let now = pods_api.get(&name).await.unwrap();
            reported = types
                .iter()
                .all(|type_| pod_condition(&now, type_).is_some())
                .then_some(now);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            reported.is_some(),
            "{name} has not all of {types:?} after {READY_WITHIN:?}\nsidecar log:\n{}",
            node.container_log(cluster, &ns.name, &name, SIDECAR_CONTAINER)
        );
        eprintln!("{name}: sidecar conditions written after {:?}", t.elapsed());
    }
    // The roll-up of those pod conditions into the ApiWorkload.
    let aw = wait_status(
        cluster,
        &ns,
        "search-api",
        "EventLoopResponsive rolled up",
        |aw| condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True"),
    )
    .await;
    let rolled = condition(&aw, "EventLoopResponsive").unwrap();
    assert_eq!(rolled.message, "2/2 pods report EventLoopResponsive=True");

    // Traffic through the Service, from inside the cluster's network.
    let url = format!(
        "http://{}/healthz",
        service_address(cluster, &ns, "search-api").await
    );
    let via_service = node.http_get(&url);
    assert!(
        via_service.as_ref().is_some_and(|r| r.ok()),
        "GET {url}: {via_service:?}"
    );
}

/// A handler that blocks the event loop (`time.sleep` in an async def), called again and
/// again: the sidecar beside the app sees the stall and turns `EventLoopResponsive` False
/// (`LoopStalled`) on its pod, the ApiWorkload rolls it up, and both recover after.
async fn a_stall_is_diagnosed_inside_the_pod(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "stall").await;
    apply_workload(cluster, &ns, "stalls", json!({"server": "uvicorn"}));
    wait_status(cluster, &ns, "stalls", "stalls responsive", |aw| {
        condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True")
    })
    .await;
    // The pod that serves (a pod of an earlier template may still be terminating).
    let pod = poll_until(READY_WITHIN, "one serving pod", || async {
        let pods = workload_pods(cluster, &ns, "stalls").await;
        match pods.as_slice() {
            [pod] if pod.metadata.deletion_timestamp.is_none() && pod_ready(pod) => {
                Some(pod.clone())
            }
            _ => None,
        }
    })
    .await;
    let pod_name = pod.metadata.name.clone().unwrap();
    let address = service_address(cluster, &ns, "stalls").await;

    // One blocking request after another, from inside the cluster's network, until the
    // diagnosis shows (bounded: at most 180 requests of 1 s).
    let (stop, load) = repeat_get(
        node,
        &format!("http://{address}/block?seconds=1"),
        180,
        Duration::from_secs(900),
        Duration::ZERO,
    );
    let t = Instant::now();
    let aw = wait_status(cluster, &ns, "stalls", "LoopStalled rolled up", |aw| {
        condition(aw, "EventLoopResponsive")
            .is_some_and(|c| c.status == "False" && c.reason == "LoopStalled")
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    eprintln!(
        "LoopStalled after {:?} ({sent} blocking requests)",
        t.elapsed()
    );
    let rolled = condition(&aw, "EventLoopResponsive").unwrap();
    assert!(
        rolled.message.contains(&pod_name),
        "the roll-up names the pod: {}",
        rolled.message
    );
    let on_pod = Api::<Pod>::namespaced(cluster.client().await, &ns.name)
        .get(&pod_name)
        .await
        .unwrap();
    let c = pod_condition(&on_pod, "apiworkload.io/EventLoopResponsive").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("LoopStalled"))
    );

    let t = Instant::now();
    wait_status(
        cluster,
        &ns,
        "stalls",
        "EventLoopResponsive recovered",
        |aw| condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True"),
    )
    .await;
    eprintln!(
        "EventLoopResponsive True again {:?} after the load stopped",
        t.elapsed()
    );
}

/// How long the healthy app is watched on the real node: about as long as the busiest
/// scenarios beside it run.
const HEALTHY_FOR: Duration = Duration::from_secs(150);

/// A healthy app on the real node (#20), under light steady load (5 requests/s through
/// its Service) while every other scenario runs beside it: its sidecar keeps all three
/// conditions True on the pod, never flipping, and reports the thresholds the spec set.
/// It requests half a core, as a latency-sensitive service would: the kubelet's CPU
/// shares then weigh it 10× the other scenarios' 50m pods, which are starved on purpose
/// (a stall of a starved app is real, not a false alarm).
async fn a_healthy_app_stays_healthy(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "healthy").await;
    apply_workload(
        cluster,
        &ns,
        "healthy",
        json!({"server": "uvicorn",
               "resources": {"requests": {"cpu": "500m"}},
               "diagnostics": {"loopHeartbeat": true,
                               "thresholds": {"stalledPercent": 10, "dnsSlow": "750ms"}}}),
    );
    let types = ["EventLoopResponsive", "DNSHealthy", "ConnectionsReused"];
    let pods_api: Api<Pod> = Api::namespaced(cluster.client().await, &ns.name);
    let pod = poll_until(
        READY_WITHIN,
        "healthy: a Ready pod with all conditions",
        || async {
            let pods = workload_pods(cluster, &ns, "healthy").await;
            match pods.as_slice() {
                [pod]
                    if pod_ready(pod)
                        && types.iter().all(|t| {
                            pod_condition(pod, &format!("apiworkload.io/{t}"))
                                .is_some_and(|c| c.status == "True")
                        }) =>
                {
                    Some(pod.clone())
                }
                _ => None,
            }
        },
    )
    .await;
    let name = pod.metadata.name.clone().unwrap();
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    // What the spec set is what the sidecar judges by.
    let report: Value = serde_json::from_str(
        &node
            .http_get(&format!("http://{ip}:9901/report"))
            .expect("the sidecar's /report")
            .body,
    )
    .unwrap();
    assert_eq!(report["thresholds"]["stalledPercent"], 10, "{report:#}");
    assert_eq!(report["thresholds"]["dnsSlow"], "750ms", "{report:#}");
    assert_eq!(
        report["thresholds"]["closeWait"], 10,
        "the default: {report:#}"
    );
    let transitions = |pod: &Pod| {
        types.map(|t| {
            pod_condition(pod, &format!("apiworkload.io/{t}"))
                .map(|c| c.last_transition_time.clone())
        })
    };
    let first = transitions(&pod);

    let address = service_address(cluster, &ns, "healthy").await;
    let (stop, load) = repeat_get(
        node,
        &format!("http://{address}/healthz"),
        usize::MAX,
        HEALTHY_FOR,
        Duration::from_millis(200),
    );
    let t = Instant::now();
    let mut checks = 0;
    while t.elapsed() < HEALTHY_FOR {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = pods_api.get(&name).await.unwrap();
        for type_ in types {
            let c = pod_condition(&now, &format!("apiworkload.io/{type_}"));
            assert!(
                c.as_ref().is_some_and(|c| c.status == "True"),
                "{type_} after {:?} of a healthy app: {c:?}",
                t.elapsed()
            );
        }
        assert_eq!(transitions(&now), first, "no condition flipped and back");
        checks += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    let metrics = node
        .http_get(&format!("http://{ip}:9901/metrics"))
        .unwrap()
        .body;
    let stalled = apiworkload_e2e::metric_sample(
        &metrics,
        r#"apiworkload_sidecar_event_loop_stall_seconds_total{source="heartbeat"}"#,
    );
    eprintln!(
        "healthy: all True for {HEALTHY_FOR:?} beside the other scenarios ({checks} checks, {sent} requests; heartbeat stalls {stalled:?} s)"
    );
    assert!(sent >= 200, "the load ran: {sent} requests");
}

/// A healthy app under a CPU quota it cannot meet (#20, item 4): requests of 10 ms of CPU
/// each (far below the stall threshold), two at a time, more CPU than `limits.cpu: 200m`
/// gives. Only the app container's own cgroup shows it; with `diagnostics.loopHeartbeat`
/// the heartbeat sends its `cpu.stat`, and the sidecar turns `EventLoopResponsive` False
/// with `CPUThrottled`. (`/healthz` at the 40 requests/s a curl loop manages here used
/// 6 % of a core: never throttled.)
async fn cpu_throttling_is_named(
    cluster: &Cluster,
    node: &RealNode,
    start_load: tokio::sync::oneshot::Receiver<()>,
) {
    let ns = node.namespace(cluster, "throttled").await;
    apply_workload(
        cluster,
        &ns,
        "throttled",
        json!({"server": "uvicorn",
               "resources": {"limits": {"cpu": "200m"}},
               "diagnostics": {"loopHeartbeat": true}}),
    );
    wait_status(cluster, &ns, "throttled", "throttled responsive", |aw| {
        condition(aw, "EventLoopResponsive").is_some_and(|c| c.status == "True")
    })
    .await;
    let address = service_address(cluster, &ns, "throttled").await;
    // Sent when the other scenario's boots are over, or dropped when it does not run.
    let _ = start_load.await;
    // Two loops of GETs (bounded), each on a new connection.
    let loads = concurrent_gets(
        node,
        2,
        &format!("http://{address}/cpu?seconds=0.01"),
        20_000,
        Duration::from_secs(240),
    );
    let t = Instant::now();
    wait_status(cluster, &ns, "throttled", "CPUThrottled rolled up", |aw| {
        condition(aw, "EventLoopResponsive")
            .is_some_and(|c| c.status == "False" && c.reason == "CPUThrottled")
    })
    .await;
    let named_after = t.elapsed();
    let sent = stop_all(loads).await;
    let pods = workload_pods(cluster, &ns, "throttled").await;
    let c = pod_condition(&pods[0], "apiworkload.io/EventLoopResponsive").unwrap();
    eprintln!(
        "CPUThrottled after {named_after:?} ({sent} requests): {}",
        c.message.as_deref().unwrap_or_default()
    );
    assert_eq!(c.reason.as_deref(), Some("CPUThrottled"), "{c:?}");
    assert!(
        c.message
            .as_deref()
            .unwrap_or_default()
            .contains("CFS periods"),
        "{c:?}"
    );
}

/// An HPA on CPU scales real pods: metrics-server reads the real kubelet's CPU figures,
/// the controller-manager's HPA reads them through the aggregated metrics API, and light
/// CPU-bound load through the Service (requests of 50m, so 0.2 cores is 400 %) takes
/// the workload from 1 replica to more Ready pods; once the load stops, it scales back
/// in after the spec's `scaleDownWindow` (20 s here; 5 min by default). Replicas over
/// time are printed.
async fn cpu_autoscaling_scales_real_pods(
    cluster: &Cluster,
    node: &RealNode,
    start_load: tokio::sync::oneshot::Receiver<()>,
) {
    let ns = node.namespace(cluster, "autoscale").await;
    apply_workload(
        cluster,
        &ns,
        "scales",
        json!({"scaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu", "target": 0.5,
                           "scaleDownWindow": "20s"},
               "diagnostics": {"enabled": false}}),
    );
    wait_ready(cluster, &ns, "scales").await;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(cluster.client().await, &ns.name);
    let utilization = || async {
        let hpa = hpas.get_opt("scales").await.ok()??;
        let current = hpa.status?.current_metrics?;
        current
            .first()?
            .resource
            .as_ref()?
            .current
            .average_utilization
    };
    let t = Instant::now();
    let idle = poll_until(READY_WITHIN, "the HPA reads the pods' CPU", utilization).await;
    eprintln!(
        "autoscale: the HPA read {idle}% CPU {:?} after Ready",
        t.elapsed()
    );
    let address = service_address(cluster, &ns, "scales").await;
    let _ = start_load.await;

    // About 0.2 cores of CPU-bound requests, bounded: at most 240 s and 2,400 requests.
    let (stop, load) = repeat_get(
        node,
        &format!("http://{address}/cpu?seconds=0.02"),
        2400,
        Duration::from_secs(240),
        Duration::from_millis(50),
    );
    let t = Instant::now();
    // (seconds since the load started, replicas wanted, ready, CPU % the HPA read)
    let mut timeline = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let scaled = loop {
        let (wanted, ready) = replicas_of(cluster, &ns, "scales").await;
        if timeline
            .last()
            .is_none_or(|&(_, w, r, _)| (w, r) != (wanted, ready))
        {
            timeline.push((t.elapsed().as_secs(), wanted, ready, utilization().await));
        }
        if ready >= 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-out within 240 s: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    let stopped = Instant::now();
    let peak = timeline.iter().map(|&(_, w, _, _)| w).max().unwrap_or(0);
    let deadline = stopped + Duration::from_secs(240);
    let scaled_in = loop {
        let (wanted, ready) = replicas_of(cluster, &ns, "scales").await;
        if timeline.last().is_none_or(|&(_, w, _, _)| w != wanted) {
            timeline.push((t.elapsed().as_secs(), wanted, ready, utilization().await));
        }
        if wanted < peak.max(scaled) {
            break stopped.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no scale-in within 240 s of the load stopping: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let timeline: Vec<String> = timeline
        .iter()
        .map(|(s, w, r, cpu)| format!("{s}s: {w} wanted, {r} ready (CPU {cpu:?}%)"))
        .collect();
    eprintln!(
        "autoscale: {scaled} Ready pods {:?} after the load started ({sent} requests), scaled in {scaled_in:?} after it stopped: {}",
        stopped.duration_since(t),
        timeline.join("; ")
    );
}

/// The in-flight path through KEDA (#19): Prometheus scrapes each sidecar's in-flight
/// integral, the ScaledObject the operator renders (KEDA's API is served) queries it, and
/// slow requests through the Service (8 at a time, 1 s each, against 2 per pod) take the
/// workload from 1 replica to 3, with no change to the app. Then Prometheus stops: KEDA's
/// fallback holds the 3 replicas rather than letting the workload fall to its minimum.
/// With Prometheus back and the load gone, it scales in after the spec's 20 s window.
async fn inflight_autoscaling_through_keda(
    cluster: &Cluster,
    node: &RealNode,
    start_load: tokio::sync::oneshot::Receiver<()>,
) {
    let ns = node.namespace(cluster, "inflight").await;
    apply_workload(
        cluster,
        &ns,
        "inflight",
        json!({"server": "uvicorn", "workers": {"count": 1},
               "scaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "inflight",
                           "perWorkerConcurrency": 2, "target": 1.0, "scaleDownWindow": "20s"}}),
    );
    wait_status(cluster, &ns, "inflight", "a ScaledObject chosen", |aw| {
        condition(aw, "AutoscalingReady").is_some_and(|c| c.reason == "KEDAInflight")
    })
    .await;
    wait_ready(cluster, &ns, "inflight").await;
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().await,
        &ns.name,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "keda.sh",
            "v1alpha1",
            "ScaledObject",
        )),
    );
    let so_condition = |type_: &'static str| {
        let scaled_objects = scaled_objects.clone();
        async move {
            let so = scaled_objects.get_opt("inflight").await.ok()??;
            let conditions = so.data["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .find(|c| c["type"] == type_)
                .and_then(|c| c["status"].as_str().map(str::to_string))
        }
    };
    poll_until(READY_WITHIN, "KEDA: the ScaledObject Ready", || async {
        (so_condition("Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    // KEDA's HPA scales on the in-flight query and on the CPU backstop.
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(cluster.client().await, &ns.name)
        .get("keda-hpa-inflight")
        .await
        .unwrap();
    let mut kinds: Vec<String> = hpa
        .spec
        .unwrap()
        .metrics
        .unwrap_or_default()
        .into_iter()
        .map(|m| match m.container_resource {
            Some(r) => format!("{}:{}:{}", m.type_, r.name, r.container),
            None => m.type_,
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["ContainerResource:cpu:app", "External"],
        "KEDA's HPA metrics"
    );
    let address = service_address(cluster, &ns, "inflight").await;
    let _ = start_load.await;

    // 8 loops of 1 s requests (bounded: 300 s, 300 requests each).
    let loads = concurrent_gets(
        node,
        8,
        &format!("http://{address}/sleep?seconds=1"),
        300,
        Duration::from_secs(300),
    );
    let t = Instant::now();
    let replicas = || replicas_of(cluster, &ns, "inflight");
    // (seconds since the load started, replicas wanted, ready, what happened)
    let mut timeline: Vec<(u64, i32, i32, &str)> = Vec::new();
    let record = |timeline: &mut Vec<_>, (wanted, ready), what| {
        if timeline
            .last()
            .is_none_or(|&(_, w, r, _)| (w, r) != (wanted, ready))
        {
            timeline.push((t.elapsed().as_secs(), wanted, ready, what));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = replicas().await;
        record(&mut timeline, now, "load");
        if now.1 >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-out to 3 within 240 s of in-flight load: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let scaled_out = t.elapsed();

    // Prometheus goes away at peak: KEDA's fallback (3 failed polls) holds the current
    // 3 replicas, and nothing goes below while Prometheus stays away.
    node.stop("prometheus");
    let outage = Instant::now();
    let mut fallback_at = None;
    loop {
        let now = replicas().await;
        record(&mut timeline, now, "Prometheus stopped");
        assert_eq!(
            now.0, 3,
            "the replicas moved with Prometheus down: {timeline:?}"
        );
        if fallback_at.is_none() && so_condition("Fallback").await.as_deref() == Some("True") {
            fallback_at = Some(outage.elapsed());
        }
        if fallback_at.is_some_and(|f| outage.elapsed() > f + Duration::from_secs(30)) {
            break;
        }
        assert!(
            outage.elapsed() < Duration::from_secs(180),
            "KEDA's fallback not active 180 s after Prometheus stopped: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (fallback_at, held_at) = (fallback_at.unwrap_or_default(), outage.elapsed());

    // Prometheus back, the load gone: back to one replica after the window.
    node.keda();
    let sent = stop_all(loads).await;
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(240);
    loop {
        let now = replicas().await;
        record(&mut timeline, now, "Prometheus back, no load");
        if now.0 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-in within 240 s of the load stopping: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let timeline: Vec<String> = timeline
        .iter()
        .map(|(s, w, r, what)| format!("{s}s: {w} wanted, {r} ready ({what})"))
        .collect();
    eprintln!(
        "keda: 3 Ready pods {scaled_out:?} after the in-flight load started ({sent} requests); fallback active {fallback_at:?} after Prometheus stopped, 3 replicas held for {held_at:?}; scaled in {:?} after the load stopped: {}",
        stopped.elapsed(),
        timeline.join("; ")
    );
}

/// Overload is refused, not queued: a gunicorn-uvicorn pod (the operator's worker class,
/// read from the downward API file the pod's annotation becomes) with
/// `concurrency.limit: 3` holds two slow requests and answers a third at once with a
/// 503 (uvicorn counts the new request's own connection), then serves again.
async fn overload_is_refused_not_queued(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "overload").await;
    apply_workload(
        cluster,
        &ns,
        "shed",
        json!({"workers": {"count": 1}, "concurrency": {"limit": 3},
               // No canary connection in the count.
               "diagnostics": {"enabled": false}}),
    );
    wait_ready(cluster, &ns, "shed").await;
    let address = service_address(cluster, &ns, "shed").await;
    let get = |path: &str| {
        let url = format!("http://{address}{path}");
        let curl = node.command(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            &url,
        ]);
        let mut curl = tokio::process::Command::from(curl);
        async move {
            let t = Instant::now();
            let out = curl.output().await.unwrap();
            (
                String::from_utf8_lossy(&out.stdout).to_string(),
                t.elapsed(),
            )
        }
    };
    // Ready pods are not yet reachable through the Service until kube-proxy has its
    // endpoints (seen: the first request refused at the TCP level, "000").
    poll_until(
        READY_WITHIN,
        "shed reachable through its Service",
        || async { (get("/healthz").await.0 == "200").then_some(()) },
    )
    .await;
    let first = tokio::spawn(get("/sleep?seconds=6"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::spawn(get("/sleep?seconds=6"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (refused, took) = get("/healthz").await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let (after, _) = get("/healthz").await;
    eprintln!("overload: a third request refused in {took:?}");
    assert_eq!(
        [
            first.0.as_str(),
            second.0.as_str(),
            refused.as_str(),
            after.as_str()
        ],
        ["200", "200", "503", "200"],
        "two slow requests served, the third refused, then served again"
    );
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
}

/// `resources.limits.cpu` 1 → 2 rolls out pods whose server runs the new worker count,
/// counted in the running container, not read from the spec.
async fn workers_follow_the_cpu_limit(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "cpu-limit").await;
    let mut counts = Vec::new();
    for cpu in ["1", "2"] {
        let limits = json!({"cpu": cpu, "memory": "2Gi"});
        apply_workload(
            cluster,
            &ns,
            "sized",
            json!({"resources": {"limits": limits}}),
        );
        let aw = wait_status(
            cluster,
            &ns,
            "sized",
            &format!("Ready with limits.cpu {cpu}"),
            |aw| {
                let status = aw.status.as_ref();
                status.and_then(|s| s.observed_generation) == aw.metadata.generation
                    && condition(aw, "Ready").is_some_and(|c| c.status == "True")
            },
        )
        .await;
        let workers = aw.status.as_ref().unwrap().workers.as_ref().unwrap().count;
        // Only the new pods: the old ones may still be draining.
        let deployment = deployment_of(cluster, &ns, "sized").await;
        let rendered = app_command(&deployment);
        let pods = poll_until(READY_WITHIN, "only pods of the new template", || async {
            let pods = workload_pods(cluster, &ns, "sized").await;
            let current = pods.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && pod_ready(p)
                    && p.spec.as_ref().unwrap().containers[0].resources
                        == app_container(&deployment).resources
            });
            (current && pods.len() == 1).then_some(pods)
        })
        .await;
        let (argv, running) = server_processes(&pods[0], workers).await;
        assert_eq!(
            argv, rendered,
            "limits.cpu {cpu}: the rendered command runs"
        );
        assert_eq!(running, workers, "limits.cpu {cpu}");
        counts.push(running);
    }
    eprintln!(
        "workers per pod: {} with limits.cpu 1, {} with 2",
        counts[0], counts[1]
    );
    assert!(
        counts[1] > counts[0],
        "more cores, more workers: {counts:?}"
    );
}

/// A rollout under bounded, continuous load through the Service (new connections from
/// inside the cluster's network, routed by kube-proxy, plus requests of 10 s always in
/// flight) drops no request with the derived shutdown budget. The same rollout of a
/// workload whose budget is defeated (no preStop drain, 1 s to finish) drops requests:
/// the check can fail.
///
/// What the defeated budget drops of the quick requests depends on timing: those routed
/// to a pod between its SIGTERM and kube-proxy's next rules are refused. Alone on the
/// node that was 48–78 requests; while the other scenarios keep the node busy, the
/// kubelet's SIGTERM comes late and it was 1–8. The slow requests are the part that does
/// not depend on timing: with 1 s to finish, those in flight at SIGTERM are cut, as the
/// operator's warning for this spec says. They last 10 s: with requests of 2 s, a full
/// run cut none (SIGTERM came more than 2 s after the endpoint left, and the pod had
/// finished them).
async fn a_rollout_drops_no_request(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "rollout").await;
    let workload = |name: &str, memory: &str, timeouts: &Value| {
        let spec = json!({
            "resources": {"requests": {"memory": memory}},
            "scaling": {"minReplicas": 2, "maxReplicas": 2},
            "timeouts": timeouts,
        });
        apply_workload(cluster, &ns, name, spec);
    };
    let budgets = [
        // null: no timeouts at all, every one derived.
        ("budgeted", Value::Null),
        ("defeated", json!({"drain": "0s", "gracefulShutdown": "1s"})),
    ];
    for (name, timeouts) in &budgets {
        workload(name, "96Mi", timeouts);
    }
    for (name, _) in &budgets {
        wait_rolled_out(cluster, &ns, name).await;
    }

    let stop_file = std::env::temp_dir().join(format!("apiw-loadgen-stop-{}", ns.name));
    let loadgen = repo_root().join("tests/apps/loadgen.py");
    let mut loads = Vec::new();
    for (name, _) in &budgets {
        let url_base = format!("http://{}", service_address(cluster, &ns, name).await);
        let url = format!("{url_base}/healthz");
        let cmd = node.command(&[
            "python3",
            loadgen.to_str().unwrap(),
            &url,
            stop_file.to_str().unwrap(),
            "180",   // seconds at most
            "40000", // requests at most
            &format!("{url_base}/sleep?seconds=10"),
            "6", // threads: about 3 slow requests in flight per pod
        ]);
        loads.push(tokio::process::Command::from(cmd).output());
    }
    let loads = tokio::spawn(futures::future::join_all(loads));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A spec edit that changes the pod template: a rolling update of both. Waited for
    // from the Deployment's next generation: right after the apply, the operator has not
    // written it yet and the old one reads as rolled out (seen: "done" in 262 ms).
    let t = Instant::now();
    let mut generations = Vec::new();
    for (name, timeouts) in &budgets {
        generations.push(deployment_of(cluster, &ns, name).await.metadata.generation);
        workload(name, "100Mi", timeouts);
    }
    for ((name, _), before) in budgets.iter().zip(generations) {
        poll_until(READY_WITHIN, &format!("{name}'s new template"), || async {
            let now = deployment_of(cluster, &ns, name).await.metadata.generation;
            (now > before).then_some(())
        })
        .await;
        wait_rolled_out(cluster, &ns, name).await;
    }
    eprintln!("both rollouts done (old pods gone) in {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&stop_file, b"").unwrap();
    let outputs = loads.await.unwrap();
    let _ = std::fs::remove_file(&stop_file);

    let mut counts = Vec::new();
    for ((name, _), out) in budgets.iter().zip(outputs) {
        let out = out.unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{name}: no report from the load generator ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!("rollout of {name}: {report}");
        counts.push(report);
    }
    let (budgeted, defeated) = (&counts[0], &counts[1]);
    assert!(budgeted["sent"].as_u64().unwrap() >= 500, "{budgeted}");
    assert!(
        budgeted["slow"]["sent"].as_u64().unwrap() >= 6,
        "{budgeted}"
    );
    assert_eq!(
        (&budgeted["failed"], &budgeted["slow"]["failed"]),
        (&json!(0), &json!(0)),
        "the derived budget drops nothing: {budgeted}"
    );
    assert!(
        defeated["slow"]["failed"].as_u64().unwrap() > 0,
        "with 1 s to finish, the rollout should cut the 10 s requests in flight: {defeated}"
    );
}

/// GETs `url` from inside the node's network namespace again and again, each on a new
/// connection and `pause` apart, until the returned flag is set or `max_requests` or
/// `max_time` is reached; the task yields how many it sent.
fn repeat_get(
    node: &RealNode,
    url: &str,
    max_requests: usize,
    max_time: Duration,
    pause: Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<usize>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let curl = node.command(&["curl", "-sS", "-o", "/dev/null", "--max-time", "5", url]);
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut curl = tokio::process::Command::from(curl);
            let deadline = Instant::now() + max_time;
            let mut sent = 0;
            while sent < max_requests
                && Instant::now() < deadline
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                let _ = curl.status().await;
                sent += 1;
                tokio::time::sleep(pause).await;
            }
            sent
        })
    };
    (stop, task)
}

/// Waits until the Deployment runs only pods of its current template (`replicas` of them,
/// all ready) and no old pod is left, even terminating.
/// `clients` loops of [`repeat_get`] at once, each bounded alike, with no pause.
fn concurrent_gets(
    node: &RealNode,
    clients: usize,
    url: &str,
    max_requests: usize,
    max_time: Duration,
) -> Vec<(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<usize>,
)> {
    (0..clients)
        .map(|_| repeat_get(node, url, max_requests, max_time, Duration::ZERO))
        .collect()
}

/// Stops loops of [`repeat_get`]; the requests they sent in all.
async fn stop_all(
    loads: Vec<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        tokio::task::JoinHandle<usize>,
    )>,
) -> usize {
    let mut sent = 0;
    for (stop, load) in loads {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sent += load.await.unwrap();
    }
    sent
}

/// (replicas wanted, Ready) of a workload's Deployment.
async fn replicas_of(cluster: &Cluster, ns: &TestNamespace, name: &str) -> (i32, i32) {
    let d = deployment_of(cluster, ns, name).await;
    (
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    )
}

async fn wait_rolled_out(cluster: &Cluster, ns: &TestNamespace, name: &str) {
    poll_until(READY_WITHIN, &format!("{name} rolled out"), || async {
        // Not there yet right after the apply: the operator creates it.
        let d = Api::<Deployment>::namespaced(cluster.client().await, &ns.name)
            .get_opt(name)
            .await
            .ok()??;
        let want = d.spec.as_ref()?.replicas?;
        let status = d.status.as_ref()?;
        let done = d.metadata.generation == status.observed_generation
            && status.updated_replicas == Some(want)
            && status.ready_replicas == Some(want)
            && status.replicas == Some(want);
        let pods = workload_pods(cluster, ns, name).await;
        (done && pods.len() == want as usize).then_some(())
    })
    .await;
}

/// The probes the operator derives, on a real kubelet: a slow start (20 s) within the
/// startup budget is not killed, and one past a shorter budget is (so the check can
/// fail); a single worker whose loop is blocked past gunicorn's heartbeat is replaced by
/// gunicorn while liveness leaves the pod alone; a server that dies is restarted.
async fn probes_do_their_job(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "probes").await;
    let workload = |name: &str, spec: Value| apply_workload(cluster, &ns, name, spec);
    let slow = json!([{"name": "STARTUP_DELAY_SECONDS", "value": "20"}]);
    workload(
        "slow-start",
        // Two minutes: on the two cores, every scenario boots at once and the app's
        // imports alone took over 40 s once (killed at 68 s with a 60 s budget).
        json!({"env": slow, "timeouts": {"startup": "120s"}}),
    );
    workload(
        "too-slow",
        json!({"env": slow, "timeouts": {"startup": "10s"}}),
    );
    workload(
        "blocked",
        json!({"workers": {"count": 1}, "timeouts": {"workerHeartbeat": "10s"}}),
    );
    workload("dies", json!({}));

    let slow_start = async {
        let t = Instant::now();
        wait_ready(cluster, &ns, "slow-start").await;
        let pod = workload_pods(cluster, &ns, "slow-start").await.remove(0);
        let app = container_status(&pod, APP_CONTAINER);
        assert_eq!(
            app.restart_count, 0,
            "a start within the budget is not killed: {app:?}"
        );
        assert!(
            t.elapsed() >= Duration::from_secs(20),
            "Ready before the app could answer"
        );
        eprintln!(
            "slow start (20 s, startup budget 120 s): Ready after {:?}, no restart",
            t.elapsed()
        );
        let t = Instant::now();
        poll_until(
            READY_WITHIN,
            "too-slow restarted by its startup probe",
            || async {
                let pods = workload_pods(cluster, &ns, "too-slow").await;
                let restarts = pods
                    .first()
                    .and_then(|p| p.status.as_ref()?.container_statuses.clone())
                    .and_then(|s| {
                        s.iter()
                            .find(|c| c.name == APP_CONTAINER)
                            .map(|c| c.restart_count)
                    });
                restarts.filter(|r| *r >= 1)
            },
        )
        .await;
        eprintln!(
            "slow start past a 10 s startup budget: restarted after {:?}",
            t.elapsed()
        );
    };

    let blocked = async {
        wait_ready(cluster, &ns, "blocked").await;
        let pod = workload_pods(cluster, &ns, "blocked").await.remove(0);
        let (_, workers) = server_processes(&pod, 1).await;
        assert_eq!(workers, 1);
        let id = container_status(&pod, APP_CONTAINER)
            .container_id
            .clone()
            .unwrap();
        let worker_pids = || {
            let processes = RealNode::container_processes(&id);
            let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
            processes
                .iter()
                .filter(|p| pids.contains(&p.ppid))
                .map(|p| p.pid)
                .collect::<Vec<_>>()
        };
        let before = worker_pids();
        // The only worker sleeps 40 s inside an async handler: no heartbeat for 40 s.
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let url = format!("http://{ip}:8000/block?seconds=40");
        let curl = node.command(&["curl", "-sS", "-o", "/dev/null", "--max-time", "45", &url]);
        let request = tokio::spawn(tokio::process::Command::from(curl).output());
        let t = Instant::now();
        let after = poll_until(
            Duration::from_secs(40),
            "gunicorn replaced the blocked worker",
            || async {
                let now = worker_pids();
                (now.len() == 1 && now != before).then_some(now)
            },
        )
        .await;
        eprintln!(
            "blocked worker {before:?} replaced by {after:?} after {:?}",
            t.elapsed()
        );
        let _ = request.await;
        // Liveness had its chance all along and never restarted the container.
        wait_ready(cluster, &ns, "blocked").await;
        let pod = workload_pods(cluster, &ns, "blocked").await.remove(0);
        let app = container_status(&pod, APP_CONTAINER);
        assert_eq!(app.restart_count, 0, "liveness restarted the pod: {app:?}");
    };

    let dies = async {
        wait_ready(cluster, &ns, "dies").await;
        let pod = workload_pods(cluster, &ns, "dies").await.remove(0);
        let id = container_status(&pod, APP_CONTAINER)
            .container_id
            .clone()
            .unwrap();
        let processes = RealNode::container_processes(&id);
        let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
        let master = processes
            .iter()
            .find(|p| !pids.contains(&p.ppid))
            .unwrap()
            .pid;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &master.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let t = Instant::now();
        poll_until(
            READY_WITHIN,
            "the dead server restarted and Ready",
            || async {
                let pod = workload_pods(cluster, &ns, "dies")
                    .await
                    .into_iter()
                    .next()?;
                let app = container_status(&pod, APP_CONTAINER);
                (app.restart_count == 1 && pod_ready(&pod)).then_some(())
            },
        )
        .await;
        eprintln!("dead server restarted and Ready after {:?}", t.elapsed());
    };

    tokio::join!(slow_start, blocked, dies);
}

/// Each server kind, each behind another upstream kind: every workload becomes Ready on
/// a real pod (the server started with the rendered flags) and its sidecar starts with
/// the flags rendered for that upstream.
async fn every_server_kind_boots(cluster: &Cluster, node: &RealNode) {
    let ns = node.namespace(cluster, "servers").await;
    let kinds = [
        ("gunicorn-uvicorn", "app:app", json!({"kind": "none"})),
        ("uvicorn", "app:app", json!({"kind": "aws-nlb"})),
        ("gunicorn-sync", "wsgi:app", json!({"kind": "gcp-lb"})),
        ("gunicorn-gthread", "wsgi:app", json!({"kind": "azure-lb"})),
        ("granian", "app:app", json!({"kind": "ingress-nginx"})),
        ("hypercorn", "app:app", json!({"kind": "envoy"})),
        (
            "gunicorn-uvicorn",
            "app:app",
            json!({"kind": "custom", "idleTimeout": "90s", "pooling": true}),
        ),
    ];
    // Every async kind runs the no-code loop heartbeat (spec.diagnostics.loopHeartbeat).
    let is_async =
        |server: &str| !server.starts_with("gunicorn-sync") && server != "gunicorn-gthread";
    for (i, (server, app, upstream)) in kinds.iter().enumerate() {
        let spec = json!({"app": app, "server": server, "upstream": upstream,
                          "diagnostics": {"loopHeartbeat": is_async(server)}});
        apply_workload(cluster, &ns, &format!("{server}-{i}"), spec);
    }
    let t = Instant::now();
    for (i, (server, _, upstream)) in kinds.iter().enumerate() {
        let name = format!("{server}-{i}");
        // Not poll_until: on a timeout the failure must carry the containers' logs.
        let mut ready = false;
        while !ready && t.elapsed() < READY_WITHIN {
            ready = get_workload(cluster, &ns, &name)
                .await
                .is_some_and(|aw| condition(&aw, "Ready").is_some_and(|c| c.status == "True"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pods = workload_pods(cluster, &ns, &name).await;
        let logs: String = pods
            .iter()
            .map(|p| {
                let pod = p.metadata.name.clone().unwrap();
                format!(
                    "--- {pod} app:\n{}\n--- {pod} sidecar:\n{}",
                    node.container_log(cluster, &ns.name, &pod, APP_CONTAINER),
                    node.container_log(cluster, &ns.name, &pod, SIDECAR_CONTAINER)
                )
            })
            .collect();
        assert!(
            ready,
            "{name} (upstream {upstream}) not Ready after {READY_WITHIN:?}:\n{logs}"
        );
        let pod = &pods[0];
        for c in [SIDECAR_CONTAINER, APP_CONTAINER] {
            let s = container_status(pod, c);
            assert!(
                s.started == Some(true) && s.restart_count == 0,
                "{name} {c}: {s:?}\n{logs}"
            );
        }
        eprintln!("{name} Ready after {:?}", t.elapsed());
        if is_async(server) {
            // Each worker beats, with no change to the app: the sidecar hears them all.
            let workers = get_workload(cluster, &ns, &name)
                .await
                .and_then(|aw| aw.status?.workers.map(|w| w.count))
                .unwrap();
            let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
            let url = format!("http://{ip}:9901/metrics");
            let heard = poll_until(
                Duration::from_secs(30),
                &format!("{name}: the sidecar hears {workers} workers' heartbeats"),
                || async {
                    let body = node.http_get(&url)?.body;
                    let heard = apiworkload_e2e::metric_sample(
                        &body,
                        "apiworkload_sidecar_heartbeat_workers",
                    )?;
                    (heard == f64::from(workers)).then_some(heard)
                },
            )
            .await;
            eprintln!("{name}: loop heartbeat from {heard} of {workers} workers");
        }
    }
}

/// Applies a small ApiWorkload on the test app's image: gunicorn-uvicorn, one replica,
/// one core, short drains (its namespace goes away with the cluster). `spec` is merged
/// into that as a JSON merge patch (RFC 7386: objects merge, `null` removes a field).
fn apply_workload(cluster: &Cluster, ns: &TestNamespace, name: &str, spec: Value) {
    let mut doc = json!({
        "apiVersion": "apiworkload.io/v1alpha1", "kind": "ApiWorkload",
        "metadata": {"name": name, "namespace": ns.name},
        "spec": {
            "image": APP_IMAGE, "app": "app:app", "server": "gunicorn-uvicorn",
            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"},
                          "limits": {"cpu": "1", "memory": "512Mi"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
            "timeouts": {"drain": "1s", "gracefulShutdown": "2s"},
        }
    });
    merge_patch(&mut doc["spec"], &spec);
    let (ok, out, err) = cluster.apply(&doc);
    assert!(ok, "{name}: {out}{err}");
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

async fn get_workload(cluster: &Cluster, ns: &TestNamespace, name: &str) -> Option<ApiWorkload> {
    Api::<ApiWorkload>::namespaced(cluster.client().await, &ns.name)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn wait_status(
    cluster: &Cluster,
    ns: &TestNamespace,
    name: &str,
    what: &str,
    check: impl Fn(&ApiWorkload) -> bool,
) -> ApiWorkload {
    poll_until(READY_WITHIN, what, || async {
        get_workload(cluster, ns, name).await.filter(|aw| check(aw))
    })
    .await
}

async fn wait_ready(cluster: &Cluster, ns: &TestNamespace, name: &str) -> ApiWorkload {
    wait_status(cluster, ns, name, &format!("{name} Ready"), |aw| {
        condition(aw, "Ready").is_some_and(|c| c.status == "True")
    })
    .await
}

async fn deployment_of(cluster: &Cluster, ns: &TestNamespace, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(cluster.client().await, &ns.name)
        .get(name)
        .await
        .unwrap()
}

/// What runs in the pod's app container, from the host's /proc: the supervisor's argv (as
/// the pod spec writes it) and how many worker processes it has, once `workers` have
/// started (or after 30 s).
async fn server_processes(pod: &Pod, workers: i32) -> (Vec<String>, i32) {
    let id = container_status(pod, APP_CONTAINER)
        .container_id
        .clone()
        .unwrap();
    let t = Instant::now();
    loop {
        let processes = RealNode::container_processes(&id);
        let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
        let supervisors: Vec<_> = processes
            .iter()
            .filter(|p| !pids.contains(&p.ppid))
            .collect();
        assert_eq!(
            supervisors.len(),
            1,
            "one process at the top: {processes:?}"
        );
        // A single-process server is its own worker.
        let running = i32::try_from(processes.len() - 1).unwrap().max(1);
        if running == workers || t.elapsed() > Duration::from_secs(30) {
            return (strip_interpreter(&supervisors[0].argv), running);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn workload_pods(cluster: &Cluster, ns: &TestNamespace, name: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(cluster.client().await, &ns.name)
        .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={name}")))
        .await
        .unwrap()
        .items
}

/// `<ClusterIP>:<port>` of the Service's `http` port.
async fn service_address(cluster: &Cluster, ns: &TestNamespace, name: &str) -> String {
    let spec =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client().await, &ns.name)
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .unwrap()
        .port;
    format!("{}:{port}", spec.cluster_ip.unwrap())
}

fn pod_node(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn pod_ready(pod: &Pod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// A container's status, app or (native sidecar) init container.
fn container_status<'a>(
    pod: &'a Pod,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ContainerStatus {
    let status = pod.status.as_ref().unwrap();
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status for container {name}: {status:?}"))
}

/// A Python entry point's argv as the kernel has it (`/opt/venv/bin/python
/// /opt/venv/bin/gunicorn …`) → as the pod spec wrote it (`gunicorn …`).
fn strip_interpreter(argv: &[String]) -> Vec<String> {
    let mut argv = argv.to_vec();
    if argv.len() > 1
        && argv[0]
            .rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with("python"))
    {
        argv.remove(0);
    }
    if let Some(first) = argv.first_mut() {
        *first = first.rsplit('/').next().unwrap_or(first).to_string();
    }
    argv
}
