//! The sidecar's identity: a ServiceAccount per workload (token automount off, so the
//! app container gets no credentials), a RoleBinding to the chart's `apiworkload-sidecar`
//! ClusterRole (`patch pods/status`, narrowed to the own pod by an admission policy),
//! and the projected token volume mounted into the sidecar only.

use k8s_openapi::api::{
    core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
        ObjectFieldSelector, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection,
        Volume, VolumeMount, VolumeProjection,
    },
    rbac::v1::{RoleBinding, RoleRef, Subject},
};
use kube::ResourceExt;

use super::{RenderContext, child_meta};
use crate::api::ApiWorkload;

/// Volume holding the sidecar's token, CA and namespace.
pub const TOKEN_VOLUME: &str = "apiworkload-sidecar-token";
/// Where client libraries look for in-cluster credentials.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// An hour, as the kubelet's own projected tokens; the kubelet refreshes it at 80 %.
const TOKEN_SECONDS: i64 = 3600;

/// The pods' ServiceAccount (same name as the workload).
pub fn service_account(aw: &ApiWorkload) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(aw),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Binds the sidecar ClusterRole to the workload's ServiceAccount, in its namespace.
pub fn role_binding(aw: &ApiWorkload, ctx: &RenderContext) -> RoleBinding {
    RoleBinding {
        metadata: child_meta(aw),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: ctx.sidecar_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: aw.name_any(),
            namespace: aw.namespace(),
            api_group: None,
        }]),
    }
}

/// A bound token (it names the pod, and dies with it), the cluster CA and the namespace:
/// the files an in-cluster client expects.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

pub fn token_mount() -> VolumeMount {
    VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::default_rendered;

    #[test]
    fn the_token_reaches_the_sidecar_only() {
        let r = default_rendered();
        let pod = r.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("search-api"));
        let mounts = |c: &k8s_openapi::api::core::v1::Container| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == TOKEN_VOLUME)
        };
        assert!(mounts(&pod.init_containers.unwrap()[0]), "sidecar");
        assert!(!mounts(&pod.containers[0]), "app");
        let identity = r.identity.unwrap();
        assert_eq!(identity.1.role_ref.name, "apiworkload-sidecar");
        assert_eq!(
            identity.1.subjects.unwrap()[0].name,
            identity.0.metadata.name.unwrap()
        );
    }
}
