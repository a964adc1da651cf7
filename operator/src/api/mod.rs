//! The `ApiWorkload` API (`apiworkload.io/v1alpha1`): the one source of the CRD.
//!
//! Field docs become the CRD's descriptions (`kubectl explain apiworkload.spec…`).
//! Admission rules that couple fields live in [`rules`]; defaults that depend on
//! other fields (keep-alive per upstream, workers per CPU) live in `sizing`/`budget`
//! and are reported in `.status`.

pub mod bounds;
pub mod quantity;
pub mod rules;

use k8s_openapi::{
    api::core::v1::{EnvVar, Volume, VolumeMount},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use apiworkload_contract::{GROUP, GoDuration, duration};

/// A Python API service (FastAPI/Starlette/Django/Flask on gunicorn, uvicorn, granian or
/// hypercorn) whose worker count, timeouts, probes, DNS and autoscaling the operator
/// derives from one spec so they fit together.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "apiworkload.io",
    version = "v1alpha1",
    kind = "ApiWorkload",
    plural = "apiworkloads",
    singular = "apiworkload",
    shortname = "apiw",
    category = "all",
    namespaced,
    status = "ApiWorkloadStatus",
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.workers.count","description":"Worker processes per pod"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas.desired"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.replicas.ready"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","description":"Reason of the most severe condition"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiWorkloadSpec {
    /// Container image that holds the application and its server (gunicorn, uvicorn, …).
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy for the application container (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Names of Secrets in this namespace used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub image_pull_secrets: Vec<String>,

    /// ASGI/WSGI application as `module:attribute`, e.g. `app.main:app`.
    #[schemars(
        length(min = 3, max = 256),
        pattern(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*(\(\))?$")
    )]
    pub app: String,

    /// Which server runs the app. `gunicorn-uvicorn`: gunicorn supervising uvicorn
    /// workers (ASGI, multi-process; the operator's subclass of
    /// `uvicorn_worker.UvicornWorker`, which applies `concurrency.limit`). `uvicorn`: one uvicorn process
    /// per pod (scale with replicas) unless `workers.count` asks for uvicorn's own
    /// supervisor. `gunicorn-sync`/`gunicorn-gthread`: WSGI. `granian`, `hypercorn`: ASGI.
    #[serde(default)]
    pub server: ServerKind,

    /// Workload shape for sizing: `io-bound` (awaits databases and APIs: 2×cores+1
    /// workers) or `cpu-bound` (parsing, models: one worker per core).
    #[serde(default)]
    pub profile: Profile,

    /// Port the server listens on (unprivileged: the pod runs as non-root with no
    /// capabilities).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,

    /// CPU and memory of the application container. Workers are sized from
    /// `limits.cpu`, else `requests.cpu`, never from the node's core count.
    #[serde(default)]
    pub resources: Resources,

    /// Worker overrides. Leave empty to derive the count from CPU and memory.
    #[serde(default)]
    pub workers: Workers,

    /// What sits in front of the pods. Drives the keep-alive (it must outlive a pooling
    /// proxy's idle timeout, or the proxy reuses closed sockets and answers 502).
    #[serde(default)]
    pub upstream: Upstream,

    /// Request, startup, shutdown and keep-alive timing. Unset values are derived so that
    /// they fit together; the effective values are in `.status.effective`.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// Restart each worker after a number of requests (bounds slow memory leaks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycling: Option<Recycling>,

    /// HTTP probe endpoints. They must be cheap and in-process: a probe that waits on a
    /// database kills healthy pods when the database is slow.
    #[serde(default)]
    pub probes: Probes,

    /// Replica bounds and the autoscaling signal.
    #[serde(default)]
    pub scaling: Scaling,

    /// Overload protection: requests one worker takes on before the excess gets a fast
    /// 503 (or waits in the backlog, where the server cannot refuse), and the backlog.
    #[serde(default)]
    pub concurrency: Concurrency,

    /// Pod DNS settings and names for the diagnostics sidecar to probe.
    #[serde(default)]
    pub dns: Dns,

    /// The diagnostics sidecar (DNS latency, connection reuse, event-loop stalls).
    #[serde(default)]
    pub diagnostics: Diagnostics,

    /// Extra arguments appended to the rendered server command (they win over derived
    /// flags when the server reads the last occurrence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 1024)))]
    pub extra_args: Vec<String>,

    /// Extra environment variables for the application container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// Extra volumes for the pod (`tmp` is reserved for the in-memory /tmp).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,

    /// Extra volume mounts for the application container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<VolumeMount>,
}

fn default_port() -> i32 {
    8000
}

/// Image pull policy: `Always`, `IfNotPresent` or `Never`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The Python server that runs the application.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    #[default]
    GunicornUvicorn,
    Uvicorn,
    GunicornSync,
    GunicornGthread,
    Granian,
    Hypercorn,
}

