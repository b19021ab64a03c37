//! The gateway's configuration, read from the environment by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::limits::TrustedProxies;

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
    /// TLS certificate chain (PEM, leaf first): with `CHATAI_TLS_KEY`, the
    /// gateway speaks `https://` and `wss://` only. Unset = plain.
    #[arg(long = "tls-cert", env = "CHATAI_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `CHATAI_TLS_CERT` (PEM).
    #[arg(long = "tls-key", env = "CHATAI_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HS256 secret for client tokens, at least 32 bytes; unset or empty = a
    /// development secret, with a loud warning.
    #[arg(long = "jwt-secret", env = "CHATAI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// An identity provider's JWKS document (`https://…/.well-known/jwks.json`):
    /// client tokens are then RS256/ES256 tokens signed with its keys, and
    /// HS256 tokens are refused. Unset or empty = HS256 with the secret.
    #[arg(long = "jwks-url", env = "CHATAI_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS document (keys rotate).
    #[arg(
        long = "jwks-refresh-secs",
        env = "CHATAI_JWKS_REFRESH_SECS",
        default_value_t = 300
    )]
    pub jwks_refresh_secs: u64,
    /// Seconds at least between two fetches caused by tokens naming an
    /// unknown key (so a flood of made-up `kid`s cannot hammer the provider).
    #[arg(
        long = "jwks-min-refresh-secs",
        env = "CHATAI_JWKS_MIN_REFRESH_SECS",
        default_value_t = 30
    )]
    pub jwks_min_refresh_secs: u64,
    /// The `iss` every client token must carry; unset = not checked.
    #[arg(long = "jwt-issuer", env = "CHATAI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every client token must carry (the value, or one of its
    /// list); unset = not checked.
    #[arg(long = "jwt-audience", env = "CHATAI_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
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
    /// Seconds within which a client must send a whole request head
    /// (request line and headers), counted from the connection's start or
    /// the previous response; otherwise the socket is closed.
    #[arg(
        long = "header-read-timeout-secs",
        env = "CHATAI_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub header_read_timeout_secs: u64,
    /// Seconds within which a WebSocket upgrade (the 101 written, or a
    /// refused client's close) must finish; otherwise the socket is closed.
    #[arg(
        long = "upgrade-timeout-secs",
        env = "CHATAI_UPGRADE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub upgrade_timeout_secs: u64,
    /// Seconds a stopping gateway keeps its clients while its health says
    /// `503 draining` (and new WebSockets are closed 1001), so a load
    /// balancer stops sending it clients before they are closed 1001 and
    /// reconnect. 0: close them at once. Counts within
    /// `CHATAI_SHUTDOWN_TIMEOUT_SECS`.
    #[arg(
        long = "drain-delay-secs",
        env = "CHATAI_DRAIN_DELAY_SECS",
        default_value_t = 0
    )]
    pub drain_delay_secs: u64,
    /// WebSocket connections this gateway holds (more: upgraded and closed
    /// 1013); unset = derived from the descriptor limit (`limits.rs`).
    #[arg(long = "max-connections", env = "CHATAI_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Unfinished connections (no WebSocket yet) this gateway holds; a new
    /// one closes the oldest. Unset = derived from the descriptor limit.
    #[arg(long = "max-unfinished", env = "CHATAI_MAX_UNFINISHED")]
    pub max_unfinished: Option<usize>,
    /// Unfinished connections per client address (more are closed at
    /// once); 0 = no cap. Trusted proxies are exempt.
    #[arg(
        long = "max-unfinished-per-ip",
        env = "CHATAI_MAX_UNFINISHED_PER_IP",
        default_value_t = 64
    )]
    pub max_unfinished_per_ip: usize,
    /// WebSocket connections per client address (more: upgraded and closed
    /// 1013); 0 = no cap (offices behind NAT are one address).
    #[arg(
        long = "max-connections-per-ip",
        env = "CHATAI_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDRs, comma-separated) whose
    /// `X-Forwarded-For` names the client; none by default.
    #[arg(
        long = "trusted-proxies",
        env = "CHATAI_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: TrustedProxies,
    /// Origins (comma-separated, like `https://app.example.com`) browsers
    /// may open a WebSocket from; none given = any origin.
    #[arg(
        long = "allowed-origins",
        env = "CHATAI_ALLOWED_ORIGINS",
        default_value = ""
    )]
    pub allowed_origins: AllowedOrigins,
    /// Redis for the per-user limit across gateways: not a flag of its own
    /// here (the all-in-one's services own `CHATAI_REDIS_URL`); the binary
    /// sets it from the gateway command's flags or the services' settings.
    #[arg(skip)]
    pub redis: crate::shared_limit::LimitRedis,
}

