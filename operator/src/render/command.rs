//! The exec-form server command per server kind, carrying every derived flag.
//!
//! Flags go on the command line rather than in env: an app-bundled `gunicorn.conf.py`
//! silently overrides `WEB_CONCURRENCY`. Exec form (no `sh -c`) so SIGTERM reaches
//! the server.

use crate::{
    api::{ApiWorkloadSpec, ServerKind},
    plan::Plan,
    render::worker_class,
};

/// Where gunicorn keeps worker heartbeat files: the in-memory /tmp (a heartbeat file on
/// overlayfs stalls; the root filesystem is read-only anyway).
pub const WORKER_TMP_DIR: &str = "/tmp";

/// argv for the application container.
pub fn server_command(spec: &ApiWorkloadSpec, plan: &Plan) -> Vec<String> {
    let b = &plan.budget;
    let workers = plan.sizing.workers.to_string();
    let secs = |d: crate::api::GoDuration| d.ceil_secs().to_string();
    let bind = format!("0.0.0.0:{}", spec.port);
    let recycling = spec.recycling.as_ref().filter(|r| r.max_requests > 0);
    let limit = plan.overload.limit.map(|l| l.to_string());
    let backlog = plan.overload.backlog.to_string();
    let mut argv: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| argv.extend(args.iter().map(|a| a.to_string()));

    match spec.server {
        ServerKind::GunicornUvicorn | ServerKind::GunicornSync | ServerKind::GunicornGthread => {
            let own_class = worker_class::needed(spec.server, plan);
            let worker_class = match spec.server {
                // Ours maps --worker-connections to uvicorn's limit, which the
                // uvicorn-worker package (uvicorn.workers.UvicornWorker is deprecated)
                // has no flag for.
                ServerKind::GunicornUvicorn if own_class => worker_class::WORKER_CLASS,
                ServerKind::GunicornUvicorn => "uvicorn_worker.UvicornWorker",
                ServerKind::GunicornGthread => "gthread",
                _ => "sync",
            };
            push(&[
                "gunicorn",
                &spec.app,
                "--worker-class",
                worker_class,
                "--workers",
                &workers,
            ]);
            if own_class {
                push(&["--pythonpath", worker_class::PYTHON_DIR]);
            }
            if spec.server == ServerKind::GunicornGthread {
                push(&["--threads", &plan.sizing.threads.to_string()]);
            }
            // gthread: connections a worker holds; ours: uvicorn's limit. The sync worker
            // serves one request at a time whatever it says.
            if let Some(limit) = limit
                .as_deref()
                .filter(|_| spec.server != ServerKind::GunicornSync)
            {
                push(&["--worker-connections", limit]);
            }
            push(&[
                "--bind",
                &bind,
                "--keep-alive",
                &secs(b.keep_alive),
                // A heartbeat for async workers, the request limit for sync ones.
                "--timeout",
                &secs(b.worker_heartbeat),
                "--graceful-timeout",
                &secs(b.graceful_shutdown),
                "--worker-tmp-dir",
                WORKER_TMP_DIR,
                "--backlog",
                &backlog,
            ]);
            if let Some(r) = recycling {
                push(&[
                    "--max-requests",
                    &r.max_requests.to_string(),
                    "--max-requests-jitter",
                    &r.jitter.to_string(),
                ]);
            }
            push(&["--access-logfile", "-"]);
        }
        ServerKind::Uvicorn => {
            push(&[
                "uvicorn",
                &spec.app,
                "--host",
                "0.0.0.0",
                "--port",
                &spec.port.to_string(),
            ]);
            if plan.sizing.workers > 1 {
                push(&["--workers", &workers]);
            }
            if let Some(limit) = &limit {
                push(&["--limit-concurrency", limit]);
            }
            push(&["--backlog", &backlog]);
            push(&[
                "--timeout-keep-alive",
                &secs(b.keep_alive),
                // uvicorn waits forever by default.
                "--timeout-graceful-shutdown",
                &secs(b.graceful_shutdown),
            ]);
            if let Some(r) = recycling {
                push(&["--limit-max-requests", &r.max_requests.to_string()]);
            }
        }
        ServerKind::Granian => {
            push(&["granian"]);
            // ASGI unless the app says otherwise (`extraArgs: [--interface, wsgi]`): a
            // second --interface would make granian refuse to start.
            if !spec
                .extra_args
                .iter()
                .any(|a| a == "--interface" || a.starts_with("--interface="))
            {
                push(&["--interface", "asgi"]);
            }
            push(&[
                "--host",
                "0.0.0.0",
                "--port",
                &spec.port.to_string(),
                "--workers",
                &workers,
                "--workers-kill-timeout",
                &secs(b.graceful_shutdown),
                "--backlog",
                &backlog,
            ]);
            if let Some(limit) = &limit {
                push(&["--backpressure", limit]);
            }
            push(&[&spec.app]);
        }
        ServerKind::Hypercorn => {
            push(&[
                "hypercorn",
                &spec.app,
                "--bind",
                &bind,
                "--workers",
                &workers,
                "--keep-alive",
                &secs(b.keep_alive),
                "--graceful-timeout",
                &secs(b.graceful_shutdown),
                "--backlog",
                &backlog,
            ]);
            if let Some(r) = recycling {
                push(&["--max-requests", &r.max_requests.to_string()]);
            }
        }
    }
    argv.extend(spec.extra_args.iter().cloned());
    argv
}

