//! HPA (`autoscaling/v2`) or KEDA ScaledObject. In-flight requests per pod against
//! `workers × perWorkerConcurrency × target` is the primary signal: CPU lags for async
//! I/O services (CPU 18 % while p99 goes from 150 ms to 4 s). CPU stays as a backstop.

use k8s_openapi::{
    api::autoscaling::v2::{
        CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
        HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
        MetricTarget, PodsMetricSource, ResourceMetricSource,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::ResourceExt;
use serde_json::json;

use super::{APP_CONTAINER, Autoscaler, RenderContext, child_meta};
use crate::{
    api::{ApiWorkload, ScalingMetric},
    plan::Plan,
};

/// CPU utilization (of the request) at which the backstop scales out.
pub const CPU_BACKSTOP_PERCENT: i32 = 85;
/// Scale-down waits this long for load to stay low (DOMAIN.md §4), unless
/// `scaling.scaleDownWindow` says otherwise.
pub const SCALE_DOWN_WINDOW_SECONDS: i32 = 300;

/// The scale-down stabilization window of a spec, in seconds.
pub fn scale_down_window(spec: &crate::api::ApiWorkloadSpec) -> i32 {
    spec.scaling
        .scale_down_window
        .map_or(SCALE_DOWN_WINDOW_SECONDS, |w| w.ceil_secs_i32())
}

/// Why the autoscaler was chosen; becomes the AutoscalingReady condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// In-flight requests one pod should carry at the target.
pub fn inflight_target_per_pod(plan: &Plan, target: f64) -> f64 {
    let capacity = f64::from(plan.sizing.workers) * f64::from(plan.per_worker_concurrency);
    (capacity * target * 100.0).round() / 100.0
}

fn format_number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Fast but capped scale-up (at most double, at most +4 pods per 15 s); slow scale-down,
/// after `scale_down_window_seconds` of low load.
pub fn behavior(scale_down_window_seconds: i32) -> HorizontalPodAutoscalerBehavior {
    let policy = |type_: &str, value, period| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: period,
    };
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Min".into()),
            policies: Some(vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
            tolerance: None,
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(scale_down_window_seconds),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 20, 60)]),
            tolerance: None,
        }),
    }
}

fn cpu_metric() -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(CPU_BACKSTOP_PERCENT),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

fn hpa(aw: &ApiWorkload, metrics: Vec<MetricSpec>) -> HorizontalPodAutoscaler {
    let s = &aw.spec.scaling;
    HorizontalPodAutoscaler {
        metadata: child_meta(aw),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: aw.name_any(),
            },
            // The HPA cannot scale to zero (KEDA can).
            min_replicas: Some(s.min_replicas.max(1)),
            max_replicas: s.max_replicas,
            metrics: Some(metrics),
            behavior: Some(behavior(scale_down_window(&aw.spec))),
        }),
        status: None,
    }
}

/// The gauge apps commonly export (prometheus-fastapi-instrumentator), used when the
/// spec names none and there is no sidecar to measure.
pub const APP_INFLIGHT_METRIC: &str = "http_requests_inprogress";

/// Where the in-flight signal comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightSource {
    /// The diagnostics sidecar's measurement: no app change.
    Sidecar,
    /// A gauge the app exports.
    App(String),
}

impl InflightSource {
    pub fn of(spec: &crate::api::ApiWorkloadSpec) -> InflightSource {
        match (&spec.scaling.inflight_metric, spec.diagnostics.enabled) {
            (Some(name), _) => InflightSource::App(name.clone()),
            (None, true) => InflightSource::Sidecar,
            (None, false) => InflightSource::App(APP_INFLIGHT_METRIC.into()),
        }
    }

    /// The metric name a custom metrics adapter serves for the HPA's Pods metric.
    pub fn pods_metric(&self) -> &str {
        match self {
            InflightSource::Sidecar => apiworkload_contract::INFLIGHT_GAUGE,
            InflightSource::App(name) => name,
        }
    }

    fn describe(&self) -> String {
        match self {
            InflightSource::Sidecar => "in-flight requests measured by the sidecar".into(),
            InflightSource::App(name) => format!("the app's {name} gauge"),
        }
    }
}

/// PromQL for the workload's in-flight requests, scoped to its own pods. The sidecar's
/// is the average over the last minute (its time integral's rate), not the last
/// scraped sample.
pub fn inflight_query(aw: &ApiWorkload) -> String {
    let selector = format!(
        "{{namespace=\"{ns}\",pod=~\"{name}-[a-z0-9]+-[a-z0-9]+\"}}",
        ns = aw.namespace().unwrap_or_default(),
        name = aw.name_any()
    );
    match InflightSource::of(&aw.spec) {
        InflightSource::Sidecar => format!(
            "sum(rate({}{selector}[1m]))",
            apiworkload_contract::INFLIGHT_SECONDS
        ),
        InflightSource::App(metric) => format!("sum({metric}{selector})"),
    }
}

