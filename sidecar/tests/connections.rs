//! Outbound churn against real Python servers: an app that creates an HTTP client per
//! call stands out (one connection per call, closed by the app) from one that shares a
//! pooled client (one connection for every call). Sampled from /proc/net/tcp{,6}.
//! Inbound: a server keep-alive shorter than the client's idle time is KeepAliveChurn.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use apiworkload_e2e::process::Sidecar;
use apiworkload_e2e::{PythonServer, http_get};
use apiworkload_sidecar::{
    procnet::{TcpRow, parse_tcp},
    sockets::OutboundTracker,
};

/// Rows of connections from the app to `upstream_port`.
fn outbound_rows(upstream_port: u16) -> Vec<TcpRow> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| parse_tcp(&text).unwrap())
        .filter(|r| r.remote.port() == upstream_port)
        .collect()
}

/// Runs `calls` outbound calls through the app while sampling every 100 ms.
async fn measure(
    app: &PythonServer,
    upstream: &PythonServer,
    calls: usize,
    pooled: bool,
) -> OutboundTracker {
    let port = upstream.addr.port();
    let mut tracker = OutboundTracker::default();
    tracker.baseline(&outbound_rows(port), Instant::now());
    let addr = app.addr;
    let url = format!("/outbound?url=http://127.0.0.1:{port}/healthz&n={calls}&pooled={pooled}");
    let call = tokio::task::spawn_blocking(move || http_get(addr, &url));
    while !call.is_finished() {
        tracker.observe(&outbound_rows(port), Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        call.await.unwrap().is_some_and(|r| r.ok()),
        "the outbound calls failed"
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tracker.observe(&outbound_rows(port), Instant::now());
    }
    tracker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_per_call_churns_and_a_shared_client_does_not() {
    let _turn = BINARY_TESTS.lock().await;
    let upstream = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();
    let app = tokio::task::spawn_blocking(PythonServer::uvicorn)
        .await
        .unwrap();

    let unpooled = measure(&app, &upstream, 20, false).await;
    assert_eq!(unpooled.opened, 20, "one connection per call");
    assert_eq!(
        unpooled.closed_locally, 20,
        "each closed by the app (TIME_WAIT on its side)"
    );

    let pooled = measure(&app, &upstream, 20, true).await;
    assert_eq!(pooled.opened, 1, "one pooled connection for 20 calls");
    assert_eq!(pooled.closed_locally, 0);
}

/// One request on `conn` (reconnecting first when the server closed it); returns whether
/// it had to reconnect. Reads exactly one response (Content-Length framed).
fn request_on(conn: &mut Option<TcpStream>, addr: std::net::SocketAddr) -> bool {
    for attempt in 0..2 {
        let reconnected = conn.is_none();
        let stream = conn.get_or_insert_with(|| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        });
        if let Some(()) = exchange(stream, "/healthz") {
            return reconnected || attempt > 0;
        }
        *conn = None; // closed by the server while idle: a new connection, as a pool would
    }
    panic!("the app did not answer on a fresh connection");
}

fn exchange(s: &mut TcpStream, path: &str) -> Option<()> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").ok()?;
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()
}

/// A load balancer's pool: `connections` kept for reuse and idle `idle` between
/// requests, for `rounds` rounds. Returns how many times a connection had to be renewed,
/// and the pool: the caller closes what is left of it, once the sidecars have been read
/// (this test's client closes are every sidecar's to see here: the kernel shows a closed
/// socket under no user, and these sidecars share one network namespace).
fn pooled_client_with_idle(
    addr: std::net::SocketAddr,
    connections: usize,
    idle: Duration,
    rounds: usize,
) -> (usize, Vec<Option<TcpStream>>) {
    let mut pool: Vec<Option<TcpStream>> = (0..connections).map(|_| None).collect();
    let mut renewed = 0;
    let step = idle / connections as u32;
    for _ in 0..rounds {
        // Staggered, so the server's closes spread over time.
        for conn in pool.iter_mut() {
            renewed += usize::from(request_on(conn, addr));
            std::thread::sleep(step);
        }
    }
    // Held until the server's keep-alive has closed the last ones too (a pool would).
    std::thread::sleep(idle);
    (renewed - connections, pool)
}

