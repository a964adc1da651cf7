//! How soon a DNS fault is named with the sidecar's default timing (`--dns-interval`,
//! `--window`): each sidecar resolves through a relay in front of a real DNS server
//! (dnsmasq), healthy at first; then, at a moment unrelated to the sidecar's rounds, the
//! pod's resolv.conf gains `ndots:5` and a search list, the nameserver stops answering,
//! or every answer takes 800 ms. Target (#20): every fault named within 60 s, also with
//! no name configured at all (the sidecar then walks the search list as the app would
//! for a typical external name).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod support;

use apiworkload_e2e::process::Sidecar;
use support::{Dnsmasq, RELAY_DROP, RELAY_PASS};

struct Probed {
    sidecar: Sidecar,
    delay_ms: Arc<AtomicU64>,
    resolv: std::path::PathBuf,
}

const HEALTHY_RESOLV: &str = "nameserver 127.0.0.1\noptions ndots:1\n";

/// A sidecar probing `api.example.test`, or, with `configured` false, nothing named.
async fn probed(server: &Dnsmasq, name: &str, configured: bool) -> Probed {
    let delay_ms = Arc::new(AtomicU64::new(RELAY_PASS));
    let relay = support::relay(server.addr, delay_ms.clone()).await;
    let resolv =
        std::env::temp_dir().join(format!("resolv-detection-{name}-{}.conf", relay.port()));
    std::fs::write(&resolv, HEALTHY_RESOLV).unwrap();
    // Default --dns-interval and --window: only where to probe is set.
    let mut args = vec![
        format!("--dns-port={}", relay.port()),
        format!("--resolv-conf={}", resolv.display()),
    ];
    if configured {
        args.push("--dns-probe=api.example.test".into());
    }
    let sidecar = Sidecar::start(&args);
    Probed {
        sidecar,
        delay_ms,
        resolv,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dns_fault_is_named_within_60_s_with_default_timing() {
    let server = tokio::task::spawn_blocking(Dnsmasq::start).await.unwrap();
    let amplified = probed(&server, "amplified", true).await;
    let silent = probed(&server, "silent", true).await;
    let slow = probed(&server, "slow", true).await;
    let unconfigured = probed(&server, "unconfigured", false).await;
    // Healthy for a while, so the faults begin mid-round (the rounds start with the
    // sidecars; 13 s is no multiple of the 15 s interval or the 10 s window).
    tokio::time::sleep(Duration::from_secs(13)).await;
    for p in [&amplified, &silent, &slow, &unconfigured] {
        let dns = p.sidecar.condition("DNSHealthy");
        assert_eq!(
            dns.as_ref().map(|c| c.0),
            Some(true),
            "healthy before the fault: {dns:?}"
        );
    }

    let faulted = Instant::now();
    for p in [&amplified, &unconfigured] {
        std::fs::write(
            &p.resolv,
            "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n",
        )
        .unwrap();
    }
    silent.delay_ms.store(RELAY_DROP, Ordering::Relaxed);
    slow.delay_ms.store(800, Ordering::Relaxed);

    let cases = [
        ("SearchAmplification", &amplified),
        ("Timeouts", &silent),
        ("SlowResolution", &slow),
        ("SearchAmplification", &unconfigured),
    ];
    let mut named = vec![None; cases.len()];
    while named.iter().any(Option::is_none) && faulted.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for ((_, p), at) in cases.iter().zip(named.iter_mut()) {
            if at.is_none()
                && let Some((false, reason)) = p.sidecar.condition("DNSHealthy")
            {
                *at = Some((faulted.elapsed(), reason));
            }
        }
    }
    for ((expected, p), seen) in cases.iter().zip(&named) {
        eprintln!("{expected}: named after {seen:?}");
        let (after, reason) = seen.clone().unwrap_or_else(|| {
            panic!(
                "{expected} not named within 90 s: {:#}",
                p.sidecar.report().unwrap_or_default()
            )
        });
        assert_eq!(&reason, expected);
        assert!(
            after <= Duration::from_secs(60),
            "{expected} named after {after:?}, target 60 s"
        );
    }
    // Unconfigured, the walk stops before the external name itself: nothing leaves.
    let report = unconfigured.sidecar.report().unwrap_or_default();
    let walked: Vec<&str> = report["lastLookups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["queries"].as_array().into_iter().flatten())
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(
        !walked.is_empty() && walked.iter().all(|n| n.ends_with(".cluster.local.")),
        "only the search-list names are asked: {walked:?}"
    );
    for p in [&amplified, &silent, &slow, &unconfigured] {
        let _ = std::fs::remove_file(&p.resolv);
    }
}
