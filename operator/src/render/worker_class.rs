//! The operator's uvicorn worker class for gunicorn-uvicorn: uvicorn-worker has no flag
//! for uvicorn's concurrency limit, so this subclass applies gunicorn's own
//! `--worker-connections` (see `python/apiworkload_uvicorn_worker.py`).
//!
//! The module travels in the pod template's annotation and reaches the app container as
//! a downward API file: no ConfigMap to own, watch and keep in step, the pods that run
//! it carry it, and a change to it rolls the pods like any template change.

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, ObjectFieldSelector, Volume, VolumeMount,
};

use crate::{api::ServerKind, plan::Plan};

/// The module's source.
pub const MODULE_SOURCE: &str = include_str!("python/apiworkload_uvicorn_worker.py");
/// The pod annotation holding it.
pub const ANNOTATION: &str = "apiworkload.io/uvicorn-worker";
/// gunicorn's `--worker-class`.
pub const WORKER_CLASS: &str = "apiworkload_uvicorn_worker.UvicornWorker";
/// The directory gunicorn's `--pythonpath` adds.
pub const PYTHON_DIR: &str = "/etc/apiworkload/python";
/// The volume's name (reserved in `spec.volumes`).
pub const VOLUME: &str = "apiworkload-python";

/// Whether the pods need the module: gunicorn-uvicorn with a concurrency limit.
pub fn needed(server: ServerKind, plan: &Plan) -> bool {
    server == ServerKind::GunicornUvicorn && plan.overload.limit.is_some()
}

/// The downward API volume that writes the annotation out as the module.
pub fn volume() -> Volume {
    Volume {
        name: VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "apiworkload_uvicorn_worker.py".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{ANNOTATION}']"),
                    api_version: None,
                }),
                ..Default::default()
            }]),
            // Readable by the app's UID, whatever the pod's fsGroup.
            default_mode: Some(0o444),
        }),
        ..Default::default()
    }
}

/// The app container's read-only mount of it.
pub fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME.into(),
        mount_path: PYTHON_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }
}