/// `cpu_backstop`: a CPU trigger on the app container beside the query's, as the HPA path
/// has (KEDA scales on the larger of the two; its fallback still applies, the query's
/// being `AverageValue`).
fn scaled_object(
    aw: &ApiWorkload,
    ctx: &RenderContext,
    query: String,
    threshold: String,
    cpu_backstop: bool,
) -> serde_json::Value {
    let s = &aw.spec.scaling;
    let meta = child_meta(aw);
    // If Prometheus is unreachable, hold the middle of the range instead of letting the
    // workload fall to its minimum at peak.
    let fallback_replicas = super::div_ceil(s.min_replicas + s.max_replicas, 2).max(1);
    let mut triggers = vec![json!({
        "type": "prometheus",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": ctx.prometheus_address,
            "query": query,
            "threshold": threshold,
            // A missing series is an error (so the fallback applies), not zero load.
            "ignoreNullValues": "false",
        },
    })];
    if cpu_backstop {
        // The app container's CPU against its own request: the sidecar's is not load.
        triggers.push(json!({
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": CPU_BACKSTOP_PERCENT.to_string(), "containerName": APP_CONTAINER},
        }));
    }
    json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": aw.name_any()},
            "minReplicaCount": s.min_replicas,
            "maxReplicaCount": s.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": scale_down_window(&aw.spec),
            // Hold the current replicas: not the minimum during an outage at peak, and not
            // the middle of the range for a new workload whose series Prometheus has not
            // scraped yet (`replicas` only if the current count cannot be read).
            "fallback": {"failureThreshold": 3, "replicas": fallback_replicas, "behavior": "currentReplicas"},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(scale_down_window(&aw.spec))}},
            "triggers": triggers,
        },
    })
}

