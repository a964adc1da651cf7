//! The Service in front of the pods and the PodDisruptionBudget that keeps capacity
//! during voluntary disruptions.

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{child_meta, selector_labels};
use crate::api::ApiWorkload;

/// ClusterIP Service: `http` on the app port, plus `diagnostics` for scraping the sidecar.
pub fn service(aw: &ApiWorkload) -> Service {
    let spec = &aw.spec;
    let mut ports = vec![ServicePort {
        name: Some("http".into()),
        port: spec.port,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    if spec.diagnostics.enabled {
        ports.push(ServicePort {
            name: Some("diagnostics".into()),
            port: spec.diagnostics.port,
            target_port: Some(IntOrString::String("diagnostics".into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    Service {
        metadata: child_meta(aw),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(aw)),
            ports: Some(ports),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// A PDB when at least two replicas are promised: at most one pod below the floor is
/// evicted at a time. None for single-replica workloads (a PDB would block node drains).
pub fn pdb(aw: &ApiWorkload) -> Option<PodDisruptionBudget> {
    let min = aw.spec.scaling.min_replicas;
    (min >= 2).then(|| PodDisruptionBudget {
        metadata: child_meta(aw),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min - 1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(aw)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::{api::tests_support::spec, render::test_support::rendered};

    #[test]
    fn service_selects_the_pods_and_exposes_diagnostics() {
        let r = rendered(spec());
        let svc = r.service.spec.unwrap();
        let pod_labels = r
            .deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        for (k, v) in svc.selector.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
        let names: Vec<_> = svc
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["http", "diagnostics"]);
    }

    #[test]
    fn pdb_only_from_two_replicas() {
        let mut s = spec();
        assert!(rendered(s.clone()).pdb.is_some());
        s.scaling.min_replicas = 1;
        assert!(rendered(s).pdb.is_none());
    }
}
