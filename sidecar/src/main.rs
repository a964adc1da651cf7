//! `apiworkload-sidecar`: serves /healthz, /metrics and /report for the pod it runs in.
//!
//! Watchers (DNS probes, canary requests, socket-table samples) feed one evaluation
//! window; every window turns into condition verdicts, which are served on /report and
//! /metrics and, with the pod's credentials, written on the pod's status.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use apiworkload_sidecar::{
    canary::{self, CanaryConfig},
    conditions::{Conditions, Thresholds, WindowAccumulator as Window},
    config::{Config, SocketSource},
    dns::{self, Lookup, Mode},
    heartbeat,
    podstatus::{PodStatusWriter, WritePolicy},
    procnet,
    report::{self, Metrics},
    resolv, sockdiag, sockets,
    supervise::{named, supervise},
};
use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use clap::Parser;
use tracing::{info, warn};

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    /// What the watchers measured since the last evaluation.
    window: Arc<Mutex<Window>>,
    conditions: Arc<Mutex<Conditions>>,
    resolv: Arc<Mutex<resolv::ResolvConf>>,
    expansions: Arc<Vec<report::SearchExpansion>>,
    lookups: Arc<Mutex<Vec<Lookup>>>,
    /// The last evaluated window: the evidence behind the conditions.
    last_window: Arc<Mutex<Option<apiworkload_sidecar::conditions::Window>>>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn report_json(State(s): State<AppState>) -> impl IntoResponse {
    let conf = s.resolv.lock().map(|c| c.clone()).unwrap_or_default();
    let lookups = s.lookups.lock().map(|l| l.clone()).unwrap_or_default();
    Json(serde_json::json!({
        "resolver": {
            "nameservers": conf.nameservers,
            "search": conf.search,
            "ndots": conf.ndots,
            "timeout": conf.timeout,
            "attempts": conf.attempts,
        },
        "dns": *s.expansions,
        "lastLookups": lookups,
        "conditions": s.conditions.lock().map(|c| serde_json::to_value(&*c).unwrap_or_default()).unwrap_or_default(),
        "lastWindow": s.last_window.lock().map(|w| serde_json::to_value(&*w).unwrap_or_default()).unwrap_or_default(),
    }))
}

/// Probes every configured name, as the app and as an FQDN, every `interval`. The pod's
/// resolv.conf is re-read each round (the kubelet may rewrite it).
async fn probe_dns(config: Config, state: AppState) {
    let mut ticker = tokio::time::interval(config.dns_interval);
    loop {
        ticker.tick().await;
        let conf = resolv::parse(&std::fs::read_to_string(&config.resolv_conf).unwrap_or_default());
        let nameservers = dns::nameserver_addrs(&conf, config.dns_port);
        let mut round = Vec::new();
        for target in &config.app.dns_probes {
            for mode in [Mode::AsApp, Mode::Fqdn] {
                let lookup = dns::lookup(&conf, &nameservers, target, mode).await;
                state.metrics.record(&lookup);
                if let Ok(mut w) = state.window.lock() {
                    w.dns_timeouts += lookup
                        .queries
                        .iter()
                        .filter(|q| q.rcode == dns::Rcode::Timeout)
                        .count() as u64;
                    if mode == Mode::AsApp {
                        w.dns_lookups += 1;
                        w.dns_queries += lookup.queries.len() as u64;
                        let slowest = w
                            .dns_slowest_lookup_seconds
                            .unwrap_or(0.0)
                            .max(lookup.seconds);
                        w.dns_slowest_lookup_seconds = Some(slowest);
                    }
                }
                round.push(lookup);
            }
        }
        if let Ok(mut c) = state.resolv.lock() {
            *c = conf;
        }
        if let Ok(mut l) = state.lookups.lock() {
            *l = round;
        }
    }
}

/// Canaries on one persistent connection per worker; stalls reach /metrics every second.
async fn watch_event_loop(config: Config, metrics: Arc<Metrics>, window: Arc<Mutex<Window>>) {
    let observations = canary::start(CanaryConfig {
        app: std::net::SocketAddr::from(([127, 0, 0, 1], config.app.app_port)),
        path: config.app.probe_path.clone(),
        connections: config.app.workers.max(1) as usize,
        period: config.canary_period,
        threshold: config.app.stall_threshold,
        give_up: std::time::Duration::from_secs(60),
    });
    let mut seen = report::CanarySeen::default();
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if let Ok(mut obs) = observations.lock() {
            let in_progress = obs
                .oldest_inflight()
                .filter(|d| *d > config.app.stall_threshold);
            let before = seen;
            let stalled = metrics.record_canary(&mut obs, &mut seen);
            if let Ok(mut w) = window.lock() {
                w.stalled_seconds += stalled;
                w.canary_probes += seen.probes - before.probes;
                w.canary_failures += seen.failures - before.failures;
                // A stall still in progress counts toward this window as it happens.
                if in_progress.is_some() {
                    w.stalled_in_progress = true;
                }
            }
        }
    }
}

