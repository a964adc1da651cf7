//! A cgroup with a CFS CPU quota around a process, as the kubelet puts one around a
//! container with `limits.cpu` (cgroup v2's `cpu.max`, or v1's `cpu.cfs_quota_us` as on
//! this project's machines). Root only; removed on drop.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};

/// The kernel's default CFS period, and the kubelet's.
const PERIOD_US: u64 = 100_000;

#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
    v2: bool,
}

/// A cgroup's cumulative CFS counters (`cpu.stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CfsCounters {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_usec: u64,
}

impl CpuQuota {
    /// A new cgroup `name` under the cpu controller's root, without a quota.
    pub fn create(name: &str) -> anyhow::Result<CpuQuota> {
        let unified = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"));
        let (dir, v2) = if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu")) {
            std::fs::write(unified.join("cgroup.subtree_control"), "+cpu")
                .context("enable the cpu controller for child cgroups")?;
            (unified.join(name), true)
        } else {
            let root = ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
                .iter()
                .map(Path::new)
                .find(|r| r.join("cpu.cfs_quota_us").exists())
                .context("no cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)")?;
            (root.join(name), false)
        };
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let quota = CpuQuota { dir, v2 };
        quota.set(None)?;
        Ok(quota)
    }

    /// Sets the quota in millicores per period (`None`: unlimited, no CFS bandwidth
    /// control, so the counters stand still).
    pub fn set(&self, millicores: Option<u64>) -> anyhow::Result<()> {
        let quota = millicores.map(|m| m * PERIOD_US / 1000);
        if self.v2 {
            let max = quota.map_or("max".to_string(), |q| q.to_string());
            std::fs::write(self.dir.join("cpu.max"), format!("{max} {PERIOD_US}"))?;
        } else {
            std::fs::write(self.dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
            let q = quota.map_or("-1".to_string(), |q| q.to_string());
            std::fs::write(self.dir.join("cpu.cfs_quota_us"), q)?;
        }
        Ok(())
    }

    /// Moves a process (and, on v1, all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move {pid} into {}", self.dir.display()))
    }

    /// The kernel's counters.
    pub fn counters(&self) -> anyhow::Result<CfsCounters> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(periods), Some(throttled_periods)) = (field("nr_periods"), field("nr_throttled"))
        else {
            bail!("cpu.stat without nr_periods/nr_throttled: {text}");
        };
        let throttled_usec = match field("throttled_usec") {
            Some(usec) => usec,
            None => field("throttled_time").context("throttled time")? / 1000,
        };
        Ok(CfsCounters {
            periods,
            throttled_periods,
            throttled_usec,
        })
    }
}

impl Drop for CpuQuota {
    /// rmdir fails while a process is inside: its killed processes may take a moment.
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}
