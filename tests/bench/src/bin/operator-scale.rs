//! The operator at scale on the real control plane (tests/cluster):
//!
//! 1. convergence of N ApiWorkloads created at once, against a baseline client (Rust,
//!    same parallelism) that creates the same ApiWorkloads and writes the same children
//!    and status itself: operator throughput / baseline throughput (target ≥ 0.8), over
//!    `--runs` runs that alternate which side goes first, each on a control plane
//!    started for it (the ratio of the medians, and each run's), with the API server's
//!    requests and each process's CPU seconds side by side;
//! 2. operator RSS with 0, N and M workloads, and the slope per workload (target
//!    ≤ 64 MiB at 1,000);
//! 3. 100 spec edits on the idle operator: p50/p99 from the edit to the Deployment
//!    carrying the new value (target p99 ≤ 200 ms); and a full resync (a restart) of
//!    the N unchanged workloads performs 0 writes.
//!
//! ```text
//! tests/bench/run operator-scale [--workloads 1000] [--max 5000] [--parallelism 32] [--runs 3]
//!     [--convergence-only] [--pprof DIR]
//! ```

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apiworkload_bench::{arg, cpu_time, mib, quantile, rss_bytes, target_dir};
use apiworkload_e2e::{Cluster, PrivateCluster, free_port, http_get, install_crds, unique_suffix};
use apiworkload_operator::{
    api::ApiWorkload,
    children::Readiness,
    plan::plan,
    render::{Autoscaler, RenderContext, render},
    report::{Found, report},
};
use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
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