/// Receives the app's opt-in heartbeats; every second moves their stalls into the
/// metrics and the window. Without a heartbeat from the app this costs one idle socket.
async fn watch_heartbeats(config: Config, metrics: Arc<Metrics>, window: Arc<Mutex<Window>>) {
    let socket = match tokio::net::UdpSocket::bind(config.heartbeat_listen).await {
        Ok(s) => s,
        Err(e) => {
            warn!(address = %config.heartbeat_listen, error = %e, "heartbeat socket unavailable; canary only");
            // Degraded, not ended: a supervised task that returns stops the sidecar.
            return std::future::pending().await;
        }
    };
    let mut beats = heartbeat::Heartbeats::default();
    let mut seen = 0.0;
    let mut buf = [0u8; 64];
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            received = socket.recv(&mut buf) => {
                if let Ok(n) = received
                    && let Some(beat) = heartbeat::parse(&buf[..n])
                {
                    beats.on_beat(beat, std::time::Instant::now(), config.app.stall_threshold);
                }
            }
            _ = ticker.tick() => {
                let overdue = beats.overdue(std::time::Instant::now());
                let stalled = metrics.record_heartbeat(&mut beats, &mut seen);
                if let Ok(mut w) = window.lock() {
                    w.heartbeat_stalled_seconds += stalled;
                    if overdue.is_some_and(|d| d > config.app.stall_threshold) {
                        w.stalled_in_progress = true;
                    }
                }
            }
        }
    }
}

/// Samples the pod's socket table every second: the app's outbound connections, the
/// server side of its inbound ones and its listening socket, plus the namespace's
/// kernel counters. Sockets of other UIDs (the sidecar's own, other sidecars') are left
/// out.
async fn watch_connections(config: Config, metrics: Arc<Metrics>, window: Arc<Mutex<Window>>) {
    use std::os::unix::fs::MetadataExt;
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let is_app = |uid: u32| match config.app.app_uid {
        Some(app) => uid == app,
        None => Some(uid) != own_uid,
    };
    let port = config.app.app_port;
    let mut outbound = sockets::OutboundTracker::default();
    let mut inbound = sockets::InboundTracker::default();
    let mut seen = (0, 0);
    let mut counters: Option<std::collections::BTreeMap<String, u64>> = None;
    let mut netlink = match config.socket_source {
        SocketSource::Proc => None,
        _ => match sockdiag::SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) if config.socket_source == SocketSource::Auto => {
                warn!(error = %e, "sock_diag unavailable: sampling /proc/net/tcp instead");
                None
            }
            Err(e) => {
                // Every window then says it has no socket evidence (and /metrics says
                // `socket_source{source="none"}`), rather than the watcher ending.
                warn!(error = %e, "sock_diag unavailable (--socket-source=netlink): no socket samples");
                None
            }
        },
    };
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut first = true;
    let mut unreadable = false;
    loop {
        let deadline = ticker.tick().await;
        // This timer's lag is the sidecar's own: its latencies are inflated by as much.
        metrics.record_timer_lag(tokio::time::Instant::now().saturating_duration_since(deadline));
        let dumped = match netlink.as_mut().map(|d| d.dump()) {
            Some(Ok(rows)) => Some(rows),
            Some(Err(e)) => {
                // Fall back for good: a refusal will not go away between polls.
                warn!(error = %e, "sock_diag dump failed: sampling /proc/net/tcp from now on");
                netlink = None;
                None
            }
            None => None,
        };
        let rows = match dumped {
            Some(rows) => {
                metrics.set_socket_source("netlink");
                if let Ok(mut w) = window.lock() {
                    w.socket_samples += 1;
                }
                rows
            }
            None if config.socket_source == SocketSource::Netlink => {
                metrics.set_socket_source("none");
                if let Ok(mut w) = window.lock() {
                    w.socket_sample_failures += 1;
                }
                continue;
            }
            None => {
                let tables: Vec<_> = ["net/tcp", "net/tcp6"]
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(config.proc_root.join(f)).ok())
                    .filter_map(|text| procnet::parse_tcp(&text).ok())
                    .collect();
                // Nothing readable: say so (metric, /report, one log line per outage)
                // and keep the trackers' state for when the tables come back.
                if tables.is_empty() {
                    if !unreadable {
                        warn!(proc_root = %config.proc_root.display(), "no socket table readable (netlink unavailable, /proc/net/tcp{{,6}} unreadable)");
                    }
                    unreadable = true;
                    metrics.set_socket_source("none");
                    if let Ok(mut w) = window.lock() {
                        w.socket_sample_failures += 1;
                    }
                    continue;
                }
                unreadable = false;
                metrics.set_socket_source("proc");
                if let Ok(mut w) = window.lock() {
                    w.socket_samples += 1;
                }
                tables.into_iter().flatten().collect()
            }
        };
        let (to_app, from_app) = sockets::classify(rows, port, config.app.listen.port(), is_app);
        let now = std::time::Instant::now();
        if std::mem::take(&mut first) {
            outbound.baseline(&from_app, now);
            inbound.baseline(&to_app, now);
        } else {
            outbound.observe(&from_app, now);
        }
        let sample = inbound.observe(&to_app, now);
        let counts = inbound.take_counts();
        let opened = outbound.opened.saturating_sub(seen.0);
        if let Ok(mut w) = window.lock() {
            w.outbound_opened += opened;
            w.outbound_lifetimes
                .extend(outbound.lifetimes.iter().copied());
            w.inbound_idle_closes += counts.closed_idle_by_server;
            w.accept_queue_max = w.accept_queue_max.max(sample.accept_queue);
            w.close_wait_max = w.close_wait_max.max(sample.close_wait);
        }
        metrics.record_outbound(&mut outbound, &mut seen);
        metrics.record_inbound(counts, &sample);
        let mut current = std::collections::BTreeMap::new();
        for file in ["net/snmp", "net/netstat"] {
            if let Ok(text) = std::fs::read_to_string(config.proc_root.join(file)) {
                current.extend(procnet::parse_counters(&text));
            }
        }
        metrics.record_netns(&current, counters.as_ref());
        counters = Some(current);
    }
}