impl ServerKind {
    pub const ALL: [ServerKind; 6] = [
        ServerKind::GunicornUvicorn,
        ServerKind::Uvicorn,
        ServerKind::GunicornSync,
        ServerKind::GunicornGthread,
        ServerKind::Granian,
        ServerKind::Hypercorn,
    ];

    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::GunicornUvicorn => "gunicorn-uvicorn",
            ServerKind::Uvicorn => "uvicorn",
            ServerKind::GunicornSync => "gunicorn-sync",
            ServerKind::GunicornGthread => "gunicorn-gthread",
            ServerKind::Granian => "granian",
            ServerKind::Hypercorn => "hypercorn",
        }
    }

    /// Whether requests run on an event loop (threads are then meaningless).
    pub fn is_async(self) -> bool {
        !matches!(self, ServerKind::GunicornSync | ServerKind::GunicornGthread)
    }

    /// Whether gunicorn supervises the workers (heartbeat `--timeout`, `/dev/shm` tmp dir).
    pub fn is_gunicorn(self) -> bool {
        matches!(
            self,
            ServerKind::GunicornUvicorn | ServerKind::GunicornSync | ServerKind::GunicornGthread
        )
    }
}

/// Workload shape used by the worker formula: `io-bound` or `cpu-bound`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    #[default]
    IoBound,
    CpuBound,
}

/// CPU and memory for the application container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Guaranteed resources (scheduling, HPA utilization base).
    #[serde(default)]
    pub requests: ResourceAmounts,
    /// Upper bounds. `limits.memory` caps the worker count.
    #[serde(default)]
    pub limits: ResourceAmounts,
}

/// CPU and memory amounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, e.g. `500m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `512Mi` or `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Worker overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workers {
    /// Explicit worker processes per pod; derived from CPU and memory when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub count: Option<i32>,
    /// Threads per worker (`gunicorn-gthread`; ignored by async servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<i32>,
    /// Upper bound on the derived count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max: Option<i32>,
    /// Resident memory one worker needs at peak; the count is capped so that
    /// `supervisorMemory + count × perWorkerMemory ≤ limits.memory`.
    #[serde(default = "default_per_worker_memory")]
    pub per_worker_memory: Quantity,
    /// Memory of the supervisor process (gunicorn's master) and the interpreter baseline.
    #[serde(default = "default_supervisor_memory")]
    pub supervisor_memory: Quantity,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            count: None,
            threads: None,
            max: None,
            per_worker_memory: default_per_worker_memory(),
            supervisor_memory: default_supervisor_memory(),
        }
    }
}

fn default_per_worker_memory() -> Quantity {
    Quantity("256Mi".into())
}

fn default_supervisor_memory() -> Quantity {
    Quantity("64Mi".into())
}

/// What forwards traffic to the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// The proxy or load balancer in front. Pooling L7 proxies (aws-alb, gcp-lb,
    /// ingress-nginx, envoy) reuse idle connections, so the server's keep-alive must
    /// outlive their idle timeout; behind L4 balancers (aws-nlb, azure-lb) the server
    /// must close first, before the balancer silently drops the flow.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// The upstream's idle timeout; defaults per kind (aws-alb 60s, gcp-lb 600s,
    /// ingress-nginx 60s, envoy 1h, aws-nlb 350s, azure-lb 4m). Required for `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<GoDuration>,
    /// How long the upstream waits for a response before answering 504 (ingress-nginx
    /// proxy-read-timeout 60s, aws-alb 60s, …). `timeouts.request` must be shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
    /// For `custom`: whether the upstream pools idle connections (L7) or not (L4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<bool>,
}

/// Kinds of upstream with known idle behaviour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// Nothing known in front (cluster-internal clients).
    #[default]
    None,
    AwsAlb,
    AwsNlb,
    GcpLb,
    AzureLb,
    IngressNginx,
    Envoy,
    Custom,
}

