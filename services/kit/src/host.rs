//! What every service process does around its own API: open the event log,
//! serve `EventStream` next to the service's routes, own the background tasks,
//! and on shutdown drain calls and wait for every task.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::config::{InternalAuth, ServiceCommon};
use crate::events::{self, EventLog, stream::EventStreamService};
use crate::grpc::{self, ServeError};

/// A service's shared runtime: its event log, its tasks, its shutdown signal.
#[derive(Clone)]
pub struct ServiceHost {
    pub log: Arc<dyn EventLog>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Sets what gRPC health checking reports; the overall status (the empty
    /// service name) says whether this service can do its work (its store is
    /// reachable, say).
    pub health: HealthReporter,
    auth: InternalAuth,
}

impl ServiceHost {
    /// Opens the configured event log and starts trimming it.
    pub fn new(common: &ServiceCommon, shutdown: CancellationToken) -> Self {
        let log = events::open(&common.events);
        let health = HealthReporter::new();
        let tasks = TaskTracker::new();
        tasks.spawn(events::trim_until(log.clone(), shutdown.clone()));
        ServiceHost {
            log,
            tasks,
            shutdown,
            health,
            auth: common.auth.clone(),
        }
    }

    /// Serves `routes` (may be empty) plus `EventStream` on `listener` until
    /// shutdown, then waits for every task the host owns.
    pub async fn serve(
        self,
        listener: TcpListener,
        routes: Option<Routes>,
        service_names: &[&str],
    ) -> Result<(), ServeError> {
        let events =
            EventStreamService::new(self.log.clone(), self.shutdown.clone(), self.tasks.clone())
                .into_server();
        let routes = match routes {
            Some(routes) => routes.add_service(events),
            None => Routes::new(events),
        };
        let mut names = service_names.to_vec();
        names.push("chatai.v1.EventStream");
        let served = grpc::serve(
            listener,
            routes,
            self.health.clone(),
            &names,
            &self.auth,
            self.shutdown.clone(),
        )
        .await;
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        served
    }
}
