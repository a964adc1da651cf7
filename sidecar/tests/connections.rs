//! Outbound churn against real Python servers: an app that creates an HTTP client per
//! call stands out (one connection per call, closed by the app) from one that shares a
//! pooled client (one connection for every call). Sampled from /proc/net/tcp{,6}.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use apiworkload_e2e::{PythonServer, http_get_blocking};
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
    let call = tokio::task::spawn_blocking(move || http_get_blocking(addr, &url));
    while !call.is_finished() {
        tracker.observe(&outbound_rows(port), Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        call.await
            .unwrap()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
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
