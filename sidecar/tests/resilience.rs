//! The sidecar under broken surroundings, one after another on one process: a DNS
//! server that never answers, no readable socket table (netlink off, an empty /proc),
//! and an app that exits and later comes back on its port. Throughout it must keep
//! serving /metrics, say what is wrong, never exit, and stay under its 20 MiB target.
//! (This is the debug build, which maps about 16 MiB of code that the release build
//! does not; so the heap and stacks, `RssAnon`, are held to what the target leaves
//! beside the release binary's code: 16 MiB. `tests/bench/run sidecar-footprint`
//! measures the release build's whole RSS.)
//! Its own test binary: the app's port is reused by the restarted app.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apiworkload_e2e::process::Sidecar;
use apiworkload_e2e::{PythonServer, free_port};

const ANON_TARGET: u64 = 16 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_and_reports_what_is_broken() {
    // A nameserver that reads queries and never answers.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_port = black_hole.local_addr().unwrap().port();
    let resolv = std::env::temp_dir().join(format!("resolv-silent-{dns_port}.conf"));
    std::fs::write(
        &resolv,
        "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:2 timeout:1 attempts:1\n",
    )
    .unwrap();
    // A /proc without net/tcp: the only socket source left is unreadable.
    let empty_proc = std::env::temp_dir().join(format!("proc-empty-{dns_port}"));
    std::fs::create_dir_all(&empty_proc).unwrap();

    let port = free_port();
    let app = tokio::task::spawn_blocking(move || PythonServer::uvicorn_on(port, &[], &[]))
        .await
        .unwrap();
    let sidecar = Sidecar::start(&[
        format!("--app-port={port}"),
        "--dns-probe=api.example.test".into(),
        "--dns-interval=1s".into(),
        format!("--dns-port={dns_port}"),
        format!("--resolv-conf={}", resolv.display()),
        "--socket-source=proc".into(),
        format!("--proc-root={}", empty_proc.display()),
        "--window=2s".into(),
    ]);
    let sidecar = Arc::new(std::sync::Mutex::new(sidecar));

    // Watchdog for the whole test: /metrics answers every 250 ms, the process lives,
    // and its RSS stays under the target.
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = std::thread::spawn({
        let (sidecar, stop) = (sidecar.clone(), stop.clone());
        move || {
            let (mut samples, mut peak, mut peak_rss, mut unanswered) = (0u32, 0u64, 0u64, 0u32);
            std::thread::sleep(Duration::from_secs(1)); // startup
            while !stop.load(Ordering::Relaxed) {
                let mut s = sidecar.lock().unwrap();
                assert!(s.running(), "the sidecar exited");
                if s.metric("apiworkload_sidecar_canary_probes_total")
                    .is_none()
                {
                    unanswered += 1;
                }
                peak = peak.max(s.memory_bytes("RssAnon").unwrap_or(0));
                peak_rss = peak_rss.max(s.memory_bytes("VmRSS").unwrap_or(0));
                samples += 1;
                drop(s);
                std::thread::sleep(Duration::from_millis(250));
            }
            (samples, peak, peak_rss, unanswered)
        }
    });

    let wait_for = |what: &str, limit: Duration, check: &dyn Fn(&Sidecar) -> bool| {
        let start = Instant::now();
        loop {
            if check(&sidecar.lock().unwrap()) {
                eprintln!("{what}: after {:?}", start.elapsed());
                return;
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };

    // DNS never answers: DNSHealthy False, reason Timeouts (3 windows of 2 s).
    wait_for(
        "DNSHealthy=False (Timeouts)",
        Duration::from_secs(20),
        &|s| s.condition("DNSHealthy") == Some((false, "Timeouts".into())),
    );
    // No socket table: said by the metric and the window's evidence.
    wait_for("socket source none", Duration::from_secs(10), &|s| {
        s.metric("apiworkload_sidecar_socket_source{source=\"none\"}") == Some(1.0)
            && s.report().is_some_and(|r| {
                r["lastWindow"]["socketSampleFailures"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
            })
    });
    assert_eq!(
        sidecar.lock().unwrap().condition("EventLoopResponsive"),
        Some((true, "Responsive".into())),
        "the app answers"
    );

    // The app exits: EventLoopResponsive False (AppUnreachable).
    drop(app);
    wait_for(
        "EventLoopResponsive=False (AppUnreachable)",
        Duration::from_secs(20),
        &|s| s.condition("EventLoopResponsive") == Some((false, "AppUnreachable".into())),
    );
    // It comes back on its port: True again after 5 answering windows.
    let app = tokio::task::spawn_blocking(move || PythonServer::uvicorn_on(port, &[], &[]))
        .await
        .unwrap();
    wait_for(
        "EventLoopResponsive=True again",
        Duration::from_secs(30),
        &|s| s.condition("EventLoopResponsive") == Some((true, "Responsive".into())),
    );

    stop.store(true, Ordering::Relaxed);
    let (samples, peak, peak_rss, unanswered) = watchdog.join().unwrap();
    eprintln!(
        "{samples} watchdog samples, /metrics unanswered {unanswered} times, peak RssAnon {:.1} MiB (VmRSS {:.1} MiB, debug build)",
        peak as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0
    );
    assert_eq!(unanswered, 0, "/metrics must answer throughout");
    assert!(peak > 0 && peak <= ANON_TARGET, "peak RssAnon {peak} bytes");
    drop(app);
    let _ = std::fs::remove_file(&resolv);
    let _ = std::fs::remove_dir_all(&empty_proc);
}

/// SIGTERM stops the sidecar at once and cleanly (every task is supervised; before, only
/// SIGINT was handled and the kubelet waited out the grace period).
#[tokio::test]
async fn sigterm_stops_it_cleanly_and_promptly() {
    let app_port = apiworkload_e2e::free_port();
    let mut sidecar = Sidecar::start(&[format!("--app-port={app_port}")]);
    apiworkload_e2e::wait_until(std::time::Duration::from_secs(10), "/healthz", || async {
        apiworkload_e2e::http_get(sidecar.addr, "/healthz").is_some()
    })
    .await;
    let status = sidecar.terminate(std::time::Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}
