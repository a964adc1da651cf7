//! DNS probing against a real DNS server (Debian's dnsmasq) on loopback: the ndots
//! amplification is counted exactly (and matches the server's own query log), latency
//! with an injected delay is measured within ±10 %, and a silent server is a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod support;

use apiworkload_e2e::process::Sidecar;
use apiworkload_sidecar::{
    dns::{Mode, Rcode, lookup},
    resolv::parse,
};
use support::Dnsmasq;
use tokio::net::UdpSocket;

const SEARCH: &str = "search ns.svc.cluster.local svc.cluster.local cluster.local\n";

#[tokio::test]
async fn ndots_amplification_is_counted_exactly() {
    let server = tokio::task::spawn_blocking(Dnsmasq::start).await.unwrap();
    let conf = parse(&format!(
        "{SEARCH}nameserver 127.0.0.1\noptions ndots:5 timeout:2 attempts:1\n"
    ));
    let ns = [server.addr];

    let as_app = lookup(&conf, &ns, "api.example.test", Mode::AsApp).await;
    assert_eq!(as_app.result(), "ok");
    assert_eq!(as_app.answered_by.as_deref(), Some("api.example.test."));
    assert_eq!(
        as_app.queries.len(),
        8,
        "3 search suffixes + the name, × A and AAAA"
    );
    assert_eq!(
        as_app
            .queries
            .iter()
            .filter(|q| q.rcode == Rcode::NxDomain)
            .count(),
        6
    );
    assert!(
        as_app
            .queries
            .iter()
            .all(|q| q.nameserver == Some(server.addr))
    );

    let fqdn = lookup(&conf, &ns, "api.example.test", Mode::Fqdn).await;
    assert_eq!(fqdn.queries.len(), 2);
    let with_ndots_2 = parse(&format!("{SEARCH}nameserver 127.0.0.1\noptions ndots:2\n"));
    assert_eq!(
        lookup(&with_ndots_2, &ns, "api.example.test", Mode::AsApp)
            .await
            .queries
            .len(),
        2
    );

    let missing = lookup(&conf, &ns, "missing.example.test", Mode::AsApp).await;
    assert_eq!((missing.result(), missing.queries.len()), ("nxdomain", 8));

    // The server saw exactly what we counted: 8 + 2 + 2 + 8.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.logged_queries(),
        20,
        "dnsmasq's own log disagrees with our count"
    );
}

#[tokio::test]
async fn latency_with_an_injected_delay_is_measured_within_ten_percent() {
    let server = tokio::task::spawn_blocking(Dnsmasq::start).await.unwrap();
    let delay = Duration::from_millis(150);
    // A relay in front of the real server holds every query for `delay`.
    let delay_ms = u64::try_from(delay.as_millis()).unwrap();
    let relay = support::relay(
        server.addr,
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(delay_ms)),
    )
    .await;
    let conf = parse(&format!(
        "{SEARCH}nameserver 127.0.0.1\noptions ndots:5 timeout:2 attempts:1\n"
    ));

    let l = lookup(&conf, &[relay], "api.example.test", Mode::AsApp).await;
    assert_eq!(l.result(), "ok");
    for q in &l.queries {
        let error = (q.seconds - delay.as_secs_f64()).abs() / delay.as_secs_f64();
        assert!(
            error <= 0.10,
            "query {} {} took {:.4}s for a {delay:?} delay",
            q.name,
            q.qtype,
            q.seconds
        );
    }
    // Candidates are sequential, A and AAAA parallel: the app waits about 4 × delay.
    let expected = 4.0 * delay.as_secs_f64();
    assert!(
        (l.seconds - expected).abs() / expected <= 0.10,
        "lookup took {:.4}s, expected ≈{expected}s",
        l.seconds
    );
}

#[tokio::test]
async fn a_silent_nameserver_is_a_timeout_after_the_resolver_timeout() {
    // Bound but never answering.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let conf = parse("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n");
    let l = lookup(
        &conf,
        &[silent.local_addr().unwrap()],
        "api.example.test",
        Mode::Fqdn,
    )
    .await;
    assert_eq!(l.result(), "timeout");
    assert!(l.queries.iter().all(|q| q.rcode == Rcode::Timeout));
    // Two attempts of one second each, A and AAAA in parallel.
    assert!((1.9..2.5).contains(&l.seconds), "took {:.3}s", l.seconds);
}

/// The real binary probes on its own and exports the ndots tax: per as-app lookup of an
/// external name under `ndots:5`, 6 NXDOMAIN queries precede the answer.
#[tokio::test]
async fn the_sidecar_binary_exports_lookups_and_the_ndots_tax() {
    let server = tokio::task::spawn_blocking(Dnsmasq::start).await.unwrap();
    let resolv = std::env::temp_dir().join(format!("resolv-{}.conf", server.addr.port()));
    std::fs::write(
        &resolv,
        format!("{SEARCH}nameserver 127.0.0.1\noptions ndots:5 timeout:2 attempts:1\n"),
    )
    .unwrap();
    let sidecar = Sidecar::start(&[
        "--dns-probe=api.example.test".into(),
        "--dns-interval=200ms".into(),
        format!("--dns-port={}", server.addr.port()),
        format!("--resolv-conf={}", resolv.display()),
    ]);
    let metric = |text: &str, sample: &str| -> f64 {
        apiworkload_e2e::metric_sample(text, sample).unwrap_or(0.0)
    };
    let mut text = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = apiworkload_e2e::http_get(sidecar.addr, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        if metric(
            &text,
            r#"apiworkload_sidecar_dns_lookups_total{target="api.example.test",mode="as_app",result="ok"}"#,
        ) >= 2.0
        {
            break;
        }
    }
    drop(sidecar);
    let lookups = metric(
        &text,
        r#"apiworkload_sidecar_dns_lookups_total{target="api.example.test",mode="as_app",result="ok"}"#,
    );
    assert!(lookups >= 2.0, "no as_app lookups exported:\n{text}");
    let nx = metric(
        &text,
        r#"apiworkload_sidecar_dns_queries_total{target="api.example.test",mode="as_app",rcode="nxdomain"}"#,
    );
    assert_eq!(
        nx,
        6.0 * lookups,
        "6 NXDOMAIN queries per as_app lookup:\n{text}"
    );
    assert!(text.contains(
        r#"apiworkload_sidecar_dns_search_queries_before_name{target="api.example.test"} 6"#
    ));
    assert!(text.contains("apiworkload_sidecar_dns_lookup_duration_seconds_bucket"));
}
