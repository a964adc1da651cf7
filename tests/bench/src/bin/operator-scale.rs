//! The operator at scale on the real control plane (tests/cluster):
//!
//! 1. convergence of N ApiWorkloads created at once, against a baseline client (Rust,
//!    same parallelism) that creates the same ApiWorkloads and writes the same children
//!    and status itself: operator throughput / baseline throughput (target ≥ 0.8);
//! 2. operator RSS with 0, N and M workloads, and the slope per workload (target
//!    ≤ 64 MiB at 1,000);
//! 3. 100 spec edits on the idle operator: p50/p99 from the edit to the Deployment
//!    carrying the new value (target p99 ≤ 200 ms); and a full resync (a restart) of
//!    the N unchanged workloads performs 0 writes.
//!
//!     tests/bench/run operator-scale [--workloads 1000] [--max 5000] [--parallelism 32]

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apiworkload_bench::{arg, mib, quantile, rss_bytes, target_dir};
use apiworkload_e2e::{Cluster, free_port, http_get_blocking, install_crds, unique_suffix};
use apiworkload_operator::{
    api::ApiWorkload,
    plan::plan,
    render::{Autoscaler, RenderContext, render},
};
use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

fn workload(i: usize) -> anyhow::Result<ApiWorkload> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiworkload.io/v1alpha1", "kind": "ApiWorkload",
        "metadata": {"name": format!("w{i:05}")},
        "spec": {
            "image": "registry.example/app:1", "app": "app.main:app",
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
        }
    }))?)
}

async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{}", unique_suffix());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    // Pods need the default ServiceAccount.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    while sa.get_opt("default").await?.is_none() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(name)
}

/// Deletes a namespace and waits until it is gone (its workloads too), so the next
/// phase starts from an empty cluster.
async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    api.delete(name, &DeleteParams::background()).await?;
    let start = Instant::now();
    while api.get_opt(name).await?.is_some() {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("namespace {name} still terminating after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn create_all(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    parallelism: usize,
) -> anyhow::Result<Vec<ApiWorkload>> {
    let api: Api<ApiWorkload> = Api::namespaced(client.clone(), ns);
    let created: Vec<_> = stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move { anyhow::Ok(api.create(&PostParams::default(), &workload(i)?).await?) }
        })
        .buffer_unordered(parallelism)
        .collect()
        .await;
    created.into_iter().collect()
}

/// Every workload in `ns` has its status for its generation and a Deployment.
async fn converged(client: &Client, ns: &str, expected: usize) -> anyhow::Result<bool> {
    let aws = Api::<ApiWorkload>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let current = aws
        .items
        .iter()
        .filter(|a| a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation)
        .count();
    if current < expected {
        return Ok(false);
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("apiworkload.io/workload"))
        .await?;
    Ok(deployments.items.len() >= expected)
}