impl UpstreamKind {
    pub const ALL: [UpstreamKind; 8] = [
        UpstreamKind::None,
        UpstreamKind::AwsAlb,
        UpstreamKind::AwsNlb,
        UpstreamKind::GcpLb,
        UpstreamKind::AzureLb,
        UpstreamKind::IngressNginx,
        UpstreamKind::Envoy,
        UpstreamKind::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::None => "none",
            UpstreamKind::AwsAlb => "aws-alb",
            UpstreamKind::AwsNlb => "aws-nlb",
            UpstreamKind::GcpLb => "gcp-lb",
            UpstreamKind::AzureLb => "azure-lb",
            UpstreamKind::IngressNginx => "ingress-nginx",
            UpstreamKind::Envoy => "envoy",
            UpstreamKind::Custom => "custom",
        }
    }
}

/// Timing. Every unset value is derived (see `.status.effective`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Longest a request may take. For sync gunicorn workers this is the worker timeout;
    /// for async servers it must stay below the upstream's request timeout. Default 30s
    /// (less behind upstreams that give up sooner), matching the graceful shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<GoDuration>,
    /// Budget for the process to start serving (imports, model load): the startup probe
    /// allows this long before liveness takes over. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<GoDuration>,
    /// How long the server finishes in-flight requests after SIGTERM. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown: Option<GoDuration>,
    /// preStop sleep before SIGTERM so endpoints and load balancers stop sending traffic.
    /// Default 25s behind AWS balancers, 10s behind other upstreams, 5s with none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<GoDuration>,
    /// Explicit keep-alive; derived from the upstream when unset (idle + 15s for pooling
    /// L7 proxies, idle − 15s behind L4 balancers, 5s with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<GoDuration>,
    /// Explicit terminationGracePeriod; derived as drain + gracefulShutdown + 5s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period: Option<GoDuration>,
    /// gunicorn's `--timeout`: for async workers a heartbeat that kills a worker whose
    /// event loop is blocked (or CPU-throttled), not a request timeout. Default 30s,
    /// never lower on pods below one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_heartbeat: Option<GoDuration>,
}

/// Worker recycling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recycling {
    /// Restart a worker after this many requests (probes and scrapes count too).
    #[schemars(range(min = 0, max = 100000000))]
    pub max_requests: i32,
    /// Random extra requests per worker so workers do not all restart at once.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000000))]
    pub jitter: i32,
}

/// Probe endpoints and timing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Path used by all probes unless overridden below.
    #[serde(default = "default_probe_path")]
    #[schemars(length(min = 1, max = 256), pattern(r"^/"))]
    pub path: String,
    /// Readiness path (may check cheap dependencies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(r"^/"))]
    pub readiness_path: Option<String>,
    /// Liveness path (must be trivial and in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(r"^/"))]
    pub liveness_path: Option<String>,
    /// Probe timeout in seconds. At least 3: with all workers busy a 1s timeout flaps
    /// readiness and kills healthy pods.
    #[serde(default = "default_probe_timeout")]
    #[schemars(range(min = 3, max = 60))]
    pub timeout_seconds: i32,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            path: default_probe_path(),
            readiness_path: None,
            liveness_path: None,
            timeout_seconds: default_probe_timeout(),
        }
    }
}

fn default_probe_path() -> String {
    "/healthz".into()
}

fn default_probe_timeout() -> i32 {
    5
}

