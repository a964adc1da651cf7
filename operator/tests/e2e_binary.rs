//! The real `apiworkload-operator` binary: admin endpoints, clean shutdown on SIGTERM,
//! and leader election between two replicas. Its own test binary (its own operators).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apiworkload_e2e::{Cluster, TestNamespace, install_crds, poll_until, wait_until};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::*;

/// A running operator process; SIGKILLed on drop if the test did not stop it.
struct Operator {
    child: Child,
    port: u16,
}

impl Operator {
    fn start(cluster: &Cluster, identity: &str, leader_elect: bool, lease_ns: &str) -> Operator {
        let port = apiworkload_e2e::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_apiworkload-operator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(leader_elect.then_some("--leader-elect"))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", lease_ns)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Operator { child, port }
    }

    /// GET a path on the admin server: (status code, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
        ))
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn binary_serves_admin_endpoints_reconciles_and_stops_on_sigterm() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "binary", &[]).await;
    let mut op = Operator::start(cluster, "binary-test", false, "default");
    wait_until(Duration::from_secs(30), "/readyz", || async {
        op.get("/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert_eq!(op.get("/healthz").unwrap().0, 200);

    create_workload(&client, &ns.name, "api", fixed_spec(1)).await;
    wait_deployment(&client, &ns.name, "api", "the Deployment", |_| true).await;
    let applied = poll_until(
        Duration::from_secs(30),
        "an applied reconcile in /metrics",
        || async {
            op.metric("apiworkload_operator_reconciles_total{result=\"applied\"}")
                .filter(|v| *v >= 1.0)
        },
    )
    .await;
    assert!(applied >= 1.0);
    let (_, body) = op.get("/metrics").unwrap();
    assert!(
        body.contains("apiworkload_operator_reconcile_duration_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(op.terminate().success(), "clean shutdown exits 0");
}

#[tokio::test]
async fn a_standby_replica_takes_over_the_lease_when_the_leader_stops() {
    let cluster = Cluster::shared();
    install_crds(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::create(&client, "leader", &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = || async {
        leases
            .get_opt("apiworkload-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };

    let mut a = Operator::start(cluster, "replica-a", true, &ns.name);
    let first = poll_until(Duration::from_secs(30), "a lease holder", holder).await;
    assert_eq!(first, "replica-a");
    let b = Operator::start(cluster, "replica-b", true, &ns.name);
    wait_until(
        Duration::from_secs(30),
        "replica-b up as a standby",
        || async { b.metric("apiworkload_operator_leader").is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await; // beyond one renewal period
    assert_eq!(
        b.metric("apiworkload_operator_leader"),
        Some(0.0),
        "only one leader at a time"
    );
    assert_eq!(a.metric("apiworkload_operator_leader"), Some(1.0));

    let stopped = Instant::now();
    assert!(a.terminate().success());
    poll_until(
        Duration::from_secs(20),
        "replica-b to take over within 20 s",
        || async { (holder().await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "replica-b to report leadership",
        || async { b.metric("apiworkload_operator_leader") == Some(1.0) },
    )
    .await;
    eprintln!("takeover after {:?}", stopped.elapsed());
}
