//! Pure rendering: an `ApiWorkload` and its [`Plan`] → the typed objects the cluster
//! should hold. No I/O; the controller applies the result with server-side apply.

pub mod autoscaling;
pub mod command;
pub mod deployment;
pub mod identity;
pub mod python_modules;
pub mod service;
pub mod worker_class;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::RoleBinding,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{api::ApiWorkload, plan::Plan};

/// Label on every child and pod: which ApiWorkload it belongs to (also the selector).
pub const WORKLOAD_LABEL: &str = "apiworkload.io/workload";
/// Name of the application container.
pub const APP_CONTAINER: &str = "app";
/// Name of the diagnostics sidecar container.
pub const SIDECAR_CONTAINER: &str = "apiworkload-sidecar";

/// Cluster facts and operator settings rendering depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderContext {
    /// Default sidecar image (`--sidecar-image`).
    pub sidecar_image: String,
    /// Whether KEDA's ScaledObject CRD is served.
    pub keda_available: bool,
    /// Prometheus base URL for KEDA triggers.
    pub prometheus_address: String,
    /// ClusterRole bound to each workload's ServiceAccount for the sidecar (the chart's).
    pub sidecar_cluster_role: String,
}

impl Default for RenderContext {
    fn default() -> Self {
        RenderContext {
            sidecar_image: "ghcr.io/apiworkload/apiworkload-sidecar:latest".into(),
            keda_available: false,
            prometheus_address: "http://prometheus-operated.monitoring.svc:9090".into(),
            sidecar_cluster_role: "apiworkload-sidecar".into(),
        }
    }
}

/// Which autoscaler the workload gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Autoscaler {
    /// `minReplicas == maxReplicas`: the Deployment carries the replica count.
    None,
    Hpa(Box<HorizontalPodAutoscaler>),
    /// KEDA `keda.sh/v1alpha1` ScaledObject (no Rust types are published for it).
    ScaledObject(serde_json::Value),
}

impl Autoscaler {
    pub fn kind(&self) -> &'static str {
        match self {
            Autoscaler::None => "None",
            Autoscaler::Hpa(_) => "HorizontalPodAutoscaler",
            Autoscaler::ScaledObject(_) => "ScaledObject",
        }
    }
}

/// The desired children of one ApiWorkload.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: Option<PodDisruptionBudget>,
    pub autoscaler: Autoscaler,
    /// The sidecar's ServiceAccount and RoleBinding (None without diagnostics).
    pub identity: Option<(ServiceAccount, RoleBinding)>,
    /// Why the autoscaler is what it is (for the AutoscalingReady condition).
    pub autoscaling_note: autoscaling::Note,
    pub command: Vec<String>,
}

/// Renders every child. Infallible: all checks happened in [`crate::plan::plan`].
pub fn render(aw: &ApiWorkload, plan: &Plan, ctx: &RenderContext) -> Rendered {
    let command = command::server_command(&aw.spec, plan);
    let (autoscaler, autoscaling_note) = autoscaling::autoscaler(aw, plan, ctx);
    let fixed_replicas =
        matches!(autoscaler, Autoscaler::None).then_some(aw.spec.scaling.min_replicas);
    Rendered {
        deployment: deployment::deployment(aw, plan, ctx, &command, fixed_replicas),
        service: service::service(aw),
        pdb: service::pdb(aw),
        autoscaler,
        identity: aw.spec.diagnostics.enabled.then(|| {
            (
                identity::service_account(aw),
                identity::role_binding(aw, ctx),
            )
        }),
        autoscaling_note,
        command,
    }
}

/// Labels that select this workload's pods.
pub fn selector_labels(aw: &ApiWorkload) -> BTreeMap<String, String> {
    BTreeMap::from([(WORKLOAD_LABEL.to_string(), aw.name_any())])
}

/// Labels on every child.
pub fn labels(aw: &ApiWorkload) -> BTreeMap<String, String> {
    let mut l = selector_labels(aw);
    l.insert("app.kubernetes.io/name".into(), aw.name_any());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "apiworkload-operator".into(),
    );
    l
}

/// Metadata for a child: same name and namespace, our labels, a controller owner
/// reference (garbage collection deletes children with the ApiWorkload).
pub fn child_meta(aw: &ApiWorkload) -> ObjectMeta {
    ObjectMeta {
        name: Some(aw.name_any()),
        namespace: aw.namespace(),
        labels: Some(labels(aw)),
        owner_references: owner_reference(aw).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Ceiling division for non-negative counts (signed `div_ceil` is unstable), without
/// overflow at `i32::MAX`.
pub(crate) fn div_ceil(a: i32, b: i32) -> i32 {
    a / b + i32::from(a % b != 0)
}

fn owner_reference(aw: &ApiWorkload) -> Option<OwnerReference> {
    aw.controller_owner_ref(&())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::api::{ApiWorkloadSpec, tests_support::spec};

    pub fn workload(spec: ApiWorkloadSpec) -> ApiWorkload {
        let mut aw = ApiWorkload::new("search-api", spec);
        aw.metadata.namespace = Some("prod".into());
        aw.metadata.uid = Some("6f1c1d2e-0000-4000-8000-000000000001".into());
        aw
    }

    pub fn rendered(spec: ApiWorkloadSpec) -> Rendered {
        let aw = workload(spec);
        let plan = crate::plan::plan(&aw.spec).unwrap();
        render(&aw, &plan, &RenderContext::default())
    }

    pub fn default_rendered() -> Rendered {
        rendered(spec())
    }
}