/// Replicas and autoscaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Lowest replica count. 0 needs `requestBuffer: true` (and KEDA).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Highest replica count; equal to `minReplicas` for a fixed size without autoscaler.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Scaling signal: `inflight` (in-flight requests per pod against workers ×
    /// perWorkerConcurrency × target; CPU stays as a backstop), `cpu`, or `custom`.
    #[serde(default)]
    pub metric: ScalingMetric,
    /// Target fraction of capacity (0 < target ≤ 1).
    #[serde(default = "default_target")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub target: f64,
    /// Concurrent requests one worker handles well (default: 1 for gunicorn-sync,
    /// threads for gunicorn-gthread, 10 for async servers, 2 when `cpu-bound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub per_worker_concurrency: Option<i32>,
    /// Name of the app's own in-flight requests gauge. Unset: the diagnostics sidecar
    /// measures in-flight requests from the socket table (no app change; averaged
    /// over 1 min), or, with diagnostics off, `http_requests_inprogress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), pattern(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"))]
    pub inflight_metric: Option<String>,
    /// PromQL for `metric: custom` returning one value for this workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub query: Option<String>,
    /// Target value of the custom query per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub query_target: Option<String>,
    /// How long load must stay low before the autoscaler removes pods (`5m` by default:
    /// a dip between two peaks must not cost the capacity the second one needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_window: Option<GoDuration>,
    /// Declares that requests are buffered while no replica runs (e.g. the KEDA HTTP
    /// add-on); required for `minReplicas: 0`.
    #[serde(default)]
    pub request_buffer: bool,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            metric: ScalingMetric::default(),
            target: default_target(),
            per_worker_concurrency: None,
            inflight_metric: None,
            query: None,
            query_target: None,
            request_buffer: false,
            scale_down_window: None,
        }
    }
}

fn default_min_replicas() -> i32 {
    2
}

fn default_max_replicas() -> i32 {
    10
}

fn default_target() -> f64 {
    0.7
}

/// Overload protection. Without a limit uvicorn takes every request and the kernel queues
/// 2048 more connections: under overload every request waits until the balancer times
/// out. With one, the excess is refused in a millisecond while the autoscaler adds pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Per worker: uvicorn `--limit-concurrency` (gunicorn-uvicorn: `--worker-connections`
    /// through the operator's worker class), answering 503 once open connections or
    /// running requests reach it (the new request's own connection counts: N runs
    /// N − 1 at once); gunicorn-gthread `--worker-connections`, which stops accepting
    /// instead; granian `--backpressure`, its own per-worker limit. 0: no limit. Default: 10 ×
    /// `scaling.perWorkerConcurrency`. Lower bounds latency under overload better but
    /// refuses bursts below capacity. uvicorn counts idle keep-alive connections too:
    /// keep it above the balancer's idle connections per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i32>,
    /// Connections the kernel holds for the pod before a worker accepts them
    /// (`--backlog`). Default: twice what the workers hold at their limit, 64 to 2048
    /// (granian: at least 128). The kernel caps it at `net.core.somaxconn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i32>,
}

/// Autoscaling signals: `inflight`, `cpu` or `custom`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScalingMetric {
    #[default]
    Inflight,
    Cpu,
    Custom,
}

/// DNS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// `ndots` for the pod's resolv.conf. Kubernetes defaults to 5, which makes every
    /// external name walk the search list first (several queries, times A and AAAA).
    #[serde(default = "default_ndots")]
    #[schemars(range(min = 1, max = 15))]
    pub ndots: i32,
    /// Names the diagnostics sidecar resolves periodically, as the app would. Unset: the
    /// hosts of URLs and `host:port` values in `env` (at most 5), so DNS is diagnosed
    /// with no configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 253)))]
    pub probe: Vec<String>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            ndots: default_ndots(),
            probe: Vec::new(),
        }
    }
}

fn default_ndots() -> i32 {
    2
}

/// Diagnostics sidecar settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostics {
    /// Run the diagnostics sidecar in each pod.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A canary request slower than this counts as an event-loop stall.
    #[serde(default = "default_stall_threshold")]
    pub stall_threshold: GoDuration,
    /// Port of the sidecar's /metrics, /healthz and /report.
    #[serde(default = "default_diagnostics_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Sidecar image override (defaults to the operator's `--sidecar-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Each worker's event loop sends the sidecar a heartbeat, with no change to the app:
    /// the operator puts a `sitecustomize` module on the app's Python path that starts
    /// it in every worker, so stalls are measured on every worker (the canary's
    /// connections may all land on one). Async servers only. It sets `PYTHONPATH`
    /// (ahead of a value in `spec.env`), replacing one the image sets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loop_heartbeat: bool,
    /// When the sidecar calls a window bad, per reason (unset: the defaults that
    /// `apiworkload-sidecar --help` and the README list). Raise one that a healthy app
    /// crosses by design, e.g. `outboundPerMinute` for a client that must not pool.
    #[serde(default, skip_serializing_if = "DiagnosisThresholds::is_empty")]
    pub thresholds: DiagnosisThresholds,
}

