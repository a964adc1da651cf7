//! The opt-in in-process heartbeat (`sidecar/python/apiworkload_heartbeat.py`): each
//! worker's event loop sends `apiw1 <pid> <seq> <interval_ms>` every interval. A gap
//! longer than the interval is a stall of that worker, measured to a few milliseconds,
//! whichever worker it is (canary connections may all sit on one worker).
//! `apiw1cpu <pid> <nr_periods> <nr_throttled> <throttled_usec>` (once a second) is the
//! app container's own cgroup `cpu.stat`, which only the app's processes can read: how
//! often the CPU quota paused the app (the sidecar's cgroup is another container's).
//! `apiw1 <pid> 0 0` says the loop stopped (the worker exits, or a process ran a loop for
//! a while and no longer does): forgotten at once, not a stall in progress until
//! [`FORGET_AFTER`].

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// One datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub pid: u32,
    pub seq: u64,
    pub interval: Duration,
}

/// `apiw1 <pid> <seq> <interval_ms>`; anything else is ignored.
pub fn parse(datagram: &[u8]) -> Option<Beat> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut fields = text.split_ascii_whitespace();
    if fields.next()? != "apiw1" {
        return None;
    }
    let pid = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let interval_ms: u64 = fields.next()?.parse().ok()?;
    Some(Beat {
        pid,
        seq,
        interval: Duration::from_millis(interval_ms.clamp(1, 10_000)),
    })
}

/// The app container's CFS counters (cumulative, from its cgroup's `cpu.stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStat {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_usec: u64,
}

/// `apiw1cpu <pid> <nr_periods> <nr_throttled> <throttled_usec>`.
pub fn parse_cpu(datagram: &[u8]) -> Option<CpuStat> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut fields = text.split_ascii_whitespace();
    if fields.next()? != "apiw1cpu" {
        return None;
    }
    let _pid: u32 = fields.next()?.parse().ok()?;
    Some(CpuStat {
        periods: fields.next()?.parse().ok()?,
        throttled_periods: fields.next()?.parse().ok()?,
        throttled_usec: fields.next()?.parse().ok()?,
    })
}

/// CPU throttling since the previous [`Heartbeats::take_delta`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_seconds: f64,
}

/// A worker silent this long has exited (or been recycled): forgotten, not a stall.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Worker {
    /// Bounded label: the lowest slot free when the worker first beat, not its PID.
    slot: usize,
    last: Instant,
    interval: Duration,
}

/// A stall one worker's heartbeat revealed.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStall {
    pub slot: usize,
    pub seconds: f64,
}

/// Heartbeats of every worker of the app.
#[derive(Debug, Default)]
pub struct Heartbeats {
    workers: HashMap<u32, Worker>,
    /// Stalls not yet moved into the metrics.
    pub stalls: Vec<WorkerStall>,
    /// Stalled worker-seconds so far.
    pub stalled_seconds: f64,
    pub beats: u64,
    /// Stalled seconds already handed out by [`Heartbeats::take_delta`].
    reported_stalled_seconds: f64,
    /// The latest `cpu.stat` (every worker reads the same cgroup) and the one the last
    /// delta was taken from.
    cpu: Option<CpuStat>,
    cpu_reported: Option<CpuStat>,
}

/// What the heartbeats showed since the previous [`Heartbeats::take_delta`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeartbeatDelta {
    pub stalls: Vec<WorkerStall>,
    /// Stalled worker-seconds added.
    pub stalled_seconds: f64,
    /// Workers beating now.
    pub workers: usize,
    /// How late the most overdue worker is now.
    pub overdue: Option<Duration>,
    /// CPU throttling of the app's container, when the heartbeat reports it.
    pub throttling: Option<Throttling>,
}

impl Heartbeats {
    /// Folds in one beat; a gap over the interval by more than `threshold` is a stall.
    pub fn on_beat(&mut self, beat: Beat, now: Instant, threshold: Duration) {
        if beat.seq == 0 {
            self.workers.remove(&beat.pid);
            return;
        }
        self.beats += 1;
        if let Some(w) = self.workers.get_mut(&beat.pid) {
            let late = now
                .saturating_duration_since(w.last)
                .saturating_sub(w.interval);
            if late > threshold && late < FORGET_AFTER {
                self.stalled_seconds += late.as_secs_f64();
                self.stalls.push(WorkerStall {
                    slot: w.slot,
                    seconds: late.as_secs_f64(),
                });
            }
            w.last = now;
            w.interval = beat.interval;
            return;
        }
        let slot = (0..)
            .find(|s| self.workers.values().all(|w| w.slot != *s))
            .unwrap_or(0);
        self.workers.insert(
            beat.pid,
            Worker {
                slot,
                last: now,
                interval: beat.interval,
            },
        );
    }

    /// Folds in a `cpu.stat` reading (the latest counts: readings of one cgroup by
    /// several workers only grow).
    pub fn on_cpu(&mut self, stat: CpuStat) {
        if self.cpu.is_none_or(|c| stat.periods >= c.periods) {
            self.cpu = Some(stat);
        }
    }

