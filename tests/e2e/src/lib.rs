//! Harness for tests that need the real control plane from `tests/cluster/`.
//!
//! [`Cluster::shared`] runs `tests/cluster/up` once per test process (it is idempotent
//! and serialised with a lock, so every test binary shares one cluster). If the
//! cluster cannot be started the calling test **fails** with the script's output:
//! these tests never skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness failure must fail the test loudly

pub mod operator;
pub mod process;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The repository's top directory: the nearest directory holding `Cargo.lock` above
/// the package cargo runs (its `CARGO_MANIFEST_DIR` at run time), else above this
/// crate's source. Not only the compile-time path: CI's clones share one cargo target
/// directory, so a build can be reused from a clone that no longer exists.
pub fn repo_root() -> PathBuf {
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
        std::env::current_dir().ok(),
    ];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| {
            start
                .ancestors()
                .find(|d| d.join("Cargo.lock").is_file() && d.join("tests/cluster").is_dir())
                .map(Path::to_path_buf)
        })
        .expect("the repository root (a directory with Cargo.lock and tests/cluster)")
}

/// A running control plane: where its kubeconfig is and where its binaries live.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
    /// `APIW_CLUSTER_DIR` used to start it (None = the shared default).
    pub state_dir: Option<PathBuf>,
}

impl Cluster {
    /// The shared cluster, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::up(None))
    }

    /// Runs `tests/cluster/up` (optionally for a private state dir) and parses its exports.
    pub fn up(state_dir: Option<&Path>) -> Cluster {
        let mut cmd = Command::new(repo_root().join("tests/cluster/up"));
        if let Some(dir) = state_dir {
            cmd.env("APIW_CLUSTER_DIR", dir);
        }
        let out = cmd.output().expect("could not run tests/cluster/up");
        assert!(
            out.status.success(),
            "tests/cluster/up failed ({}); a test that needs the cluster cannot pass without it:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let export = |name: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_else(|| panic!("tests/cluster/up printed no {name}:\n{stdout}"))
        };
        let path = export("PATH");
        let bin_dir = path.split(':').next().expect("PATH entry").to_string();
        Cluster {
            kubeconfig: PathBuf::from(export("KUBECONFIG")),
            bin_dir: PathBuf::from(bin_dir),
            state_dir: state_dir.map(Path::to_path_buf),
        }
    }

    /// Fault injection: `tests/cluster/control-plane <args>` (`kill [component]`: SIGKILL
    /// etcd and kube-apiserver, or one; `start`: what is down, on the same data, until
    /// ready; `compact`: etcd history up to now). Private clusters only: the shared one
    /// serves other tests.
    pub fn control_plane(&self, args: &[&str]) {
        assert!(
            self.state_dir.is_some(),
            "fault injection on the shared cluster would break concurrent tests"
        );
        let mut cmd = Command::new(repo_root().join("tests/cluster/control-plane"));
        if let Some(dir) = &self.state_dir {
            cmd.env("APIW_CLUSTER_DIR", dir);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("run tests/cluster/control-plane");
        assert!(
            out.status.success(),
            "tests/cluster/control-plane {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A kube client authenticated as the cluster admin.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// A command for one of the cluster's binaries (kubectl, helm, …) with KUBECONFIG set.
    pub fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(binary));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// A kubeconfig file that authenticates only with a token of ServiceAccount
    /// `namespace/account` (`kubectl create token`, with `token_args` such as
    /// `--bound-object-kind=Pod`), for tests of what those credentials may do.
    pub fn token_kubeconfig(&self, namespace: &str, account: &str, token_args: &[&str]) -> PathBuf {
        let mut args = vec!["create", "token", account, "-n", namespace, "--duration=1h"];
        args.extend_from_slice(token_args);
        let (ok, token, err) = self.kubectl(&args);
        assert!(ok, "kubectl create token {namespace}/{account}: {err}");
        let field = |path: &str| {
            let (ok, out, err) = self.kubectl(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ]);
            assert!(ok, "{err}");
            out
        };
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {account}\n  user:\n    token: {}\ncontexts:\n- name: {account}\n  context: {{cluster: c, user: {account}, namespace: {namespace}}}\ncurrent-context: {account}\n",
            field("server"),
            field("certificate-authority-data"),
            token.trim()
        );
        let path = std::env::temp_dir().join(format!("{account}-{}.kubeconfig", unique_suffix()));
        std::fs::write(&path, kubeconfig).expect("write kubeconfig");
        path
    }

    /// Runs kubectl and returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command("kubectl")
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply` (server-side) of one document: an object, or a `List` of them.
    pub fn apply(&self, doc: &serde_json::Value) -> (bool, String, String) {
        let path = std::env::temp_dir().join(format!("apply-{}.json", unique_suffix()));
        std::fs::write(&path, serde_json::to_vec(doc).expect("JSON")).expect("write manifest");
        let result = self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &path.to_string_lossy(),
        ]);
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Waits until the CRD `name` is Established; panics after 30 s. Polled: `kubectl
    /// wait` fails at once while a new CRD has no conditions yet.
    pub fn wait_crd_established(&self, name: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, out, _) = self.kubectl(&[
                "get",
                &format!("crd/{name}"),
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]);
            if out.trim() == "True" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRD {name} not Established after 30 s: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The cluster's real node (`tests/cluster/node`): kubelet, containerd and kube-proxy in a