/// Every `--window`: turns what was measured into condition verdicts (with hysteresis)
/// and publishes them on the pod when due.
async fn evaluate_conditions(config: Config, state: AppState, writer: Option<PodStatusWriter>) {
    let thresholds = Thresholds::default();
    let mut policy = WritePolicy::new(config.conditions_heartbeat);
    let mut ticker = tokio::time::interval(config.window);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Ok(mut acc) = state.window.lock().map(|mut w| std::mem::take(&mut *w)) else {
            return;
        };
        acc.window_seconds = config.window.as_secs_f64();
        let window = acc.finish(config.app.stall_threshold.as_secs_f64());
        if let Ok(mut last) = state.last_window.lock() {
            *last = Some(window.clone());
        }
        let snapshot = {
            let Ok(mut conditions) = state.conditions.lock() else {
                return;
            };
            for flipped in conditions.evaluate(&window, &thresholds) {
                if let Some(c) = conditions.all().into_iter().find(|c| c.type_ == flipped) {
                    info!(condition = c.type_, status = c.status, reason = %c.reason, message = %c.message, "condition changed");
                }
            }
            state.metrics.record_conditions(&conditions);
            conditions.clone()
        };
        let now = std::time::Instant::now();
        if let Some(writer) = &writer
            && policy.due(&snapshot, now)
        {
            // A failed write is retried next window; measuring never waits on the API.
            match writer.write(&snapshot).await {
                Ok(()) => {
                    policy.wrote(&snapshot, now);
                    state.metrics.count_condition_write(true);
                }
                Err(e) => {
                    warn!(error = %e, "could not write the pod's conditions");
                    state.metrics.count_condition_write(false);
                }
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::parse();
    // A pod without resolv.conf still gets a sidecar that serves; it reports no search list.
    let conf = resolv::parse(&std::fs::read_to_string(&config.resolv_conf).unwrap_or_default());
    let expansions = report::search_expansions(&conf, &config.app.dns_probes);
    let state = AppState {
        metrics: Arc::new(Metrics::new(&expansions)),
        window: Arc::default(),
        conditions: Arc::default(),
        resolv: Arc::new(Mutex::new(conf)),
        expansions: Arc::new(expansions),
        lookups: Arc::default(),
        last_window: Arc::default(),
    };
    state.metrics.set_app_workers(config.app.workers);
    let listener = tokio::net::TcpListener::bind(config.app.listen)
        .await
        .with_context(|| format!("bind {}", config.app.listen))?;
    let writer = PodStatusWriter::from_environment(
        config.pod_name.as_deref(),
        config.pod_namespace.as_deref(),
    )
    .await;

    // Every task runs for the life of the process (see `supervise`).
    let mut tasks = tokio::task::JoinSet::new();
    let (m, w) = (&state.metrics, &state.window);
    if !config.app.dns_probes.is_empty() {
        tasks.spawn(named(
            "DNS probes",
            probe_dns(config.clone(), state.clone()),
        ));
    }
    tasks.spawn(named(
        "canary",
        watch_event_loop(config.clone(), m.clone(), w.clone()),
    ));
    tasks.spawn(named(
        "heartbeats",
        watch_heartbeats(config.clone(), m.clone(), w.clone()),
    ));
    tasks.spawn(named(
        "socket watcher",
        watch_connections(config.clone(), m.clone(), w.clone()),
    ));
    tasks.spawn(named(
        "conditions",
        evaluate_conditions(config.clone(), state.clone(), writer),
    ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/report", get(report_json))
        .with_state(state);
    info!(listen = %config.app.listen, "sidecar listening");
    tasks.spawn(named("HTTP server", async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "HTTP server failed");
        }
    }));

    let stopped = supervise(tasks, apiworkload_contract::shutdown::signal()).await;
    info!("stopping");
    stopped
}
