//! One evaluation window: the typed evidence each watcher sends, folded into a
//! [`WindowAccumulator`] until the evaluator takes it and turns it into a [`Window`].
//!
//! Watchers only ever send [`Evidence`]; what a piece of evidence means for the window
//! (a timeout counts for both lookup modes, the ndots ratio only as the app resolves)
//! is decided here, in one pure function.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What one window measured (the evidence behind the verdicts, in /report).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Seconds of the window the event loop was stalled.
    pub stalled_seconds: f64,
    pub window_seconds: f64,
    /// As-app DNS queries per lookup (None without DNS probes).
    pub dns_queries_per_lookup: Option<f64>,
    /// Slowest as-app lookup in the window.
    pub dns_slowest_lookup_seconds: Option<f64>,
    pub dns_timeouts: u64,
    /// Outbound connections opened in the window.
    pub outbound_opened: u64,
    /// Median lifetime of outbound connections that ended in the window.
    pub outbound_median_lifetime_seconds: Option<f64>,
    /// Inbound connections the server closed after they sat open (keep-alive closes).
    pub inbound_idle_closes: u64,
    /// Longest accept queue of the app's listening socket seen in the window.
    pub accept_queue_max: u32,
    /// Most CLOSE_WAIT sockets of the app seen at once in the window.
    pub close_wait_max: u32,
    /// Canary requests sent in the window, and how many got no answer (refused, reset,
    /// timed out).
    pub canary_probes: u64,
    pub canary_failures: u64,
    /// Socket-table samples in the window, and those that found no readable source.
    pub socket_samples: u64,
    pub socket_sample_failures: u64,
}

/// Raw measurements accumulated by the watchers between two evaluations.
#[derive(Debug, Clone, Default)]
pub struct WindowAccumulator {
    /// Stalled seconds the canary saw.
    pub stalled_seconds: f64,
    /// Stalled worker-seconds the heartbeat saw (the same stall may be in both).
    pub heartbeat_stalled_seconds: f64,
    /// A canary probe was outstanding past the threshold at some point in the window.
    pub stalled_in_progress: bool,
    pub window_seconds: f64,
    pub dns_lookups: u64,
    pub dns_queries: u64,
    pub dns_slowest_lookup_seconds: Option<f64>,
    pub dns_timeouts: u64,
    pub outbound_opened: u64,
    pub outbound_lifetimes: Vec<f64>,
    pub inbound_idle_closes: u64,
    pub accept_queue_max: u32,
    pub close_wait_max: u32,
    pub canary_probes: u64,
    pub canary_failures: u64,
    pub socket_samples: u64,
    pub socket_sample_failures: u64,
}

impl WindowAccumulator {
    /// The window's summary. A stall in progress counts as stalled for the whole window
    /// (at least the threshold), so a long stall is reported while it happens.
    pub fn finish(self, threshold_seconds: f64) -> Window {
        let mut stalled = self.stalled_seconds.max(self.heartbeat_stalled_seconds);
        if self.stalled_in_progress {
            stalled = stalled.max(self.window_seconds.max(threshold_seconds));
        }
        let mut lifetimes = self.outbound_lifetimes;
        lifetimes.sort_by(f64::total_cmp);
        Window {
            stalled_seconds: stalled.min(self.window_seconds),
            window_seconds: self.window_seconds,
            dns_queries_per_lookup: (self.dns_lookups > 0)
                .then(|| self.dns_queries as f64 / self.dns_lookups as f64),
            dns_slowest_lookup_seconds: self.dns_slowest_lookup_seconds,
            dns_timeouts: self.dns_timeouts,
            outbound_opened: self.outbound_opened,
            outbound_median_lifetime_seconds: lifetimes.get(lifetimes.len() / 2).copied(),
            inbound_idle_closes: self.inbound_idle_closes,
            accept_queue_max: self.accept_queue_max,
            close_wait_max: self.close_wait_max,
            canary_probes: self.canary_probes,
            canary_failures: self.canary_failures,
            socket_samples: self.socket_samples,
            socket_sample_failures: self.socket_sample_failures,
        }
    }
}

/// One measurement from a watcher.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// One probed lookup. `as_app`: resolved as the app does (search list and all);
    /// otherwise as the name alone, which only contributes its timeouts.
    DnsLookup {
        as_app: bool,
        queries: u64,
        timeouts: u64,
        seconds: f64,
    },
    /// Canary requests since the last report; `stall_in_progress`: a probe is outstanding
    /// past the stall threshold right now.
    Canary {
        probes: u64,
        failures: u64,
        stalled_seconds: f64,
        stall_in_progress: bool,
    },
    /// Heartbeat stalls since the last report; `stall_in_progress`: a worker is overdue
    /// past the stall threshold right now.
    Heartbeat {
        stalled_seconds: f64,
        stall_in_progress: bool,
    },
    /// One sample of the pod's socket table.
    Sockets(SocketEvidence),
    /// A sample found no readable socket table.
    SocketSampleFailed,
}