/// The argv as one shell-quoted line, for `.status.command` and logs.
pub fn display_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/=@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{Recycling, UpstreamKind, tests_support::spec},
        plan::plan,
    };

    fn argv(s: &ApiWorkloadSpec) -> String {
        display_command(&server_command(s, &plan(s).unwrap()))
    }

    #[test]
    fn gunicorn_uvicorn_carries_every_derived_flag() {
        let mut s = spec();
        s.upstream.kind = UpstreamKind::AwsAlb;
        s.recycling = Some(Recycling {
            max_requests: 10000,
            jitter: 1000,
        });
        assert_eq!(
            argv(&s),
            "gunicorn app.main:app --worker-class apiworkload_uvicorn_worker.UvicornWorker \
             --workers 5 --pythonpath /etc/apiworkload/python --worker-connections 100 \
             --bind 0.0.0.0:8000 --keep-alive 75 --timeout 30 --graceful-timeout 30 \
             --worker-tmp-dir /tmp --backlog 1000 --max-requests 10000 --max-requests-jitter 1000 \
             --access-logfile -"
        );
        // Without a limit, the package's own worker class and no module to load.
        s.concurrency.limit = Some(0);
        assert!(
            argv(&s).starts_with(
                "gunicorn app.main:app --worker-class uvicorn_worker.UvicornWorker --workers 5 --bind"
            ),
            "{}",
            argv(&s)
        );
    }

    #[test]
    fn plain_uvicorn_is_one_process_with_a_bounded_graceful_shutdown() {
        let mut s = spec();
        s.server = ServerKind::Uvicorn;
        assert_eq!(
            argv(&s),
            "uvicorn app.main:app --host 0.0.0.0 --port 8000 --limit-concurrency 100 --backlog 200 \
             --timeout-keep-alive 5 --timeout-graceful-shutdown 30"
        );
    }

    #[test]
    fn gthread_gets_threads_and_extra_args_come_last() {
        let mut s = spec();
        s.server = ServerKind::GunicornGthread;
        s.extra_args = vec!["--log-level".into(), "debug".into()];
        let line = argv(&s);
        assert!(
            line.contains("--worker-class gthread --workers 5 --threads 4"),
            "{line}"
        );
        assert!(line.ends_with("--log-level debug"), "{line}");
    }

    #[test]
    fn every_server_kind_renders_its_binary_and_the_port() {
        for kind in ServerKind::ALL {
            let mut s = spec();
            s.server = kind;
            s.port = 8080;
            let line = argv(&s);
            let binary = line.split(' ').next().unwrap();
            assert!(
                ["gunicorn", "uvicorn", "granian", "hypercorn"].contains(&binary),
                "{line}"
            );
            assert!(line.contains("8080"), "{line}");
        }
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        assert_eq!(
            display_command(&["a b".into(), "it's".into(), "x".into()]),
            r"'a b' 'it'\''s' x"
        );
    }

    #[test]
    fn granian_serves_asgi_unless_extra_args_name_the_interface() {
        let mut s = spec();
        s.server = ServerKind::Granian;
        assert!(
            argv(&s).starts_with("granian --interface asgi"),
            "{}",
            argv(&s)
        );
        s.extra_args = vec!["--interface".into(), "wsgi".into()];
        let wsgi = argv(&s);
        assert_eq!(wsgi.matches("--interface").count(), 1, "{wsgi}");
        assert!(wsgi.ends_with("--interface wsgi"), "{wsgi}");
    }
}
