//! How exactly the sidecar measures what it reports, against injected truth (release
//! build, real uvicorn and dnsmasq, all in a private network namespace when run as root,
//! so no other process's connections enter the counts):
//!
//! 1. event-loop stalls of 50 ms – 2 s (the app's `/block` freezes its loop with
//!    `time.sleep`): detection rate and duration error, by the canary and by the
//!    per-worker heartbeat, at a 25 ms stall threshold;
//! 2. DNS delays of 0 – 500 ms (a relay that holds each query before passing it to
//!    dnsmasq): mean measured lookup time minus the injected delay;
//! 3. connection counts: N unpooled outbound calls made by the app (1 – 1,000); the
//!    sidecar's opened and closed-by-the-app counters must move by exactly N, every run;
//!    and a known mix of inbound closes (by the client, by the server after its response,
//!    by its keep-alive, and by its keep-alive raced by the client's next request) must be
//!    attributed exactly, every run;
//! 4. requests in flight: N clients (1, 5, 20, 50) calling `/sleep` for 5–200 ms, on
//!    keep-alive connections with 0–20 ms between requests (a balancer's pool), back
//!    to back, or on a new connection each; the sidecar's average over 15 s
//!    (`rate(inflight_request_seconds_total)`) against the app's own exact count (an
//!    ASGI middleware's time integral). Target: within 10 %;
//! 5. CPU throttling: a second app (with the loop heartbeat, its own sidecar) in a cgroup
//!    with a CFS quota (none, 1500m, 500m, 200m; one uvicorn process uses at most a core)
//!    under CPU-bound requests: the CFS periods and throttled periods the sidecar exports
//!    against the kernel's own `cpu.stat` over the same load, `repeats` runs each.
//!
//!     tests/bench/run sidecar-accuracy [--repeats 5] [--sections stalls,dns,connections,inflight,throttling]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use apiworkload_bench::{
    arg,
    cpu_quota::{CfsCounters, CpuQuota},
    quantile, target_dir,
};
use apiworkload_e2e::{PythonServer, dnsmasq_command, free_port, free_udp_addr, http_get};

/// Moves this process (before any thread exists) into a new network namespace with
/// loopback up. Returns false when not permitted (not root): the figures then share the
/// host's socket table.
#[allow(unsafe_code)] // unshare and the SIOCSIFFLAGS ioctl
fn private_network() -> bool {
    // SAFETY: unshare with a valid flag; the ioctl gets a zeroed ifreq naming "lo".
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return false;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
        };
        libc::close(fd);
        ok
    }
}

/// Sum of every sample of `name` whose labels contain `with` (all when empty).
fn metric(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A UDP relay in front of dnsmasq that holds every query for the current delay.
fn start_delaying_relay(upstream: SocketAddr, delay_ms: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
    let port = socket.local_addr()?.port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, client)) = socket.recv_from(&mut buf) {
            let (query, socket, delay) = (buf[..n].to_vec(), socket.clone(), delay_ms.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay.load(Ordering::Relaxed)));
                let Ok(out) = UdpSocket::bind("127.0.0.1:0") else {
                    return;
                };
                let _ = out.set_read_timeout(Some(Duration::from_secs(2)));
                let mut answer = [0u8; 1500];
                if out.send_to(&query, upstream).is_ok()
                    && let Ok(m) = out.recv(&mut answer)
                {
                    let _ = socket.send_to(&answer[..m], client);
                }
            });
        }
    });
    Ok(port)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq() -> anyhow::Result<(Killed, SocketAddr)> {
    let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = dnsmasq_command(port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("dnsmasq (tests/run installs dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((Killed(child), ([127, 0, 0, 1], port).into()))
}

/// How the in-flight clients use their connections.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Clients {
    /// Keep-alive, 0–20 ms between requests (a balancer's pool).
    Pooled,
    /// Keep-alive, the next request as soon as the response is in.
    BackToBack,
    /// A new connection per request.
    NewConnection,
}

/// One response (Content-Length framed); false when the connection ended.
fn read_response(reader: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).is_ok()
}

/// A client calling `/sleep` with mixed durations until `stop`.
fn sleep_client(addr: SocketAddr, kind: Clients, seed: u64, stop: Arc<AtomicBool>) {
    const MILLIS: [u64; 5] = [5, 20, 50, 100, 200];
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let ms = MILLIS[(next() % 5) as usize];
        if conn.is_none() {
            let Ok(s) = TcpStream::connect(addr) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            conn = Some(BufReader::new(s));
        }
        let Some(reader) = conn.as_mut() else {
            continue;
        };
        let close = if kind == Clients::NewConnection {
            "Connection: close\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /sleep?seconds={} HTTP/1.1\r\nHost: app\r\n{close}\r\n",
            ms as f64 / 1000.0
        );
        let ok = reader.get_mut().write_all(request.as_bytes()).is_ok() && read_response(reader);
        if !ok || kind == Clients::NewConnection {
            conn = None;
        }
        if kind == Clients::Pooled {
            std::thread::sleep(Duration::from_millis(next() % 21));
        }
    }
}

