//! Requests in flight on the app's port ([`crate::inflight`]), four times a second: an
//! autoscaler reads every 15 s, and the time integral (`inflight_request_seconds_total`)
//! gives it the average over any window, not one sample.

use std::{sync::Arc, time::Duration};

use netlink_packet_sock_diag::inet::StateFlags;
use tracing::warn;

use crate::{config::Config, inflight, metrics::Metrics, sockdiag::SockDiag, sockets};

/// How often the sockets are sampled.
pub const PERIOD: Duration = Duration::from_millis(250);

pub async fn watch(config: Config, metrics: Arc<Metrics>) {
    // /proc/net/tcp has no tcp_info: it would count unread requests only, a number
    // an autoscaler would trust; none is better than that.
    let mut diag = match SockDiag::open() {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "sock_diag unavailable: no in-flight request metric");
            return std::future::pending().await;
        }
    };
    let is_app = sockets::app_uid_filter(config.app.app_uid);
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = ticker.tick().await;
    let mut failing = false;
    loop {
        let now = ticker.tick().await;
        let rows = match diag.dump_states(StateFlags::ESTABLISHED | StateFlags::LISTEN) {
            Ok(rows) => rows,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "sock_diag dump failed: in-flight requests not sampled");
                }
                continue;
            }
        };
        failing = false;
        let (to_app, _) =
            sockets::classify(rows, config.app.app_port, config.app.listen.port(), &is_app);
        metrics
            .inflight
            .record(inflight::count(&to_app), now.duration_since(last));
        last = now;
    }
}
