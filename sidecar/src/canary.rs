//! Canary requests that reveal a frozen event loop.
//!
//! Each canary holds one persistent keep-alive connection to the app and sends the cheap
//! probe path every `period`. A persistent connection stays with the worker that accepted
//! it (gunicorn workers share one accept queue, so fresh connections land on idle
//! workers and miss a stalled one). A probe slower than `threshold` is a stall: the loop
//! could not answer a trivial request. One more canary probes on a fresh connection
//! each second: it waits in the accept queue when every worker is busy.
//!
//! Duration: the stall began after the previous probe on that connection completed and
//! no later than this probe was sent, so it lasted between `latency` and
//! `latency + gap`; the estimate is the midpoint (error ≤ gap / 2 ≈ period / 2).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

/// The canaries connect to the app from this loopback address (every 127/8 address is
/// the pod's own), so the socket watcher can leave their connections out in every state.
/// By UID it cannot: the server side of a connection belongs to the app, and after the
/// close the kernel shows it under UID 0. Counted as the app's, the fresh-connection
/// canary, closed by the server after it waited out a stall, read as a keep-alive close
/// (`KeepAliveChurn` advising a longer keep-alive for a blocked loop).
pub const SOURCE_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 93);

/// A connection to the app from [`SOURCE_ADDRESS`] (an IPv6 app address: from any).
async fn connect(app: SocketAddr) -> std::io::Result<TcpStream> {
    if !app.is_ipv4() {
        return TcpStream::connect(app).await;
    }
    let socket = TcpSocket::new_v4()?;
    socket.bind((SOURCE_ADDRESS, 0).into())?;
    socket.connect(app).await
}

/// Canary settings.
#[derive(Debug, Clone)]
pub struct CanaryConfig {
    pub app: SocketAddr,
    pub path: String,
    /// Persistent connections (at least one per worker).
    pub connections: usize,
    pub period: Duration,
    pub threshold: Duration,
    /// A probe unanswered this long is abandoned and its connection replaced.
    pub give_up: Duration,
}

/// One detected stall.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    pub connection: usize,
    /// Estimated duration of the stall.
    pub seconds: f64,
    /// Latency of the probe that saw it (a lower bound).
    pub probe_seconds: f64,
}

/// What the canaries observed so far.
#[derive(Debug, Default)]
pub struct Observations {
    pub probes: u64,
    pub failures: u64,
    /// Probes on a persistent slot that had to open a new connection (keep-alive closed
    /// by the server); the fresh-connection slot is not counted.
    pub reconnects: u64,
    pub stalls: Vec<Stall>,
    /// Per connection: when its outstanding probe was sent.
    pub inflight_since: Vec<Option<Instant>>,
    /// Latency of completed probes not yet moved into the metrics, in seconds (bounded
    /// to the last 4096).
    pub latencies: Vec<f64>,
    /// Time during which some worker was stalled (overlaps counted once).
    pub stalled_seconds_union: f64,
    /// End of the latest stall recorded, for the union.
    covered_until: Option<Instant>,
    /// Totals already handed out by [`Observations::take_delta`].
    reported: Reported,
}

#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    probes: u64,
    failures: u64,
    stalled_seconds: f64,
}

/// What the canaries saw since the previous [`Observations::take_delta`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryDelta {
    pub probes: u64,
    pub failures: u64,
    /// Stalled time added (overlapping stalls counted once).
    pub stalled_seconds: f64,
    pub stalls: Vec<Stall>,
    /// Latencies (seconds) of the probes completed.
    pub latencies: Vec<f64>,
    /// Age of the oldest unanswered probe now.
    pub oldest_inflight: Option<Duration>,
}

impl Observations {
    /// Age of the oldest unanswered probe: a stall in progress when above the threshold.
    pub fn oldest_inflight(&self) -> Option<Duration> {
        self.inflight_since
            .iter()
            .flatten()
            .map(|t| t.elapsed())
            .max()
    }

    /// Everything new since the last call; the stalls and latencies handed out are
    /// dropped here, which keeps memory bounded.
    pub fn take_delta(&mut self) -> CanaryDelta {
        let before = std::mem::replace(
            &mut self.reported,
            Reported {
                probes: self.probes,
                failures: self.failures,
                stalled_seconds: self.stalled_seconds_union,
            },
        );
        CanaryDelta {
            probes: self.probes.saturating_sub(before.probes),
            failures: self.failures.saturating_sub(before.failures),
            stalled_seconds: (self.stalled_seconds_union - before.stalled_seconds).max(0.0),
            stalls: std::mem::take(&mut self.stalls),
            latencies: std::mem::take(&mut self.latencies),
            oldest_inflight: self.oldest_inflight(),
        }
    }

    /// Total stalled time detected.
    pub fn stalled_seconds(&self) -> f64 {
        self.stalls.iter().map(|s| s.seconds).sum()
    }