/// network namespace of their own, running real containers. Pods land on it only with
/// [`RealNode::POD_PLACEMENT`].
#[derive(Debug)]
pub struct RealNode {
    state_dir: Option<PathBuf>,
}

impl RealNode {
    pub const NAME: &'static str = "real-node-0";

    /// The node selector and toleration that place a pod on the real node (it is tainted,
    /// so kwok-only tests never land there).
    pub const POD_PLACEMENT: &'static str = r#"{"nodeSelector": {"kubernetes.io/hostname": "real-node-0"},
        "tolerations": [{"key": "apiworkload.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]}"#;

    /// Starts it on `cluster` once (idempotent, serialised across test binaries by the
    /// script); fails loudly when it cannot.
    pub fn up(cluster: &Cluster) -> RealNode {
        let node = RealNode {
            state_dir: cluster.state_dir.clone(),
        };
        let out = node
            .script(&["up"])
            .output()
            .expect("run tests/cluster/node up");
        assert!(
            out.status.success(),
            "tests/cluster/node up failed ({}); a test that needs real pods cannot pass without it:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }

    /// Starts KEDA and Prometheus beside the node (`tests/cluster/node keda`; starts only
    /// what is not running): the in-flight autoscaling path. Fails loudly when it cannot.
    pub fn keda(&self) {
        self.run(&["keda"]);
    }

    /// Stops one of the node's components (e.g. `prometheus`), as an outage would.
    pub fn stop(&self, component: &str) {
        self.run(&["stop", component]);
    }

    /// Runs `tests/cluster/node <args>`; fails loudly, with its stderr, when it fails.
    fn run(&self, args: &[&str]) {
        let out = self.script(args).output().expect("run tests/cluster/node");
        assert!(
            out.status.success(),
            "tests/cluster/node {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace whose every pod lands on the real node, under Pod Security
    /// "restricted": its annotations are read by the API server's PodNodeSelector and
    /// PodTolerationRestriction admission plugins, so the workloads a test applies stay
    /// exactly as a user writes them.
    pub async fn namespace(&self, cluster: &Cluster, prefix: &str) -> TestNamespace {
        let tolerations = r#"[{"key": "apiworkload.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]"#;
        TestNamespace::create_on(
            cluster,
            &cluster.client().await,
            prefix,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
            &[
                (
                    "scheduler.alpha.kubernetes.io/node-selector",
                    "kubernetes.io/hostname=real-node-0",
                ),
                (
                    "scheduler.alpha.kubernetes.io/defaultTolerations",
                    tolerations,
                ),
            ],
        )
        .await
    }

    /// The processes of a running container (`containerd://<id>` from its pod's status),
    /// found by their cgroup: what really runs, whatever the pod spec says.
    pub fn container_processes(container_id: &str) -> Vec<Process> {
        let id = container_id.rsplit("://").next().unwrap_or(container_id);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let in_container = std::fs::read_to_string(dir.join("cgroup"))
                .is_ok_and(|cgroups| cgroups.lines().any(|l| l.ends_with(id)));
            if !in_container {
                continue;
            }
            let argv = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let ppid = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|stat| {
                    // After the command name in parentheses: state, then the parent.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse().ok()
                })
                .unwrap_or(0);
            found.push(Process {
                pid,
                ppid,
                argv: argv
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            });
        }
        found.sort_by_key(|p| p.pid);
        found
    }

    /// What a container wrote to stdout and stderr, read from the kubelet's log files
    /// (`kubectl logs` cannot reach a kubelet inside the node's network namespace).
    pub fn container_log(
        &self,
        cluster: &Cluster,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> String {
        let logs = cluster
            .kubeconfig
            .parent()
            .expect("the state dir")
            .join("node/pod-logs");
        let prefix = format!("{namespace}_{pod}_");
        let mut out = String::new();
        for dir in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            if !dir.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let mut files: Vec<_> = std::fs::read_dir(dir.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
                .map(|f| f.path())
                .collect();
            files.sort();
            for f in files {
                out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
            }
        }
        out
    }

    /// `tests/cluster/node down`: removes everything `up` created.
    pub fn down(&self) {
        let out = self
            .script(&["down"])
            .output()
            .expect("run tests/cluster/node down");
        assert!(
            out.status.success(),
            "tests/cluster/node down failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo_root().join("tests/cluster/node"));
        if let Some(dir) = &self.state_dir {
            cmd.env("APIW_CLUSTER_DIR", dir);
        }
        cmd.args(args);
        cmd
    }

    /// Runs `argv` inside the node's network namespace (where pod and Service addresses
    /// are reachable, and nothing else): (success, stdout, stderr).
    pub fn exec(&self, argv: &[&str]) -> (bool, String, String) {
        let out = self
            .script(&["exec"])
            .args(argv)
            .output()
            .expect("run tests/cluster/node exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `argv` to run inside the node's network namespace, for a caller that waits on it
    /// its own way (`tokio::process::Command::from`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = self.script(&["exec"]);
        cmd.args(argv);
        cmd
    }

    /// GET `url` from inside the node's network namespace: (status, body).
    pub fn http_get(&self, url: &str) -> Option<HttpResponse> {
        let (ok, out, _) = self.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/stdout",
            "-w",
            "\n%{http_code}",
            url,
        ]);
        if !ok {
            return None;
        }
        let (body, status) = out.rsplit_once('\n')?;
        Some(HttpResponse {
            status: status.trim().parse().ok()?,
            body: body.to_string(),
        })
    }
}

/// A pod's condition of `type_`, if it has one.
pub fn pod_condition<'a>(
    pod: &'a k8s_openapi::api::core::v1::Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// A process on this host (see [`RealNode::container_processes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub argv: Vec<String>,
}

/// A namespace that exists for one test; its deletion is requested on drop.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    cluster: Cluster,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique>` with the given labels on the shared cluster.
    pub async fn create(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
        TestNamespace::create_on(Cluster::shared(), client, prefix, labels, &[]).await
    }

    /// Creates `<prefix>-<unique>` with the given labels and annotations on `cluster`.
    pub async fn create_on(
        cluster: &Cluster,
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> TestNamespace {
        let name = format!("{prefix}-{}", unique_suffix());
        let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect()
        };
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": map(labels), "annotations": map(annotations)}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // Pods need the namespace's default ServiceAccount (the controller-manager makes it).
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_until(
            Duration::from_secs(30),
            "default ServiceAccount",
            || async { sa.get_opt("default").await.ok().flatten().is_some() },
        )
        .await;
        TestNamespace {
            name,
            cluster: cluster.clone(),
        }
    }
}

impl Drop for TestNamespace {
    /// Synchronous (kubectl), because a task spawned here would die with the test's
    /// runtime; `--wait=false` leaves the garbage collection to the cluster.
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A loopback TCP port free right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP address (`127.0.0.1:port`) free right now, e.g. for the heartbeat.
pub fn free_udp_addr() -> String {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// A short suffix unique within this machine for the test run.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{n}", std::process::id() % 0xfff, nanos % 0xffff)
}

/// Polls `check` every 200 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A private cluster (own state dir and ports), stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateCluster(pub Cluster);

impl PrivateCluster {
    pub fn up(prefix: &str) -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!("apiw-{prefix}-{}", unique_suffix()));
        PrivateCluster(Cluster::up(Some(&dir)))
    }
}

impl std::ops::Deref for PrivateCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.0.state_dir {
            let _ = Command::new(repo_root().join("tests/cluster/down"))
                .env("APIW_CLUSTER_DIR", dir)
                .output();
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(format!("{}.lock", dir.display()));
            let _ = std::fs::remove_file(format!("{}.node.lock", dir.display()));
        }
    }
}

