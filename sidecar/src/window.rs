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
    /// DNS queries sent (as the app and for the name alone), and how many of them got no
    /// answer in time.
    pub dns_queries: u64,
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
    /// CFS periods of the app container in the window, those its CPU quota throttled,
    /// and the time it spent paused (from the heartbeat's `cpu.stat`; 0 without it).
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_seconds: f64,
}

/// Raw measurements accumulated by the watchers between two evaluations.
#[derive(Debug, Clone, Default)]
pub struct WindowAccumulator {
    /// Stalled seconds the canary saw.
    pub stalled_seconds: f64,
    /// Stalled worker-seconds the heartbeat saw (the same stall may be in both).
    pub heartbeat_stalled_seconds: f64,
    /// How long the stall in progress at the canary's last report had lasted (0: none).
    pub canary_stalled_now_seconds: f64,
    /// The same for the heartbeat's most overdue worker.
    pub heartbeat_stalled_now_seconds: f64,
    pub window_seconds: f64,
    pub dns_lookups: u64,
    pub dns_queries: u64,
    /// Every query sent, as-app and name-alone lookups alike (what timeouts count in).
    pub dns_queries_sent: u64,
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
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_seconds: f64,
}

impl WindowAccumulator {
    /// The window's summary. The stalls that ended count for what they lasted, and a
    /// stall still in progress for what it has lasted so far, so a long stall is reported
    /// while it happens (the whole window once it outlasts it) and short ones for their
    /// real share: counting a window whole because one report caught a short stall in
    /// progress called 30 % "100 %". A stall that spans two windows counts in the second
    /// for its whole length again (capped at the window); the
    /// `…_event_loop_stall_seconds_total` counter in /metrics counts it once.
    pub fn finish(self, threshold_seconds: f64) -> Window {
        let ended = self.stalled_seconds.max(self.heartbeat_stalled_seconds);
        let now = self
            .canary_stalled_now_seconds
            .max(self.heartbeat_stalled_now_seconds);
        let stalled = if now > 0.0 {
            ended + now.max(threshold_seconds)
        } else {
            ended
        };
        let mut lifetimes = self.outbound_lifetimes;
        lifetimes.sort_by(f64::total_cmp);
        Window {
            stalled_seconds: stalled.min(self.window_seconds),
            window_seconds: self.window_seconds,
            dns_queries_per_lookup: (self.dns_lookups > 0)
                .then(|| self.dns_queries as f64 / self.dns_lookups as f64),
            dns_slowest_lookup_seconds: self.dns_slowest_lookup_seconds,
            dns_queries: self.dns_queries_sent,
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
            cpu_periods: self.cpu_periods,
            cpu_throttled_periods: self.cpu_throttled_periods,
            cpu_throttled_seconds: self.cpu_throttled_seconds,
        }
    }
}

