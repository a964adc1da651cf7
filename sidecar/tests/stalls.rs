//! Event-loop stalls seen by the canary against real Python servers on loopback: none on
//! a healthy app under light load; an async handler that blocks the loop (sync sleep or a
//! CPU loop), under background traffic, is detected with its duration within ±20 %.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use apiworkload_e2e::process::Sidecar;
use apiworkload_e2e::{PythonServer, free_udp_addr, http_get};
use apiworkload_sidecar::canary::{self, CanaryConfig, Observations};

fn canary_for(server: &PythonServer, connections: usize) -> Arc<Mutex<Observations>> {
    canary::start(CanaryConfig {
        app: server.addr,
        path: "/healthz".into(),
        connections,
        period: Duration::from_millis(250),
        threshold: Duration::from_millis(100),
        give_up: Duration::from_secs(30),
    })
}

/// Light background load on fresh connections, bounded in count and time.
fn background_traffic(addr: std::net::SocketAddr, requests: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..requests {
            let _ = http_get(addr, "/healthz");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_app_under_light_load_records_no_stall() {
    let server = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let obs = canary_for(&server, 1);
    let load = background_traffic(server.addr, 30);
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();
    let o = obs.lock().unwrap();
    assert!(o.probes >= 12, "{} probes in 4 s at 4 Hz", o.probes);
    assert_eq!(o.failures, 0);
    assert!(
        o.stalls.is_empty(),
        "stalls on a healthy app: {:?}",
        o.stalls
    );
    assert_eq!(o.reconnects, 1, "the probe connection is kept alive");
}

async fn injected_stall_is_measured(path: &'static str, seconds: f64) {
    let server = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let obs = canary_for(&server, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = background_traffic(server.addr, 30);
    let addr = server.addr;
    let blocked =
        tokio::task::spawn_blocking(move || http_get(addr, &format!("{path}?seconds={seconds}")));
    // While the loop is frozen, the canary sees a stall in progress.
    tokio::time::sleep(Duration::from_secs_f64(seconds / 2.0)).await;
    let in_progress = obs.lock().unwrap().oldest_inflight();
    assert!(
        in_progress.is_some_and(|d| d > Duration::from_millis(100)),
        "no stall in progress: {in_progress:?}"
    );
    assert!(blocked.await.unwrap().is_some_and(|r| r.ok()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();

    let o = obs.lock().unwrap();
    assert_eq!(o.stalls.len(), 1, "one stall expected: {:?}", o.stalls);
    let measured = o.stalls[0].seconds;
    let error = (measured - seconds).abs() / seconds;
    assert!(
        error <= 0.20,
        "{path}: measured {measured:.3}s for an injected {seconds}s stall ({:.0}% off)",
        error * 100.0
    );
    eprintln!(
        "{path}: injected {seconds}s, measured {measured:.3}s ({:+.1}%)",
        (measured - seconds) / seconds * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_sleep_in_an_async_handler_is_a_measured_stall() {
    injected_stall_is_measured("/block", 1.5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_handler_is_a_measured_stall() {
    injected_stall_is_measured("/cpu", 1.0).await;
}

/// The real binary: a 1.2 s stall in a real uvicorn shows up in /metrics as stalled seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_binary_exports_stalled_seconds() {
    let server = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={}", server.addr.port()),
        "--workers=1".into(),
        "--resolv-conf=/dev/null".into(),
    ]);
    let metrics_addr = sidecar.addr;
    let stalled = |text: &str| -> f64 {
        apiworkload_e2e::metric_sample(
            text,
            r#"apiworkload_sidecar_event_loop_stall_seconds_total{source="canary"}"#,
        )
        .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tokio::task::spawn_blocking(move || http_get(metrics_addr, "/metrics"))
        .await
        .unwrap()
        .map(|r| r.body);
    let addr = server.addr;
    tokio::task::spawn_blocking(move || http_get(addr, "/block?seconds=1.2"))
        .await
        .unwrap();
    let mut text = String::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        text = tokio::task::spawn_blocking(move || http_get(metrics_addr, "/metrics"))
            .await
            .unwrap()
            .map(|r| r.body)
            .unwrap_or_default();
        if stalled(&text) > 0.0 {
            break;
        }
    }
    drop(sidecar);
    assert_eq!(
        before.map(|t| stalled(&t)),
        Some(0.0),
        "no stall before the injection"
    );
    let seconds = stalled(&text);
    assert!(
        (0.96..=1.44).contains(&seconds),
        "stalled seconds {seconds} for a 1.2 s stall:\n{text}"
    );
    assert!(text.contains("apiworkload_sidecar_canary_probes_total"));
}

/// Hysteresis on the real binary: a 5 s stall turns EventLoopResponsive False (3 bad 1 s
/// windows), and it turns True again after 5 good windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_loop_condition_turns_false_during_a_long_stall_and_recovers() {
    let server = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={}", server.addr.port()),
        "--window=1s".into(),
        "--resolv-conf=/dev/null".into(),
    ]);
    let report_addr = sidecar.addr;
    let event_loop = move || -> Option<(bool, String)> {
        let body: serde_json::Value =
            serde_json::from_str(&http_get(report_addr, "/report")?.body).ok()?;
        let c = &body["conditions"]["EventLoopResponsive"];
        Some((c["status"].as_bool()?, c["reason"].as_str()?.to_string()))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy = tokio::task::spawn_blocking(event_loop).await.unwrap();
    let addr = server.addr;
    let stall = tokio::task::spawn_blocking(move || http_get(addr, "/block?seconds=5"));
    let mut during = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        during = tokio::task::spawn_blocking(event_loop).await.unwrap();
        if during.as_ref().is_some_and(|(ok, _)| !ok) {
            break;
        }
    }
    let stall_finished = stall.is_finished();
    stall.await.unwrap();
    let mut after = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = tokio::task::spawn_blocking(event_loop).await.unwrap();
        if after.as_ref().is_some_and(|(ok, _)| *ok) {
            break;
        }
    }
    drop(sidecar);
    assert_eq!(healthy, Some((true, "Responsive".to_string())));
    assert_eq!(
        during,
        Some((false, "LoopStalled".to_string())),
        "False while the stall lasts"
    );
    assert!(
        !stall_finished,
        "the condition turned False before the stall ended"
    );
    assert_eq!(
        after,
        Some((true, "Responsive".to_string())),
        "True again after 5 good windows"
    );
}

/// gunicorn with 2 uvicorn workers sharing one accept queue, under the real sidecar: a
/// stall in either worker is seen and measured within ±20 % through the opt-in heartbeat
/// (the canary's persistent connections may all sit on one worker: it is reported too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_gunicorn_workers_a_stall_in_either_is_seen() {
    let heartbeat = free_udp_addr();
    let server = tokio::task::spawn_blocking({
        let heartbeat = heartbeat.clone();
        move || {
            PythonServer::start_with_env(
                "gunicorn",
                &[
                    "app:app",
                    "--workers",
                    "2",
                    "--worker-class",
                    "uvicorn_worker.UvicornWorker",
                    "--bind",
                    "127.0.0.1:{port}",
                    "--keep-alive",
                    "5",
                    "--log-level",
                    "warning",
                ],
                &[("APIW_HEARTBEAT_ADDR", &heartbeat)],
            )
        }
    })
    .await
    .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={}", server.addr.port()),
        "--workers=2".into(),
        format!("--heartbeat-listen={heartbeat}"),
        "--resolv-conf=/dev/null".into(),
    ]);
    let stalled = |source: &str| {
        sidecar
            .metric(&format!(
                "apiworkload_sidecar_event_loop_stall_seconds_total{{source=\"{source}\"}}"
            ))
            .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sidecar.metric("apiworkload_sidecar_heartbeat_workers"),
        Some(2.0),
        "both workers send heartbeats"
    );
    let addr = server.addr;
    let (mut by_heartbeat, mut by_canary) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let before = (stalled("heartbeat"), stalled("canary"));
        let ok = tokio::task::spawn_blocking(move || http_get(addr, "/block?seconds=1"))
            .await
            .unwrap();
        assert!(ok.is_some_and(|r| r.ok()));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        by_heartbeat.push(stalled("heartbeat") - before.0);
        by_canary.push(stalled("canary") - before.1);
    }
    eprintln!(
        "per injected 1 s stall, heartbeat saw {by_heartbeat:.3?}, canary saw {by_canary:.3?}"
    );
    for (i, m) in by_heartbeat.iter().enumerate() {
        assert!(
            (0.8..=1.2).contains(m),
            "trial {i}: the heartbeat saw {m:.3}s for a 1 s stall (all: {by_heartbeat:.3?})"
        );
    }
}