/// Installs the generated CRDs (`crds/`) once per cluster and process, and waits until
/// they are served.
pub fn install_crds(cluster: &Cluster) {
    static DONE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if done.contains(&cluster.kubeconfig) {
        return;
    }
    done.push(cluster.kubeconfig.clone());
    {
        let crds = repo_root().join("crds");
        let (ok, out, err) = cluster.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &crds.to_string_lossy(),
        ]);
        assert!(ok, "kubectl apply -f crds/ failed: {out}{err}");
        cluster.wait_crd_established("apiworkloads.apiworkload.io");
    }
}

/// Polls `probe` every 200 ms until it yields a value; panics with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The venv with the pinned Python test servers (tests/apps/requirements.txt), created
/// on first use by the same script `tests/run` uses. Panics if it cannot be made.
pub fn python_venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg("-c")
            .arg("source tests/lib.sh && use_python_env >&2 && echo \"$APIW_VENV\"")
            .current_dir(repo_root())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "could not create the Python test venv:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A Python server process (uvicorn, gunicorn) on loopback; killed on drop.
#[derive(Debug)]
pub struct PythonServer {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// The user it runs as.
    pub uid: u32,
}

impl PythonServer {
    /// tests/apps' FastAPI app on plain uvicorn (one process), loopback only.
    pub fn uvicorn() -> PythonServer {
        PythonServer::uvicorn_with(&[], &[])
    }

