//! The handoff service: dialogs waiting for a human operator, in a priority
//! queue (urgent > high > normal > low, first come first served inside), and
//! their assignment to the eligible operator with the fewest active handoffs
//! (the longest idle on a tie), over gRPC (`chatai.v1.Handoff`) plus the
//! `EventStream` through which gateways receive `handoff_request`,
//! `handoff_queued`, `operator_assigned` and `handoff_completed`.
//!
//! It follows the presence service as a client (who is online, the status
//! each operator chose) and tells it each operator's load.
//!
//! Layout:
//! - [`config`] — [`HandoffConfig`], read from the environment by the binary.
//! - [`store`] — storage behind the [`store::HandoffStore`] trait, on SQLite
//!   and PostgreSQL.
//! - [`service`] — the queue: one actor owning every active handoff and the
//!   operator view, its handle [`HandoffService`], the timers.
//! - `queue` — the pure rules: order, eligibility, who is next, estimates.
//! - [`directory`] — the seam to presence ([`directory::OperatorUpdate`],
//!   [`directory::OperatorDirectory`]), so the queue is tested without it.
//! - [`presence`] — that seam over gRPC: follows presence's `EventStream`,
//!   calls `ListOperators` and `SetLoad`.
//! - [`leader`] — the leader's lease (a PostgreSQL advisory lock on a held
//!   connection, through which the leader also writes); [`replica`] — a
//!   replica's terms: standing by, leading, standing by again.
//! - [`transcripts`] — the last messages an assigned operator gets, read
//!   from the chat service.
//! - [`metrics`] — the queue's Prometheus metrics (length, waits, handling).
//! - `grpc` — the tonic adapter; `error` — [`HandoffError`] and its one
//!   mapping to a gRPC status; `events` — the bodies of the events sent.
//!
//! [`run`] serves it all on a listener until shutdown.

pub mod config;
pub mod directory;
mod error;
mod events;
mod grpc;
pub mod leader;
pub mod metrics;
pub mod presence;
mod queue;
pub mod replica;
pub mod service;
pub mod store;
pub mod transcripts;

use std::sync::Arc;

use chatai_kit::config::{ServiceCommon, ServiceTarget};
use chatai_kit::host::ServiceHost;
use chatai_proto::v1::handoff_server::HandoffServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::HandoffConfig;
pub use error::HandoffError;
use replica::Replica;
pub use service::HandoffService;
use transcripts::{ChatTranscripts, NoTranscripts, Transcripts};

/// Why the handoff service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("event log: {0}")]
    Events(#[from] chatai_kit::events::EventLogError),
    #[error("presence or chat address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error(transparent)]
    Serve(#[from] chatai_kit::grpc::ServeError),
}

/// Runs the handoff service on `listener` until `shutdown` is cancelled,
/// following the presence service at `presence_addr` and reading
/// transcripts from the chat service at `chat_addr` (none without it); then
/// drains in-flight calls and waits for its tasks.
///
/// On PostgreSQL several replicas may run on one database: one leads the
/// queue at a time ([`leader`], [`replica`]); the others serve the event
/// stream and answer the queue's calls `UNAVAILABLE` until they take over.
pub async fn run(
    listener: TcpListener,
    config: HandoffConfig,
    presence_addr: ServiceTarget,
    chat_addr: Option<ServiceTarget>,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let database = chatai_kit::db::connect(&common.database_url)
        .await
        .map_err(store::StoreError::from)?;
    let store = store::store_on(database.clone());
    let mut host = ServiceHost::start(&common, "handoff", shutdown).await?;
    host.check_ping("database", store.clone(), |store| async move {
        store.ping().await
    });

    let transcripts: Arc<dyn Transcripts> = match &chat_addr {
        Some(addr) => Arc::new(ChatTranscripts::new(addr, &common.auth)?),
        None => Arc::new(NoTranscripts),
    };
    let replica = Replica {
        lease: leader::lease(&database),
        poll: config.lease_poll(),
        store,
        log: host.log.clone(),
        presence: presence::channel(&presence_addr, &common.auth)?,
        transcripts,
        policy: config.policy(),
        health: host.health.clone(),
    };
    let (current, leading) = replica.standby().await;
    host.supervisor.spawn(
        "handoff leadership",
        replica.run(leading, host.shutdown().clone()),
    );

    let routes = tonic::service::Routes::new(HandoffServer::new(grpc::HandoffApi::new(current)));
    // `chatai.v1.Handoff`'s health is the replica's to report (SERVING only
    // while it leads), so it is not in the names served as SERVING here.
    host.serve(listener, Some(routes), &[]).await?;
    Ok(())
}
