//! The chat service: dialogs between a user and the AI assistant, their
//! messages and the user's balance, over gRPC (`chatai.v1.Chat`) plus the
//! `EventStream` through which gateways receive `ai_response` and the rest.
//!
//! Layout:
//! - [`config`] — [`ChatConfig`], read from the environment by the binary.
//! - [`store`] — storage behind the [`store::ChatStore`] trait, on SQLite and
//!   PostgreSQL.
//! - `service` — the domain logic: authorization, messages, the assistant's
//!   answers and charging.
//! - `grpc` — the tonic adapter; `error` — [`ChatError`] and its one mapping
//!   to a gRPC status; `events` — the bodies of the events this service sends.
//!
//! [`run`] serves it all on a listener until shutdown.

pub mod config;
mod error;
mod events;
mod grpc;
mod service;
pub mod store;

use chatai_kit::config::ServiceCommon;
use chatai_kit::host::ServiceHost;
use chatai_proto::v1::chat_server::ChatServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use config::ChatConfig;
pub use error::ChatError;
pub use service::{ChatService, Policy, Sent};

/// Why the chat service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("assistant: {0}")]
    Assistant(#[from] chatai_assistant::AssistantError),
    #[error(transparent)]
    Serve(#[from] chatai_kit::grpc::ServeError),
}

/// Runs the chat service on `listener` until `shutdown` is cancelled, then
/// drains in-flight calls and waits for pending assistant answers.
pub async fn run(
    listener: TcpListener,
    config: ChatConfig,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let store = store::connect(&config.database_url).await?;
    let assistant = chatai_assistant::build(&config.assistant)?;
    let host = ServiceHost::new(&common, shutdown);
    let policy = Policy {
        starting_balance: store::Money::from_units(config.starting_balance),
        price_per_1k_tokens: store::Money::from_units(config.price_per_1k_tokens),
        balance_threshold: store::Money::from_units(config.balance_threshold),
        max_message_chars: config.max_message_chars,
        assistant_context: config.assistant_context,
    };
    host.tasks.spawn(watch_store(
        store.clone(),
        host.health.clone(),
        host.shutdown.clone(),
    ));
    let service = ChatService::new(
        store,
        assistant,
        host.log.clone(),
        policy,
        host.tasks.clone(),
    );
    let routes = tonic::service::Routes::new(ChatServer::new(grpc::ChatApi::new(service)));
    host.serve(listener, Some(routes), &["chatai.v1.Chat"])
        .await?;
    Ok(())
}

/// How often the store's reachability is checked for health reporting.
const STORE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Reports the service NOT_SERVING (overall gRPC health) while its store is
/// unreachable, so the gateway's health endpoint can say why it is unhealthy.
async fn watch_store(
    store: std::sync::Arc<dyn store::ChatStore>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(STORE_CHECK_EVERY);
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let reachable = match store.ping().await {
            Ok(()) => true,
            Err(cause) => {
                if serving {
                    tracing::error!(%cause, "the store is unreachable; reporting NOT_SERVING");
                }
                false
            }
        };
        if reachable != serving {
            serving = reachable;
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            if serving {
                tracing::info!("the store is reachable again; reporting SERVING");
            }
        }
    }
}