    /// As [`PythonServer::uvicorn`], with extra uvicorn flags and environment.
    pub fn uvicorn_with(extra_args: &[&str], env: &[(&str, &str)]) -> PythonServer {
        PythonServer::uvicorn_on(free_port(), extra_args, env)
    }

    /// As [`PythonServer::uvicorn_with`], on a given port (an app coming back where it was).
    pub fn uvicorn_on(port: u16, extra_args: &[&str], env: &[(&str, &str)]) -> PythonServer {
        PythonServer::uvicorn_as_on(None, port, extra_args, env)
    }

    /// The test app on uvicorn, loopback only, as `uid` (`None`: this process's user).
    fn uvicorn_as_on(
        uid: Option<u32>,
        port: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> PythonServer {
        let mut args = vec![
            "app:app",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ];
        args.extend_from_slice(extra_args);
        PythonServer::start_as(uid, port, "uvicorn", &args, env)
    }

    /// As [`PythonServer::uvicorn_with`], run as `uid` (and its group) like an app in a pod
    /// beside a sidecar of another user: the kernel reports the app's closed sockets
    /// (orphans, before TIME_WAIT) under UID 0, not the app's. `setpriv` keeps
    /// `CAP_DAC_READ_SEARCH` so the process can read the venv under root's home.
    pub fn uvicorn_as(uid: u32, extra_args: &[&str]) -> PythonServer {
        PythonServer::uvicorn_as_on(Some(uid), free_port(), extra_args, &[])
    }

    /// uvicorn whose app sends the sidecar's opt-in heartbeat to `addr`.
    pub fn uvicorn_with_heartbeat(addr: &str) -> PythonServer {
        PythonServer::uvicorn_with(&[], &[("APIW_HEARTBEAT_ADDR", addr)])
    }

    /// Runs `tool` (e.g. `uvicorn`) from the venv in tests/apps with `args`, where `{port}`
    /// is replaced by a free loopback port; waits until GET /healthz answers.
    pub fn start(tool: &str, args: &[&str]) -> PythonServer {
        PythonServer::start_with_env(tool, args, &[])
    }

    /// As [`PythonServer::start`], with environment variables for the app.
    pub fn start_with_env(tool: &str, args: &[&str], env: &[(&str, &str)]) -> PythonServer {
        PythonServer::start_on(free_port(), tool, args, env)
    }

    fn start_on(port: u16, tool: &str, args: &[&str], env: &[(&str, &str)]) -> PythonServer {
        PythonServer::start_as(None, port, tool, args, env)
    }

    fn start_as(
        uid: Option<u32>,
        port: u16,
        tool: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> PythonServer {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let program = python_venv().join("bin").join(tool);
        let mut command = match uid {
            None => Command::new(&program),
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--inh-caps=+dac_read_search".into(),
                    "--ambient-caps=+dac_read_search".into(),
                    "--".into(),
                ])
                .arg(&program);
                c
            }
        };
        // Its own process group, so that drop stops the workers too: a killed gunicorn
        // master leaves uvicorn workers running (they do not watch their parent).
        let child = command
            .process_group(0)
            .args(&args)
            .current_dir(repo_root().join("tests/apps"))
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the Python server");
        let server = PythonServer {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            uid: uid.unwrap_or_else(|| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata("/proc/self")
                    .map(|m| m.uid())
                    .unwrap_or(0)
            }),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(server.addr, "/healthz").is_some_and(|r| r.ok()) {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{tool} {args:?} did not answer /healthz"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        // The whole group (master and workers); then reap the master.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq (Debian's dnsmasq-base, which tests/run installs) on 127.0.0.1:`port`, in the
/// foreground, answering `api.example.test` (A only) and NXDOMAIN for everything else in
/// `cluster.local` and `example.test`; no upstream, no /etc/hosts. The caller adds logging
/// and stdio.
pub fn dnsmasq_command(port: u16) -> Command {
    let binary = if Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    };
    let mut command = Command::new(binary);
    command.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--local=/cluster.local/",
        "--local=/example.test/",
        "--host-record=api.example.test,127.0.0.5",
        "--user=root",
    ]);
    command
}

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// One GET on a fresh connection (blocking, `Connection: close`): the one HTTP client of
/// the tests. `None` when nothing answered within 2 s (connect) or 30 s (response).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<HttpResponse> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some(HttpResponse {
        status: head.split_whitespace().nth(1)?.parse().ok()?,
        body: body.to_string(),
    })
}

/// The value of one sample in a Prometheus text exposition: `name{labels}` exactly as
/// exported, or a bare name for a sample without labels.
pub fn metric_sample(exposition: &str, sample: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The sum over every label set of the metric `name` (0 when it is not exported).
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