/// Chooses and renders the autoscaler.
pub fn autoscaler(aw: &ApiWorkload, plan: &Plan, ctx: &RenderContext) -> (Autoscaler, Note) {
    let s = &aw.spec.scaling;
    if s.min_replicas == s.max_replicas {
        return (
            Autoscaler::None,
            Note {
                ready: true,
                reason: "FixedReplicas",
                message: format!("{} replicas, no autoscaler", s.min_replicas),
            },
        );
    }
    let per_pod = format_number(inflight_target_per_pod(plan, s.target));
    let source = InflightSource::of(&aw.spec);
    match (s.metric, ctx.keda_available) {
        (ScalingMetric::Cpu, _) => (
            Autoscaler::Hpa(Box::new(hpa(aw, vec![MetricSpec {
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some((s.target * 100.0).round() as i32),
                        ..Default::default()
                    },
                }),
                ..cpu_metric()
            }]))),
            Note {
                ready: true,
                reason: "CPUUtilization",
                message: "HPA on CPU utilization of the request; CPU lags for async I/O services, consider metric: inflight".into(),
            },
        ),
        (ScalingMetric::Inflight, true) => (
            Autoscaler::ScaledObject(scaled_object(aw, ctx, inflight_query(aw), per_pod.clone(), true)),
            Note {
                ready: true,
                reason: "KEDAInflight",
                message: format!(
                    "KEDA ScaledObject on {}, {per_pod} per pod, with a CPU backstop at {CPU_BACKSTOP_PERCENT}%",
                    source.describe()
                ),
            },
        ),
        (ScalingMetric::Custom, true) => (
            Autoscaler::ScaledObject(scaled_object(
                aw,
                ctx,
                s.query.clone().unwrap_or_default(),
                s.query_target.clone().unwrap_or_default(),
                false,
            )),
            Note { ready: true, reason: "KEDACustomQuery", message: "KEDA ScaledObject on the custom query".into() },
        ),
        (ScalingMetric::Inflight, false) => (
            Autoscaler::Hpa(Box::new(hpa(aw, vec![
                MetricSpec {
                    type_: "Pods".into(),
                    pods: Some(PodsMetricSource {
                        metric: MetricIdentifier { name: source.pods_metric().into(), selector: None },
                        target: MetricTarget {
                            type_: "AverageValue".into(),
                            average_value: Some(Quantity(per_pod.clone())),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                },
                cpu_metric(),
            ]))),
            Note {
                ready: true,
                reason: "KEDANotInstalled",
                message: format!(
                    "KEDA is not installed: HPA on the {} pods metric ({}, {per_pod} per pod; needs a custom metrics adapter) with a CPU backstop at {CPU_BACKSTOP_PERCENT}%",
                    source.pods_metric(),
                    source.describe()
                ),
            },
        ),
        (ScalingMetric::Custom, false) => (
            Autoscaler::Hpa(Box::new(hpa(aw, vec![cpu_metric()]))),
            Note {
                ready: false,
                reason: "KEDANotInstalled",
                message: format!("spec.scaling.metric custom needs KEDA, which is not installed: only the CPU backstop ({CPU_BACKSTOP_PERCENT}%) scales this workload"),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::tests_support::spec,
        plan::plan,
        render::test_support::{rendered, workload},
    };

    #[test]
    fn inflight_without_keda_is_an_hpa_with_cpu_backstop_and_behavior() {
        let r = rendered(spec());
        let Autoscaler::Hpa(h) = &r.autoscaler else {
            panic!("want HPA")
        };
        let hs = h.spec.as_ref().unwrap();
        let metrics = hs.metrics.as_ref().unwrap();
        assert_eq!(metrics[0].type_, "Pods");
        assert_eq!(
            metrics[0].pods.as_ref().unwrap().metric.name,
            "apiworkload_sidecar_inflight_requests",
            "the sidecar measures in-flight requests when the spec names no gauge"
        );
        // 5 workers × 10 × 0.7
        assert_eq!(
            metrics[0].pods.as_ref().unwrap().target.average_value,
            Some(Quantity("35".into()))
        );
        assert_eq!(metrics[1].resource.as_ref().unwrap().name, "cpu");
        let b = hs.behavior.as_ref().unwrap();
        assert_eq!(
            b.scale_down.as_ref().unwrap().stabilization_window_seconds,
            Some(300)
        );
        assert_eq!(r.autoscaling_note.reason, "KEDANotInstalled");
        assert!(
            r.deployment.spec.unwrap().replicas.is_none(),
            "the HPA owns replicas"
        );
    }

    #[test]
    fn keda_scaled_object_has_fallback_and_no_null_masking() {
        let aw = workload(spec());
        let p = plan(&aw.spec).unwrap();
        let ctx = RenderContext {
            keda_available: true,
            ..Default::default()
        };
        let (Autoscaler::ScaledObject(so), _) = autoscaler(&aw, &p, &ctx) else {
            panic!("want KEDA")
        };
        let trigger = &so["spec"]["triggers"][0]["metadata"];
        assert_eq!(trigger["ignoreNullValues"], "false");
        assert!(
            trigger["query"]
                .as_str()
                .unwrap()
                .contains(r#"namespace="prod",pod=~"search-api-"#)
        );
        assert_eq!(so["spec"]["fallback"]["replicas"], 6);
        assert_eq!(so["spec"]["fallback"]["behavior"], "currentReplicas");
        assert_eq!(
            trigger["query"],
            r#"sum(rate(apiworkload_sidecar_inflight_request_seconds_total{namespace="prod",pod=~"search-api-[a-z0-9]+-[a-z0-9]+"}[1m]))"#
        );
        assert_eq!(so["metadata"]["ownerReferences"][0]["kind"], "ApiWorkload");
        // The CPU backstop the HPA path has, beside the in-flight query.
        assert_eq!(
            so["spec"]["triggers"][1],
            json!({"type": "cpu", "metricType": "Utilization",
                   "metadata": {"value": "85", "containerName": "app"}})
        );
        assert_eq!(so["spec"]["triggers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_in_flight_signal_is_the_apps_gauge_when_named_or_without_a_sidecar() {
        let query = |s| inflight_query(&workload(s));
        let mut named = spec();
        named.scaling.inflight_metric = Some("app_inflight".into());
        assert!(query(named).starts_with("sum(app_inflight{namespace="));
        let mut no_sidecar = spec();
        no_sidecar.diagnostics.enabled = false;
        assert!(query(no_sidecar.clone()).starts_with("sum(http_requests_inprogress{"));
        assert_eq!(
            InflightSource::of(&no_sidecar).pods_metric(),
            APP_INFLIGHT_METRIC
        );
    }

    #[test]
    fn the_scale_down_window_follows_the_spec() {
        let window = |r: &crate::render::Rendered| {
            let Autoscaler::Hpa(h) = &r.autoscaler else {
                panic!("want HPA")
            };
            let b = h.spec.as_ref().unwrap().behavior.clone().unwrap();
            b.scale_down.unwrap().stabilization_window_seconds
        };
        assert_eq!(window(&rendered(spec())), Some(300));
        let mut short = spec();
        short.scaling.scale_down_window = Some(crate::api::GoDuration::from_secs(20));
        assert_eq!(window(&rendered(short)), Some(20));
    }

    #[test]
    fn fixed_size_has_no_autoscaler_and_sets_replicas() {
        let mut s = spec();
        s.scaling.min_replicas = 3;
        s.scaling.max_replicas = 3;
        let r = rendered(s);
        assert_eq!(r.autoscaler, Autoscaler::None);
        assert_eq!(r.deployment.spec.unwrap().replicas, Some(3));
    }
}