/// One measurement from a watcher.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// One probed lookup, once done. `as_app`: resolved as the app does (search list
    /// and all): its queries per lookup and time count; as the name alone, nothing more
    /// than its queries (reported one by one as [`Evidence::DnsQuery`]).
    DnsLookup {
        as_app: bool,
        queries: u64,
        seconds: f64,
    },
    /// One query of a probed lookup, as soon as it is answered or timed out: a window
    /// sees the timeouts of lookups still under way.
    DnsQuery { timed_out: bool },
    /// Canary requests since the last report; `stalled_now_seconds`: how long the probe
    /// outstanding past the stall threshold right now has been waiting (0: none).
    Canary {
        probes: u64,
        failures: u64,
        stalled_seconds: f64,
        stalled_now_seconds: f64,
    },
    /// Heartbeat stalls since the last report; `stalled_now_seconds`: how long the worker
    /// overdue past the stall threshold right now has been silent (0: none).
    Heartbeat {
        stalled_seconds: f64,
        stalled_now_seconds: f64,
    },
    /// The app container's CPU throttling over the last second (from the heartbeat).
    CpuThrottling(crate::heartbeat::Throttling),
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
            Evidence::DnsQuery { timed_out } => {
                self.dns_queries_sent += 1;
                self.dns_timeouts += u64::from(timed_out);
            }
            Evidence::DnsLookup {
                as_app,
                queries,
                seconds,
            } => {
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
                stalled_now_seconds,
            } => {
                self.canary_probes += probes;
                self.canary_failures += failures;
                self.stalled_seconds += stalled_seconds;
                // Only the latest report's: an earlier one's stall has ended since, and
                // is in `stalled_seconds` once it has.
                self.canary_stalled_now_seconds = stalled_now_seconds;
            }
            Evidence::Heartbeat {
                stalled_seconds,
                stalled_now_seconds,
            } => {
                self.heartbeat_stalled_seconds += stalled_seconds;
                self.heartbeat_stalled_now_seconds = stalled_now_seconds;
            }
            Evidence::CpuThrottling(t) => {
                self.cpu_periods += t.periods;
                self.cpu_throttled_periods += t.throttled_periods;
                self.cpu_throttled_seconds += t.throttled_seconds;
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
        let lookup = |as_app, queries, timeouts: u64, seconds| {
            let answered = (0..queries - timeouts).map(|_| Evidence::DnsQuery { timed_out: false });
            let timed_out = (0..timeouts).map(|_| Evidence::DnsQuery { timed_out: true });
            let done = Evidence::DnsLookup {
                as_app,
                queries,
                seconds,
            };
            answered.chain(timed_out).chain([done]).collect::<Vec<_>>()
        };
        for evidence in [
            lookup(true, 8, 0, 0.004),
            lookup(true, 2, 1, 5.0),
            lookup(false, 2, 1, 9.0),
        ]
        .concat()
        {
            w.add(evidence);
        }
        w.window_seconds = 10.0;
        let window = w.finish(1.0);
        assert_eq!(window.dns_queries_per_lookup, Some(5.0));
        assert_eq!(
            window.dns_slowest_lookup_seconds,
            Some(5.0),
            "the FQDN lookup is not the app's"
        );
        assert_eq!(
            (window.dns_timeouts, window.dns_queries),
            (2, 12),
            "every query counts whichever way the name was asked"
        );
    }

    #[test]
    fn timeouts_count_in_the_window_they_happen_in_before_their_lookup_ends() {
        let mut w = WindowAccumulator::default();
        w.add(Evidence::DnsQuery { timed_out: true });
        w.add(Evidence::DnsQuery { timed_out: true });
        w.window_seconds = 10.0;
        let window = w.finish(1.0);
        assert_eq!(
            (
                window.dns_timeouts,
                window.dns_queries,
                window.dns_queries_per_lookup
            ),
            (2, 2, None)
        );
    }

    #[test]
    fn a_stall_in_progress_longer_than_the_window_from_either_source_fills_it() {
        for evidence in [
            Evidence::Canary {
                probes: 1,
                failures: 0,
                stalled_seconds: 0.0,
                stalled_now_seconds: 12.0,
            },
            Evidence::Heartbeat {
                stalled_seconds: 0.0,
                stalled_now_seconds: 12.0,
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

    /// Short stalls, some caught in progress by a report: the window is stalled for the
    /// time measured (3 s of 10), not whole because a report saw one in progress. Before
    /// this, it was called "stalled 100 %" while the real duty was 30 %.
    #[test]
    fn stalls_caught_in_progress_count_for_their_time_not_the_window() {
        let mut w = WindowAccumulator {
            window_seconds: 10.0,
            ..Default::default()
        };
        for second in 0..10 {
            // One 0.3 s stall per second; every third report lands inside one (0.2 s in),
            // but not the last (that one counts for its age: the next test).
            w.add(Evidence::Canary {
                probes: 10,
                failures: 0,
                stalled_seconds: 0.3,
                stalled_now_seconds: if second % 3 == 1 { 0.2 } else { 0.0 },
            });
        }
        let stalled = w.finish(0.1).stalled_seconds;
        assert!((stalled - 3.0).abs() < 1e-9, "{stalled} s stalled of 10 s");
    }

    #[test]
    fn a_stall_in_progress_at_the_end_counts_for_its_age_so_far() {
        let mut w = WindowAccumulator {
            window_seconds: 10.0,
            ..Default::default()
        };
        w.add(Evidence::Canary {
            probes: 5,
            failures: 0,
            stalled_seconds: 1.0,
            stalled_now_seconds: 0.0,
        });
        w.add(Evidence::Heartbeat {
            stalled_seconds: 0.0,
            stalled_now_seconds: 2.5,
        });
        let stalled = w.finish(0.1).stalled_seconds;
        assert!((stalled - 3.5).abs() < 1e-9, "{stalled}");
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
