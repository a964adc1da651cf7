//! The seeds' experiment: what the server configuration the operator renders buys, on
//! this machine, side by side in one run. A FastAPI app (tests/apps) with a small
//! endpoint (`GET /healthz`) and one that parses a 25 MB JSON body in the handler
//! (`POST /parse`, which freezes its worker's event loop while it parses), served by:
//!
//!   (a) one uvicorn process;
//!   (b) gunicorn + uvicorn workers with the usual formula on the host's CPUs
//!       (2 × CPUs + 1), and the same formula on a 16-CPU node (where a pod limited to
//!       this machine's CPUs would still count the node's);
//!   (c) the command the operator renders for a pod whose CPU limit is this machine's
//!       CPU count (default `io-bound` profile, and `cpu-bound`);
//!   (d) (c) with the worker count swept.
//!
//! Mixed load on loopback for a bounded time per configuration: small requests from 4
//! clients back to back, 25 MB bodies from 2 clients in parallel. Printed: small-request
//! p50/p95/p99, large-request p50 and the server's total RSS, each the median of
//! `--runs` runs (configurations interleaved, so drift hits all alike). Target: (c)
//! within 1.2× of the best (d) at p99, and at most 0.3× of (a).
//!
//!     tests/bench/run server-config [--seconds 15] [--runs 3]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apiworkload_bench::{Server, arg, quantile, rendered_on_loopback};
use apiworkload_e2e::{free_port, http_get};
use apiworkload_operator::api::ApiWorkloadSpec;
use serde_json::json;

/// One POST on a fresh connection; true on a 200.
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// About 25 MB of JSON: a list of small records, as an API would receive.
fn large_body() -> Vec<u8> {
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    while size < 25_000_000 {
        let item = json!({"id": i, "name": format!("item-{i}"), "price": i as f64 * 0.01, "tags": ["a", "b", "c"], "active": i.is_multiple_of(2)});
        size += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    serde_json::to_vec(&items).unwrap_or_default()
}

struct Figures {
    small: Vec<f64>,
    large: Vec<f64>,
    failed: usize,
    /// Resident memory of the server and its workers at the end of the load.
    rss: u64,
}

/// RSS of every process in process group `pgid`.
fn group_rss(pgid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 2..].split_whitespace().nth(2)?.parse::<u32>().ok())
                    == Some(pgid)
            })
        })
        .filter_map(apiworkload_bench::rss_bytes)
        .sum()
}

fn load(addr: SocketAddr, body: Arc<Vec<u8>>, seconds: u64, pgid: u32) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Instant::now() + Duration::from_secs(2);
    let spawn = |large: bool| {
        let (stop, body) = (stop.clone(), body.clone());
        std::thread::spawn(move || {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = if large {
                    post(addr, "/parse", &body)
                } else {
                    http_get(addr, "/healthz").is_some_and(|r| r.ok())
                };
                if t > warmup {
                    if ok {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        failed += 1;
                    }
                }
            }
            (latencies, failed)
        })
    };
    let small: Vec<_> = (0..4).map(|_| spawn(false)).collect();
    let large: Vec<_> = (0..2).map(|_| spawn(true)).collect();
    std::thread::sleep(Duration::from_secs(seconds + 2));
    let rss = group_rss(pgid);
    stop.store(true, Ordering::Relaxed);
    let mut figures = Figures {
        small: vec![],
        large: vec![],
        failed: 0,
        rss,
    };
    for (handles, into_large) in [(small, false), (large, true)] {
        for h in handles {
            let (l, f) = h.join().unwrap_or_default();
            figures.failed += f;
            if into_large {
                figures.large.extend(l);
            } else {
                figures.small.extend(l);
            }
        }
    }
    figures
}

/// What the operator renders for this machine's CPUs, bound to `addr`.
fn rendered(cpus: usize, profile: &str, port: u16) -> anyhow::Result<Vec<String>> {
    let spec: ApiWorkloadSpec = serde_json::from_value(json!({
        "image": "registry.example/app:1", "app": "app:app", "profile": profile,
        "resources": {"requests": {"cpu": cpus.to_string(), "memory": "1Gi"},
                      "limits": {"cpu": cpus.to_string(), "memory": "8Gi"}},
    }))?;
    rendered_on_loopback(&spec, port)
}

