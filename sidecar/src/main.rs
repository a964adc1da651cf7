//! `apiworkload-sidecar`: serves /healthz, /metrics and /report for the pod it runs in.
//!
//! This build reports what the pod's resolver configuration implies (search-list
//! expansion per probed name). Live DNS timing, socket diagnostics and canary stall
//! detection are not wired in yet.

use std::sync::Arc;

use anyhow::Context as _;
use apiworkload_sidecar::{config::Config, report, resolv};
use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use clap::Parser;
use tracing::info;

#[derive(Clone)]
struct AppState {
    expansions: Arc<Vec<report::SearchExpansion>>,
    resolv: Arc<resolv::ResolvConf>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        report::metrics_text(&s.expansions),
    )
}

async fn report_json(State(s): State<AppState>) -> impl IntoResponse {
    Json(serde_json::json!({
        "resolver": {
            "nameservers": s.resolv.nameservers,
            "search": s.resolv.search,
            "ndots": s.resolv.ndots,
            "timeout": s.resolv.timeout,
            "attempts": s.resolv.attempts,
        },
        "dns": *s.expansions,
    }))
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
    let text = std::fs::read_to_string(&config.resolv_conf).unwrap_or_default();
    let conf = resolv::parse(&text);
    let expansions = report::search_expansions(&conf, &config.dns_probes);
    let state = AppState {
        expansions: Arc::new(expansions),
        resolv: Arc::new(conf),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/report", get(report_json))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    info!(listen = %config.listen, "sidecar listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
