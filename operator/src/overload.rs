//! Overload: how many requests one worker takes on before excess is refused or left in
//! the kernel's queue, and how long that queue may be.
//!
//! Without a limit, uvicorn takes every request (unlimited by default) and the listen
//! backlog holds 2048 more: under overload they all wait, every request slows down, and
//! the balancer's timeout turns them into 502/504s after the work was done anyway. With
//! a limit, the excess gets a 503 within a millisecond while the autoscaler adds pods.

use crate::api::{ApiWorkloadSpec, ServerKind};

/// What a worker does beyond its limit, per server kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shedding {
    /// uvicorn (and gunicorn's uvicorn worker, through the operator's worker class):
    /// `503 Service Unavailable` once open connections or running requests reach it.
    Refuse503,
    /// gunicorn-gthread `--worker-connections`: the worker stops accepting
    /// (`can_accept` in gunicorn's gthread worker); connections wait in the backlog.
    StopAccepting,
    /// granian `--backpressure`: granian's own per-worker limit on concurrent
    /// requests (what it does beyond it is not measured here).
    GranianBackpressure,
    /// gunicorn-sync: one request at a time per worker, by construction.
    OneAtATime,
    /// hypercorn has no such setting: only the backlog bounds the queue.
    Unbounded,
}

/// The derived overload settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overload {
    /// Per worker; `None` when the server has no limit to set (see [`Shedding`]) or the
    /// spec asked for none (`limit: 0`).
    pub limit: Option<i32>,
    pub shedding: Shedding,
    /// The listen socket's backlog (`--backlog`), for the whole pod.
    pub backlog: i32,
}

/// The smallest backlog granian accepts.
const GRANIAN_MIN_BACKLOG: i32 = 128;

/// The default per-worker limit: ten times what a worker handles well. The limit trades
/// refusals for latency: at twice its capacity, one CPU-bound worker kept accepted
/// requests within 2× of their unloaded p99 only with a limit of 2, which also refused
/// a third of the requests at 0.8× capacity (Poisson arrivals come in bursts); ten
/// times refuses almost none below capacity and still bounds the wait to about ten
/// requests' worth instead of the balancer's timeout (`overload` benchmark).
pub fn default_limit(per_worker_concurrency: i32) -> i32 {
    per_worker_concurrency.saturating_mul(10)
}

/// Derives the overload settings for a spec run by `workers` processes.
pub fn overload(spec: &ApiWorkloadSpec, workers: i32, per_worker_concurrency: i32) -> Overload {
    let shedding = match spec.server {
        ServerKind::Uvicorn | ServerKind::GunicornUvicorn => Shedding::Refuse503,
        ServerKind::GunicornGthread => Shedding::StopAccepting,
        ServerKind::Granian => Shedding::GranianBackpressure,
        ServerKind::GunicornSync => Shedding::OneAtATime,
        ServerKind::Hypercorn => Shedding::Unbounded,
    };
    let wanted = spec
        .concurrency
        .limit
        .unwrap_or_else(|| default_limit(per_worker_concurrency));
    let limit = match shedding {
        Shedding::Refuse503 | Shedding::StopAccepting | Shedding::GranianBackpressure => {
            (wanted > 0).then_some(wanted)
        }
        Shedding::OneAtATime => Some(1),
        Shedding::Unbounded => None,
    };
    // Enough for a burst the workers take up within moments: twice what they hold.
    let held = limit
        .unwrap_or(per_worker_concurrency)
        .saturating_mul(workers.max(1));
    let floor = if spec.server == ServerKind::Granian {
        GRANIAN_MIN_BACKLOG
    } else {
        64
    };
    let backlog = spec
        .concurrency
        .backlog
        .unwrap_or_else(|| held.saturating_mul(2).clamp(64, 2048))
        .max(floor);
    Overload {
        limit,
        shedding,
        backlog,
    }
}

impl Overload {
    /// What `.status.effective.concurrencyLimit` says.
    pub fn describe(&self, server: ServerKind) -> String {
        match (self.shedding, self.limit) {
            (Shedding::Refuse503, Some(n)) => format!("{n} per worker, then 503"),
            (Shedding::StopAccepting, Some(n)) => {
                format!("{n} per worker, then queued in the backlog")
            }
            (Shedding::GranianBackpressure, Some(n)) => {
                format!("{n} per worker (granian --backpressure)")
            }
            (Shedding::OneAtATime, _) => "1 per worker (sync)".into(),
            (Shedding::Unbounded, _) => format!("none ({} has no limit)", server.as_str()),
            (_, None) => "none (spec.concurrency.limit: 0)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests_support::spec;

    fn derive(s: &ApiWorkloadSpec, workers: i32) -> Overload {
        overload(s, workers, 10)
    }

    #[test]
    fn async_servers_get_a_limit_from_their_capacity_and_a_backlog_that_fits_it() {
        let mut s = spec();
        s.server = ServerKind::Uvicorn;
        let io = derive(&s, 3);
        assert_eq!(
            (io.limit, io.shedding, io.backlog),
            (Some(100), Shedding::Refuse503, 600)
        );
        let cpu = overload(&s, 2, 2);
        assert_eq!((cpu.limit, cpu.backlog), (Some(20), 80));
    }

    #[test]
    fn every_server_kind_says_how_it_sheds() {
        let mut s = spec();
        let cases = [
            (
                ServerKind::GunicornUvicorn,
                Some(100),
                "100 per worker, then 503",
            ),
            (ServerKind::Uvicorn, Some(100), "100 per worker, then 503"),
            (
                ServerKind::Granian,
                Some(100),
                "100 per worker (granian --backpressure)",
            ),
            (
                ServerKind::GunicornGthread,
                Some(100),
                "100 per worker, then queued in the backlog",
            ),
            (ServerKind::GunicornSync, Some(1), "1 per worker (sync)"),
            (ServerKind::Hypercorn, None, "none (hypercorn has no limit)"),
        ];
        for (server, limit, said) in cases {
            s.server = server;
            let o = derive(&s, 1);
            assert_eq!(
                (o.limit, o.describe(server).as_str()),
                (limit, said),
                "{server:?}"
            );
        }
    }

    #[test]
    fn the_spec_wins_and_zero_means_no_limit() {
        let mut s = spec();
        s.server = ServerKind::Uvicorn;
        s.concurrency.limit = Some(7);
        s.concurrency.backlog = Some(100);
        let o = derive(&s, 2);
        assert_eq!((o.limit, o.backlog), (Some(7), 100));
        s.concurrency.limit = Some(0);
        let o = derive(&s, 2);
        assert_eq!(o.limit, None);
        assert_eq!(o.describe(s.server), "none (spec.concurrency.limit: 0)");
    }

    #[test]
    fn backlogs_stay_within_what_the_kernel_and_granian_take() {
        let mut s = spec();
        s.server = ServerKind::Granian;
        s.concurrency.limit = Some(1);
        assert_eq!(derive(&s, 1).backlog, GRANIAN_MIN_BACKLOG);
        s.concurrency.limit = Some(100_000);
        assert_eq!(derive(&s, 64).backlog, 2048);
    }
}
