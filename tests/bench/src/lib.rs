//! Helpers shared by the benchmarks: process sampling, summary statistics, and Python
//! servers started from the command the operator renders.

pub mod cpu_quota;

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use apiworkload_e2e::{http_get, python_venv, repo_root};
use apiworkload_operator::{
    api::ApiWorkloadSpec,
    plan::plan,
    render::{command::server_command, worker_class},
};

/// A server and its workers, in their own process group (killed together).
#[derive(Debug)]
pub struct Server(pub Child);

impl Server {
    /// Starts `argv` (its program from the test venv) in tests/apps, on `cpu` when
    /// given (so the load generator does not take the server's CPU), and waits until
    /// it answers `/healthz` and its workers are up.
    pub fn start(argv: &[String], addr: SocketAddr, cpu: Option<usize>) -> anyhow::Result<Server> {
        let bin = python_venv().join("bin").join(&argv[0]);
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .args(&argv[1..])
            .current_dir(repo_root().join("tests/apps"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_get(addr, "/healthz").is_some_and(|r| r.ok()) {
            if Instant::now() > deadline {
                bail!("{argv:?} did not answer /healthz within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Every worker up (gunicorn forks them after the first answers).
        std::thread::sleep(Duration::from_secs(2));
        Ok(server)
    }
}

impl Drop for Server {
    #[allow(unsafe_code)] // kill(2) on our own process group
    fn drop(&mut self) {
        // SAFETY: signals the process group this struct created.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// The command the operator renders for `spec`, made to run here: bound to
/// 127.0.0.1:`port`, and the operator's uvicorn worker class (a downward API file in a
/// pod) written where `--pythonpath` then points.
pub fn rendered_on_loopback(spec: &ApiWorkloadSpec, port: u16) -> anyhow::Result<Vec<String>> {
    let plan = plan(spec).map_err(|v| anyhow::anyhow!("{v:?}"))?;
    let python_dir = target_dir().join("bench-python");
    std::fs::create_dir_all(&python_dir)?;
    std::fs::write(
        python_dir.join("apiworkload_uvicorn_worker.py"),
        worker_class::MODULE_SOURCE,
    )?;
    let mut argv = server_command(spec, &plan);
    for i in 0..argv.len() {
        let previous = i
            .checked_sub(1)
            .map(|p| argv[p].clone())
            .unwrap_or_default();
        let a = &mut argv[i];
        if a.starts_with("0.0.0.0:") || a == "0.0.0.0" && previous == "--bind" {
            *a = format!("127.0.0.1:{port}");
        } else if a == "0.0.0.0" {
            *a = "127.0.0.1".into();
        } else if previous == "--port" {
            *a = port.to_string();
        } else if a == worker_class::PYTHON_DIR {
            *a = python_dir.display().to_string();
        }
    }
    Ok(argv)
}

/// The value of `--name N` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of a process, from /proc/<pid>/status (kB → bytes).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) a process has used so far.
#[allow(unsafe_code)] // sysconf
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state (3rd).
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// The `q` quantile (0–1) of `values` (sorted copy, nearest rank).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Raises the open-file limit to its hard maximum (thousands of sockets need it).
#[allow(unsafe_code)] // getrlimit/setrlimit
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The workspace's target dir (CARGO_TARGET_DIR, as tests/lib.sh sets it, or ./target).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| apiworkload_e2e::repo_root().join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_own_process_figures() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.99), 4.0);
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        assert!(cpu_time(me).is_some());
    }
}
