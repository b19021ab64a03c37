//! The notification service: notifications for one user or operator, system
//! alerts for everyone connected, live analytics for admins, and the history
//! of gateway connections behind them — over gRPC (`chatai.v1.Notification`)
//! plus the `EventStream` through which gateways receive its events.
//!
//! - `Notify` (admins, internal services such as billing): an event of any
//!   snake_case `type` except the gateway's own frames (`ack`, `error`,
//!   `connected`, `heartbeat_ack`), with a JSON object body (≤ 32 KiB, not
//!   setting `type`, `timestamp`, `event_id` or `cursor`). Durable for a user
//!   or an operator (the response has its position), live for a room, a role
//!   or everyone.
//! - `SystemAlert` (admins, internal services): `system_alert` to everyone
//!   connected, live.
//! - `RecordConnections` (gateways): connection events stored in
//!   `connection_events`, a batch in one transaction.
//! - `ReportGateway` (gateways) and `GetAnalytics` (admins, internal
//!   services): the latest report of each gateway, kept until its ttl runs
//!   out, summed into `active_connections`, `active_users`,
//!   `online_operators` and `messages_per_minute`. Every
//!   `CHATAI_ANALYTICS_INTERVAL_SECS` the metrics that changed are pushed to
//!   admins as `analytics_update` (see [`analytics`] for what is and is not
//!   measured), with `total_connections`, `average_connection_duration` and
//!   `error_rate` read from the stored connection events of the last
//!   `CHATAI_ANALYTICS_WINDOW_SECS`. Of several replicas, one pushes: the
//!   one holding the analytics lease ([`chatai_kit::lease`], a PostgreSQL
//!   advisory lock on [`ANALYTICS_LOCK_KEY`]), so admins get each change
//!   once; a replica taking the lease over pushes every metric first.
//! - Connection events are kept `CHATAI_CONNECTION_EVENTS_RETENTION_SECS`
//!   (30 days); a task of the service deletes older ones.
//!
//! `balance_alert` is not sent from here: the chat service sends it, exactly
//! once per threshold crossing, from the atomic charge that crosses it.
//!
//! Layout:
//! - [`config`] — [`NotificationConfig`], read from the environment by the binary.
//! - [`store`] — connection events behind [`store::NotificationStore`], on
//!   SQLite and PostgreSQL (the chat service's database, its own table).
//! - [`analytics`] — gateway reports, the metrics, what changed.
//! - `service` — the domain logic: who may do what, validation, delivery,
//!   the analytics push.
//! - `grpc` — the tonic adapter; `error` — [`NotificationError`] and its one
//!   mapping to a gRPC status; `events` — the bodies of the events built here.
//!
//! [`run`] serves it all on a listener until shutdown.

pub mod analytics;
pub mod config;
mod error;
mod events;
mod grpc;
mod service;
pub mod store;

use chatai_kit::config::ServiceCommon;
use chatai_kit::host::ServiceHost;
use chatai_kit::lease::Lease;
use chatai_proto::v1::notification_server::NotificationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::NotificationConfig;
pub use error::NotificationError;
pub use service::{ANALYTICS_LOCK_KEY, NotificationService, Notified, Severity};

/// Why the notification service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("event log: {0}")]
    Events(#[from] chatai_kit::events::EventLogError),
    #[error(transparent)]
    Serve(#[from] chatai_kit::grpc::ServeError),
}

/// Runs the notification service on `listener` until `shutdown` is
/// cancelled, then drains in-flight calls and stops the analytics task.
pub async fn run(
    listener: TcpListener,
    config: NotificationConfig,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let database = chatai_kit::db::connect(&common.database_url)
        .await
        .map_err(store::StoreError::from)?;
    let lease = Lease::on(&database, ANALYTICS_LOCK_KEY, "the analytics push");
    let store = store::store_on(database);
    let mut host = ServiceHost::start(&common, "notification", shutdown).await?;
    host.check_ping("database", store.clone(), |store| async move {
        store.ping().await
    });
    let service = NotificationService::new(store, host.log.clone(), config.analytics_window());
    host.supervisor.spawn(
        "analytics push",
        service.clone().push_analytics_while_leading(
            lease,
            config.analytics_interval(),
            host.shutdown().clone(),
        ),
    );
    host.supervisor.spawn(
        "connection events trim",
        service.clone().trim_connection_events(
            config.connection_events_retention(),
            config.trim_interval(),
            host.shutdown().clone(),
        ),
    );
    let routes =
        tonic::service::Routes::new(NotificationServer::new(grpc::NotificationApi::new(service)));
    host.serve(listener, Some(routes), &["chatai.v1.Notification"])
        .await?;
    Ok(())
}
