//! The whole of ChatAI Realtime in one process: the four services and the
//! gateway, each on its own listener and speaking real gRPC to each other.
//! The `chatai` binary runs this with no subcommand; the end-to-end tests in
//! `tests/` run it on port 0.

use std::net::SocketAddr;

use anyhow::Context;
use chatai_chat::ChatConfig;
use chatai_gateway::GatewayConfig;
use chatai_handoff::HandoffConfig;
use chatai_kit::config::{Part, ServiceAddr, ServiceAddrs, ServiceCommon};
use chatai_notification::NotificationConfig;
use chatai_presence::PresenceConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The running parts, each reporting its name and how it ended.
pub type Parts = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Settings of the whole system (service addresses come from the listeners).
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub gateway: GatewayConfig,
    pub chat: ChatConfig,
    pub handoff: HandoffConfig,
    pub presence: PresenceConfig,
    pub notification: NotificationConfig,
    pub common: ServiceCommon,
}

/// Every listener, bound before anything starts: a busy port fails first,
/// and tests bind port 0 and learn the real addresses.
#[derive(Debug)]
pub struct Listeners {
    pub gateway: TcpListener,
    pub chat: TcpListener,
    pub handoff: TcpListener,
    pub presence: TcpListener,
    pub notification: TcpListener,
}

impl Listeners {
    /// Binds the gateway and the four services.
    pub async fn bind(gateway: SocketAddr, services: &ServiceAddrs) -> anyhow::Result<Self> {
        Ok(Listeners {
            gateway: bind(gateway, "gateway").await?,
            chat: bind_service(&services.chat, "chat service").await?,
            handoff: bind_service(&services.handoff, "handoff service").await?,
            presence: bind_service(&services.presence, "presence service").await?,
            notification: bind_service(&services.notification, "notification service").await?,
        })
    }

    /// Where the services actually listen.
    pub fn service_addrs(&self) -> anyhow::Result<ServiceAddrs> {
        Ok(ServiceAddrs::listening(
            self.chat.local_addr()?.into(),
            self.handoff.local_addr()?.into(),
            self.presence.local_addr()?.into(),
            self.notification.local_addr()?.into(),
        ))
    }

    /// Where the gateway actually listens.
    pub fn gateway_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.gateway.local_addr()?)
    }
}

/// Binds `addr`, naming `part` in the error.
pub async fn bind(addr: SocketAddr, part: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {part}"))
}

/// Binds a service's `host:port` (a name resolves to this host's address
/// for it), naming `part` in the error.
pub async fn bind_service(addr: &ServiceAddr, part: &str) -> anyhow::Result<TcpListener> {
    addr.bind()
        .await
        .with_context(|| format!("cannot listen on {addr} for the {part}"))
}

/// Starts the four services and the gateway on `listeners`, into `parts`;
/// they stop when `shutdown` is cancelled.
pub fn spawn_all(
    listeners: Listeners,
    config: SystemConfig,
    shutdown: &CancellationToken,
    parts: &mut Parts,
) -> anyhow::Result<()> {
    let addrs = listeners.service_addrs()?;
    let SystemConfig {
        gateway,
        chat,
        handoff,
        presence,
        notification,
        mut common,
    } = config;
    // One process, one recorder: every part's series (each with its
    // `service` label) are on the gateway's `/metrics`, so no part opens a
    // metrics port of its own.
    if let Some(addr) = common.metrics_addr.take() {
        tracing::info!(%addr, "CHATAI_METRICS_ADDR is for a part started alone; the all-in-one's metrics are on the gateway's /metrics");
    }
    let Listeners {
        gateway: gateway_listener,
        chat: chat_listener,
        handoff: handoff_listener,
        presence: presence_listener,
        notification: notification_listener,
    } = listeners;
    spawn_part(
        parts,
        "chat",
        chatai_chat::run(
            chat_listener,
            chat,
            addrs.target(Part::Handoff),
            common.clone(),
            shutdown.clone(),
        ),
    );
    spawn_part(
        parts,
        "handoff",
        chatai_handoff::run(
            handoff_listener,
            handoff,
            addrs.target(Part::Presence),
            Some(addrs.target(Part::Chat)),
            common.clone(),
            shutdown.clone(),
        ),
    );
    spawn_part(
        parts,
        "presence",
        chatai_presence::run(
            presence_listener,
            presence,
            common.clone(),
            shutdown.clone(),
        ),
    );
    spawn_part(
        parts,
        "notification",
        chatai_notification::run(
            notification_listener,
            notification,
            common.clone(),
            shutdown.clone(),
        ),
    );
    // One Redis for the services' logs and the gateway's limit.
    let mut gateway = gateway;
    gateway.redis = chatai_gateway::shared_limit::LimitRedis {
        url: common.redis_url.clone(),
        prefix: common.redis_prefix.clone(),
    };
    spawn_part(
        parts,
        "gateway",
        chatai_gateway::run(
            gateway_listener,
            gateway,
            addrs,
            common.auth,
            shutdown.clone(),
        ),
    );
    Ok(())
}

/// Spawns one part into `parts`: it runs `part` (a service's or the
/// gateway's `run`) and reports `name` with how it ended. The all-in-one
/// process and each single-part subcommand start their parts this way.
pub fn spawn_part<E>(
    parts: &mut Parts,
    name: &'static str,
    part: impl Future<Output = Result<(), E>> + Send + 'static,
) where
    E: Into<anyhow::Error>,
{
    parts.spawn(async move { (name, part.await.map_err(Into::into)) });
}
