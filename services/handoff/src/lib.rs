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
pub mod metrics;
pub mod presence;
mod queue;
pub mod service;
pub mod store;
pub mod transcripts;

use std::sync::Arc;

use chatai_kit::config::{ServiceAddr, ServiceCommon};
use chatai_kit::host::ServiceHost;
use chatai_proto::v1::handoff_server::HandoffServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::HandoffConfig;
pub use error::HandoffError;
pub use service::HandoffService;
use transcripts::{ChatTranscripts, NoTranscripts, Transcripts};

/// Operator updates buffered from the presence follower to the queue. The
/// follower waits when it is full (presence's stream then backs up, and cuts
/// us off if it must; we re-attach and start from a snapshot).
const UPDATE_BUFFER: usize = 1024;

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
pub async fn run(
    listener: TcpListener,
    config: HandoffConfig,
    presence_addr: ServiceAddr,
    chat_addr: Option<ServiceAddr>,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let store = store::connect(&common.database_url).await?;
    let mut host = ServiceHost::start(&common, "handoff", shutdown).await?;
    host.check_ping("database", store.clone(), |store| async move {
        store.ping().await
    });

    let channel = presence::channel(&presence_addr, &common.auth)?;
    let reporter = presence::LoadReporter::new();
    host.supervisor.spawn(
        "presence load reporter",
        reporter
            .clone()
            .run(channel.clone(), host.shutdown().clone()),
    );
    let (updates_tx, updates) = mpsc::channel(UPDATE_BUFFER);
    host.supervisor.spawn(
        "presence follower",
        presence::follow(channel, updates_tx, host.shutdown().clone()),
    );

    let (service, queue) = HandoffService::load(
        store,
        host.log.clone(),
        reporter,
        updates,
        config.policy(),
        host.shutdown().clone(),
    )
    .await?;
    let transcripts: Arc<dyn Transcripts> = match &chat_addr {
        Some(addr) => Arc::new(ChatTranscripts::new(addr, &common.auth)?),
        None => Arc::new(NoTranscripts),
    };
    host.supervisor
        .spawn("handoff queue", queue.with_transcripts(transcripts).run());

    let routes = tonic::service::Routes::new(HandoffServer::new(grpc::HandoffApi::new(service)));
    host.serve(listener, Some(routes), &["chatai.v1.Handoff"])
        .await?;
    Ok(())
}
