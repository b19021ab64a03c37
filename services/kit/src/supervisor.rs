//! No task dies silently: the long-lived tasks of a process (event relays,
//! trim and readiness loops, actors, stream followers) run under one
//! [`Supervisor`]. A supervised task is expected to run until shutdown; if it
//! returns or panics before, the supervisor logs it, cancels the process's
//! shutdown token (so everything else stops) and [`Supervisor::wait`] returns
//! a [`TaskFailed`] naming it.
//!
//! Short-lived tasks (one per call or per stream) go on [`Supervisor::tracker`]:
//! they are waited for on shutdown but may end whenever they like.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a supervised task ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned on its own.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
}

/// A supervised task ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the task `{task}` {}", match .exit {
    Exit::Returned => "stopped on its own".to_owned(),
    Exit::Panicked(message) => format!("panicked: {message}"),
})]
pub struct TaskFailed {
    /// The name it was spawned with.
    pub task: &'static str,
    pub exit: Exit,
}

/// The tasks of one process and its shutdown token; cheap to clone.
#[derive(Clone, Debug)]
pub struct Supervisor {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The first task that failed (later ones only log).
    failed: Arc<Mutex<Option<TaskFailed>>>,
}

impl Supervisor {
    /// A supervisor whose failures cancel `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            tasks: TaskTracker::new(),
            shutdown,
            failed: Arc::default(),
        }
    }

    /// The process's shutdown token.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Where short-lived tasks go: waited for, not supervised.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Runs `task`, which should run until shutdown. If it returns or panics
    /// before, the failure is logged and recorded and shutdown is cancelled.
    pub fn spawn<F>(&self, task: &'static str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let supervisor = self.clone();
        self.tasks.spawn(async move {
            let outcome = AssertUnwindSafe(future).catch_unwind().await;
            let exit = match outcome {
                Ok(()) if supervisor.shutdown.is_cancelled() => return,
                Ok(()) => Exit::Returned,
                Err(panic) => Exit::Panicked(panic_message(panic.as_ref())),
            };
            supervisor.fail(TaskFailed { task, exit });
        });
    }

    /// Records `failure` (the first one wins), logs it and cancels shutdown.
    fn fail(&self, failure: TaskFailed) {
        tracing::error!(task = failure.task, cause = %failure, "a task failed; shutting down");
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(failure);
        self.shutdown.cancel();
    }

    /// The first failure so far, if any.
    pub fn failure(&self) -> Option<TaskFailed> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for every task (supervised or not) to end — call it after
    /// shutdown — and returns the first failure.
    pub async fn wait(&self) -> Result<(), TaskFailed> {
        self.tasks.close();
        self.tasks.wait().await;
        match self.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that returns before shutdown stops the process and is named.
    #[tokio::test]
    async fn an_early_return_cancels_shutdown_and_names_the_task() {
        let supervisor = Supervisor::new(CancellationToken::new());
        let stop = supervisor.shutdown().clone();
        supervisor.spawn("waits", async move { stop.cancelled().await });
        supervisor.spawn("quits", async {});
        supervisor.shutdown().cancelled().await;
        let failed = supervisor.wait().await.expect_err("a task quit");
        assert_eq!(failed.task, "quits");
        assert_eq!(failed.exit, Exit::Returned);
        assert_eq!(failed.to_string(), "the task `quits` stopped on its own");
    }

    /// A panic is caught, named and stops the process.
    #[tokio::test]
    async fn a_panic_is_a_failure() {
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn("breaks", async { panic!("out of cheese") });
        supervisor.shutdown().cancelled().await;
        let failed = supervisor.wait().await.expect_err("a task panicked");
        assert_eq!(failed.exit, Exit::Panicked("out of cheese".to_owned()));
    }

    /// Tasks that end because of shutdown are not failures.
    #[tokio::test]
    async fn ending_on_shutdown_is_fine() {
        let supervisor = Supervisor::new(CancellationToken::new());
        let stop = supervisor.shutdown().clone();
        supervisor.spawn("waits", async move { stop.cancelled().await });
        supervisor.tracker().spawn(async {});
        supervisor.shutdown().cancel();
        assert_eq!(supervisor.wait().await, Ok(()));
    }
}
