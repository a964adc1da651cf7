//! The chart's Grafana dashboards against a real Prometheus (Debian's package): it
//! scrapes the real operator's metrics (the controller reconciling workloads on the real
//! control plane) and a real sidecar next to a real uvicorn app with DNS probes against
//! dnsmasq, for 30 s; then every panel's query and every variable's query is evaluated
//! through Prometheus's HTTP API and must parse and return data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

mod support;

use apiworkload_e2e::operator::{create_workload, fixed_spec, start_operator, wait_status};
use apiworkload_e2e::process::Sidecar;
use apiworkload_e2e::{
    Cluster, PythonServer, TestNamespace, free_port, http_get, poll_until, repo_root,
};
use serde_json::Value;
use support::Dnsmasq;

/// Metrics from outside this project (cAdvisor): their queries must parse, but nothing
/// here exports them.
const EXTERNAL: [&str; 1] = ["container_cpu_usage_seconds_total"];

/// A scrape job: name, loopback port, target labels (as Kubernetes discovery would add).
type Job<'a> = (&'a str, u16, &'a [(&'a str, &'a str)]);

struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(targets: &[Job]) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("prometheus-{}", apiworkload_e2e::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, port, labels) in targets {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n        labels: {{{}}}\n",
                labels.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is required (tests/run installs Debian's prometheus package)");
        Prometheus { child, port, dir }
    }

    fn get(&self, path_and_query: &str) -> Option<Value> {
        serde_json::from_str(&http_get(([127, 0, 0, 1], self.port).into(), path_and_query)?.body)
            .ok()
    }

    fn query(&self, expr: &str) -> Value {
        self.get(&format!("/api/v1/query?query={}", url_encode(expr)))
            .unwrap_or_else(|| panic!("no answer from Prometheus for {expr}"))
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The operator's registry served as the binary serves it (same encoder, same type).
async fn serve_operator_metrics(metrics: apiworkload_operator::metrics::Metrics) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Replaces Grafana's variables by what selects everything in this test.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$namespace", ".*")
        .replace("$workload", ".*")
        .replace("$pod", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_real_exporters() {
    // The operator, reconciling a workload on the real control plane.
    let cluster = Cluster::shared();
    let (operator_metrics, _operator) = start_operator(cluster);
    let operator_port = serve_operator_metrics(operator_metrics).await;
    let admin = cluster.client().await;
    let ns = TestNamespace::create(&admin, "dashboards", &[]).await;
    create_workload(&admin, &ns.name, "dash", fixed_spec(1)).await;

    // The sidecar next to a real app, probing DNS through dnsmasq with ndots:5.
    let dns = tokio::task::spawn_blocking(Dnsmasq::start).await.unwrap();
    let resolv = std::env::temp_dir().join(format!("resolv-dash-{}.conf", dns.addr.port()));
    std::fs::write(
        &resolv,
        "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n",
    )
    .unwrap();
    let (app, upstream) =
        tokio::task::spawn_blocking(|| (PythonServer::uvicorn(), PythonServer::uvicorn()))
            .await
            .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={}", app.addr.port()),
        "--dns-probe=api.example.test".into(),
        "--dns-interval=2s".into(),
        format!("--dns-port={}", dns.addr.port()),
        format!("--resolv-conf={}", resolv.display()),
        "--window=2s".into(),
    ]);
    let prometheus = Prometheus::start(&[
        (
            "apiworkload-operator",
            operator_port,
            &[
                ("namespace", "apiworkload"),
                ("pod", "apiworkload-operator-0"),
            ],
        ),
        (
            "apiworkload-sidecar",
            sidecar.addr.port(),
            &[
                ("namespace", "shop"),
                ("workload", "search"),
                ("pod", "search-0"),
            ],
        ),
    ]);
    poll_until(Duration::from_secs(30), "Prometheus ready", || async {
        let p = prometheus.port;
        tokio::task::spawn_blocking(move || http_get(([127, 0, 0, 1], p).into(), "/-/ready"))
            .await
            .unwrap()
            .filter(|r| r.ok())
    })
    .await;

    // 30 s of activity: requests, a stall, outbound calls, and a workload edit.
    let (addr, upstream_port) = (app.addr, upstream.addr.port());
    let load = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        let mut tick = 0u64;
        while std::time::Instant::now() < end {
            let path = match tick % 20 {
                0 => format!(
                    "/outbound?url=http://127.0.0.1:{upstream_port}/healthz&n=3&pooled=true"
                ),
                10 => "/block?seconds=0.4".to_string(),
                _ => "/healthz".to_string(),
            };
            assert!(http_get(addr, &path).is_some());
            tick += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    wait_status(&admin, &ns.name, "dash", "the workload's status", |aw| {
        aw.status.is_some()
    })
    .await;
    cluster.kubectl(&[
        "patch",
        "apiw",
        "dash",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"limits":{"cpu":"3","memory":"4Gi"}}}}"#,
    ]);
    load.await.unwrap();

    let mut checked = 0;
    let mut failures = Vec::new();
    for file in ["operator.json", "diagnostics.json"] {
        let path = repo_root()
            .join("charts/apiworkload-operator/files/dashboards")
            .join(file);
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Variables: label_values(metric, label) must list something.
        for var in dashboard["templating"]["list"].as_array().unwrap() {
            let Some(query) = var["query"]["query"].as_str() else {
                continue;
            };
            let inner = query
                .trim_start_matches("label_values(")
                .trim_end_matches(')');
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let values = tokio::task::block_in_place(|| {
                prometheus.get(&format!(
                    "/api/v1/series?match%5B%5D={}",
                    url_encode(&concrete(selector.trim()))
                ))
            });
            let has = values
                .as_ref()
                .and_then(|v| v["data"].as_array())
                .is_some_and(|series| series.iter().any(|s| s.get(label.trim()).is_some()));
            checked += 1;
            if !has {
                failures.push(format!(
                    "{file}: variable {}: no {label} in {query}: {values:?}",
                    var["name"]
                ));
            }
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = concrete(target["expr"].as_str().unwrap());
                let answer = tokio::task::block_in_place(|| prometheus.query(&expr));
                checked += 1;
                let title = panel["title"].as_str().unwrap_or("?");
                if answer["status"] != "success" {
                    failures.push(format!("{file}: \"{title}\": {expr}: {}", answer["error"]));
                    continue;
                }
                let empty = answer["data"]["result"]
                    .as_array()
                    .is_none_or(|r| r.is_empty());
                if empty && !EXTERNAL.iter().any(|m| expr.contains(m)) {
                    failures.push(format!("{file}: \"{title}\": no data for {expr}"));
                }
            }
        }
    }
    drop(sidecar);
    let _ = std::fs::remove_file(resolv);
    eprintln!("{checked} dashboard queries evaluated");
    assert!(checked >= 30, "only {checked} queries found");
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