/// A control plane started for one run (tests/cluster/up in a private state dir, with
/// the CRDs), stopped and removed when dropped.
async fn fresh_cluster() -> anyhow::Result<(PrivateCluster, Client)> {
    let cluster = tokio::task::spawn_blocking(|| {
        let cluster = PrivateCluster::up("bench");
        install_crds(&cluster);
        cluster
    })
    .await?;
    let client = cluster.client().await;
    Ok((cluster, client))
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

/// One namespace's ApiWorkloads and Deployments, as two watches keep them. Waiting
/// for convergence then costs the API server a watch event per change, the same in
/// both runs. (Listing everything every 250 ms, as a first version did, loaded the
/// server under test for as long as the operator worked, and not during the
/// baseline's writes: it cost the operator's run a third of its time.)
struct Watched {
    workloads: reflector::Store<ApiWorkload>,
    deployments: reflector::Store<PartialObjectMeta<Deployment>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watched {
    async fn start(client: &Client, ns: &str) -> anyhow::Result<Watched> {
        fn run<K>(
            api: Api<K>,
            cfg: watcher::Config,
        ) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
        where
            K: kube::Resource
                + Clone
                + k8s_openapi::serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (store, writer) = reflector::store();
            let task = tokio::spawn(
                watcher(api, cfg)
                    .default_backoff()
                    .reflect(writer)
                    .for_each(|_| futures::future::ready(())),
            );
            (store, task)
        }
        let (workloads, a) = run(
            Api::<ApiWorkload>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        );
        let (deployments, b) = run(
            Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), ns),
            watcher::Config::default().labels("apiworkload.io/workload"),
        );
        workloads.wait_until_ready().await?;
        deployments.wait_until_ready().await?;
        Ok(Watched {
            workloads,
            deployments,
            tasks: vec![a, b],
        })
    }

    /// Workloads whose status is for their generation.
    fn current(&self) -> usize {
        self.workloads
            .state()
            .iter()
            .filter(|a| {
                a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation
            })
            .count()
    }

    fn ready(&self) -> usize {
        self.workloads
            .state()
            .iter()
            .filter(|a| {
                a.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count()
    }

    /// Every workload has its status for its generation, and a Deployment.
    async fn wait_converged(&self, expected: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.current() < expected || self.deployments.state().len() < expected {
            if start.elapsed() > limit {
                bail!(
                    "{expected} workloads did not converge within {limit:?} ({} current, {} Deployments)",
                    self.current(),
                    self.deployments.state().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The API server's request counters, by verb and resource (all clients: the
/// controllers' requests too), to say where the two runs differ.
fn request_counts(cluster: &Cluster) -> std::collections::BTreeMap<String, f64> {
    let (_, text, _) = cluster.kubectl(&["get", "--raw", "/metrics"]);
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let sub = label("subresource");
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        );
        *counts.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

fn requests_since(
    cluster: &Cluster,
    before: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    let mut after = request_counts(cluster);
    for (k, v) in after.iter_mut() {
        *v -= before.get(k).copied().unwrap_or(0.0);
    }
    after.retain(|_, v| *v > 0.0);
    after
}

/// Waits until the control plane is quiet (at most 4 writes in 2 s), so that a run
/// starts on an idle cluster: the controllers clean up after a deleted namespace at
/// their client's rate limit, and that tail of the first run landed in the second
/// (630 endpoint deletions in the operator's run, none in the baseline's).
fn settle(cluster: &Cluster) {
    const WRITES: [&str; 6] = [
        "POST ",
        "PUT ",
        "PATCH ",
        "APPLY ",
        "DELETE ",
        "DELETECOLLECTION ",
    ];
    let writes = || -> f64 {
        request_counts(cluster)
            .iter()
            .filter(|(k, _)| WRITES.iter().any(|w| k.starts_with(w)))
            .map(|(_, v)| v)
            .sum()
    };
    let start = Instant::now();
    let mut before = writes();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = writes();
        if now - before <= 4.0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            eprintln!(
                "  (the cluster was still writing {:.0} requests/s after 5 minutes)",
                (now - before) / 2.0
            );
            break;
        }
        before = now;
    }
    eprintln!(
        "  cluster quiet after {:.0} s",
        start.elapsed().as_secs_f64()
    );
}

/// What the operator writes for one workload, written directly (server-side apply):
/// the same children, and the same status (conditions included) as the operator's
/// first reconcile reports, from the same pure function.
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
                .await?
        };
    }
    if let Some((sa, rb)) = &r.identity {
        apply!(k8s_openapi::api::core::v1::ServiceAccount, sa);
        apply!(k8s_openapi::api::rbac::v1::RoleBinding, rb);
    }
    apply!(k8s_openapi::api::core::v1::Service, &r.service);
    let deployment = apply!(Deployment, &r.deployment);
    if let Some(pdb) = &r.pdb {
        apply!(k8s_openapi::api::policy::v1::PodDisruptionBudget, pdb);
    }
    if let Autoscaler::Hpa(hpa) = &r.autoscaler {
        apply!(
            k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
            hpa.as_ref()
        );
    }
    let found = Found {
        readiness: Some(Readiness::of(&deployment)),
        child_problem: None,
        // No pods yet: the sidecars' conditions await their reports.
        pods: aw.spec.diagnostics.enabled.then(Vec::new),
    };
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let (status, _) = report(&aw, Ok((&plan, &r)), &found, None, now);
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
    /// The operator reconciling `concurrency` workloads at a time: the baseline's
    /// parallelism, so both runs have as many requests in flight.
    fn start(cluster: &Cluster, concurrency: usize) -> anyhow::Result<Operator> {
        let port = free_port();
        let child = Command::new(target_dir().join("release/apiworkload-operator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--concurrency", &concurrency.to_string()])
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
        Some(http_get(([127, 0, 0, 1], self.port).into(), "/metrics")?.body)
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

/// With `--pprof DIR`: a 40 s CPU profile of kube-apiserver from the start of each
/// run, saved as DIR/<side>-<n>.pprof (`go tool pprof -top` reads it).
fn profile_apiserver(cluster: &Cluster, side: &str) -> Option<Child> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .iter()
        .position(|a| a == "--pprof")
        .and_then(|i| args.get(i + 1))?;
    std::fs::create_dir_all(dir).ok()?;
    let n = (1..).find(|n| !std::path::Path::new(&format!("{dir}/{side}-{n}.pprof")).exists())?;
    let out = std::fs::File::create(format!("{dir}/{side}-{n}.pprof")).ok()?;
    cluster
        .command("kubectl")
        .args(["get", "--raw", "/debug/pprof/profile?seconds=40"])
        .stdout(out)
        .spawn()
        .ok()
}

/// One timed convergence: how long, the API server's requests meanwhile, and the CPU
/// each process used.
struct Timed {
    elapsed: Duration,
    requests: std::collections::BTreeMap<String, f64>,
    cpu: std::collections::BTreeMap<String, f64>,
}

/// CPU seconds used so far by each control-plane component (their pid files sit
/// beside the kubeconfig), this benchmark (the baseline's client) and the operator.
fn cpu_seconds(
    cluster: &Cluster,
    operator: Option<u32>,
) -> std::collections::BTreeMap<String, f64> {
    let mut pids: Vec<(String, u32)> = vec![("benchmark client".into(), std::process::id())];
    pids.extend(operator.map(|p| ("operator".to_string(), p)));
    if let Some(dir) = cluster.kubeconfig.parent() {
        for entry in std::fs::read_dir(dir.join("pids"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|p| p.trim().parse().ok());
            pids.extend(pid.map(|p| (entry.file_name().to_string_lossy().into_owned(), p)));
        }
    }
    pids.into_iter()
        .filter_map(|(name, pid)| Some((name, cpu_time(pid)?.as_secs_f64())))
        .collect()
}

fn cpu_since(
    cluster: &Cluster,
    operator: Option<u32>,
    before: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    let mut after = cpu_seconds(cluster, operator);
    for (k, v) in after.iter_mut() {
        *v -= before.get(k).copied().unwrap_or(0.0);
    }
    after
}

/// The baseline: no operator; the client creates the workloads, then writes their
/// children and status itself.
async fn baseline_run(
    cluster: &Cluster,
    client: &Client,
    n: usize,
    parallelism: usize,
    limit: Duration,
) -> anyhow::Result<Timed> {
    let ns = namespace(client, "bench-baseline").await?;
    let watched = Watched::start(client, &ns).await?;
    settle(cluster);
    let counted = request_counts(cluster);
    let cpu = cpu_seconds(cluster, None);
    let profile = profile_apiserver(cluster, "baseline");
    let t = Instant::now();
    let created = create_all(client, &ns, 0..n, parallelism).await?;
    let results: Vec<_> = stream::iter(created)
        .map(|aw| write_children(client.clone(), aw))
        .buffer_unordered(parallelism)
        .collect()
        .await;
    for r in results {
        r?;
    }
    watched.wait_converged(n, limit).await?;
    let timed = Timed {
        elapsed: t.elapsed(),
        requests: requests_since(cluster, &counted),
        cpu: cpu_since(cluster, None, &cpu),
    };
    if let Some(mut p) = profile {
        p.wait()?;
    }
    Ok(timed)
}

/// The operator (already running) converges `n` workloads created at once; returns
/// the namespace holding them and its watch.
async fn operator_run(
    cluster: &Cluster,
    client: &Client,
    operator: &Operator,
    n: usize,
    parallelism: usize,
    limit: Duration,
) -> anyhow::Result<(Timed, String, Watched)> {
    let ns = namespace(client, "bench-operator").await?;
    let watched = Watched::start(client, &ns).await?;
    settle(cluster);
    let counted = request_counts(cluster);
    let pid = Some(operator.child.id());
    let cpu = cpu_seconds(cluster, pid);
    let profile = profile_apiserver(cluster, "operator");
    let t = Instant::now();
    create_all(client, &ns, 0..n, parallelism).await?;
    watched.wait_converged(n, limit).await?;
    let timed = Timed {
        elapsed: t.elapsed(),
        requests: requests_since(cluster, &counted),
        cpu: cpu_since(cluster, pid, &cpu),
    };
    if let Some(mut p) = profile {
        p.wait()?;
    }
    Ok((timed, ns, watched))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--workloads", 1000);
    let max = arg("--max", 5000).max(n);
    let parallelism = arg("--parallelism", 32);
    let runs = arg("--runs", 3).max(1);
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
    let limit = Duration::from_secs(900);

    // 1. Convergence, in runs that alternate which side goes first (A B, B A, …). Each
    // run gets a control plane of its own, started for it: on a shared one, each run met
    // the state the earlier ones left (a growing etcd and watch cache, Events, the
    // controllers' clean-up of deleted namespaces at their client's rate limit), and
    // the same baseline took from 17 to 30 s.
    let mut baselines = Vec::new();
    let mut operators = Vec::new();
    let (mut rss_0, mut rss_n) = (Vec::new(), Vec::new());
    let mut kept = None;
    for run in 0..runs {
        let operator_first = run % 2 == 1;
        for (i, operator_turn) in [operator_first, !operator_first].into_iter().enumerate() {
            let (cluster, client) = fresh_cluster().await?;
            if !operator_turn {
                eprintln!(
                    "run {}: baseline, {n} ApiWorkloads and their children written directly ({parallelism} at a time)…",
                    run + 1
                );
                let r = baseline_run(&cluster, &client, n, parallelism, limit).await?;
                eprintln!("  {:.1} s", r.elapsed.as_secs_f64());
                baselines.push(r);
                continue;
            }
            let op = Operator::start(&cluster, parallelism)?;
            rss_0.push(settled_rss(&op) as f64);
            eprintln!(
                "run {}: operator, {n} ApiWorkloads created at once…",
                run + 1
            );
            let (r, ns, watched) =
                operator_run(&cluster, &client, &op, n, parallelism, limit).await?;
            eprintln!("  {:.1} s", r.elapsed.as_secs_f64());
            operators.push(r);
            rss_n.push(settled_rss(&op) as f64);
            if run + 1 == runs && i == 1 {
                kept = Some((cluster, client, op, ns, watched));
            }
        }
    }
    // The later figures need the operator and its workloads: the last run's, or new ones.
    let (cluster, client, op, ns, watched) = match kept {
        Some(k) => k,
        None => {
            let (cluster, client) = fresh_cluster().await?;
            let op = Operator::start(&cluster, parallelism)?;
            let (_, ns, watched) =
                operator_run(&cluster, &client, &op, n, parallelism, limit).await?;
            (cluster, client, op, ns, watched)
        }
    };
    let secs =
        |runs: &[Timed]| -> Vec<f64> { runs.iter().map(|r| r.elapsed.as_secs_f64()).collect() };
    let (op_secs, base_secs) = (secs(&operators), secs(&baselines));
    let (op_median, base_median) = (quantile(&op_secs, 0.5), quantile(&base_secs, 0.5));
    println!(
        "operator at scale ({} cores, real kube-apiserver + etcd on loopback, {parallelism} at a time: the baseline's writers, the operator's --concurrency)",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    println!(
        "  convergence of {n} created at once, median of {runs}   operator {op_median:6.1} s ({:5.1}/s)   baseline {base_median:6.1} s ({:5.1}/s)   ratio {:.2}   target ≥ 0.8",
        n as f64 / op_median,
        n as f64 / base_median,
        base_median / op_median
    );
    let paired: Vec<String> = base_secs
        .iter()
        .zip(&op_secs)
        .map(|(b, o)| format!("{:.1}/{:.1} = {:.2}", b, o, b / o))
        .collect();
    println!(
        "    each run, baseline/operator       {}",
        paired.join("   ")
    );
    // Where the runs differ, per workload over all runs, largest difference first
    // (watches count once, when they start; all clients, the controllers too).
    let total = |runs: &[Timed]| {
        let mut sum = std::collections::BTreeMap::<String, f64>::new();
        for r in runs {
            for (k, v) in &r.requests {
                *sum.entry(k.clone()).or_default() += v / (n * runs.len()) as f64;
            }
        }
        sum
    };
    let (op_requests, base_requests) = (total(&operators), total(&baselines));
    let mut keys: Vec<&String> = base_requests.keys().chain(op_requests.keys()).collect();
    keys.sort();
    keys.dedup();
    let per =
        |m: &std::collections::BTreeMap<String, f64>, k: &String| m.get(k).copied().unwrap_or(0.0);
    keys.sort_by(|a, b| {
        let d = |k: &String| (per(&op_requests, k) - per(&base_requests, k)).abs();
        d(b).total_cmp(&d(a))
    });
    let all = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>();
    println!(
        "    API server requests per workload   {:>8} {:>8}",
        "operator", "baseline"
    );
    println!(
        "      {:36} {:8.2} {:8.2}",
        "all",
        all(&op_requests),
        all(&base_requests)
    );
    for k in keys.into_iter().take(10) {
        println!(
            "      {k:36} {:8.2} {:8.2}",
            per(&op_requests, k),
            per(&base_requests, k)
        );
    }
    let cpu = |runs: &[Timed]| {
        let mut sum = std::collections::BTreeMap::<String, f64>::new();
        for r in runs {
            for (k, v) in &r.cpu {
                *sum.entry(k.clone()).or_default() += v / runs.len() as f64;
            }
        }
        sum
    };
    let (op_cpu, base_cpu) = (cpu(&operators), cpu(&baselines));
    println!(
        "    CPU seconds per run (mean)         {:>8} {:>8}",
        "operator", "baseline"
    );
    println!(
        "      {:36} {:8.1} {:8.1}",
        "all",
        all(&op_cpu),
        all(&base_cpu)
    );
    let mut procs: Vec<&String> = op_cpu.keys().chain(base_cpu.keys()).collect();
    procs.sort();
    procs.dedup();
    for k in procs {
        println!(
            "      {k:36} {:8.1} {:8.1}",
            per(&op_cpu, k),
            per(&base_cpu, k)
        );
    }
    let rss_0 = quantile(&rss_0, 0.5) as u64;
    println!(
        "  RSS   0 workloads                   {:6.1} MiB",
        mib(rss_0)
    );
    println!(
        "  RSS {n:5} workloads                  {:6.1} MiB   target ≤ 64 at 1,000",
        mib(quantile(&rss_n, 0.5) as u64)
    );

    if std::env::args().any(|a| a == "--convergence-only") {
        // The operator stops before its control plane.
        drop((watched, op));
        drop(cluster);
        return Ok(());
    }

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
    watched.wait_converged(n, limit).await?;
    let t = Instant::now();
    loop {
        let ready = watched.ready();
        if ready == n {
            break;
        }
        if t.elapsed() > limit {
            bail!("only {ready} of {n} workloads Ready before the resync");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(op);
    let op = Operator::start(&cluster, parallelism)?;
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
        watched.wait_converged(max, limit * 2).await?;
        let rss_max = settled_rss(&op);
        println!(
            "  RSS {max:5} workloads                  {:6.1} MiB   slope {:.1} KiB per workload",
            mib(rss_max),
            (rss_max as f64 - rss_0 as f64) / max as f64 / 1024.0
        );
    }
    drop((watched, op));
    drop(cluster);
    Ok(())
}