/// Shown in logs and panics without the JWT secret.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_min_refresh_secs", &self.jwks_min_refresh_secs)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
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
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("upgrade_timeout_secs", &self.upgrade_timeout_secs)
            .field("drain_delay_secs", &self.drain_delay_secs)
            .field("max_connections", &self.max_connections)
            .field("max_unfinished", &self.max_unfinished)
            .field("max_unfinished_per_ip", &self.max_unfinished_per_ip)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("allowed_origins", &self.allowed_origins)
            .field("redis", &self.redis)
            .finish()
    }
}

pub use chatai_tokens::DEVELOPMENT_SECRET;

/// The origins browsers may open a WebSocket from, comma-separated
/// (`https://app.example.com, http://localhost:3000`); empty = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(pub Vec<String>);

impl std::str::FromStr for AllowedOrigins {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(AllowedOrigins(
            text.split(',')
                .map(|origin| origin.trim().trim_end_matches('/'))
                .filter(|origin| !origin.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl AllowedOrigins {
    /// Whether a request with this `Origin` (`None`: not from a browser)
    /// may open a WebSocket. Origins compare without regard to case.
    pub fn allow(&self, origin: Option<&[u8]>) -> bool {
        match origin {
            _ if self.0.is_empty() => true,
            None => true,
            Some(origin) => self
                .0
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)),
        }
    }
}

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

    pub fn drain_delay(&self) -> Duration {
        Duration::from_secs(self.drain_delay_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// The certificate and key files, when TLS is configured (both set, not
    /// empty); one without the other is an error.
    pub fn tls_files(
        &self,
    ) -> Result<Option<(&std::path::Path, &std::path::Path)>, crate::tls::TlsError> {
        match (set_path(&self.tls_cert), set_path(&self.tls_key)) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            _ => Err(crate::tls::TlsError::Incomplete),
        }
    }

    /// The identity provider's JWKS URL, when one is set (not empty).
    pub fn jwks_url(&self) -> Option<&str> {
        non_empty(&self.jwks_url)
    }

    /// The `iss` and `aud` client tokens must carry (empty = unset).
    pub fn expected_claims(&self) -> chatai_tokens::Expected {
        chatai_tokens::Expected {
            issuer: non_empty(&self.jwt_issuer).map(str::to_owned),
            audience: non_empty(&self.jwt_audience).map(str::to_owned),
        }
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

/// An optional path, empty counting as unset.
fn set_path(setting: &Option<PathBuf>) -> Option<&std::path::Path> {
    setting
        .as_deref()
        .filter(|path| !path.as_os_str().is_empty())
}

/// An optional setting, empty counting as unset (`VAR=` in a compose file).
fn non_empty(setting: &Option<String>) -> Option<&str> {
    setting.as_deref().filter(|value| !value.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty setting allows any origin; a list allows its origins (in any
    /// case, a trailing slash ignored) and clients sending no `Origin`.
    #[test]
    fn allowed_origins_read_a_list() {
        let any: AllowedOrigins = "".parse().expect("a list");
        assert!(any.allow(Some(b"https://anywhere.example")));
        let list: AllowedOrigins = " https://app.example.com/ ,, http://localhost:3000"
            .parse()
            .expect("a list");
        assert_eq!(list.0.len(), 2);
        assert!(list.allow(Some(b"HTTPS://app.example.com")));
        assert!(list.allow(Some(b"http://localhost:3000")));
        assert!(!list.allow(Some(b"http://localhost:3001")));
        assert!(!list.allow(Some(b"null")));
        assert!(list.allow(None));
    }
}
