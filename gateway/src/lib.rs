//! The edge WebSocket gateway: clients connect here with a JWT, their frames
//! become gRPC calls to the services, and the services' events come back over
//! one `EventStream` per service and go out as frames.
//!
//! Layout:
//! - [`config`] — [`GatewayConfig`], read from the environment by the binary.
//! - [`http`] — routes: the WebSocket endpoints, health, metrics.
//! - [`auth`] — client tokens: verifying, minting, finding them in a request.
//! - [`connection`] — one client connection's task, from `connected` to close.
//! - [`registry`] — every open connection, by recipient; event fan-out.
//! - [`reporting`] — connection events and counts for the notification
//!   service's analytics.
//! - [`upstream`] — the `EventStream` actors, one per service, and replay.
//! - [`services`] — calls into the services' APIs and their error mapping.
//! - [`frames`] — client frames in, server frames out.
//! - [`cursor`] — the opaque resume cursor; [`close`] — close codes.

pub mod auth;
pub mod close;
pub mod config;
pub mod connection;
pub mod cursor;
pub mod frames;
pub mod http;
pub mod registry;
pub mod reporting;
pub mod services;
pub mod upstream;

use std::sync::{Arc, OnceLock};

use axum::serve::ListenerExt;
use chatai_kit::config::{InternalAuth, ServiceAddrs};
use chatai_kit::grpc::TokenInterceptor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::InterceptedService;

pub use config::GatewayConfig;

use crate::auth::TokenKeys;
use crate::close::CloseReason;
use crate::registry::Registry;
use crate::reporting::Reporter;
use crate::services::Services;
use crate::upstream::{ServiceChannel, Upstream};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad service address: {0}")]
    Channel(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("expected one channel per service")]
    Channels,
}

/// What every connection shares.
pub struct Gateway {
    pub config: GatewayConfig,
    pub keys: TokenKeys,
    pub registry: Arc<Registry>,
    /// One per service, in cursor order (see [`upstream::SERVICE_NAMES`]).
    pub upstreams: Vec<Upstream>,
    pub services: Services,
    /// Parent of every connection's stop token.
    pub connections_stop: CancellationToken,
    /// Owns every connection task.
    pub tasks: TaskTracker,
    pub metrics: PrometheusHandle,
    pub reporter: Reporter,
    /// When this gateway started.
    pub started: std::time::Instant,
}

/// The process-wide Prometheus recorder (installed once, shared by every
/// gateway in the process — tests run several).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only this one's"
                );
            }
            handle
        })
        .clone()
}

/// Runs the gateway on `listener` until `shutdown`; then stops accepting,
/// closes every connection with 1001 (clients resume elsewhere with their
/// cursor), lets each tell the services how far it got, and stops the streams.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    addrs: ServiceAddrs,
    auth: InternalAuth,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    if config.jwt_secret.is_none() {
        tracing::warn!(
            "CHATAI_JWT_SECRET is not set: using the built-in DEVELOPMENT secret. Anyone can mint tokens for this gateway. Set CHATAI_JWT_SECRET in production."
        );
    }
    let gateway_id = config
        .gateway_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let registry = Arc::new(Registry::new(gateway_id.clone()));
    let interceptor = TokenInterceptor::new(&auth);
    let streams_stop = CancellationToken::new();
    let stream_tasks = TaskTracker::new();
    let mut upstreams = Vec::new();
    let mut channels = Vec::new();
    for (index, addr) in [
        addrs.chat,
        addrs.handoff,
        addrs.presence,
        addrs.notification,
    ]
    .into_iter()
    .enumerate()
    {
        let channel = addr.channel()?;
        channels.push(InterceptedService::new(
            channel.clone(),
            interceptor.clone(),
        ));
        let (handle, actor) = Upstream::start(
            index,
            InterceptedService::new(channel, interceptor.clone()),
            registry.clone(),
            streams_stop.clone(),
        );
        stream_tasks.spawn(actor);
        upstreams.push(handle);
    }
    // One channel per service, in cursor order, shared by its event stream
    // and its API clients.
    let [chat, handoff, presence, notification]: [ServiceChannel; 4] =
        channels.try_into().map_err(|_| GatewayError::Channels)?;
    let (reporter, reporting) = Reporter::start(
        notification,
        presence.clone(),
        registry.clone(),
        streams_stop.clone(),
    );
    stream_tasks.spawn(reporting);
    let services = Services::new(chat, handoff, presence, config.request_timeout());
    let gateway = Arc::new(Gateway {
        keys: TokenKeys::new(config.jwt_secret().as_bytes()),
        config,
        registry: registry.clone(),
        upstreams,
        services,
        connections_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        metrics: metrics_handle(),
        reporter,
        started: std::time::Instant::now(),
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, gateway = %gateway_id, "gateway listening");

    // Frames are small and latency matters: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %err, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, http::router(gateway.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    tracing::info!(
        connections = registry.connection_count(),
        "gateway draining connections"
    );
    registry.stop_all(CloseReason::Shutdown);
    gateway.connections_stop.cancel();
    gateway.tasks.close();
    gateway.tasks.wait().await;
    streams_stop.cancel();
    stream_tasks.close();
    stream_tasks.wait().await;
    tracing::info!("gateway stopped");
    Ok(served?)
}