async fn wait_converged(
    client: &Client,
    ns: &str,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !converged(client, ns, expected).await? {
        if start.elapsed() > limit {
            bail!("{expected} workloads in {ns} did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// What the operator writes for one workload, written directly (server-side apply).
async fn write_children(client: Client, aw: ApiWorkload) -> anyhow::Result<()> {
    let ns = aw.namespace().context("namespace")?;
    let plan = plan(&aw.spec).map_err(|v| anyhow::anyhow!("{v:?}"))?;
    let r = render(&aw, &plan, &RenderContext::default());
    let pp = PatchParams::apply("baseline").force();
    let name = aw.name_any();
    macro_rules! apply {
        ($t:ty, $obj:expr) => {
            Api::<$t>::namespaced(client.clone(), &ns)
                .patch(&name, &pp, &Patch::Apply($obj))
                .await?;
        };
    }
    if let Some((sa, rb)) = &r.identity {
        apply!(k8s_openapi::api::core::v1::ServiceAccount, sa);
        apply!(k8s_openapi::api::rbac::v1::RoleBinding, rb);
    }
    apply!(k8s_openapi::api::core::v1::Service, &r.service);
    apply!(Deployment, &r.deployment);
    if let Some(pdb) = &r.pdb {
        apply!(k8s_openapi::api::policy::v1::PodDisruptionBudget, pdb);
    }
    if let Autoscaler::Hpa(hpa) = &r.autoscaler {
        apply!(
            k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
            hpa.as_ref()
        );
    }
    // The effective values the operator reports, for this generation.
    let mut status = apiworkload_operator::controller::status_from_plan(&plan, &r);
    status.observed_generation = aw.metadata.generation;
    let status = json!({
        "apiVersion": ApiWorkload::api_version(&()), "kind": ApiWorkload::kind(&()),
        "status": status,
    });
    Api::<ApiWorkload>::namespaced(client.clone(), &ns)
        .patch_status(&name, &pp, &Patch::Apply(&status))
        .await?;
    Ok(())
}

struct Operator {
    child: Child,
    port: u16,
}

impl Operator {
    fn start(cluster: &Cluster) -> anyhow::Result<Operator> {
        let port = free_port();
        let child = Command::new(target_dir().join("release/apiworkload-operator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the operator")?;
        let op = Operator { child, port };
        let start = Instant::now();
        while op.metrics().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the operator did not serve /metrics");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(op)
    }

    fn metrics(&self) -> Option<String> {
        let text = http_get_blocking(([127, 0, 0, 1], self.port).into(), "/metrics")?;
        Some(text.split("\r\n\r\n").nth(1)?.to_string())
    }

    /// Sum of every sample of `name` (all label sets).
    fn sum(&self, name: &str) -> f64 {
        self.metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn rss(&self) -> u64 {
        rss_bytes(self.child.id()).unwrap_or(0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RSS after it settles (median of 5 samples a second apart).
fn settled_rss(op: &Operator) -> u64 {
    let samples: Vec<f64> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            op.rss() as f64
        })
        .collect();
    quantile(&samples, 0.5) as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--workloads", 1000);
    let max = arg("--max", 5000).max(n);
    let parallelism = arg("--parallelism", 32);
    eprintln!("building the operator (release)…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "apiworkload-operator",
            "--bin",
            "apiworkload-operator",
        ])
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let cluster = tokio::task::spawn_blocking(|| Cluster::shared().clone()).await?;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || install_crds(&c)).await?;
    let client = cluster.client().await;
    let limit = Duration::from_secs(900);
    let leftovers = Api::<ApiWorkload>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    if !leftovers.items.is_empty() {
        bail!(
            "{} ApiWorkloads already exist (a terminating namespace?): the figures need an empty cluster",
            leftovers.items.len()
        );
    }

    // 1a. Baseline: no operator running; the client writes everything itself.
    eprintln!(
        "baseline: {n} ApiWorkloads and their children written directly ({parallelism} at a time)…"
    );
    let base_ns = namespace(&client, "bench-baseline").await?;
    let t = Instant::now();
    let created = create_all(&client, &base_ns, 0..n, parallelism).await?;
    let results: Vec<_> = stream::iter(created)
        .map(|aw| write_children(client.clone(), aw))
        .buffer_unordered(parallelism)
        .collect()
        .await;
    for r in results {
        r?;
    }
    wait_converged(&client, &base_ns, n, limit).await?;
    let baseline = t.elapsed();
    eprintln!("removing the baseline's objects…");
    delete_namespace(&client, &base_ns).await?;

    // 1b. The operator.
    let op = Arc::new(Operator::start(&cluster)?);
    let rss_0 = settled_rss(&op);
    eprintln!("operator: {n} ApiWorkloads created at once…");
    let ns = namespace(&client, "bench-operator").await?;
    let t = Instant::now();
    create_all(&client, &ns, 0..n, parallelism).await?;
    wait_converged(&client, &ns, n, limit).await?;
    let operator = t.elapsed();
    let rss_n = settled_rss(&op);
    let throughput = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "operator at scale ({} cores, real kube-apiserver + etcd on loopback, parallelism {parallelism})",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    println!(
        "  convergence of {n} created at once   operator {:6.1} s ({:5.1}/s)   baseline {:6.1} s ({:5.1}/s)   ratio {:.2}   target ≥ 0.8",
        operator.as_secs_f64(),
        throughput(operator),
        baseline.as_secs_f64(),
        throughput(baseline),
        throughput(operator) / throughput(baseline)
    );
    println!(
        "  RSS   0 workloads                   {:6.1} MiB",
        mib(rss_0)
    );
    println!(
        "  RSS {n:5} workloads                  {:6.1} MiB   target ≤ 64 at 1,000",
        mib(rss_n)
    );

    // 3a. 100 edits on the idle operator: edit → Deployment carries the new workers.
    eprintln!("100 edits…");
    let aws: Api<ApiWorkload> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut latencies = Vec::new();
    for i in 0..100 {
        let (cpu, workers) = if i % 2 == 0 { ("3", "7") } else { ("2", "5") };
        // Pairs on one workload: 2 → 3 CPUs (7 workers), then back (5).
        let name = format!("w{:05}", (i / 2) % n.max(1));
        let t = Instant::now();
        aws.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"limits": {"cpu": cpu}}}})),
        )
        .await?;
        loop {
            let d = deployments.get(&name).await?;
            let command = d
                .spec
                .and_then(|s| s.template.spec)
                .map(|p| p.containers[0].command.clone().unwrap_or_default())
                .unwrap_or_default();
            let current = command
                .iter()
                .position(|a| a == "--workers")
                .and_then(|p| command.get(p + 1))
                .cloned();
            if current.as_deref() == Some(workers) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("edit {i} did not reach the Deployment in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // 3b. A full resync of the unchanged workloads: a restarted operator writes nothing.
    // First every rollout the edits started has finished (Ready again), so nothing
    // changes under the resync.
    eprintln!("full resync (restart) of {n} unchanged workloads…");
    wait_converged(&client, &ns, n, limit).await?;
    let t = Instant::now();
    loop {
        let list = aws.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|a| {
                a.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == n {
            break;
        }
        if t.elapsed() > limit {
            bail!("only {ready} of {n} workloads Ready before the resync");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(op);
    let op = Operator::start(&cluster)?;
    let t = Instant::now();
    while op.sum("apiworkload_operator_reconciles_total") < n as f64 && t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let resync = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resync_reconciles = op.sum("apiworkload_operator_reconciles_total");
    let resync_writes = op.sum("apiworkload_operator_writes_total");
    let writes_by_kind: Vec<String> = op
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("apiworkload_operator_writes_total{") && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect();

    println!(
        "  edit → Deployment, 100 edits         p50 {:5.1} ms   p99 {:5.1} ms   max {:5.1} ms   target p99 ≤ 200",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );
    println!(
        "  full resync of {n} unchanged        {resync_reconciles:.0} reconciles in {:.1} s, {resync_writes:.0} writes   target 0 {writes_by_kind:?}",
        resync.as_secs_f64()
    );

    // 2. Memory at the maximum.
    if max > n {
        eprintln!("scaling to {max} ApiWorkloads…");
        create_all(&client, &ns, n..max, parallelism).await?;
        wait_converged(&client, &ns, max, limit * 2).await?;
        let rss_max = settled_rss(&op);
        println!(
            "  RSS {max:5} workloads                  {:6.1} MiB   slope {:.1} KiB per workload",
            mib(rss_max),
            (rss_max as f64 - rss_0 as f64) / max as f64 / 1024.0
        );
    }
    drop(op);
    delete_namespace(&client, &ns).await?;
    Ok(())
}
