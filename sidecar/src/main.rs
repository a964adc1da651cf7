//! `apiworkload-sidecar`: serves /healthz, /metrics and /report for the pod it runs in.
//!
//! Wiring only. The watchers (`watch::*`: DNS probes, canary requests, heartbeats,
//! socket-table samples) record their metrics and send typed evidence to one window;
//! every window the evaluator turns it into condition verdicts, served on /report and
//! /metrics and, with the pod's credentials, written on the pod's status.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use apiworkload_sidecar::{
    conditions,
    config::Config,
    evaluate::{self, Verdicts},
    metrics::Metrics,
    podstatus::PodStatusWriter,
    resolv, server,
    supervise::{named, supervise},
    watch,
    window::EvidenceSink,
};
use clap::{CommandFactory, FromArgMatches};
use tracing::info;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // --help lists the conditions' thresholds (the ones the conditions use).
    let matches = Config::command()
        .after_help(conditions::describe(&conditions::Thresholds::default()))
        .get_matches();
    let config = Config::from_arg_matches(&matches)?;
    // A pod without resolv.conf still gets a sidecar that serves; it reports no search list.
    let conf = resolv::parse(&std::fs::read_to_string(&config.resolv_conf).unwrap_or_default());
    let walked = (!config.dns_walk_name.is_empty()).then(|| config.dns_walk_name.clone());
    let probed: Vec<String> = config
        .app
        .dns_probes
        .iter()
        .cloned()
        .chain(walked)
        .collect();
    let expansions = resolv::search_expansions(&conf, &probed);
    let metrics = Arc::new(Metrics::new(&expansions));
    metrics.own.set_app_workers(config.app.workers);
    let shared = server::Shared {
        metrics: metrics.clone(),
        expansions: Arc::new(expansions),
        dns: Arc::new(Mutex::new(watch::dns::LatestRound {
            resolv: conf,
            lookups: Vec::new(),
        })),
        verdicts: Arc::new(Mutex::new(Verdicts::default())),
        thresholds: Arc::new(config.app.thresholds.clone()),
    };
    let evidence = EvidenceSink::default();
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
    if !probed.is_empty() {
        tasks.spawn(named(
            "DNS probes",
            watch::dns::probe(
                config.clone(),
                metrics.clone(),
                evidence.clone(),
                shared.dns.clone(),
            ),
        ));
    }
    tasks.spawn(named(
        "canary",
        watch::event_loop::watch(config.clone(), metrics.clone(), evidence.clone()),
    ));
    tasks.spawn(named(
        "heartbeats",
        watch::heartbeat::watch(config.clone(), metrics.clone(), evidence.clone()),
    ));
    tasks.spawn(named(
        "in-flight requests",
        watch::inflight::watch(config.clone(), metrics.clone()),
    ));
    tasks.spawn(named(
        "socket watcher",
        watch::connections::watch(config.clone(), metrics.clone(), evidence.clone()),
    ));
    tasks.spawn(named(
        "conditions",
        evaluate::evaluate(
            config.clone(),
            metrics.clone(),
            evidence,
            shared.verdicts.clone(),
            writer,
        ),
    ));
    let app = server::router(shared);
    info!(listen = %config.app.listen, "sidecar listening");
    tasks.spawn(named("HTTP server", async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "HTTP server failed");
        }
    }));

    let stopped = supervise(tasks, apiworkload_contract::shutdown::signal()).await;
    info!("stopping");
    stopped
}
