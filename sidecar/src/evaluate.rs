//! Every `--window`: turns the window's evidence into condition verdicts (with
//! hysteresis) and publishes them on the pod when due.

use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::{
    conditions::Conditions,
    config::Config,
    metrics::Metrics,
    podstatus::{PodStatusWriter, WritePolicy},
    window::{EvidenceSink, Window},
};

/// The verdicts and the window behind them, for /report.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    pub conditions: Conditions,
    pub last_window: Option<Window>,
}

pub async fn evaluate(
    config: Config,
    metrics: Arc<Metrics>,
    evidence: EvidenceSink,
    verdicts: Arc<Mutex<Verdicts>>,
    writer: Option<PodStatusWriter>,
) {
    let mut policy = WritePolicy::new(config.conditions_heartbeat);
    let mut ticker = tokio::time::interval(config.window);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let mut acc = evidence.take();
        acc.window_seconds = config.window.as_secs_f64();
        let window = acc.finish(config.app.stall_threshold.as_secs_f64());
        let snapshot = {
            let Ok(mut v) = verdicts.lock() else {
                return;
            };
            for flipped in v.conditions.evaluate(&window, &config.app.thresholds) {
                if let Some(c) = v.conditions.all().into_iter().find(|c| c.type_ == flipped) {
                    info!(condition = c.type_, status = c.status, reason = %c.reason, message = %c.message, "condition changed");
                }
            }
            v.last_window = Some(window);
            metrics.conditions.record(&v.conditions);
            v.conditions.clone()
        };
        let now = std::time::Instant::now();
        if let Some(writer) = &writer
            && policy.due(&snapshot, now)
        {
            // A failed write is retried next window; measuring never waits on the API.
            match writer.write(&snapshot).await {
                Ok(()) => {
                    policy.wrote(&snapshot, now);
                    metrics.conditions.count_write(true);
                }
                Err(e) => {
                    warn!(error = %e, "could not write the pod's conditions");
                    metrics.conditions.count_write(false);
                }
            }
        }
    }
}
