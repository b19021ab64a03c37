//! The chat service: dialogs between a user and the AI assistant, their
//! messages and the user's balance, over gRPC (`chatai.v1.Chat`) plus the
//! `EventStream` through which gateways receive `ai_response` and the rest.
//!
//! Layout:
//! - [`config`] — [`ChatConfig`], read from the environment by the binary.
//! - [`store`] — storage behind the [`store::ChatStore`] trait, on SQLite and
//!   PostgreSQL.
//! - [`handoffs`] — what the service asks the handoff service (who holds a
//!   dialog, asking for an operator), behind a trait, in domain types.
//! - [`holders`] — the service's own view of who holds each dialog, so a
//!   message is routed without asking the handoff service each time.
//! - `replies` — reporting operators' first replies to the handoff service,
//!   retried until accepted, without holding up the operator's ack.
//! - `service` — the domain logic: authorization, messages, the assistant's
//!   answers and charging.
//! - `bounded` — the bounded memory of facts that never go stale (dialog
//!   owners, users already stored).
//! - [`metrics`] — the assistant's latency and tokens, group-commit batch
//!   sizes, for Prometheus.
//! - `grpc` — the wire edge, the only place `chatai.v1` messages are touched:
//!   `grpc/chat_api.rs` serves `chatai.v1.Chat`, `grpc/handoff_client.rs`
//!   calls the handoff service and follows its holder notes, and
//!   `grpc/from_proto.rs` / `grpc/to_proto.rs` hold every conversion.
//! - `error` — [`ChatError`] and its one mapping to a gRPC status; `events` —
//!   the bodies of the events this service sends.
//!
//! [`run`] serves it all on a listener until shutdown.

mod bounded;
pub mod config;
mod error;
mod events;
mod grpc;
pub mod handoffs;
pub mod holders;
pub mod metrics;
mod replies;
mod service;
pub mod store;

use std::sync::Arc;

use chatai_kit::config::{ServiceCommon, ServiceTarget};
use chatai_kit::host::ServiceHost;
use chatai_proto::v1::chat_server::ChatServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ChatConfig;
pub use error::ChatError;
pub use service::{
    ChatService, DEFAULT_PAGE, DialogList, DialogState, DialogSummary, History, MAX_PAGE, Policy,
    Sent, page_limit,
};

/// Why the chat service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("assistant: {0}")]
    Assistant(#[from] chatai_assistant::AssistantError),
    #[error("event log: {0}")]
    Events(#[from] chatai_kit::events::EventLogError),
    #[error(transparent)]
    Serve(#[from] chatai_kit::grpc::ServeError),
    #[error("handoff service address: {0}")]
    HandoffAddress(#[from] tonic::transport::Error),
}

/// Runs the chat service on `listener` until `shutdown` is cancelled, then
/// drains in-flight calls and waits for pending assistant answers.
pub async fn run(
    listener: TcpListener,
    config: ChatConfig,
    handoff_addr: ServiceTarget,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let store = store::connect(&common.database_url).await?;
    let assistant = chatai_assistant::build(&config.assistant)?;
    let mut host = ServiceHost::start(&common, "chat", shutdown).await?;
    host.check_ping("database", store.clone(), |store| async move {
        store.ping().await
    });
    let policy = Policy {
        starting_balance: store::Money::from_units(config.starting_balance),
        price_per_1k_tokens: store::Money::from_units(config.price_per_1k_tokens),
        balance_threshold: store::Money::from_units(config.balance_threshold),
        max_message_chars: config.max_message_chars,
        assistant_context: config.assistant_context,
    };
    let handoff_channel =
        chatai_kit::grpc::service_channel(&handoff_addr, &common.auth, crate::metrics::SERVICE)?;
    let handoffs = grpc::GrpcHandoffs::new(handoff_channel.clone());
    let service = ChatService::new(
        store,
        assistant,
        host.log.clone(),
        Arc::new(handoffs),
        policy,
        host.tasks().clone(),
    );
    host.supervisor.spawn(
        "holder follower",
        grpc::follow_holders(
            handoff_channel,
            service.holder_view(),
            host.shutdown().clone(),
        ),
    );
    host.supervisor.spawn(
        "reply reporter",
        service.report_replies(host.shutdown().clone()),
    );
    let routes = tonic::service::Routes::new(ChatServer::new(grpc::ChatApi::new(service)));
    host.serve(listener, Some(routes), &["chatai.v1.Chat"])
        .await?;
    Ok(())
}