/// The seeds' case: small requests queued behind a handler parsing a 25 MB JSON body on
/// the event loop. The real sidecar (canary and heartbeat) sees the stall; the heartbeat
/// measures it within ±20 % of the parse time the app itself reports, and a small
/// request sent meanwhile waits about as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_queued_behind_a_25_mb_json_parse_are_detected() {
    let heartbeat = free_udp_addr();
    let server = tokio::task::spawn_blocking({
        let heartbeat = heartbeat.clone();
        move || PythonServer::uvicorn_with_heartbeat(&heartbeat)
    })
    .await
    .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={}", server.addr.port()),
        format!("--heartbeat-listen={heartbeat}"),
        "--resolv-conf=/dev/null".into(),
    ]);
    // About 25 MB of records, as an API's bulk endpoint would receive.
    let mut body = String::with_capacity(26 << 20);
    body.push('[');
    let mut i = 0u64;
    while body.len() < 25 << 20 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"id":{i},"name":"item-{i}","tags":["a","b","c"],"price":{}.5,"active":true}}"#,
            i % 1000
        ));
        i += 1;
    }
    body.push(']');
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = |source: &str| {
        sidecar
            .metric(&format!(
                "apiworkload_sidecar_event_loop_stall_seconds_total{{source=\"{source}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let before = (stalled("heartbeat"), stalled("canary"));
    let addr = server.addr;
    let big = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /parse HTTP/1.1\r\nHost: app\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        json["parse_seconds"].as_f64().unwrap()
    });
    // Small requests every 50 ms while it runs (bounded: at most 100).
    let mut slowest_small = Duration::ZERO;
    for _ in 0..100 {
        let started = std::time::Instant::now();
        let ok = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
            .await
            .unwrap();
        assert!(ok.is_some_and(|r| r.ok()));
        slowest_small = slowest_small.max(started.elapsed());
        if big.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parse_seconds = tokio::task::spawn_blocking(move || big.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = (
        stalled("heartbeat") - before.0,
        stalled("canary") - before.1,
    );
    eprintln!(
        "25 MB parse: {parse_seconds:.3}s in the app; heartbeat {:.3}s, canary {:.3}s; slowest small request {slowest_small:?}",
        seen.0, seen.1
    );
    assert!(
        parse_seconds > 0.1,
        "a 25 MB parse takes a while: {parse_seconds}"
    );
    let error = (seen.0 - parse_seconds).abs() / parse_seconds;
    assert!(
        error <= 0.2,
        "heartbeat saw {:.3}s for a {parse_seconds:.3}s parse ({:.0}% off)",
        seen.0,
        error * 100.0
    );
    assert!(seen.1 > 0.1, "the canary saw the stall too: {:.3}s", seen.1);
    assert!(
        slowest_small.as_secs_f64() >= 0.5 * parse_seconds,
        "a small request waited behind the parse: {slowest_small:?} for a {parse_seconds:.3}s parse"
    );
}
