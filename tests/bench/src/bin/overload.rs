//! Overload: one pod's command at twice its capacity, with and without the concurrency
//! limit the operator derives (`spec.concurrency`), side by side in one run.
//!
//! The app's `GET /cpu?seconds=0.01` (10 ms of CPU in an `async def`, a CPU-bound
//! endpoint) served by the command rendered for `profile: cpu-bound` and one core
//! (one worker, pinned to CPU 1; the load runs on CPU 0). First its unloaded latency
//! and capacity (one client, back to back), then open-loop Poisson arrivals at
//! `--factor` × that capacity for `--seconds` (and, for what a limit costs, at 0.8×),
//! each request on a new connection with a 10 s
//! timeout (a balancer's). Printed per configuration: answered 200 / 503 / failed,
//! p50 and p99 of the 200s (and p99 over the unloaded p99), p99 of the 503s, and how
//! long the queue took to drain after the last arrival. Target: with the limit, p99
//! of the accepted requests within 2× the unloaded p99.
//!
//!     tests/bench/run overload [--seconds 10] [--factor 2]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use apiworkload_bench::{Server, arg, quantile, raise_fd_limit, rendered_on_loopback};
use apiworkload_e2e::free_port;
use apiworkload_operator::api::ApiWorkloadSpec;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

const PATH: &str = "/cpu?seconds=0.01";
/// What a balancer waits for an answer before it gives up (502/504).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Status(u16),
    Failed,
}

/// One GET on a new connection: the status and the latency.
async fn request(addr: SocketAddr) -> (Outcome, Duration) {
    let start = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {PATH} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let line = out.split(|b| *b == b'\n').next()?;
        std::str::from_utf8(line)
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let outcome = match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Some(status)) => Outcome::Status(status),
        _ => Outcome::Failed,
    };
    (outcome, start.elapsed())
}

/// Unloaded: one client back to back for 3 s. Latencies in ms.
async fn unloaded(addr: SocketAddr) -> Vec<f64> {
    let end = Instant::now() + Duration::from_secs(3);
    let mut latencies = Vec::new();
    while Instant::now() < end {
        if let (Outcome::Status(200), d) = request(addr).await {
            latencies.push(d.as_secs_f64() * 1000.0);
        }
    }
    latencies
}

#[derive(Debug, Default)]
struct Overloaded {
    ok: Vec<f64>,
    refused: Vec<f64>,
    other: usize,
    failed: usize,
    /// From the last arrival to the last answer.
    drain: Duration,
}

/// Exponentially distributed gaps (Poisson arrivals, as independent clients make):
/// xorshift64*, seeded per run so every configuration gets the same arrival pattern.
struct Arrivals {
    state: u64,
    rate: f64,
}

impl Iterator for Arrivals {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let uniform = (bits as f64 + 0.5) / (1u64 << 53) as f64;
        Some(Duration::from_secs_f64(-uniform.ln() / self.rate))
    }
}

/// Open-loop Poisson arrivals at `rate` per second for `seconds`.
async fn overload(addr: SocketAddr, rate: f64, seconds: u64) -> Overloaded {
    let results = Arc::new(Mutex::new(Overloaded::default()));
    let mut arrivals = Arrivals {
        state: 0x9e37_79b9_7f4a_7c15,
        rate,
    };
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut next = start;
    let mut tasks = tokio::task::JoinSet::new();
    while next < end {
        tokio::time::sleep_until(next).await;
        next += arrivals.next().unwrap_or_default();
        let results = results.clone();
        tasks.spawn(async move {
            let (outcome, d) = request(addr).await;
            let ms = d.as_secs_f64() * 1000.0;
            let mut r = results.lock().await;
            match outcome {
                Outcome::Status(200) => r.ok.push(ms),
                Outcome::Status(503) => r.refused.push(ms),
                Outcome::Status(_) => r.other += 1,
                Outcome::Failed => r.failed += 1,
            }
        });
    }
    let last_arrival = Instant::now();
    eprintln!(
        "  {} arrivals in {:.1} s",
        tasks.len(),
        start.elapsed().as_secs_f64()
    );
    while tasks.join_next().await.is_some() {}
    let mut r = std::mem::take(&mut *results.lock().await);
    r.drain = last_arrival.elapsed();
    r
}

