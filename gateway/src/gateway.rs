//! [`Gateway`]: what every connection and route shares, and how it is put
//! together: one channel per service (over all its replicas:
//! `chatai_kit::grpc::replicas`), shared by that service's event stream
//! ([`Upstream`]), its API clients ([`Services`]) and reporting.

use std::sync::Arc;

use chatai_kit::config::{InternalAuth, Part, ServiceAddrs};
use chatai_kit::grpc::ServiceChannel;
use chatai_kit::supervisor::{Supervisor, TaskFailed};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::config::GatewayConfig;
use crate::jwks::{Jwks, JwksConfigError, JwksSettings};
use crate::limits::{Budget, Limits};
use crate::registry::Registry;
use crate::reporting::Reporter;
use crate::service_id::ServiceId;
use crate::services::Services;
use crate::shared_limit::SharedLimit;
use crate::upstream::Upstream;
use crate::verifier::Verifier;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad service address: {0}")]
    Channel(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// `CHATAI_JWT_SECRET` is set but too short.
    #[error(transparent)]
    Secret(#[from] chatai_tokens::WeakSecret),
    /// `CHATAI_TLS_CERT` / `CHATAI_TLS_KEY` cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `CHATAI_JWKS_URL` is not a URL the gateway can fetch.
    #[error(transparent)]
    Jwks(#[from] JwksConfigError),
    /// `CHATAI_REDIS_URL` is not a Redis URL.
    #[error("Redis URL: {0}")]
    Redis(#[from] redis::RedisError),
    /// An event stream or the reporting stopped before shutdown.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// What every connection shares.
pub struct Gateway {
    pub config: GatewayConfig,
    /// Checks client tokens (HS256 secret or the identity provider's keys).
    pub verifier: Verifier,
    pub registry: Arc<Registry>,
    /// One per service, in [`ServiceId::ALL`] order: `upstreams[s.index()]`
    /// is service `s`'s (see [`Gateway::upstream`]).
    pub upstreams: Vec<Upstream>,
    pub services: Services,
    /// Parent of every connection's stop token.
    pub connections_stop: CancellationToken,
    /// Cancelled when the gateway starts to stop: health answers `503
    /// draining` and new WebSockets are closed 1001 from then on.
    pub draining: CancellationToken,
    /// Owns every connection task.
    pub tasks: TaskTracker,
    pub metrics: PrometheusHandle,
    pub reporter: Reporter,
    /// The socket limits and counts (node cap, per address, timeouts).
    pub limits: Arc<Limits>,
    /// The per-user connection limit across gateways (with Redis).
    pub limit: SharedLimit,
    /// When this gateway started.
    pub started: std::time::Instant,
    /// The live SSE streams, for `POST /api/frames` to reach.
    pub streams: crate::sse::Streams,
    /// The rate limit of frames posted without a stream, per caller.
    pub caller_limits: crate::http_frames::CallerLimits,
}

/// The tasks that talk to the services in the background (event streams,
/// reporting), and the token that stops them — after the connections, which
/// need them to the end. They run under a supervisor: one that stops before
/// that stops the gateway (it cancels the process's shutdown) and is named.
pub struct Background {
    pub stop: CancellationToken,
    pub supervisor: Supervisor,
}

impl Gateway {
    /// Opens a channel to each service, starts each one's event stream and
    /// the reporting (in `background`), and returns the shared state.
    pub fn start(
        config: GatewayConfig,
        gateway_id: String,
        addrs: ServiceAddrs,
        auth: &InternalAuth,
        background: &Background,
    ) -> Result<Arc<Gateway>, GatewayError> {
        let verifier = verifier(&config, background)?;
        let registry = Arc::new(Registry::new(gateway_id));
        // Each service's replicas (`CHATAI_<PART>_ADDRS`, else `_ADDR`).
        let channel = |part: Part| -> Result<ServiceChannel, GatewayError> {
            Ok(chatai_kit::grpc::service_channel(
                &addrs.target(part),
                auth,
                crate::metrics::SERVICE,
            )?)
        };
        let chat = channel(Part::Chat)?;
        let handoff = channel(Part::Handoff)?;
        let presence = channel(Part::Presence)?;
        let notification = channel(Part::Notification)?;
        let upstreams = ServiceId::ALL
            .into_iter()
            .map(|service| {
                let channel = match service {
                    ServiceId::Chat => &chat,
                    ServiceId::Handoff => &handoff,
                    ServiceId::Presence => &presence,
                    ServiceId::Notification => &notification,
                };
                let (handle, actor) = Upstream::start(
                    service,
                    channel.clone(),
                    registry.clone(),
                    background.stop.clone(),
                );
                background.supervisor.spawn(service.stream_task(), actor);
                handle
            })
            .collect();
        let (reporter, reporting) = Reporter::start(
            notification.clone(),
            presence.clone(),
            registry.clone(),
            background.stop.clone(),
        );
        background.supervisor.spawn("reporting", reporting);
        let services = Services::new(
            chat,
            handoff,
            presence,
            notification,
            config.request_timeout(),
        );
        let limit = match config.redis.url() {
            Some(url) => {
                let (limit, task) = SharedLimit::start(
                    url,
                    &config.redis.prefix,
                    config.max_connections_per_user,
                    registry.clone(),
                    background.stop.clone(),
                )?;
                background.supervisor.spawn("connection limit", task);
                limit
            }
            None => SharedLimit::local(),
        };
        let nofile = Budget::nofile();
        let limits = Arc::new(Limits::new(&config, nofile));
        let budget = limits.budget();
        tracing::info!(
            nofile,
            max_connections = budget.connections,
            max_unfinished = budget.unfinished,
            "connection limits"
        );
        if (budget.connections + budget.unfinished) as u64 > nofile {
            tracing::warn!(
                nofile,
                max_connections = budget.connections,
                max_unfinished = budget.unfinished,
                "CHATAI_MAX_CONNECTIONS and CHATAI_MAX_UNFINISHED exceed the descriptor limit: a full gateway may stop answering health checks"
            );
        }
        let caller_limits = crate::http_frames::CallerLimits::new(&config);
        Ok(Arc::new(Gateway {
            verifier,
            caller_limits,
            streams: Default::default(),
            config,
            registry,
            upstreams,
            services,
            connections_stop: CancellationToken::new(),
            draining: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics: chatai_kit::metrics::handle(),
            reporter,
            limits,
            limit,
            started: std::time::Instant::now(),
        }))
    }

    /// The event stream of `service`.
    pub fn upstream(&self, service: ServiceId) -> &Upstream {
        &self.upstreams[service.index()]
    }
}

/// The token verifier the configuration asks for; with a JWKS URL, its
/// fetching task runs in `background` (stopped with the service streams).
fn verifier(config: &GatewayConfig, background: &Background) -> Result<Verifier, GatewayError> {
    let expected = config.expected_claims();
    let Some(url) = config.jwks_url() else {
        let keys = TokenKeys::new(config.jwt_secret().as_bytes()).expecting(expected);
        return Ok(Verifier::Secret(Box::new(keys)));
    };
    let (jwks, task) = Jwks::start(
        JwksSettings {
            url: url.to_owned(),
            expected,
            refresh_every: std::time::Duration::from_secs(config.jwks_refresh_secs.max(1)),
            min_refresh: std::time::Duration::from_secs(config.jwks_min_refresh_secs),
        },
        background.stop.clone(),
    )?;
    background.supervisor.spawn("jwks", task);
    Ok(Verifier::Provider(jwks))
}