/// The app's own time integral of requests in flight (tests/apps/app.py `/inflight`).
fn app_inflight_integral(addr: SocketAddr) -> anyhow::Result<f64> {
    let body = http_get(addr, "/inflight").context("/inflight")?.body;
    let stats: serde_json::Value = serde_json::from_str(&body)?;
    stats["integral_seconds"]
        .as_f64()
        .context("integral_seconds")
}

/// The release sidecar beside `app` (its port, user and heartbeat address) with `extra`
/// flags, on a free loopback port: the process (killed on drop) and its address.
fn start_sidecar(
    app: &PythonServer,
    uid: &str,
    heartbeat: &str,
    extra: &[String],
) -> anyhow::Result<(Killed, SocketAddr)> {
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(target_dir().join("release/apiworkload-sidecar"))
        .args([
            format!("--app-port={}", app.addr.port()),
            format!("--app-uid={uid}"),
            format!("--listen={listen}"),
            format!("--heartbeat-listen={heartbeat}"),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start the sidecar")?;
    Ok((Killed(child), listen))
}

/// Whether `--sections` (comma-separated: stalls, dns, connections, inflight, throttling; all when
/// absent) includes `name`.
fn section(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--sections") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|list| list.split(',').any(|s| s == name)),
        None => true,
    }
}

/// A counter's value in one scrape (0 when absent).
fn counter(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, name, labels)
}