#[allow(unsafe_code)] // sched_setaffinity on this process
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn spec(server: &str, limit: Option<i32>) -> anyhow::Result<ApiWorkloadSpec> {
    let mut spec = json!({
        "image": "registry.example/app:1", "app": "app:app", "server": server,
        "profile": "cpu-bound",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
    });
    if let Some(limit) = limit {
        spec["concurrency"] = json!({ "limit": limit });
    }
    Ok(serde_json::from_value(spec)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 10) as u64;
    let factor = arg("--factor", 2) as f64;
    raise_fd_limit();
    pin_to_cpu(0);
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // (label, server kind, spec.concurrency.limit (None: derived), load factor)
    let mut configs: Vec<(String, &str, Option<i32>, f64)> = Vec::new();
    // What a limit costs below capacity too: 503s a client would not have had.
    for load in [factor, 0.8] {
        for (name, limit) in [
            ("no limit", Some(0)),
            ("derived limit", None),
            ("limit 2", Some(2)),
            ("limit 4", Some(4)),
            ("limit 8", Some(8)),
        ] {
            configs.push((format!("uvicorn, {name}, {load}×"), "uvicorn", limit, load));
        }
    }
    for (name, limit) in [("no limit", Some(0)), ("derived limit", None)] {
        configs.push((
            format!("gunicorn-uvicorn, {name}, {factor}×"),
            "gunicorn-uvicorn",
            limit,
            factor,
        ));
    }
    println!(
        "overload: GET {PATH} (10 ms CPU) on one worker pinned to a core; {factor}× its measured capacity (Poisson arrivals) for {seconds} s, new connection each, {}s timeout",
        CLIENT_TIMEOUT.as_secs()
    );
    println!(
        "  {:32} {:>6} {:>8} {:>8} | {:>6} {:>6} {:>6} {:>6} | {:>8} {:>8} {:>7} | {:>9} {:>7}",
        "",
        "limit",
        "idle p50",
        "idle p99",
        "sent",
        "200",
        "503",
        "failed",
        "200 p50",
        "200 p99",
        "×idle",
        "503 p99",
        "drain"
    );
    for (label, server, limit, factor) in configs {
        let label = label.as_str();
        let spec = spec(server, limit)?;
        let derived = apiworkload_operator::plan::plan(&spec)
            .map_err(|v| anyhow::anyhow!("{v:?}"))?
            .overload;
        let argv = rendered_on_loopback(&spec, port)?;
        eprintln!("{label}: {}", argv.join(" "));
        let server = Server::start(&argv, addr, Some(1))?;
        let idle = unloaded(addr).await;
        let mean = idle.iter().sum::<f64>() / idle.len().max(1) as f64;
        let capacity = 1000.0 / mean;
        let rate = capacity * factor;
        let r = overload(addr, rate, seconds).await;
        drop(server);
        tokio::time::sleep(Duration::from_secs(1)).await; // the port is free again
        let idle_p99 = quantile(&idle, 0.99);
        let ok_p99 = quantile(&r.ok, 0.99);
        println!(
            "  {label:32} {:>6} {:>6.1}ms {:>6.1}ms | {:>6} {:>6} {:>6} {:>6} | {:>6.0}ms {:>6.0}ms {:>7.1} | {:>7.1}ms {:>6.1}s",
            derived.limit.map_or("none".into(), |l| l.to_string()),
            quantile(&idle, 0.5),
            idle_p99,
            r.ok.len() + r.refused.len() + r.other + r.failed,
            r.ok.len(),
            r.refused.len(),
            r.failed + r.other,
            quantile(&r.ok, 0.5),
            ok_p99,
            ok_p99 / idle_p99,
            quantile(&r.refused, 0.99),
            r.drain.as_secs_f64(),
        );
    }
    Ok(())
}
