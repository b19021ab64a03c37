//! The gateway's configuration, read from the environment by the binary.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything the gateway needs besides the service addresses and the
/// internal token (shared with the services, passed in separately).
/// [`Default`] gives the same values as the clap defaults.
#[derive(clap::Args, Clone)]
pub struct GatewayConfig {
    /// HTTP/WebSocket listen address.
    #[arg(
        long = "gateway-addr",
        env = "CHATAI_GATEWAY_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// HS256 secret for client tokens, at least 32 bytes; unset or empty = a
    /// development secret, with a loud warning.
    #[arg(long = "jwt-secret", env = "CHATAI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Largest client frame accepted, in bytes (larger: close 1009).
    #[arg(long = "max-frame-bytes", env = "CHATAI_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Open connections per user or operator; a new one closes the oldest.
    #[arg(
        long = "max-connections-per-user",
        env = "CHATAI_MAX_CONNECTIONS_PER_USER",
        default_value_t = 5
    )]
    pub max_connections_per_user: usize,
    /// Seconds between client heartbeats, announced in `connected`.
    #[arg(
        long = "heartbeat-interval-secs",
        env = "CHATAI_HEARTBEAT_INTERVAL_SECS",
        default_value_t = 25
    )]
    pub heartbeat_interval_secs: u64,
    /// A connection silent for this long (no frame, no pong) is closed (4003).
    #[arg(
        long = "idle-timeout-secs",
        env = "CHATAI_IDLE_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub idle_timeout_secs: u64,
    /// Client frames allowed per second, per connection, on average.
    #[arg(
        long = "rate-limit-per-sec",
        env = "CHATAI_RATE_LIMIT_PER_SEC",
        default_value_t = 20
    )]
    pub rate_limit_per_sec: u32,
    /// Client frames allowed in a burst.
    #[arg(
        long = "rate-limit-burst",
        env = "CHATAI_RATE_LIMIT_BURST",
        default_value_t = 40
    )]
    pub rate_limit_burst: u32,
    /// Frames refused in a row for the rate limit before the connection is closed (1008).
    #[arg(
        long = "rate-limit-strikes",
        env = "CHATAI_RATE_LIMIT_STRIKES",
        default_value_t = 20
    )]
    pub rate_limit_strikes: u32,
    /// Frames queued for one connection before it counts as too slow (4002).
    #[arg(
        long = "outbound-queue",
        env = "CHATAI_OUTBOUND_QUEUE",
        default_value_t = 256
    )]
    pub outbound_queue: usize,
    /// Deadline of each gRPC call to a service, in milliseconds.
    #[arg(
        long = "request-timeout-ms",
        env = "CHATAI_REQUEST_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub request_timeout_ms: u64,
    /// This gateway's id in logs and connection ids; unset = random.
    #[arg(long = "gateway-id", env = "CHATAI_GATEWAY_ID")]
    pub gateway_id: Option<String>,
}

/// Shown in logs and panics without the JWT secret.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("heartbeat_interval_secs", &self.heartbeat_interval_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("rate_limit_strikes", &self.rate_limit_strikes)
            .field("outbound_queue", &self.outbound_queue)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("gateway_id", &self.gateway_id)
            .finish()
    }
}

pub use chatai_tokens::DEVELOPMENT_SECRET;

/// The clap defaults.
impl Default for GatewayConfig {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}

impl GatewayConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        // At least two heartbeat intervals: a client answering pings is never cut.
        Duration::from_secs(
            self.idle_timeout_secs
                .max(2 * self.heartbeat_interval_secs.max(1)),
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// The JWT secret, or the development one when it is unset or empty
    /// (whether a set one is long enough is checked at start: see
    /// [`chatai_tokens::configured_secret`]).
    pub fn jwt_secret(&self) -> &str {
        self.jwt_secret
            .as_deref()
            .filter(|secret| !secret.is_empty())
            .unwrap_or(DEVELOPMENT_SECRET)
    }
}