/// What one socket-table sample showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocketEvidence {
    pub outbound_opened: u64,
    /// Lifetimes (seconds) of outbound connections that ended since the last sample.
    pub outbound_lifetimes: Vec<f64>,
    pub inbound_idle_closes: u64,
    pub accept_queue: u32,
    pub close_wait: u32,
}

impl WindowAccumulator {
    /// Folds one piece of evidence into the window.
    pub fn add(&mut self, evidence: Evidence) {
        match evidence {
            Evidence::DnsLookup {
                as_app,
                queries,
                timeouts,
                seconds,
            } => {
                self.dns_timeouts += timeouts;
                if as_app {
                    self.dns_lookups += 1;
                    self.dns_queries += queries;
                    self.dns_slowest_lookup_seconds =
                        Some(self.dns_slowest_lookup_seconds.unwrap_or(0.0).max(seconds));
                }
            }
            Evidence::Canary {
                probes,
                failures,
                stalled_seconds,
                stall_in_progress,
            } => {
                self.canary_probes += probes;
                self.canary_failures += failures;
                self.stalled_seconds += stalled_seconds;
                // A stall still in progress counts toward this window as it happens.
                self.stalled_in_progress |= stall_in_progress;
            }
            Evidence::Heartbeat {
                stalled_seconds,
                stall_in_progress,
            } => {
                self.heartbeat_stalled_seconds += stalled_seconds;
                self.stalled_in_progress |= stall_in_progress;
            }
            Evidence::Sockets(s) => {
                self.socket_samples += 1;
                self.outbound_opened += s.outbound_opened;
                self.outbound_lifetimes.extend(s.outbound_lifetimes);
                self.inbound_idle_closes += s.inbound_idle_closes;
                self.accept_queue_max = self.accept_queue_max.max(s.accept_queue);
                self.close_wait_max = self.close_wait_max.max(s.close_wait);
            }
            Evidence::SocketSampleFailed => self.socket_sample_failures += 1,
        }
    }
}

/// Where watchers send evidence; the evaluator takes the window from it.
#[derive(Debug, Clone, Default)]
pub struct EvidenceSink(Arc<Mutex<WindowAccumulator>>);

impl EvidenceSink {
    pub fn send(&self, evidence: Evidence) {
        if let Ok(mut window) = self.0.lock() {
            window.add(evidence);
        }
    }

    /// The evidence since the last call; the next window starts empty.
    pub fn take(&self) -> WindowAccumulator {
        self.0
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_ratio_counts_only_lookups_made_as_the_app_makes_them() {
        let mut w = WindowAccumulator::default();
        let lookup = |as_app, queries, timeouts, seconds| Evidence::DnsLookup {
            as_app,
            queries,
            timeouts,
            seconds,
        };
        w.add(lookup(true, 8, 0, 0.004));
        w.add(lookup(true, 2, 1, 5.0));
        w.add(lookup(false, 2, 1, 9.0));
        w.window_seconds = 10.0;
        let window = w.finish(1.0);
        assert_eq!(window.dns_queries_per_lookup, Some(5.0));
        assert_eq!(
            window.dns_slowest_lookup_seconds,
            Some(5.0),
            "the FQDN lookup is not the app's"
        );
        assert_eq!(
            window.dns_timeouts, 2,
            "a timeout counts whichever way the name was asked"
        );
    }

    #[test]
    fn a_stall_in_progress_from_either_source_fills_the_window() {
        for evidence in [
            Evidence::Canary {
                probes: 1,
                failures: 0,
                stalled_seconds: 0.0,
                stall_in_progress: true,
            },
            Evidence::Heartbeat {
                stalled_seconds: 0.0,
                stall_in_progress: true,
            },
        ] {
            let mut w = WindowAccumulator {
                window_seconds: 10.0,
                ..Default::default()
            };
            w.add(evidence.clone());
            assert_eq!(w.finish(1.0).stalled_seconds, 10.0, "{evidence:?}");
        }
    }

    #[test]
    fn socket_samples_keep_maxima_and_sums() {
        let sink = EvidenceSink::default();
        for (queue, lifetimes) in [(3, vec![1.0]), (1, vec![2.0, 3.0])] {
            sink.send(Evidence::Sockets(SocketEvidence {
                outbound_opened: 2,
                outbound_lifetimes: lifetimes,
                accept_queue: queue,
                ..Default::default()
            }));
        }
        sink.send(Evidence::SocketSampleFailed);
        let mut taken = sink.take();
        taken.window_seconds = 10.0;
        let window = taken.finish(1.0);
        assert_eq!(window.socket_samples, 2);
        assert_eq!(window.socket_sample_failures, 1);
        assert_eq!(window.outbound_opened, 4);
        assert_eq!(window.accept_queue_max, 3);
        assert_eq!(window.outbound_median_lifetime_seconds, Some(2.0));
        assert_eq!(
            sink.take().socket_samples,
            0,
            "the next window starts empty"
        );
    }
}
