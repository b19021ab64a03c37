//! The edge WebSocket gateway: clients connect here with a JWT, their frames
//! become gRPC calls to the services, and the services' events come back over
//! one `EventStream` per service and go out as frames.
//!
//! Layout:
//! - [`config`] — [`GatewayConfig`], read from the environment by the binary.
//! - [`gateway`] — [`Gateway`], what every connection and route shares,
//!   and how it is put together.
//! - [`accept`] — the listener: accepting sockets and serving HTTP/1.1 on
//!   each (hyper, with a header-read timeout), after a TLS handshake when
//!   [`tls`] is configured.
//! - [`limits`] — socket limits: unfinished and WebSocket connections per
//!   client address and per node, trusted proxies' `X-Forwarded-For`.
//! - [`http`] — routes: the WebSocket endpoints, health, metrics.
//! - [`web`] — the browser assets (`web/`: the JavaScript client, console,
//!   widget), embedded in the binary, at `/web/*`, `/console`, `/widget`, `/demo`.
//! - [`api`] — the HTTP API (`Authorization: Bearer`): dialogs and their
//!   history, an admin's balance top-up.
//! - [`sse`] — `GET /sse`: a connection as Server-Sent Events (the same
//!   connection task over another transport); [`http_frames`] —
//!   `POST /api/frames`: client frames over HTTP, for a stream or on their own.
//! - [`alerts`] — `POST /api/alerts`: an admin's `system_alert`;
//!   [`dev_token`] — `GET /api/dev/token`, development tokens while the
//!   development secret is in use.
//! - [`auth`] — finding a client's token in a request (the token itself is
//!   `chatai_tokens`'s: claims, verifying, minting).
//! - [`verifier`] — how tokens are checked: the HS256 secret or an identity
//!   provider's keys; [`jwks`] — fetching and refreshing those keys.
//! - [`connection`] — one client connection's task, from `connected` to
//!   close: the socket loop (`connection/mod.rs`), catching up from the
//!   services' logs (`connection/catch_up.rs`) and the client's requests
//!   (`connection/requests.rs`).
//! - [`registry`] — every open connection, by recipient; event fan-out.
//! - [`shared_limit`] — the per-user connection limit across gateways
//!   (Redis).
//! - [`reporting`] — connection events and counts for the notification
//!   service's analytics.
//! - [`upstream`] — the `EventStream` actors, one per service, and replay.
//! - [`services`] — calls into the services' APIs and the one mapping of
//!   their errors to `error` frames.
//! - [`wire`] — the one place gRPC messages turn into the gateway's own
//!   types and back.
//! - [`service_id`] — [`ServiceId`](service_id::ServiceId), the services by
//!   name.
//! - [`frames`] — client frames in, server frames out, and dialog room ids
//!   (`frames/rooms.rs`: read once for joining and leaving; the event that
//!   takes an operator out of a room).
//! - [`cursor`] — the opaque resume cursor; [`close`] — close codes.
//! - [`metrics`] — the gateway's Prometheus metrics, defined once (the
//!   recorder is `chatai_kit::metrics`'s, shared by every part of a process).

pub mod accept;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod close;
pub mod config;
pub mod connection;
pub mod cursor;
pub mod dev_token;
pub mod frames;
pub mod gateway;
pub mod http;
pub mod http_frames;
#[cfg(test)]
mod http_proptests;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod reporting;
pub mod service_id;
pub mod services;
pub mod shared_limit;
pub mod sse;
pub mod tls;
pub mod upstream;
pub mod verifier;
pub mod web;
pub mod wire;

use chatai_kit::config::{InternalAuth, ServiceAddrs};
use chatai_kit::supervisor::Supervisor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use gateway::GatewayError;

use crate::close::CloseReason;
use crate::gateway::{Background, Gateway};

/// Runs the gateway on `listener` until `shutdown`; then drains: health
/// answers `503 draining` and new WebSockets are closed 1001 at once; after
/// `CHATAI_DRAIN_DELAY_SECS` every connection is closed with 1001 (clients
/// resume elsewhere with their cursor) and tells the services how far it
/// got; then the listener stops and so do the streams.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    addrs: ServiceAddrs,
    auth: InternalAuth,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let tls = match config.tls_files()? {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let development_secret =
        chatai_tokens::configured_secret(config.jwt_secret.as_deref())?.is_none();
    match config.jwks_url() {
        Some(url) => {
            tracing::info!(%url, "client tokens: RS256/ES256 of the identity provider (HS256 refused)");
            if config.expected_claims().audience.is_none() {
                tracing::warn!(
                    "CHATAI_JWKS_URL is set without CHATAI_JWT_AUDIENCE: tokens the provider issued for any other application are accepted too"
                );
            }
        }
        None if development_secret => tracing::warn!(
            "CHATAI_JWT_SECRET is not set (or empty): using the built-in DEVELOPMENT secret. Anyone can mint tokens for this gateway. Set CHATAI_JWT_SECRET in production."
        ),
        None => {}
    }
    let gateway_id = config
        .gateway_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let background = Background {
        stop: CancellationToken::new(),
        supervisor: Supervisor::new(shutdown.clone()),
    };
    let gateway = Gateway::start(config, gateway_id.clone(), addrs, &auth, &background)?;
    metrics::register();
    let registry = gateway.registry.clone();
    let addr = listener.local_addr()?;
    tracing::info!(%addr, gateway = %gateway_id, tls = tls.is_some(), "gateway listening");

    // The listener outlives the drain, so health keeps answering (`503
    // draining`) until the clients are gone.
    let stop_accepting = CancellationToken::new();
    let accepting = accept::serve(
        listener,
        http::router(gateway.clone()),
        gateway.limits.clone(),
        tls,
        stop_accepting.clone(),
    );
    let draining = async {
        shutdown.cancelled().await;
        gateway.draining.cancel();
        let delay = gateway.config.drain_delay();
        tracing::info!(
            connections = registry.connection_count(),
            delay_secs = delay.as_secs(),
            "gateway draining: health says 503, new clients are closed 1001"
        );
        tokio::time::sleep(delay).await;
        tracing::info!(
            connections = registry.connection_count(),
            "closing every connection with 1001"
        );
        registry.stop_all(CloseReason::Shutdown);
        gateway.connections_stop.cancel();
        gateway.tasks.close();
        gateway.tasks.wait().await;
        stop_accepting.cancel();
    };
    tokio::join!(accepting, draining);
    background.stop.cancel();
    let background = background.supervisor.wait().await;
    tracing::info!("gateway stopped");
    Ok(background?)
}