fn with_workers(argv: &[String], workers: usize) -> Vec<String> {
    let mut argv = argv.to_vec();
    if let Some(i) = argv.iter().position(|a| a == "--workers") {
        argv[i + 1] = workers.to_string();
    }
    argv
}

fn gunicorn_formula(workers: usize, port: u16) -> Vec<String> {
    [
        "gunicorn",
        "app:app",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-w",
        &workers.to_string(),
        "--bind",
        &format!("127.0.0.1:{port}"),
    ]
    .map(String::from)
    .to_vec()
}

fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 15) as u64;
    let cpus = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1);
    eprintln!("building a 25 MB JSON body…");
    let body = Arc::new(large_body());

    let port = free_port();
    let uvicorn = [
        "uvicorn",
        "app:app",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let io = rendered(cpus, "io-bound", port)?;
    let cpu = rendered(cpus, "cpu-bound", port)?;
    let mut runs: Vec<(String, Vec<String>)> = vec![
        ("(a) one uvicorn process".into(), uvicorn),
        (
            format!("(b) 2×{cpus}+1 host CPUs"),
            gunicorn_formula(2 * cpus + 1, port),
        ),
        (
            "(b) 2×16+1 on a 16-CPU node".into(),
            gunicorn_formula(33, port),
        ),
        ("(c) operator, io-bound".into(), io.clone()),
        ("(c) operator, cpu-bound".into(), cpu),
    ];
    for w in [1, 2, 3, 4, 6, 8] {
        runs.push((
            format!("(d) operator, {w} worker{}", if w == 1 { "" } else { "s" }),
            with_workers(&io, w),
        ));
    }

    let runs_each = arg("--runs", 3);
    println!(
        "server configurations under mixed load ({cpus} CPUs; {seconds} s after 2 s warm-up, median of {runs_each} interleaved runs; small: 4 clients back to back, large: 2 × 25 MB JSON in parallel)"
    );
    println!(
        "  {:32} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "", "small p50", "p95", "p99", "large p50", "RSS"
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Per configuration, per run: [small p50, p95, p99, large p50, RSS MiB].
    let mut figures: Vec<Vec<[f64; 5]>> = vec![Vec::new(); runs.len()];
    for run in 0..runs_each {
        for (i, (name, argv)) in runs.iter().enumerate() {
            eprintln!("run {}/{runs_each} {name}: {}", run + 1, argv.join(" "));
            let server = Server::start(argv, addr, None)?;
            let f = load(addr, body.clone(), seconds, server.0.id());
            drop(server);
            std::thread::sleep(Duration::from_secs(1)); // the port is free again
            if f.failed > 0 {
                eprintln!("  {} requests failed", f.failed);
            }
            figures[i].push([
                quantile(&f.small, 0.5),
                quantile(&f.small, 0.95),
                quantile(&f.small, 0.99),
                quantile(&f.large, 0.5),
                f.rss as f64 / 1048576.0,
            ]);
        }
    }
    let median =
        |runs: &[[f64; 5]], k: usize| quantile(&runs.iter().map(|r| r[k]).collect::<Vec<_>>(), 0.5);
    let mut p99 = Vec::new();
    for ((name, _), runs) in runs.iter().zip(&figures) {
        println!(
            "  {name:32} {:7.1}ms {:7.1}ms {:7.1}ms {:8.0}ms {:6.0} MiB   (p99 of each run: {})",
            median(runs, 0),
            median(runs, 1),
            median(runs, 2),
            median(runs, 3),
            median(runs, 4),
            runs.iter()
                .map(|r| format!("{:.0}", r[2]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        p99.push((name.clone(), median(runs, 2)));
    }
    let get = |prefix: &str| p99.iter().find(|(n, _)| n.starts_with(prefix)).map(|p| p.1);
    let best_sweep = p99
        .iter()
        .filter(|(n, _)| n.starts_with("(d)"))
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min);
    if let (Some(c), Some(a)) = (get("(c) operator, io-bound"), get("(a)")) {
        println!(
            "  (c) io-bound p99 / best (d) p99 = {:.2} (target ≤ 1.2);  (c) / (a) = {:.3} (target ≤ 0.3)",
            c / best_sweep,
            c / a
        );
    }
    Ok(())
}
