//! The operator's uvicorn worker class for gunicorn-uvicorn: uvicorn-worker has no flag
//! for uvicorn's concurrency limit, so this subclass applies gunicorn's own
//! `--worker-connections` (see `python/apiworkload_uvicorn_worker.py`).
//!
//! The module reaches the app container like the operator's other Python modules
//! ([`super::python_modules`]).

use crate::{api::ServerKind, plan::Plan};

/// The module's source.
pub const MODULE_SOURCE: &str = include_str!("python/apiworkload_uvicorn_worker.py");
/// The pod annotation holding it.
pub const ANNOTATION: &str = "apiworkload.io/uvicorn-worker";
/// gunicorn's `--worker-class`.
pub const WORKER_CLASS: &str = "apiworkload_uvicorn_worker.UvicornWorker";
/// The directory gunicorn's `--pythonpath` adds (where the modules are).
pub const PYTHON_DIR: &str = "/etc/apiworkload/python";
/// The volume's name (reserved in `spec.volumes`).
pub const VOLUME: &str = "apiworkload-python";

/// Whether the pods need the module: gunicorn-uvicorn with a concurrency limit.
pub fn needed(server: ServerKind, plan: &Plan) -> bool {
    server == ServerKind::GunicornUvicorn && plan.overload.limit.is_some()
}