/// Outbound: N unpooled calls by the app (1 – 1,000), `repeats` runs each: the sidecar's
/// opened and closed-by-the-app counters must move by exactly N every run. Inbound: a
/// known mix of closes on the app's port, `repeats` runs: by the client, by the server
/// right after its response (`Connection: close`), by the server's keep-alive on an idle
/// connection (the client then closes), and by the keep-alive on a connection the client
/// then writes on (the balancer's race: a reset, no TIME_WAIT).
fn connection_counts(
    app: &PythonServer,
    upstream: &PythonServer,
    scrape: &dyn Fn() -> String,
    repeats: usize,
) -> anyhow::Result<()> {
    let accounting = scrape();
    let method = if metric(
        &accounting,
        "apiworkload_sidecar_connection_accounting",
        "method=\"exact\"",
    ) == 1.0
    {
        "exact"
    } else {
        "sampled"
    };
    println!(
        "  unpooled outbound calls by the app ({method} accounting; {repeats} runs)   opened / closed by the app, each run"
    );
    let opened = "apiworkload_sidecar_tcp_outbound_connections_opened_total";
    let closed = "apiworkload_sidecar_tcp_outbound_connections_closed_locally_total";
    let mut exact = true;
    for calls in [1usize, 10, 50, 200, 1000] {
        let mut runs = Vec::new();
        for _ in 0..repeats {
            let before = scrape();
            // At most 200 per request: an httpx client per call takes tens of ms, and a
            // request of 1,000 would outlive the test client's 30 s timeout.
            for chunk in (0..calls).collect::<Vec<_>>().chunks(200) {
                let path = format!(
                    "/outbound?url=http://127.0.0.1:{}/healthz&n={}&pooled=false",
                    upstream.addr.port(),
                    chunk.len()
                );
                if !http_get(app.addr, &path).is_some_and(|r| r.ok()) {
                    bail!("/outbound did not answer");
                }
            }
            std::thread::sleep(Duration::from_millis(2500)); // two socket samples
            let after = scrape();
            let counted = (
                counter(&after, opened, "") - counter(&before, opened, ""),
                counter(&after, closed, "") - counter(&before, closed, ""),
            );
            exact &= counted == (calls as f64, calls as f64);
            let lost = "apiworkload_sidecar_connection_end_notifications_lost_total";
            let lost = counter(&after, lost, "") - counter(&before, lost, "");
            runs.push(format!(
                "{:.0}/{:.0}{}",
                counted.0,
                counted.1,
                if lost > 0.0 {
                    format!(" (lost {lost:.0}×)")
                } else {
                    String::new()
                }
            ));
        }
        println!("    {calls:5}      {}", runs.join("  "));
    }
    println!(
        "  outbound counts exact every run: {}",
        if exact { "yes" } else { "NO" }
    );

    const EACH: usize = 10;
    let keep_alive = Duration::from_secs(5); // uvicorn's default
    println!(
        "  inbound closes, {EACH} of each kind per run    counted: client / server / server_idle (truth {EACH} / {EACH} / {})",
        2 * EACH
    );
    let closes = "apiworkload_sidecar_tcp_inbound_connections_closed_total";
    let mut all_exact = true;
    for _ in 0..repeats {
        let before = scrape();
        let addr = app.addr;
        let request = move |close: bool| {
            let s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            let mut reader = BufReader::new(s);
            let header = if close { "Connection: close\r\n" } else { "" };
            write!(
                reader.get_mut(),
                "GET /healthz HTTP/1.1\r\nHost: app\r\n{header}\r\n"
            )?;
            if !read_response(&mut reader) {
                bail!("no response");
            }
            Ok(reader)
        };
        let mut kinds: Vec<std::thread::JoinHandle<anyhow::Result<()>>> = Vec::new();
        for i in 0..4 * EACH {
            kinds.push(std::thread::spawn(move || {
                match i % 4 {
                    // The client closes right after its response.
                    0 => drop(request(false)?),
                    // The server closes right after its response; the client reads EOF.
                    1 => {
                        let mut reader = request(true)?;
                        let mut rest = Vec::new();
                        reader.read_to_end(&mut rest)?;
                    }
                    // Idle until the server's keep-alive closes it, then closed.
                    2 => {
                        let mut reader = request(false)?;
                        let mut rest = Vec::new();
                        reader.read_to_end(&mut rest)?;
                    }
                    // Idle past the keep-alive, then a request on it: a reset.
                    _ => {
                        let mut reader = request(false)?;
                        std::thread::sleep(keep_alive + Duration::from_secs(2));
                        let _ = write!(
                            reader.get_mut(),
                            "GET /healthz HTTP/1.1\r\nHost: app\r\n\r\n"
                        );
                    }
                }
                Ok(())
            }));
        }
        for kind in kinds {
            kind.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        std::thread::sleep(Duration::from_millis(2500));
        let after = scrape();
        let delta = |closer: &str| {
            let labels = format!("closer=\"{closer}\"");
            counter(&after, closes, &labels) - counter(&before, closes, &labels)
        };
        let counted = (delta("client"), delta("server"), delta("server_idle"));
        let truth = (EACH as f64, EACH as f64, 2.0 * EACH as f64);
        all_exact &= counted == truth;
        let moved = |name: &str| counter(&after, name, "") - counter(&before, name, "");
        println!(
            "    {:.0} / {:.0} / {:.0}   (opened {:.0}; end notifications lost {:.0} times, ends presumed {:.0})",
            counted.0,
            counted.1,
            counted.2,
            moved("apiworkload_sidecar_tcp_inbound_connections_opened_total"),
            moved("apiworkload_sidecar_connection_end_notifications_lost_total"),
            moved("apiworkload_sidecar_connection_ends_presumed_total"),
        );
    }
    println!(
        "  inbound close attribution exact every run: {}",
        if all_exact { "yes" } else { "NO" }
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let isolated = private_network();
    let repeats = arg("--repeats", 5);
    eprintln!("building the sidecar (release)…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "apiworkload-sidecar"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p apiworkload-sidecar failed");
    }
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .context("own uid")?;

    let (_dns, dns_addr) = dnsmasq()?;
    let delay_ms = Arc::new(AtomicU64::new(0));
    let relay = start_delaying_relay(dns_addr, delay_ms.clone())?;
    let resolv = std::env::temp_dir().join(format!("resolv-accuracy-{relay}.conf"));
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions ndots:1 timeout:2 attempts:1\n",
    )?;
    let heartbeat = free_udp_addr();
    let upstream = PythonServer::uvicorn();
    let app = PythonServer::uvicorn_with_heartbeat(&heartbeat);
    let (_sidecar, listen) = start_sidecar(
        &app,
        &uid,
        &heartbeat,
        &[
            "--stall-threshold=25ms".into(),
            "--dns-probe=api.example.test".into(),
            "--dns-interval=1s".into(),
            format!("--dns-port={relay}"),
            format!("--resolv-conf={}", resolv.display()),
        ],
    )?;
    let scrape = || {
        http_get(listen, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&scrape(), "apiworkload_sidecar_heartbeat_workers", "") < 1.0 {
        if Instant::now() > deadline {
            bail!("the sidecar saw no heartbeat within 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));

    println!(
        "sidecar accuracy (release build, uvicorn + heartbeat, dnsmasq; {})",
        if isolated {
            "private network namespace"
        } else {
            "host network namespace: other processes' sockets may enter the counts"
        }
    );

    // 1. Stalls.
    if section("stalls") {
        println!(
            "  stalls (threshold 25 ms, {repeats} each)   detected canary / heartbeat   error canary / heartbeat (median, worst)"
        );
        let stall_count = "apiworkload_sidecar_event_loop_stall_duration_seconds_count";
        let stalled = "apiworkload_sidecar_event_loop_stall_seconds_total";
        for injected_ms in [50u64, 100, 200, 500, 1000, 2000] {
            let injected = injected_ms as f64 / 1000.0;
            let mut detected = [0usize; 2];
            let mut errors: [Vec<f64>; 2] = [vec![], vec![]];
            for _ in 0..repeats {
                let before = scrape();
                let blocked = http_get(app.addr, &format!("/block?seconds={injected}"));
                if !blocked.is_some_and(|r| r.ok()) {
                    bail!("/block did not answer");
                }
                // The canary's next probe and the heartbeat's 1 s accounting.
                std::thread::sleep(Duration::from_millis(1600));
                let after = scrape();
                for (i, source) in ["source=\"canary\"", "source=\"heartbeat\""]
                    .iter()
                    .enumerate()
                {
                    let seen =
                        metric(&after, stall_count, source) - metric(&before, stall_count, source);
                    if seen >= 1.0 {
                        detected[i] += 1;
                        let secs =
                            metric(&after, stalled, source) - metric(&before, stalled, source);
                        errors[i].push(secs - injected);
                    }
                }
            }
            let fmt = |e: &[f64]| {
                if e.is_empty() {
                    "        –        ".to_string()
                } else {
                    let worst = e
                        .iter()
                        .copied()
                        .fold(0.0f64, |w, x| if x.abs() > w.abs() { x } else { w });
                    format!(
                        "{:+6.0} ms, {:+6.0} ms",
                        quantile(e, 0.5) * 1000.0,
                        worst * 1000.0
                    )
                }
            };
            println!(
                "    {injected_ms:5} ms                          {}/{repeats} / {}/{repeats}           {} / {}",
                detected[0],
                detected[1],
                fmt(&errors[0]),
                fmt(&errors[1])
            );
        }
    }

    // 2. DNS delays.
    if section("dns") {
        println!("  DNS delay (lookups over 6 s)        mean lookup    error");
        let duration_sum = "apiworkload_sidecar_dns_lookup_duration_seconds_sum";
        let duration_count = "apiworkload_sidecar_dns_lookup_duration_seconds_count";
        for injected_ms in [0u64, 10, 50, 100, 250, 500] {
            delay_ms.store(injected_ms, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1500)); // lookups in flight finish
            let before = scrape();
            std::thread::sleep(Duration::from_secs(6));
            let after = scrape();
            let fqdn = "mode=\"fqdn\"";
            let n = metric(&after, duration_count, fqdn) - metric(&before, duration_count, fqdn);
            let sum = metric(&after, duration_sum, fqdn) - metric(&before, duration_sum, fqdn);
            let mean = sum / n.max(1.0);
            println!(
                "    {injected_ms:4} ms                          {:7.1} ms   {:+6.1} ms   ({n:.0} lookups)",
                mean * 1000.0,
                (mean - injected_ms as f64 / 1000.0) * 1000.0
            );
        }
        delay_ms.store(0, Ordering::Relaxed);
    }

    // 3. Connection counts and who closed.
    if section("connections") {
        connection_counts(&app, &upstream, &scrape, repeats)?;
    }

    // 4. In-flight requests.
    if section("inflight") {
        println!("  requests in flight (15 s)   clients   app's own average   sidecar's   error");
        let integral = "apiworkload_sidecar_inflight_request_seconds_total";
        let mut worst = 0.0f64;
        for kind in [Clients::Pooled, Clients::BackToBack, Clients::NewConnection] {
            for n in [1usize, 5, 20, 50] {
                let stop = Arc::new(AtomicBool::new(false));
                let clients: Vec<_> = (0..n)
                    .map(|i| {
                        let stop = stop.clone();
                        let seed = 0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x2545_f491);
                        std::thread::spawn(move || sleep_client(app.addr, kind, seed, stop))
                    })
                    .collect();
                std::thread::sleep(Duration::from_secs(2));
                let (app0, side0, t0) = (
                    app_inflight_integral(app.addr)?,
                    metric(&scrape(), integral, ""),
                    Instant::now(),
                );
                std::thread::sleep(Duration::from_secs(15));
                let (app1, side1) = (
                    app_inflight_integral(app.addr)?,
                    metric(&scrape(), integral, ""),
                );
                let elapsed = t0.elapsed().as_secs_f64();
                stop.store(true, Ordering::Relaxed);
                for c in clients {
                    let _ = c.join();
                }
                let (own, seen) = ((app1 - app0) / elapsed, (side1 - side0) / elapsed);
                let error = seen / own - 1.0;
                if kind != Clients::BackToBack {
                    worst = worst.max(error.abs());
                }
                println!(
                    "    {:24} {n:6}   {own:17.2}   {seen:9.2}   {:+5.1} %",
                    format!("{kind:?}"),
                    error * 100.0
                );
            }
        }
        println!(
            "  in-flight error, pooled and new connections: worst {:.1} % (target ≤ 10 %)",
            worst * 100.0
        );
    }
    // 5. CPU throttling.
    if section("throttling") {
        cpu_throttling(&uid, repeats)?;
    }
    let _ = std::fs::remove_file(&resolv);
    Ok(())
}

/// The sidecar's throttling counters against the kernel's, per quota. The quota is lifted
/// (no CFS bandwidth control: the counters stand still) before and after each load, so both
/// sides are read at rest: the heartbeat's once-a-second `cpu.stat` has caught up.
fn cpu_throttling(uid: &str, repeats: usize) -> anyhow::Result<()> {
    let quota = CpuQuota::create(&format!("apiw-accuracy-{}", std::process::id()))?;
    let heartbeat = free_udp_addr();
    let app = PythonServer::uvicorn_with_heartbeat(&heartbeat);
    quota.add(app.child.id())?;
    let (_sidecar, listen) =
        start_sidecar(&app, uid, &heartbeat, &["--resolv-conf=/dev/null".into()])?;
    let exported = || -> CfsCounters {
        let text = http_get(listen, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        let read = |name: &str| metric(&text, name, "");
        CfsCounters {
            periods: read("apiworkload_sidecar_app_cpu_periods_total") as u64,
            throttled_periods: read("apiworkload_sidecar_app_cpu_throttled_periods_total") as u64,
            throttled_usec: (read("apiworkload_sidecar_app_cpu_throttled_seconds_total") * 1e6)
                .round() as u64,
        }
    };
    let at_rest = || std::thread::sleep(Duration::from_millis(2500));
    println!(
        "  CPU throttling (quota around a second app, 2 clients of /cpu?seconds=0.01 for 5 s, {repeats} each)"
    );
    println!(
        "    quota     kernel: periods  throttled  paused      sidecar: periods  throttled  paused      exact"
    );
    for millicores in [None, Some(1500u64), Some(500), Some(200)] {
        let (mut kernel, mut sidecar, mut exact) = (vec![], vec![], 0);
        for _ in 0..repeats {
            quota.set(None)?;
            at_rest();
            let (k0, s0) = (quota.counters()?, exported());
            quota.set(millicores)?;
            let stop = Arc::new(AtomicBool::new(false));
            let clients: Vec<_> = (0..2)
                .map(|_| {
                    let (stop, addr) = (stop.clone(), app.addr);
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let _ = http_get(addr, "/cpu?seconds=0.01");
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(5));
            stop.store(true, Ordering::Relaxed);
            for c in clients {
                let _ = c.join();
            }
            quota.set(None)?;
            at_rest();
            let (k1, s1) = (quota.counters()?, exported());
            let delta = |a: CfsCounters, b: CfsCounters| CfsCounters {
                periods: b.periods.saturating_sub(a.periods),
                throttled_periods: b.throttled_periods.saturating_sub(a.throttled_periods),
                throttled_usec: b.throttled_usec.saturating_sub(a.throttled_usec),
            };
            let (k, s) = (delta(k0, k1), delta(s0, s1));
            exact +=
                usize::from(k.periods == s.periods && k.throttled_periods == s.throttled_periods);
            kernel.push(k);
            sidecar.push(s);
        }
        let show = |runs: &[CfsCounters]| {
            let n = runs.len().max(1) as u64;
            let sum = |f: fn(&CfsCounters) -> u64| runs.iter().map(f).sum::<u64>();
            format!(
                "{:7} {:10} {:7.2} s",
                sum(|c| c.periods) / n,
                sum(|c| c.throttled_periods) / n,
                sum(|c| c.throttled_usec) as f64 / n as f64 / 1e6
            )
        };
        println!(
            "    {:7}          {}               {}     {exact}/{repeats}",
            millicores.map_or("none".to_string(), |m| format!("{m}m")),
            show(&kernel),
            show(&sidecar)
        );
    }
    Ok(())
}
