//! What every service process does around its own API: open the event log,
//! serve `EventStream` next to the service's routes, own the background tasks
//! (the long-lived ones under a [`Supervisor`]: one that stops before
//! shutdown stops the service and is named), report readiness through gRPC
//! health checking, and on shutdown drain calls and wait for every task.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{InternalAuth, ServiceCommon};
use crate::events::{self, EventLog, EventLogError, stream::EventStreamService};
use crate::grpc::{self, ServeError};
use crate::supervisor::Supervisor;

/// How often readiness checks run.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A check that has not answered in this long has failed.
const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// A readiness check: resolves to an error message while a dependency the
/// service needs (its database, Redis) is unreachable.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A service's shared runtime: its event log, its tasks, its shutdown signal.
#[derive(Clone)]
pub struct ServiceHost {
    pub log: Arc<dyn EventLog>,
    /// Runs the long-lived tasks (`supervisor.spawn`): an early exit stops
    /// the service, and [`serve`](Self::serve) returns it as an error.
    pub supervisor: Supervisor,
    /// What gRPC health checking reports; the overall status (the empty
    /// name) is SERVING while every readiness check passes.
    pub health: HealthReporter,
    checks: Vec<(&'static str, Check)>,
    auth: InternalAuth,
    /// The service's name (`chat`, …): its spans are named after it, and it
    /// is the `service` label of its metrics.
    part: &'static str,
}

impl ServiceHost {
    /// Opens the event log of `service` (Redis when `CHATAI_REDIS_URL` is
    /// set, memory otherwise) and starts its background tasks; with
    /// `CHATAI_METRICS_ADDR` set, serves `/metrics` there.
    pub async fn start(
        common: &ServiceCommon,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> Result<Self, EventLogError> {
        let supervisor = Supervisor::new(shutdown.clone());
        let log = events::open(common, service, &supervisor).await?;
        crate::metrics::handle();
        if let Some(addr) = common.metrics_addr {
            // A port that cannot be bound stops the service, naming the task.
            supervisor.spawn(
                "metrics listener",
                log_failure(addr, crate::metrics::bind_and_serve(addr, shutdown.clone())),
            );
        }
        supervisor.spawn(
            "event log trim",
            events::trim_until(log.clone(), shutdown.clone()),
        );
        let mut host = ServiceHost {
            log: log.clone(),
            supervisor,
            health: HealthReporter::new(),
            checks: Vec::new(),
            auth: common.auth.clone(),
            part: service,
        };
        host.check_ping("event log", log, |log| async move { log.ping().await });
        Ok(host)
    }

    /// Where short-lived tasks go (one per call or stream): waited for on
    /// shutdown, free to end.
    pub fn tasks(&self) -> &TaskTracker {
        self.supervisor.tracker()
    }

    /// The service's shutdown signal (the process's).
    pub fn shutdown(&self) -> &CancellationToken {
        self.supervisor.shutdown()
    }

    /// Adds a readiness check, run every few seconds once serving.
    pub fn check(
        &mut self,
        name: &'static str,
        check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) {
        self.checks.push((name, Arc::new(check)));
    }

    /// Adds a readiness check that calls `ping` on a clone of `target` (a
    /// store, the event log): the dependency is ready while it answers `Ok`.
    pub fn check_ping<T, F, Fut, E>(&mut self, name: &'static str, target: T, ping: F)
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.check(name, move || {
            let pinged = ping(target.clone());
            Box::pin(async move { pinged.await.map_err(|e| e.to_string()) })
        });
    }

    /// Serves `routes` (may be empty) plus `EventStream` on `listener` until
    /// shutdown, then waits for every task the host owns.
    pub async fn serve(
        self,
        listener: TcpListener,
        routes: Option<Routes>,
        service_names: &[&str],
    ) -> Result<(), ServeError> {
        let events = EventStreamService::new(
            self.log.clone(),
            self.shutdown().clone(),
            self.tasks().clone(),
        )
        .into_server();
        let routes = match routes {
            Some(routes) => routes.add_service(events),
            None => Routes::new(events),
        };
        let mut names = service_names.to_vec();
        names.push("chatai.v1.EventStream");
        self.supervisor.spawn(
            "readiness checks",
            watch_readiness(
                self.checks.clone(),
                self.health.clone(),
                self.shutdown().clone(),
            ),
        );
        let served = grpc::serve(
            listener,
            self.part,
            routes,
            self.health.clone(),
            &names,
            &self.auth,
            self.shutdown().clone(),
        )
        .await;
        self.shutdown().cancel();
        let tasks = self.supervisor.wait().await;
        served?;
        Ok(tasks?)
    }
}

/// Runs `served` and logs how it failed, if it did (the supervisor names
/// the task that stopped).
async fn log_failure(
    addr: std::net::SocketAddr,
    served: impl Future<Output = std::io::Result<()>>,
) {
    if let Err(err) = served.await {
        tracing::error!(%addr, cause = %err, "the metrics listener failed");
    }
}

/// Runs the checks every few seconds; the overall health status is
/// NOT_SERVING while any fails, and each change is logged once.
async fn watch_readiness(
    checks: Vec<(&'static str, Check)>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut failures = Vec::new();
        for (name, check) in &checks {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => {}
                Ok(Err(cause)) => failures.push(format!("{name}: {cause}")),
                Err(_) => failures.push(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
            }
        }
        let now_serving = failures.is_empty();
        // Once stopping, the server's NOT_SERVING stands.
        if shutdown.is_cancelled() {
            return;
        }
        if now_serving != serving {
            serving = now_serving;
            if serving {
                tracing::info!("dependencies reachable again; reporting SERVING");
                health.set_service_status("", ServingStatus::Serving).await;
            } else {
                tracing::error!(causes = ?failures, "a dependency is unreachable; reporting NOT_SERVING");
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
        }
    }
}

/// Why a service that only hosts the event stream could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("event log: {0}")]
    Events(#[from] EventLogError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}
