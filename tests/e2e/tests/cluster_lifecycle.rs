//! `up` is idempotent and `down` leaves no process behind. Uses a private cluster
//! (its own state dir and ports) so the shared one keeps serving other tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step fails the test

use std::{path::Path, process::Command, time::Instant};

use apiworkload_e2e::{Cluster, repo_root};

/// PIDs of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn up_is_idempotent_and_down_leaves_no_process() {
    let dir = std::env::temp_dir().join(format!(
        "apiw-lifecycle-{}",
        apiworkload_e2e::unique_suffix()
    ));
    let dir_str = dir.to_string_lossy().to_string();

    let first = Cluster::up(Some(&dir));
    let pids_before = read_pids(&dir);
    assert_eq!(
        pids_before.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    assert!(
        !processes_mentioning(&dir_str).is_empty(),
        "the cluster's processes should be running"
    );

    let t = Instant::now();
    let second = Cluster::up(Some(&dir));
    let reuse = t.elapsed();
    assert_eq!(first.kubeconfig, second.kubeconfig);
    assert_eq!(
        read_pids(&dir),
        pids_before,
        "a second `up` must reuse the running processes"
    );
    eprintln!("second `up` (reuse) took {reuse:?}");

    let (ok, out, err) = second.kubectl(&["get", "nodes", "-o", "name"]);
    assert!(ok && out.contains("node/kwok-node-0"), "{out}{err}");

    let down = Command::new(repo_root().join("tests/cluster/down"))
        .env("APIW_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = processes_mentioning(&dir_str);
    assert!(left.is_empty(), "processes left after down: {left:#?}");
    for pid in pids_before {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived down"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn read_pids(dir: &Path) -> Vec<String> {
    let mut pids: Vec<String> = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    pids.sort();
    pids
}
