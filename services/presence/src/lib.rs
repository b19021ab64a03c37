//! The operator presence service: who is online, the status each operator
//! chose, and their load — three separate signals — and the effective status
//! derived from them, over gRPC (`chatai.v1.Presence`) plus the `EventStream`
//! through which every operator connection gets `operator_status_change`.
//!
//! An operator is online while any of their connections, on any gateway, is
//! open, and for a grace period after the last one closed (a reconnect within
//! it is invisible). Gateways report connections as they open and close, and
//! refresh their whole list under a lease, so the connections of a gateway
//! that died expire. The handoff service reports each operator's load.
//!
//! Layout:
//! - [`config`] — [`PresenceConfig`], read from the environment by the binary.
//! - `model` — the domain types and the effective-status rule.
//! - `rules` — what each report, choice, load and ended timer does to the
//!   records it touches; written once, for both stores.
//! - `state` — where those records live: this process's memory (the
//!   default), or Redis when `CHATAI_REDIS_URL` is set, shared by every
//!   presence replica and kept across restarts; each change committed only
//!   if nothing it read has moved, and announced in the same step.
//! - `store` — the chosen statuses, kept in the shared database across
//!   restarts (and the loss of the state).
//! - `actor` — the task applying changes one at a time and firing timers,
//!   and its handle (no locks).
//! - `service` — authorization and input checks in front of the actor.
//! - [`metrics`] — operators by effective status, for Prometheus.
//! - `grpc` — the tonic adapter; `error` — [`PresenceError`] and its one
//!   mapping to a gRPC status; `events` — the body of
//!   `operator_status_change`.
//!
//! [`run`] serves it all on a listener until shutdown.

mod actor;
pub mod config;
mod error;
mod events;
mod grpc;
pub mod metrics;
mod model;
#[cfg(test)]
mod replicas;
mod rules;
mod service;
mod state;
pub mod store;

use std::sync::Arc;

use chatai_kit::config::ServiceCommon;
use chatai_kit::host::ServiceHost;
use chatai_proto::v1::presence_server::PresenceServer;
use store::StatusStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::PresenceConfig;
pub use error::PresenceError;

/// Why the presence service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::InvalidConfig),
    #[error("event log: {0}")]
    Events(#[from] chatai_kit::events::EventLogError),
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("presence state: {0}")]
    State(#[from] state::StateError),
    #[error(transparent)]
    Serve(#[from] chatai_kit::grpc::ServeError),
}

/// Runs the presence service on `listener` until `shutdown` is cancelled,
/// then drains in-flight calls and waits for its tasks.
pub async fn run(
    listener: TcpListener,
    config: PresenceConfig,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let store = Arc::new(store::SqlStatusStore::connect(&common.database_url).await?);
    let stored = store.chosen_statuses().await?;
    let state: Arc<dyn state::StateStore> = match &common.redis_url {
        Some(url) => Arc::new(state::redis::RedisState::connect(url, &common.redis_prefix).await?),
        None => Arc::new(state::memory::MemoryState::default()),
    };
    let mut host = ServiceHost::start(&common, "presence", shutdown).await?;
    host.check_ping("database", store.clone(), |store| async move {
        store.ping().await
    });
    host.check_ping("presence state", state.clone(), |state| async move {
        state.ping().await
    });
    let presence = actor::PresenceHandle::spawn(
        &config,
        host.log.clone(),
        state,
        store,
        stored,
        &host.supervisor,
    );
    // The actor only stops at shutdown; should it ever die, say so through
    // health checking instead of answering UNAVAILABLE in silence.
    let watched = presence.clone();
    host.check("presence actor", move || {
        let running = watched.is_running();
        Box::pin(async move {
            if running {
                Ok(())
            } else {
                Err("the presence actor has stopped".to_owned())
            }
        })
    });
    let api = grpc::PresenceApi::new(service::PresenceService::new(presence));
    let routes = tonic::service::Routes::new(PresenceServer::new(api));
    tracing::info!(
        grace_period_secs = config.grace_period_secs,
        max_handoffs = config.max_handoffs,
        state = if common.redis_url.is_some() {
            "Redis"
        } else {
            "memory"
        },
        "presence service starting"
    );
    host.serve(listener, Some(routes), &["chatai.v1.Presence"])
        .await?;
    Ok(())
}
