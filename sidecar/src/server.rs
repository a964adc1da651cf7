//! The sidecar's HTTP endpoints: /healthz, /metrics (OpenMetrics) and /report (the
//! resolver, the DNS findings, the conditions and the evidence behind them, as JSON).

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};

use crate::{
    conditions::Thresholds, evaluate::Verdicts, metrics::Metrics, resolv::SearchExpansion,
    watch::dns::LatestRound,
};

/// What the endpoints read; the watchers and the evaluator write it.
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub expansions: Arc<Vec<SearchExpansion>>,
    pub dns: Arc<Mutex<LatestRound>>,
    pub verdicts: Arc<Mutex<Verdicts>>,
    pub thresholds: Arc<Thresholds>,
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
    Json(report_json(&dns, &verdicts, &s.expansions, &s.thresholds))
}

/// The /report document: camelCase keys throughout, conditions keyed by their type (as
/// on the pod and the ApiWorkload).
pub fn report_json(
    dns: &LatestRound,
    verdicts: &Verdicts,
    expansions: &[SearchExpansion],
    thresholds: &Thresholds,
) -> serde_json::Value {
    let conf = &dns.resolv;
    serde_json::json!({
        "resolver": {
            "nameservers": conf.nameservers,
            "search": conf.search,
            "ndots": conf.ndots,
            "timeout": conf.timeout,
            "attempts": conf.attempts,
        },
        "searchExpansions": expansions,
        "lastLookups": dns.lookups,
        "conditions": serde_json::to_value(&verdicts.conditions).unwrap_or_default(),
        "lastWindow": serde_json::to_value(&verdicts.last_window).unwrap_or_default(),
        "thresholds": serde_json::to_value(thresholds).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dns::{Lookup, Mode, QueryRecord, Rcode},
        resolv::{parse, search_expansions},
    };

    /// Every key, however deep.
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push(k.clone());
                    keys(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_report_speaks_camel_case_and_names_conditions_by_type() {
        let conf = parse("search a.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n");
        let expansions = search_expansions(&conf, &["api.example.com".into()]);
        let dns = LatestRound {
            resolv: conf,
            lookups: vec![Lookup {
                target: "api.example.com".into(),
                mode: Mode::AsApp,
                answered_by: Some("api.example.com.".into()),
                queries: vec![QueryRecord {
                    name: "api.example.com.".into(),
                    qtype: "A",
                    nameserver: None,
                    rcode: Rcode::NoError,
                    answers: 1,
                    seconds: 0.002,
                }],
                seconds: 0.002,
            }],
        };
        let verdicts = Verdicts {
            last_window: Some(Default::default()),
            ..Default::default()
        };
        let report = report_json(&dns, &verdicts, &expansions, &Thresholds::default());
        let conditions: Vec<&String> = report["conditions"].as_object().unwrap().keys().collect();
        assert_eq!(
            conditions,
            ["ConnectionsReused", "DNSHealthy", "EventLoopResponsive"]
        );
        let mut all = Vec::new();
        keys(&report, &mut all);
        let snake: Vec<&String> = all.iter().filter(|k| k.contains('_')).collect();
        assert!(snake.is_empty(), "snake_case keys: {snake:?}");
        assert_eq!(report["lastLookups"][0]["answeredBy"], "api.example.com.");
        assert_eq!(report["searchExpansions"][0]["queriesBeforeName"], 2);
        assert_eq!(report["thresholds"]["stalledPercent"], 5);
    }
}
