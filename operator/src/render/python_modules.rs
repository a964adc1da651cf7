//! Python modules the operator puts on the app's path, at `/etc/apiworkload/python`:
//! its uvicorn worker class (gunicorn-uvicorn with a concurrency limit, see
//! [`super::worker_class`]) and, with `spec.diagnostics.loopHeartbeat`, the event-loop
//! heartbeat with the `sitecustomize` module that starts it in every worker
//! (`sidecar/python/`), so the sidecar measures every worker's stalls without a change to
//! the app.
//!
//! Each module travels in the pod template's annotation and reaches the app container
//! as a downward API file: no ConfigMap to own, watch and keep in step, the pods that run
//! it carry it, and a change to it rolls the pods like any template change.

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ObjectFieldSelector, Volume,
    VolumeMount,
};

use super::worker_class;
use crate::{api::ApiWorkloadSpec, plan::Plan};

/// One module: its file name on the path, the annotation that carries it, its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub file: &'static str,
    pub annotation: &'static str,
    pub source: &'static str,
}

/// The operator's uvicorn worker class.
pub const WORKER_CLASS: Module = Module {
    file: "apiworkload_uvicorn_worker.py",
    annotation: worker_class::ANNOTATION,
    source: worker_class::MODULE_SOURCE,
};

/// The heartbeat itself (the same module an app can call from its lifespan).
pub const HEARTBEAT: Module = Module {
    file: "apiworkload_heartbeat.py",
    annotation: "apiworkload.io/loop-heartbeat",
    source: include_str!("../../../sidecar/python/apiworkload_heartbeat.py"),
};

/// What starts it in every worker: Python imports `sitecustomize` at start-up.
pub const SITECUSTOMIZE: Module = Module {
    file: "sitecustomize.py",
    annotation: "apiworkload.io/sitecustomize",
    source: include_str!("../../../sidecar/python/sitecustomize.py"),
};

/// The directory on the path.
pub const PYTHON_DIR: &str = worker_class::PYTHON_DIR;
/// The volume's name (reserved in `spec.volumes`).
pub const VOLUME: &str = worker_class::VOLUME;

/// Whether the pods run the no-code heartbeat: asked for, with the sidecar that receives
/// it, on a server with an event loop (admission refuses the rest).
pub fn loop_heartbeat(spec: &ApiWorkloadSpec) -> bool {
    spec.diagnostics.loop_heartbeat && spec.diagnostics.enabled && spec.server.is_async()
}

/// The modules the pods need.
pub fn modules(spec: &ApiWorkloadSpec, plan: &Plan) -> Vec<Module> {
    let mut modules = Vec::new();
    if worker_class::needed(spec.server, plan) {
        modules.push(WORKER_CLASS);
    }
    if loop_heartbeat(spec) {
        modules.extend([HEARTBEAT, SITECUSTOMIZE]);
    }
    modules
}

/// The downward API volume that writes the annotations out as the modules.
pub fn volume(modules: &[Module]) -> Option<Volume> {
    (!modules.is_empty()).then(|| Volume {
        name: VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(
                modules
                    .iter()
                    .map(|m| DownwardAPIVolumeFile {
                        path: m.file.into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: format!("metadata.annotations['{}']", m.annotation),
                            api_version: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            // Readable by the app's UID, whatever the pod's fsGroup.
            default_mode: Some(0o444),
        }),
        ..Default::default()
    })
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

/// `PYTHONPATH` for `sitecustomize` (read at interpreter start-up, before any server
/// flag): the directory, ahead of the value `spec.env` gives it, if any. It replaces a
/// `PYTHONPATH` the image sets (the pod's env wins), which the status warns of.
pub fn pythonpath(spec: &ApiWorkloadSpec) -> Option<EnvVar> {
    if !loop_heartbeat(spec) {
        return None;
    }
    let theirs = spec.env.iter().find(|e| e.name == "PYTHONPATH");
    let value = match theirs.and_then(|e| e.value.as_deref()) {
        Some(v) if !v.is_empty() => format!("{PYTHON_DIR}:{v}"),
        _ => PYTHON_DIR.to_string(),
    };
    Some(EnvVar {
        name: "PYTHONPATH".into(),
        value: Some(value),
        value_from: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_are_the_sidecars_python_files() {
        assert!(HEARTBEAT.source.contains("def start("));
        assert!(SITECUSTOMIZE.source.contains("_set_running_loop"));
        assert!(SITECUSTOMIZE.source.contains("apiworkload_heartbeat"));
    }
}
