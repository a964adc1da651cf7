//! `apiworkload-operator`: wires the admin server (/metrics, /healthz, /readyz), leader
//! election and the controller together.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use apiworkload_operator::{
    api::ApiWorkload,
    controller::{self, Context},
    leader::{LeaderElector, Leadership},
    metrics::Metrics,
    render::RenderContext,
};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use clap::Parser;
use kube::{Api, Client, api::ListParams};
use tracing::{error, info, warn};

/// Reconciles ApiWorkloads into Python API servers whose workers, timeouts, probes, DNS
/// and autoscaling fit their pods.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Image of the diagnostics sidecar injected into each workload's pods.
    #[arg(
        long,
        env = "APIW_SIDECAR_IMAGE",
        default_value = "ghcr.io/apiworkload/apiworkload-sidecar:latest"
    )]
    sidecar_image: String,
    /// Prometheus base URL that KEDA triggers query.
    #[arg(
        long,
        env = "APIW_PROMETHEUS_ADDRESS",
        default_value = "http://prometheus-operated.monitoring.svc:9090"
    )]
    prometheus_address: String,
    /// ClusterRole bound to each workload's ServiceAccount so its sidecar can write pod
    /// conditions (installed by the chart).
    #[arg(
        long,
        env = "APIW_SIDECAR_CLUSTER_ROLE",
        default_value = "apiworkload-sidecar"
    )]
    sidecar_cluster_role: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "APIW_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Hold a Lease before reconciling (required with more than one replica).
    #[arg(long, env = "APIW_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Reconciles in flight at once (each holds one connection to the API server).
    #[arg(long, env = "APIW_CONCURRENCY", default_value_t = controller::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Log format: text or json.
    #[arg(long, env = "APIW_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

async fn ready_handler(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

// One thread: reconciles wait on the API server, not on CPU, and a multi-threaded
// runtime spent a fifth of the operator's CPU on waking its threads (futex, eventfd,
// context switches: perf during the scale benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (KUBECONFIG or in-cluster)")?;
    // Metadata only: one undecodable object must not stop the operator from starting.
    Api::<ApiWorkload>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .context("the ApiWorkload CRD is not installed or not readable: kubectl apply -f crds/")?;

    let metrics = Metrics::default();
    let admin = Admin {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(admin.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    info!(listen = %args.listen, "admin server listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "admin server stopped");
        }
    });

    let render = RenderContext {
        sidecar_image: args.sidecar_image,
        prometheus_address: args.prometheus_address,
        sidecar_cluster_role: args.sidecar_cluster_role,
        keda_available: false,
    };
    let leadership = if args.leader_elect {
        Leadership::elected()
    } else {
        Leadership::default()
    };
    let mut ctx = Context::new(client.clone(), metrics.clone(), render);
    if let Some(c) = Arc::get_mut(&mut ctx) {
        c.concurrency = args.concurrency;
        c.leadership = leadership.clone();
    }
    // Standbys are ready too: readiness means "healthy", leadership is in the metric.
    admin.ready.store(true, Ordering::Relaxed);

    // On SIGTERM the controller finishes the reconciles in flight; whatever it waits on
    // (an API server that does not answer, a watch in backoff), the process exits in time.
    let deadline = async {
        apiworkload_contract::shutdown::signal().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        warn!(grace = ?SHUTDOWN_GRACE, "not stopped within the grace period; exiting");
    };
    if !args.leader_elect {
        metrics.set_leader(true);
        tokio::select! {
            _ = controller::run(ctx) => {}
            _ = deadline => {}
        }
        return Ok(());
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let elector = LeaderElector::new(
        client,
        &args.lease_namespace,
        "apiworkload-operator",
        identity,
    );
    tokio::select! {
        _ = elector.acquire(&leadership) => {}
        _ = apiworkload_contract::shutdown::signal() => return Ok(()),
    }
    metrics.set_leader(true);
    tokio::select! {
        _ = controller::run(ctx) => elector.release().await,
        _ = deadline => elector.release().await,
        _ = elector.keep_renewing(&leadership) => {
            metrics.set_leader(false);
            // Another replica reconciles now; exit so this one restarts as a standby.
            anyhow::bail!("leadership lost");
        }
    }
    Ok(())
}

/// How long the controller may take to stop after SIGTERM before the process exits anyway
/// (well inside the chart's 30 s termination grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into())
}