/// The sidecar's thresholds, each optional (rates per minute and shares in whole percents,
/// so that every value is an integer or a duration).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosisThresholds {
    /// LoopStalled: share of a window the event loop was stalled, in percent (5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_percent: Option<i32>,
    /// CPUThrottled: share of the app's CFS periods throttled by its CPU limit, in
    /// percent (25; needs `loopHeartbeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_percent: Option<i32>,
    /// AcceptBacklog: connections waiting to be accepted (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_queue: Option<i32>,
    /// SearchAmplification: DNS queries per lookup above this (4; 2 is A and AAAA once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_queries_per_lookup: Option<i32>,
    /// SlowResolution: a lookup slower than this (500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_slow: Option<GoDuration>,
    /// OutboundChurn: new outbound connections a minute above this (60)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_per_minute: Option<i32>,
    /// …most of them living shorter than this (1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_short_lifetime: Option<GoDuration>,
    /// KeepAliveChurn: the app's keep-alive closes a minute above this (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_closes_per_minute: Option<i32>,
    /// CloseWaitLeak: sockets in CLOSE_WAIT at once (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_wait: Option<i32>,
}

impl DiagnosisThresholds {
    pub fn is_empty(&self) -> bool {
        *self == DiagnosisThresholds::default()
    }
}

impl Default for Diagnostics {
    fn default() -> Self {
        Diagnostics {
            enabled: true,
            stall_threshold: default_stall_threshold(),
            port: default_diagnostics_port(),
            image: None,
            loop_heartbeat: false,
            thresholds: DiagnosisThresholds::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_stall_threshold() -> GoDuration {
    GoDuration::from_millis(100)
}

fn default_diagnostics_port() -> i32 {
    9901
}

/// What the operator derived and applied, plus conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiWorkloadStatus {
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Effective worker count and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersStatus>,
    /// Effective timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveTimings>,
    /// Replica counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasStatus>,
    /// The rendered server command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Which autoscaler is in use: `HorizontalPodAutoscaler`, `ScaledObject` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<String>,
    /// Settings that are accepted but probably not what was meant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Reason of the most severe condition (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ready, ConfigConsistent, AutoscalingReady, and the roll-up of the sidecars' pod
    /// conditions (EventLoopResponsive, DNSHealthy, ConnectionsReused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Worker sizing result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersStatus {
    /// Worker processes per pod (`--workers`).
    pub count: i32,
    /// Threads per worker (`--threads`; 1 for async servers).
    pub threads: i32,
    /// `workers.count`, `limits.cpu`, `requests.cpu` or `single-process`.
    pub basis: String,
    /// Cores the count was derived from (rounded half-up, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<i32>,
    /// Most workers `limits.memory` allows, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_cap: Option<i32>,
}

/// Effective timing, as durations (`75s`), and the overload limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimings {
    /// Server keep-alive (`--keep-alive`, `--timeout-keep-alive`).
    pub keep_alive: String,
    /// Longest request the upstream chain allows.
    pub request_timeout: String,
    /// gunicorn `--timeout`.
    pub worker_heartbeat: String,
    /// Time to finish in-flight requests after SIGTERM.
    pub graceful_shutdown: String,
    /// preStop sleep before SIGTERM.
    pub pre_stop_sleep: String,
    /// The pod's terminationGracePeriodSeconds.
    pub termination_grace_period: String,
    /// Time the startup probe allows before liveness applies.
    pub startup_budget: String,
    /// Requests one worker takes on, and what happens beyond (`spec.concurrency`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub concurrency_limit: String,
    /// The listen backlog (`--backlog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i32>,
}

/// Replica counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicasStatus {
    /// Replicas wanted (the Deployment's, at least `minReplicas`).
    pub desired: i32,
    /// Replicas whose pods are ready.
    pub ready: i32,
}

/// A minimal valid spec for unit tests (serde defaults fill the rest, as the
/// apiserver's schema defaults do).
#[cfg(test)]
pub(crate) mod tests_support {
    use super::ApiWorkloadSpec;

    pub fn spec() -> ApiWorkloadSpec {
        serde_json::from_value(serde_json::json!({
            "image": "registry.example/app:1",
            "app": "app.main:app",
            "resources": {"limits": {"cpu": "2", "memory": "2Gi"}}
        }))
        .unwrap()
    }
}