    /// How late the most overdue worker is: a stall in progress when over the threshold.
    /// Forgets workers silent for [`FORGET_AFTER`].
    pub fn overdue(&mut self, now: Instant) -> Option<Duration> {
        self.workers
            .retain(|_, w| now.saturating_duration_since(w.last) < FORGET_AFTER);
        self.workers
            .values()
            .map(|w| {
                now.saturating_duration_since(w.last)
                    .saturating_sub(w.interval)
            })
            .max()
    }

    /// Everything new since the last call (and forgets workers silent for
    /// [`FORGET_AFTER`]).
    pub fn take_delta(&mut self, now: Instant) -> HeartbeatDelta {
        let overdue = self.overdue(now);
        let added = (self.stalled_seconds - self.reported_stalled_seconds).max(0.0);
        self.reported_stalled_seconds = self.stalled_seconds;
        let throttling = match (self.cpu, self.cpu_reported) {
            (Some(now), Some(before)) if now.periods >= before.periods => Some(Throttling {
                periods: now.periods - before.periods,
                throttled_periods: now
                    .throttled_periods
                    .saturating_sub(before.throttled_periods),
                throttled_seconds: now.throttled_usec.saturating_sub(before.throttled_usec) as f64
                    / 1e6,
            }),
            _ => None,
        };
        self.cpu_reported = self.cpu;
        HeartbeatDelta {
            stalls: std::mem::take(&mut self.stalls),
            stalled_seconds: added,
            workers: self.workers(),
            overdue,
            throttling,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    fn beat(pid: u32, seq: u64) -> Beat {
        Beat {
            pid,
            seq,
            interval: Duration::from_millis(50),
        }
    }

    #[test]
    fn parses_only_our_datagrams() {
        assert_eq!(parse(b"apiw1 4242 7 50"), Some(beat(4242, 7)));
        assert_eq!(parse(b"apiw2 4242 7 50"), None);
        assert_eq!(parse(b"apiw1 x 7 50"), None);
        assert_eq!(parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_gap_is_a_stall_of_that_worker_only() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = Heartbeats::default();
        h.on_beat(beat(2, 1), at(10), T);
        h.on_beat(beat(2, 2), at(60), T);
        // Worker 1 beats every 50 ms throughout; worker 2 is frozen for 1 s, so its next
        // beat comes 1.05 s after the last.
        for (seq, ms) in (0..=700).step_by(50).enumerate() {
            h.on_beat(beat(1, seq as u64), at(ms), T);
        }
        assert_eq!(h.overdue(at(700)), Some(Duration::from_millis(590)));
        h.on_beat(beat(2, 3), at(1110), T);
        for (seq, ms) in (750..=1120).step_by(50).enumerate() {
            h.on_beat(beat(1, 20 + seq as u64), at(ms), T);
        }
        assert_eq!(h.stalls.len(), 1, "{:?}", h.stalls);
        assert_eq!(h.stalls[0].slot, 0, "worker 2 beat first: slot 0");
        assert!((h.stalls[0].seconds - 1.0).abs() < 1e-9);
        assert_eq!(h.workers(), 2);
        let delta = h.take_delta(at(1120));
        assert_eq!((delta.stalls.len(), delta.workers), (1, 2));
        assert!((delta.stalled_seconds - 1.0).abs() < 1e-9);
        let again = h.take_delta(at(1120));
        assert_eq!(
            (again.stalls.len(), again.stalled_seconds),
            (0, 0.0),
            "each stall is handed out once"
        );
    }

    #[test]
    fn silent_workers_are_forgotten_and_slots_reused() {
        let t0 = Instant::now();
        let mut h = Heartbeats::default();
        h.on_beat(beat(1, 1), t0, T);
        h.on_beat(beat(2, 1), t0, T);
        h.overdue(t0 + FORGET_AFTER);
        assert_eq!(h.workers(), 0);
        h.on_beat(beat(3, 1), t0 + FORGET_AFTER, T);
        assert!(h.stalls.is_empty(), "an exited worker is not a stall");
        assert_eq!(h.workers.get(&3).map(|w| w.slot), Some(0));
    }

    #[test]
    fn a_stopped_loop_says_so_and_is_no_stall() {
        let t0 = Instant::now();
        let mut h = Heartbeats::default();
        h.on_beat(beat(1, 1), t0, T);
        let bye = parse(b"apiw1 1 0 0").unwrap();
        h.on_beat(bye, t0 + T, T);
        assert_eq!(h.workers(), 0);
        assert_eq!(h.overdue(t0 + 10 * T), None, "not overdue: gone");
    }

    #[test]
    fn cpu_stat_readings_become_throttling_deltas() {
        let mut h = Heartbeats::default();
        let stat = |periods, throttled, usec| {
            parse_cpu(format!("apiw1cpu 7 {periods} {throttled} {usec}").as_bytes()).unwrap()
        };
        assert_eq!(parse_cpu(b"apiw1 7 1 50"), None);
        h.on_cpu(stat(100, 10, 50_000));
        assert_eq!(
            h.take_delta(Instant::now()).throttling,
            None,
            "a first reading is a base"
        );
        h.on_cpu(stat(110, 19, 770_000));
        h.on_cpu(stat(109, 18, 700_000)); // another worker's slightly older reading
        let t = h.take_delta(Instant::now()).throttling.unwrap();
        assert_eq!((t.periods, t.throttled_periods), (10, 9));
        assert!((t.throttled_seconds - 0.72).abs() < 1e-9);
    }
}
