//! The sidecar's tasks run for the life of the process. One that ends or panics would
//! leave `/healthz` answering ok over a sidecar that measures nothing, so the process
//! exits non-zero instead and the kubelet restarts the (native) sidecar.

use std::future::Future;

use tokio::task::JoinSet;

/// `task`, returning its name when it ends (which it never should).
pub async fn named(name: &'static str, task: impl Future<Output = ()>) -> &'static str {
    task.await;
    name
}

/// Waits for `stop` (Ok: a clean shutdown) or for the first task to end (Err, naming it).
pub async fn supervise(
    mut tasks: JoinSet<&'static str>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::select! {
        () = stop => Ok(()),
        ended = tasks.join_next() => match ended {
            Some(Ok(name)) => anyhow::bail!("the {name} task ended; exiting so that the sidecar is restarted"),
            Some(Err(e)) => anyhow::bail!("a task failed ({e}); exiting so that the sidecar is restarted"),
            None => anyhow::bail!("no task to run"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forever() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_task_that_ends_stops_the_process_with_its_name() {
        let mut tasks = JoinSet::new();
        tasks.spawn(named("canary", forever()));
        tasks.spawn(named("socket watcher", async {}));
        let err = supervise(tasks, forever()).await.unwrap_err();
        assert!(err.to_string().contains("socket watcher"), "{err}");
    }

    #[tokio::test]
    async fn a_task_that_panics_stops_the_process() {
        let mut tasks = JoinSet::new();
        tasks.spawn(named("canary", forever()));
        #[allow(clippy::panic)]
        tasks.spawn(named("conditions", async { panic!("poisoned") }));
        let err = supervise(tasks, forever()).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }

    #[tokio::test]
    async fn a_stop_signal_is_a_clean_exit() {
        let mut tasks = JoinSet::new();
        tasks.spawn(named("canary", forever()));
        assert!(supervise(tasks, async {}).await.is_ok());
    }
}