/// The sidecar's own fresh-connection canary (`Connection: close`) waits out a stall in
/// the accept queue, is sampled open, and is then closed by the server: that is the
/// sidecar's connection, not a keep-alive close of the app's clients. Counted as one, it
/// read `KeepAliveChurn` on plain uvicorn during stalls, advising a longer keep-alive
/// for a blocked loop (#20, item 1). Here 6 stalls of 1.5 s, each on a connection the
/// client keeps 0.4 s after its response (so every one is sampled) and then closes: the
/// sidecar sees those 6 connections, closed by the client, and none of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_own_canary_connections_are_not_the_apps() {
    let _turn = BINARY_TESTS.lock().await;
    let app = tokio::task::spawn_blocking(|| app_with_keep_alive(75))
        .await
        .unwrap();
    let sidecar = sidecar_for(&app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = app.addr;
    tokio::task::spawn_blocking(move || {
        for _ in 0..6 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            exchange(&mut s, "/block?seconds=1.5").expect("the stalling request is answered");
            std::thread::sleep(Duration::from_millis(400));
            drop(s);
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = |closer: &str| closed_by(&sidecar, closer);
    let stalled =
        sidecar.metric(r#"apiworkload_sidecar_event_loop_stall_seconds_total{source="canary"}"#);
    let seen = (
        sidecar.metric("apiworkload_sidecar_tcp_inbound_connections_opened_total"),
        closed("client"),
        closed("server_idle"),
        closed("server"),
    );
    let condition = sidecar.condition("ConnectionsReused");
    assert!(
        stalled.is_some_and(|s| s > 4.0),
        "the 6 stalls of 1.5 s were seen: {stalled:?} s"
    );
    assert_eq!(
        seen,
        (Some(6.0), Some(6.0), Some(0.0), Some(0.0)),
        "(opened, closed by client, by server after idle, by server early): only the client's 6"
    );
    assert_eq!(
        condition.as_ref().map(|c| c.0),
        Some(true),
        "{condition:?}: {:#}",
        sidecar.report().unwrap_or_default()
    );
}

/// Inbound connections the sidecar saw closed by `closer` (client, server, server_idle).
fn closed_by(sidecar: &Sidecar, closer: &str) -> Option<f64> {
    sidecar.metric(&format!(
        "apiworkload_sidecar_tcp_inbound_connections_closed_total{{closer=\"{closer}\"}}"
    ))
}

/// uvicorn with a keep-alive of `seconds`, run as a user of its own as in a pod (the
/// kernel shows a socket the app has closed under UID 0, not the app's).
fn app_with_keep_alive(seconds: u32) -> PythonServer {
    PythonServer::uvicorn_as(APP_UID, &["--timeout-keep-alive", &seconds.to_string()])
}

/// The app's user in the tests that run it as another user than the sidecar's.
const APP_UID: u32 = 65534;

/// The tests here see every socket of this machine's namespace under one UID (a pod
/// would show only its own): they take turns so one's traffic is not the other's.
static BINARY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sidecar_for(app: &PythonServer) -> Sidecar {
    sidecar_with_source(app, "auto")
}

/// `source`: auto (sock_diag here), netlink or proc (the fallback).
fn sidecar_with_source(app: &PythonServer, source: &str) -> Sidecar {
    Sidecar::start(&[
        format!("--app-port={}", app.addr.port()),
        format!("--app-uid={}", app.uid),
        format!("--socket-source={source}"),
        "--window=2s".into(),
        "--resolv-conf=/dev/null".into(),
    ])
}

/// Server keep-alive 2 s behind a client that keeps idle connections 3 s (a load
/// balancer's pool with a 60 s idle timeout): KeepAliveChurn. The same client against a
/// keep-alive longer than its idle time: never a server close, not flagged. The short
/// one is watched twice, through sock_diag (exact accounting from the kernel's end
/// notifications) and through the /proc fallback (samples): both exact here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_shorter_than_the_clients_idle_time_is_keep_alive_churn() {
    let _turn = BINARY_TESTS.lock().await;
    let (short, long) =
        tokio::task::spawn_blocking(|| (app_with_keep_alive(2), app_with_keep_alive(75)))
            .await
            .unwrap();
    let (short_sidecar, long_sidecar) = (sidecar_for(&short), sidecar_for(&long));
    let short_by_proc = sidecar_with_source(&short, "proc");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (short.addr, long.addr);
    // 3 rounds of 3 connections idle 4 s: about 12 s, 9 requests per app. The server's
    // half-closed side (FIN_WAIT2) lasts the 2 s until the client reuses it: seen by
    // 1 s samples.
    let clients = tokio::task::spawn_blocking(move || {
        let short =
            std::thread::spawn(move || pooled_client_with_idle(a, 3, Duration::from_secs(4), 3));
        let long = pooled_client_with_idle(b, 3, Duration::from_secs(4), 3);
        (short.join().unwrap(), long)
    });
    let ((renewed_short, short_pool), (renewed_long, _long_pool)) = clients.await.unwrap();
    // The short app closed the last 3 (FIN_WAIT2 on its side): the client's close ends
    // them. One more sample after.
    drop(short_pool);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closes = |s: &Sidecar| closed_by(s, "server_idle");
    let short_report = (
        closes(&short_sidecar),
        short_sidecar.condition("ConnectionsReused"),
    );
    let long_report = (
        closes(&long_sidecar),
        long_sidecar.condition("ConnectionsReused"),
    );
    let proc_report = (
        closes(&short_by_proc),
        short_by_proc.condition("ConnectionsReused"),
    );
    assert_eq!(
        short_sidecar.metric("apiworkload_sidecar_socket_source{source=\"netlink\"}"),
        Some(1.0),
        "sock_diag is the default source"
    );
    assert_eq!(
        short_by_proc.metric("apiworkload_sidecar_socket_source{source=\"proc\"}"),
        Some(1.0)
    );
    let accounting = |s: &Sidecar, method: &str| {
        s.metric(&format!(
            "apiworkload_sidecar_connection_accounting{{method=\"{method}\"}}"
        ))
    };
    assert_eq!(
        (
            accounting(&short_sidecar, "exact"),
            accounting(&short_by_proc, "sampled")
        ),
        (Some(1.0), Some(1.0)),
        "sock_diag counts from the kernel's end notifications; /proc from samples"
    );
    assert_eq!(
        renewed_short, 6,
        "the 2 s keep-alive closed every idle connection"
    );
    assert_eq!(renewed_long, 0, "a 75 s keep-alive kept every connection");
    let (closes, condition) = short_report;
    assert_eq!(
        closes,
        Some((renewed_short + 3) as f64),
        "every connection the server closed after idle counted (the 3 last ones too), none more"
    );
    assert_eq!(
        condition,
        Some((false, "KeepAliveChurn".to_string())),
        "{:#}",
        short_sidecar.report().unwrap_or_default()
    );
    assert_eq!(
        proc_report,
        (Some((renewed_short + 3) as f64), condition),
        "the /proc fallback agrees"
    );
    let (closes, condition) = long_report;
    assert_eq!(closes, Some(0.0));
    assert_eq!(
        condition,
        Some((true, "Reused".to_string())),
        "{:#}",
        long_sidecar.report().unwrap_or_default()
    );
}

/// The real binary, sampling the socket table itself: an app calling an upstream with a
/// client per call is OutboundChurn; the same app with its shared client is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_flags_a_client_per_call_and_not_a_shared_client() {
    let _turn = BINARY_TESTS.lock().await;
    let (upstream, app) =
        tokio::task::spawn_blocking(|| (PythonServer::uvicorn(), PythonServer::uvicorn()))
            .await
            .unwrap();
    let sidecar = sidecar_for(&app);
    let (addr, port) = (app.addr, upstream.addr.port());
    let mut verdicts = Vec::new();
    for pooled in [false, true] {
        // 10 s of 5 calls every 200 ms: 25 calls/s through the app.
        tokio::task::spawn_blocking(move || {
            let url = format!("/outbound?url=http://127.0.0.1:{port}/healthz&n=5&pooled={pooled}");
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < end {
                assert!(http_get(addr, &url).is_some_and(|r| r.ok()));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .unwrap();
        verdicts.push(sidecar.condition("ConnectionsReused"));
        // Let the verdict settle back (5 good windows) before the next phase.
        tokio::time::sleep(Duration::from_secs(if pooled { 0 } else { 11 })).await;
    }
    assert_eq!(verdicts[0], Some((false, "OutboundChurn".to_string())));
    assert_eq!(verdicts[1], Some((true, "Reused".to_string())));
}

/// Who closed each connection, exactly (#20, item 2: sampling read most of a server's
/// keep-alive closes as the client's). Against an app with a 2 s keep-alive, run as a
/// user of its own, 8 connections of each kind at once: closed by the client after its
/// response; by the server after its response (`Connection: close`); by the server's
/// keep-alive, then the client; and by the keep-alive raced by the client's next request
/// (a reset on the server's half-closed socket: the balancer's 502, no TIME_WAIT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_is_attributed_to_who_closed() {
    const EACH: usize = 8;
    let _turn = BINARY_TESTS.lock().await;
    let app = tokio::task::spawn_blocking(|| app_with_keep_alive(2))
        .await
        .unwrap();
    let sidecar = sidecar_for(&app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = app.addr;
    let request = move |close: bool| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let path = if close { "/healthz?close" } else { "/healthz" };
        if close {
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
        } else {
            exchange(&mut s, path).expect("answered");
        }
        s
    };
    let clients: Vec<_> = (0..4 * EACH)
        .map(|i| {
            std::thread::spawn(move || match i % 4 {
                0 => drop(request(false)),
                1 => drop(request(true)),
                2 => {
                    let mut s = request(false);
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).unwrap(); // the server's close
                }
                _ => {
                    let mut s = request(false);
                    std::thread::sleep(Duration::from_millis(3500));
                    let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: app\r\n\r\n");
                    let _ = s.read(&mut [0u8; 64]); // the reset
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for c in clients {
            c.join().unwrap();
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = |closer: &str| closed_by(&sidecar, closer);
    let each = Some(EACH as f64);
    assert_eq!(
        (
            sidecar.metric("apiworkload_sidecar_tcp_inbound_connections_opened_total"),
            closed("client"),
            closed("server"),
            closed("server_idle"),
        ),
        (Some(4.0 * EACH as f64), each, each, Some(2.0 * EACH as f64)),
        "(opened, closed by client, by server after its response, by its keep-alive)"
    );
}
