//! Sidecar footprint at default settings next to a real app, with thousands of
//! established sockets in the namespace: RSS (steady and peak), average CPU in
//! millicores, the sidecar's own timer lag, and the cost of one socket-table poll per
//! 1,000 sockets, sock_diag and /proc side by side in the same run.
//!
//!     tests/bench/run sidecar-footprint [--seconds 60] [--connections 500]
//!
//! Targets (issue #4/#6): ≤ 20 MiB RSS steady, ≤ 5 millicores average, ≤ 2 ms per poll
//! per 1,000 sockets.

use std::{
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use apiworkload_bench::{arg, cpu_time, mib, quantile, raise_fd_limit, rss_bytes, target_dir};
use apiworkload_e2e::{PythonServer, free_port, free_udp_addr, http_get};
use apiworkload_sidecar::{procnet, sockdiag::SockDiag};

/// Median and p99 of `runs` timings of `poll`, in milliseconds.
fn time_polls(runs: usize, mut poll: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut ms = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let t = Instant::now();
        rows = poll();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (quantile(&ms, 0.5), quantile(&ms, 0.99), rows)
}

/// Bucket counts of a histogram in /metrics → (le, cumulative count).
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Upper bound of the bucket holding quantile `q`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 60) as u64;
    // 500 loopback connections: 1,000 established sockets (both ends are in the namespace).
    let connections = arg("--connections", 500);
    raise_fd_limit();

    eprintln!("building the sidecar (release)…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "apiworkload-sidecar"])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p apiworkload-sidecar failed");
    }
    let binary = target_dir().join("release/apiworkload-sidecar");

    // Thousands of established sockets in the namespace (both ends on loopback).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut held = Vec::with_capacity(connections * 2);
    for _ in 0..connections {
        held.push(TcpStream::connect(listener.local_addr()?)?);
        held.push(listener.accept()?.0);
    }

    let heartbeat = free_udp_addr();
    let app = PythonServer::uvicorn_with_heartbeat(&heartbeat);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut sidecar = Command::new(&binary)
        .args([
            &format!("--app-port={}", app.addr.port()),
            &format!("--listen={listen}"),
            &format!("--heartbeat-listen={heartbeat}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let pid = sidecar.id();
    let sidecar_addr = listen.parse()?;

    // Light steady load on the app (5 requests/s), scraped every 15 s like Prometheus.
    eprintln!(
        "sampling for {seconds} s with {} established sockets…",
        held.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let cpu_start = cpu_time(pid).context("sidecar CPU")?;
    let mut rss = Vec::new();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let _ = http_get(app.addr, "/healthz");
        if tick.is_multiple_of(75) {
            let _ = http_get(sidecar_addr, "/metrics");
        }
        if tick.is_multiple_of(5) {
            rss.push(rss_bytes(pid).context("sidecar RSS")? as f64);
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_time(pid).context("sidecar CPU")? - cpu_start;
    let metrics = http_get(sidecar_addr, "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    let _ = sidecar.kill();
    let _ = sidecar.wait();

    let steady: Vec<f64> = rss[rss.len() / 2..].to_vec();
    let lag = histogram(&metrics, "apiworkload_sidecar_self_timer_lag_seconds");
    let source = metrics
        .lines()
        .find(|l| l.starts_with("apiworkload_sidecar_socket_source{") && l.ends_with(" 1"))
        .unwrap_or("?");

    // One poll of each source, side by side, with the same sockets present.
    let mut diag = SockDiag::open().context("sock_diag")?;
    let (nl_p50, nl_p99, nl_rows) = time_polls(50, || diag.dump().map(|r| r.len()).unwrap_or(0));
    let (proc_p50, proc_p99, proc_rows) = time_polls(50, || {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| procnet::parse_tcp(&t).ok())
            .map(|r| r.len())
            .sum()
    });
    let per_k = |ms: f64, rows: usize| ms * 1000.0 / rows.max(1) as f64;

    println!(
        "sidecar footprint, {seconds} s at default settings, {} sockets in the namespace",
        held.len()
    );
    println!(
        "  RSS steady (median, 2nd half)  {:6.1} MiB   target ≤ 20",
        mib(quantile(&steady, 0.5) as u64)
    );
    println!(
        "  RSS peak                       {:6.1} MiB   target ≤ 40",
        mib(quantile(&rss, 1.0) as u64)
    );
    println!(
        "  CPU average                    {:6.2} millicores   target ≤ 5",
        cpu.as_secs_f64() / wall * 1000.0
    );
    println!(
        "  own timer lag (1 s timer)      p50 ≤ {} s, p99 ≤ {} s over {} ticks",
        bucket_quantile(&lag, 0.5),
        bucket_quantile(&lag, 0.99),
        lag.last().map(|b| b.1).unwrap_or(0.0)
    );
    println!("  socket source in use           {source}");
    println!("poll cost, same sockets, 50 polls each (median / p99):");
    println!(
        "  sock_diag      {nl_rows:5} rows  {nl_p50:6.2} / {nl_p99:6.2} ms  = {:5.2} ms per 1,000 sockets   target ≤ 2",
        per_k(nl_p50, nl_rows)
    );
    println!(
        "  /proc/net/tcp  {proc_rows:5} rows  {proc_p50:6.2} / {proc_p99:6.2} ms  = {:5.2} ms per 1,000 sockets   ({:.1}× sock_diag)",
        per_k(proc_p50, proc_rows),
        proc_p50 / nl_p50
    );
    drop(held);
    Ok(())
}
