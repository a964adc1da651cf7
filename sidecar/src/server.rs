//! The sidecar's HTTP endpoints: /healthz, /metrics (OpenMetrics) and /report (the
//! resolver, the DNS findings, the conditions and the evidence behind them, as JSON).

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};

use crate::{
    evaluate::Verdicts, metrics::Metrics, resolv::SearchExpansion, watch::dns::LatestRound,
};

/// What the endpoints read; the watchers and the evaluator write it.
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub expansions: Arc<Vec<SearchExpansion>>,
    pub dns: Arc<Mutex<LatestRound>>,
    pub verdicts: Arc<Mutex<Verdicts>>,
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/report", get(report))
        .with_state(shared)
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn report(State(s): State<Shared>) -> impl IntoResponse {
    let dns = s.dns.lock().map(|d| d.clone()).unwrap_or_default();
    let verdicts = s.verdicts.lock().map(|v| v.clone()).unwrap_or_default();
    let conf = dns.resolv;
    Json(serde_json::json!({
        "resolver": {
            "nameservers": conf.nameservers,
            "search": conf.search,
            "ndots": conf.ndots,
            "timeout": conf.timeout,
            "attempts": conf.attempts,
        },
        "dns": *s.expansions,
        "lastLookups": dns.lookups,
        "conditions": serde_json::to_value(&verdicts.conditions).unwrap_or_default(),
        "lastWindow": serde_json::to_value(&verdicts.last_window).unwrap_or_default(),
    }))
}