    /// Records a stall that ended at `end`. Several connections on one frozen worker see
    /// the same stall: one overlapping a stall already recorded only extends it (the
    /// stalled time counts once, and it is not a second stall).
    pub fn record_stall(&mut self, connection: usize, seconds: f64, probe: f64, end: Instant) {
        let start = end
            .checked_sub(Duration::from_secs_f64(seconds))
            .unwrap_or(end);
        match self.covered_until {
            Some(covered) if start < covered => {
                self.stalled_seconds_union += end.saturating_duration_since(covered).as_secs_f64();
                if let Some(last) = self.stalls.last_mut() {
                    last.seconds += end.saturating_duration_since(covered).as_secs_f64();
                }
            }
            _ => {
                self.stalled_seconds_union += seconds;
                self.stalls.push(Stall {
                    connection,
                    seconds,
                    probe_seconds: probe,
                });
            }
        }
        self.covered_until = Some(self.covered_until.map_or(end, |c| c.max(end)));
    }
}

/// Reads one HTTP/1.1 response; returns whether the server keeps the connection open.
async fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<bool> {
    let mut line = String::new();
    let mut content_length = 0usize;
    let mut keep_alive = true;
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if first {
            first = false;
            if !line.starts_with("HTTP/1.") {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            continue;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("connection:") && lower.contains("close") {
            keep_alive = false;
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body).await?;
    Ok(keep_alive)
}

async fn probe(
    conn: &mut Option<BufReader<TcpStream>>,
    cfg: &CanaryConfig,
    close: bool,
) -> std::io::Result<()> {
    let reader = match conn {
        Some(r) => r,
        None => conn.insert(BufReader::new(connect(cfg.app).await?)),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: apiworkload-canary\r\n{}\r\n",
        cfg.path,
        if close { "Connection: close\r\n" } else { "" }
    );
    reader.get_mut().write_all(request.as_bytes()).await?;
    let keep_alive = read_response(reader).await?;
    if close {
        // Let the server close first (it does after `Connection: close`): the TIME_WAIT
        // stays on its side, and no closed connection of ours looks like the app's.
        let mut rest = [0u8; 64];
        while reader.read(&mut rest).await? > 0 {}
    }
    if !keep_alive || close {
        *conn = None;
    }
    Ok(())
}

async fn run_one(index: usize, cfg: CanaryConfig, obs: Arc<Mutex<Observations>>) {
    // The slot after the persistent ones probes on a fresh connection each time, at a
    // quarter of the rate: it waits in the accept queue when every worker is busy.
    let fresh_only = index == cfg.connections.max(1);
    // Staggered: connections are opened one at a time (each accepted by whichever worker
    // is idle, rather than a batch by the first one awake) and probes interleave, so a
    // worker holding several connections is probed more often.
    tokio::time::sleep(cfg.period * index as u32 / cfg.connections.max(1) as u32).await;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut last_done: Option<Instant> = None;
    let mut ticker = tokio::time::interval(if fresh_only {
        cfg.period * 4
    } else {
        cfg.period
    });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let fresh = conn.is_none();
        let sent = Instant::now();
        if let Ok(mut o) = obs.lock() {
            o.inflight_since[index] = Some(sent);
        }
        let outcome = tokio::time::timeout(cfg.give_up, probe(&mut conn, &cfg, fresh_only)).await;
        let done = Instant::now();
        let latency = done - sent;
        let Ok(mut o) = obs.lock() else { return };
        o.inflight_since[index] = None;
        o.probes += 1;
        if fresh && !fresh_only {
            o.reconnects += 1;
        }
        match outcome {
            Ok(Ok(())) => {
                if o.latencies.len() >= 4096 {
                    o.latencies.remove(0);
                }
                o.latencies.push(latency.as_secs_f64());
                if latency > cfg.threshold {
                    // A fresh connection's handshake also waited on the frozen loop.
                    let gap = last_done
                        .map(|l| sent.saturating_duration_since(l))
                        .unwrap_or_default();
                    let seconds = latency.as_secs_f64() + gap.as_secs_f64() / 2.0;
                    o.record_stall(index, seconds, latency.as_secs_f64(), done);
                }
                last_done = Some(done);
            }
            _ => {
                o.failures += 1;
                conn = None;
                last_done = None;
            }
        }
    }
}

/// Starts the canaries; their observations accumulate in the returned handle.
pub fn start(cfg: CanaryConfig) -> Arc<Mutex<Observations>> {
    // The persistent connections, then one fresh-connection slot.
    let slots = cfg.connections.max(1) + 1;
    let obs = Arc::new(Mutex::new(Observations {
        inflight_since: vec![None; slots],
        ..Default::default()
    }));
    for i in 0..slots {
        tokio::spawn(run_one(i, cfg.clone(), obs.clone()));
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frozen_worker_seen_by_two_connections_is_one_stall() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut o = Observations::default();
        // Both connections of the worker frozen from 1.0 s to 2.0 s; their probes were
        // sent 125 ms apart and answered together.
        o.record_stall(0, 1.0, 0.9, at(2.0));
        o.record_stall(1, 0.9, 0.8, at(2.01));
        assert_eq!(o.stalls.len(), 1);
        assert!((o.stalled_seconds_union - 1.01).abs() < 1e-9);
        // A later, separate stall is a second one.
        o.record_stall(0, 0.5, 0.4, at(5.0));
        assert_eq!(o.stalls.len(), 2);
        assert!((o.stalled_seconds_union - 1.51).abs() < 1e-9);
    }
}
