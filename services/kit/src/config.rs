//! Configuration shared by every ChatAI process, read once from the
//! environment by the binary (through clap) and handed to libraries as typed
//! values. Variable names and defaults are those of docs/protocol.md
//! ("Configuration").

use std::net::SocketAddr;
use std::time::Duration;

/// Where a service listens and where the others find it: `host:port`, the
/// host an IP address or a name (`chat:50051` in a container network, where
/// the name resolves to the service's own address for it to listen on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAddr(String);

/// A service address without a `host:port` shape.
#[derive(Debug, thiserror::Error)]
#[error("expected host:port (an IP address or a name, then a port), got {0:?}")]
pub struct BadServiceAddr(String);

impl std::str::FromStr for ServiceAddr {
    type Err = BadServiceAddr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(ServiceAddr(text.to_owned()));
        }
        match text.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && port.parse::<u16>().is_ok()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
            {
                Ok(ServiceAddr(text.to_owned()))
            }
            _ => Err(BadServiceAddr(text.to_owned())),
        }
    }
}

impl From<SocketAddr> for ServiceAddr {
    fn from(addr: SocketAddr) -> Self {
        ServiceAddr(addr.to_string())
    }
}

impl std::fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ServiceAddr {
    /// As written: `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The socket address, when the host is an IP address (not a name).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }

    /// The host: a name, or an IP address (`[::1]` with its brackets).
    pub fn host(&self) -> &str {
        self.0
            .rsplit_once(':')
            .map_or(self.0.as_str(), |(host, _)| host)
    }

    /// The `http://` URI a gRPC client connects to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.0)
    }

    /// A lazily connecting gRPC channel to this address that reconnects by
    /// itself: `TCP_NODELAY`, HTTP/2 keep-alives, a 2 s connect timeout;
    /// over mutual TLS when `auth` configures it (the token, if any, is the
    /// caller's interceptor's to add). Its calls are counted and timed as
    /// `caller`'s (the part making them: `gateway`, `chat`, …).
    pub fn channel(
        &self,
        auth: &InternalAuth,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        Ok(endpoint(&self.0, None, auth)?.connect_lazy())
    }

    /// Listens on this address (a name is resolved first; the first of its
    /// addresses that can be bound is used).
    pub async fn bind(&self) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.0.as_str()).await
    }
}

/// The gRPC endpoint of one replica at `authority` (`host:port`, the host
/// usually a resolved IP address): `TCP_NODELAY`, HTTP/2 keep-alives, a 2 s
/// connect timeout; over mutual TLS when `auth` configures it, checking the
/// server's certificate for `tls_name` (the name the address was resolved
/// from) or else for the host dialled.
pub fn endpoint(
    authority: &str,
    tls_name: Option<&str>,
    auth: &InternalAuth,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let tls = auth.client_tls();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{authority}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        let tls = match tls_name {
            Some(name) => tls.domain_name(name),
            None => tls,
        };
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

/// Where a service's replicas are: `CHATAI_<PART>_ADDRS`, comma-separated
/// `host:port` entries, each an IP address or a name that may resolve to
/// several (all of them are replicas). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Vec<ServiceAddr>);

impl Targets {
    /// The entries, as written.
    pub fn entries(&self) -> &[ServiceAddr] {
        &self.0
    }
}

impl From<ServiceAddr> for Targets {
    fn from(addr: ServiceAddr) -> Self {
        Targets(vec![addr])
    }
}

impl std::str::FromStr for Targets {
    type Err = BadServiceAddr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let entries = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<ServiceAddr>, _>>()?;
        if entries.is_empty() {
            return Err(BadServiceAddr(text.to_owned()));
        }
        Ok(Targets(entries))
    }
}

impl std::fmt::Display for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, entry) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

/// One of the four services, for naming its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Chat,
    Handoff,
    Presence,
    Notification,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Chat => "chat",
            Part::Handoff => "handoff",
            Part::Presence => "presence",
            Part::Notification => "notification",
        }
    }
}

/// How a part's clients find one service: its replicas' entries, how often
/// they are resolved again, and by what (the system's DNS, or a test's
/// fake). [`ServiceTarget::connect`] makes the balancing channel.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    /// The service, for logs.
    pub service: &'static str,
    pub targets: Targets,
    pub resolve_every: Duration,
    pub resolver: std::sync::Arc<dyn crate::grpc::resolver::Resolver>,
}

impl ServiceTarget {
    /// `service` at the one entry `addr`, resolved by DNS every 10 s.
    pub fn single(service: &'static str, addr: ServiceAddr) -> Self {
        ServiceTarget {
            service,
            targets: addr.into(),
            resolve_every: Duration::from_secs(10),
            resolver: std::sync::Arc::new(crate::grpc::resolver::DnsResolver),
        }
    }

    /// A channel over every replica (see [`crate::grpc::replicas`]): calls
    /// spread over the healthy ones; its resolving and health tasks stop
    /// when the last clone of it is dropped.
    pub fn connect(
        &self,
        auth: &InternalAuth,
    ) -> Result<crate::grpc::replicas::Replicas, tonic::transport::Error> {
        crate::grpc::replicas::Replicas::start(self, auth)
    }
}

/// One replica at `addr` (tests; named "service" in logs).
impl From<ServiceAddr> for ServiceTarget {
    fn from(addr: ServiceAddr) -> Self {
        ServiceTarget::single("service", addr)
    }
}

/// One replica at `addr` (tests; named "service" in logs).
impl From<SocketAddr> for ServiceTarget {
    fn from(addr: SocketAddr) -> Self {
        ServiceTarget::single("service", addr.into())
    }
}

/// Where each service listens (`CHATAI_<PART>_ADDR`) and where the others
/// connect to it (`CHATAI_<PART>_ADDRS`, its replicas; unset = the one
/// `_ADDR`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceAddrs {
    /// The chat service's gRPC address.
    #[arg(
        long = "chat-addr",
        env = "CHATAI_CHAT_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub chat: ServiceAddr,
    /// The handoff service's gRPC address.
    #[arg(
        long = "handoff-addr",
        env = "CHATAI_HANDOFF_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub handoff: ServiceAddr,
    /// The operator presence service's gRPC address.
    #[arg(
        long = "presence-addr",
        env = "CHATAI_PRESENCE_ADDR",
        default_value = "127.0.0.1:50053"
    )]
    pub presence: ServiceAddr,
    /// The notification service's gRPC address.
    #[arg(
        long = "notification-addr",
        env = "CHATAI_NOTIFICATION_ADDR",
        default_value = "127.0.0.1:50054"
    )]
    pub notification: ServiceAddr,
    /// Where gateways and services connect to the chat service's replicas:
    /// comma-separated `host:port`, or a name resolving to several; unset =
    /// `CHATAI_CHAT_ADDR`.
    #[arg(long = "chat-addrs", env = "CHATAI_CHAT_ADDRS")]
    pub chat_replicas: Option<Targets>,
    /// The handoff service's replicas (as `CHATAI_CHAT_ADDRS`).
    #[arg(long = "handoff-addrs", env = "CHATAI_HANDOFF_ADDRS")]
    pub handoff_replicas: Option<Targets>,
    /// The presence service's replicas (as `CHATAI_CHAT_ADDRS`).
    #[arg(long = "presence-addrs", env = "CHATAI_PRESENCE_ADDRS")]
    pub presence_replicas: Option<Targets>,
    /// The notification service's replicas (as `CHATAI_CHAT_ADDRS`).
    #[arg(long = "notification-addrs", env = "CHATAI_NOTIFICATION_ADDRS")]
    pub notification_replicas: Option<Targets>,
    /// Seconds between two resolutions of the replicas' names.
    #[arg(
        long = "resolve-interval-secs",
        env = "CHATAI_RESOLVE_INTERVAL_SECS",
        default_value_t = 10
    )]
    pub resolve_interval_secs: u64,
}

impl ServiceAddrs {
    /// Every service on the address its listener got (port 0 resolved), each
    /// one replica: the all-in-one and tests.
    pub fn listening(
        chat: ServiceAddr,
        handoff: ServiceAddr,
        presence: ServiceAddr,
        notification: ServiceAddr,
    ) -> Self {
        ServiceAddrs {
            chat,
            handoff,
            presence,
            notification,
            chat_replicas: None,
            handoff_replicas: None,
            presence_replicas: None,
            notification_replicas: None,
            resolve_interval_secs: 10,
        }
    }

    /// Where `part` listens.
    pub fn listen(&self, part: Part) -> &ServiceAddr {
        match part {
            Part::Chat => &self.chat,
            Part::Handoff => &self.handoff,
            Part::Presence => &self.presence,
            Part::Notification => &self.notification,
        }
    }

    /// How clients find `part`'s replicas: its `_ADDRS`, or else its `_ADDR`,
    /// resolved by DNS.
    pub fn target(&self, part: Part) -> ServiceTarget {
        let replicas = match part {
            Part::Chat => &self.chat_replicas,
            Part::Handoff => &self.handoff_replicas,
            Part::Presence => &self.presence_replicas,
            Part::Notification => &self.notification_replicas,
        };
        ServiceTarget {
            service: part.name(),
            targets: replicas
                .clone()
                .unwrap_or_else(|| self.listen(part).clone().into()),
            resolve_every: Duration::from_secs(self.resolve_interval_secs.max(1)),
            resolver: std::sync::Arc::new(crate::grpc::resolver::DnsResolver),
        }
    }
}

/// What closes internal gRPC: a shared token, mutual TLS, or both
/// (`internal_auth` has the rules built on it: the start-up check, the token
/// file of the all-in-one, the TLS settings of servers and clients).
#[derive(clap::Args, Clone, Default)]
pub struct InternalAuth {
    /// Bearer token every internal gRPC call must carry (health checks
    /// excepted). The all-in-one generates one when unset (in
    /// `data/internal-token`); a part started alone refuses to start without
    /// it or TLS, unless `--insecure-internal`.
    #[arg(
        long = "internal-token",
        env = "CHATAI_INTERNAL_TOKEN",
        hide_env_values = true
    )]
    pub internal_token: Option<String>,
    /// Development only: run internal gRPC with neither token nor TLS, open
    /// to any process that can reach the ports (`1`, `true`, `yes`).
    #[arg(
        long = "insecure-internal",
        env = "CHATAI_INSECURE_INTERNAL",
        default_value_t = false,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_internal: bool,
    #[command(flatten)]
    pub tls: InternalTls,
}

/// Mutual TLS between the parts: each service serves with `cert`/`key` and
/// accepts only clients presenting a certificate signed by `ca`; each client
/// (the gateway, and services calling each other) presents `cert`/`key` and
/// trusts only servers whose certificate `ca` signed, for the host name (or
/// IP address) it dials. Set all three or none.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct InternalTls {
    /// PEM certificate (chain) this part presents, as a server and as a client.
    #[arg(
        id = "internal_tls_cert",
        long = "internal-tls-cert",
        env = "CHATAI_INTERNAL_TLS_CERT",
        value_parser = PemFile::read,
        requires_all = ["internal_tls_key", "internal_tls_ca"]
    )]
    pub cert: Option<PemFile>,
    /// PEM private key of that certificate.
    #[arg(
        id = "internal_tls_key",
        long = "internal-tls-key",
        env = "CHATAI_INTERNAL_TLS_KEY",
        value_parser = PemFile::read,
        requires_all = ["internal_tls_cert", "internal_tls_ca"]
    )]
    pub key: Option<PemFile>,
    /// PEM certificate of the CA that signs every part's certificate.
    #[arg(
        id = "internal_tls_ca",
        long = "internal-tls-ca",
        env = "CHATAI_INTERNAL_TLS_CA",
        value_parser = PemFile::read,
        requires_all = ["internal_tls_cert", "internal_tls_key"]
    )]
    pub ca: Option<PemFile>,
}

/// A PEM file's contents, read once at start-up, and where they came from.
#[derive(Clone)]
pub struct PemFile {
    path: std::path::PathBuf,
    pem: std::sync::Arc<[u8]>,
}

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not PEM (no \"-----BEGIN\" line)")]
    NotPem { path: std::path::PathBuf },
}

impl PemFile {
    /// Reads `path`, which must hold PEM text.
    pub fn read(path: &str) -> Result<Self, PemFileError> {
        let path = std::path::PathBuf::from(path);
        let pem = std::fs::read(&path).map_err(|source| PemFileError::Read {
            path: path.clone(),
            source,
        })?;
        if !pem.windows(10).any(|window| window == b"-----BEGIN") {
            return Err(PemFileError::NotPem { path });
        }
        Ok(PemFile {
            path,
            pem: pem.into(),
        })
    }

    /// Where it was read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// Only the path: a key's contents never reach a log.
impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PemFile").field(&self.path).finish()
    }
}

/// How each service keeps its per-recipient event logs.
#[derive(clap::Args, Debug, Clone)]
pub struct EventLogConfig {
    /// How long durable events are kept, in seconds (at least 24 h).
    #[arg(long = "event-retention-secs", env = "CHATAI_EVENT_RETENTION_SECS", default_value_t = 25 * 3600)]
    pub retention_secs: u64,
    /// The most events the in-memory log keeps per recipient; older ones are
    /// trimmed (a resume across them reports `cursor_expired`).
    #[arg(
        long = "event-log-max-per-recipient",
        env = "CHATAI_EVENT_LOG_MAX_PER_RECIPIENT",
        default_value_t = 10_000
    )]
    pub max_per_recipient: usize,
    /// Events buffered for each attached gateway stream before it is cut
    /// (the gateway then re-attaches and catches up from the log).
    #[arg(
        long = "event-live-buffer",
        env = "CHATAI_EVENT_LIVE_BUFFER",
        default_value_t = 65_536
    )]
    pub live_buffer: usize,
}

impl EventLogConfig {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }
}

/// The clap defaults.
impl Default for EventLogConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// Logs and traces.
#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryConfig {
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// Log lines as JSON instead of text.
    #[arg(long = "log-json", env = "CHATAI_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// OTLP/gRPC endpoint for traces (Jaeger's 4317); unset = no export.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share (0 to 1) of traces started by requests — a client frame, a
    /// connection, an internal caller's call — that are exported.
    #[arg(
        long = "trace-sample-ratio",
        env = "CHATAI_TRACE_SAMPLE_RATIO",
        default_value_t = 1.0
    )]
    pub trace_sample_ratio: f64,
    /// Share (0 to 1) of traces started by periodic background work
    /// (reports, lease refreshes, analytics pushes, trims) that are exported.
    #[arg(
        long = "trace-background-ratio",
        env = "CHATAI_TRACE_BACKGROUND_RATIO",
        default_value_t = 0.0
    )]
    pub trace_background_ratio: f64,
}

/// What every service process needs besides its own settings.
#[derive(clap::Args, Clone)]
pub struct ServiceCommon {
    /// The database: `sqlite://…` or `postgres://…`; each service owns its
    /// tables, migrations are applied at start-up.
    #[arg(
        long = "database-url",
        env = "CHATAI_DATABASE_URL",
        default_value = "sqlite://data/chatai.db"
    )]
    pub database_url: String,
    /// Redis for the event logs (and, with it, replicas of a service);
    /// unset = in memory, one process.
    #[arg(long = "redis-url", env = "CHATAI_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel (several deployments, or test
    /// runs, can share one Redis).
    #[arg(
        long = "redis-prefix",
        env = "CHATAI_REDIS_PREFIX",
        default_value = "chatai"
    )]
    pub redis_prefix: String,
    #[command(flatten)]
    pub auth: InternalAuth,
    #[command(flatten)]
    pub events: EventLogConfig,
    /// Where a service started alone serves Prometheus `/metrics`; unset =
    /// not served (the all-in-one's parts are in the gateway's `/metrics`).
    #[arg(long = "metrics-addr", env = "CHATAI_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Shown in logs and panics without its secret.
impl std::fmt::Debug for InternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAuth")
            .field(
                "internal_token",
                &self.internal_token.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure_internal", &self.insecure_internal)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Shown in logs and panics without the credentials in its URLs.
impl std::fmt::Debug for ServiceCommon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCommon")
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("auth", &self.auth)
            .field("events", &self.events)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

/// A URL with any password replaced: `postgres://me:secret@db/x` →
/// `postgres://me:<redacted>@db/x`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials
        .split_once(':')
        .map_or(credentials, |(user, _)| user);
    let redacted = if credentials.contains(':') {
        format!("{user}:<redacted>")
    } else {
        user.to_owned()
    };
    match path {
        Some(path) => format!("{scheme}://{redacted}@{host}/{path}"),
        None => format!("{scheme}://{redacted}@{host}"),
    }
}

/// The clap defaults.
impl Default for ServiceCommon {
    fn default() -> Self {
        clap_defaults()
    }
}

/// What clap makes of an empty command line for `T`, the environment
/// ignored: the values of its `default_value…` attributes, `None` for an
/// unset option. Every configuration struct's [`Default`] returns this, so a
/// default is written once, where the flag is declared.
///
/// # Panics
/// When `T` has a required argument without a default, or arguments that
/// clash: a mistake in `T`'s declaration, which the first test building
/// `T::default()` shows.
pub fn clap_defaults<T: clap::Args>() -> T {
    let matches = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&str>))
        .try_get_matches_from(["defaults"])
        .expect("every argument of a configuration struct has a default");
    T::from_arg_matches(&matches).expect("clap's defaults convert to the struct")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// Addresses are an IP address or a name, then a port.
    #[test]
    fn service_addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:50051",
            "[::1]:50051",
            "chat:50051",
            "chat-1.internal:7",
        ] {
            let addr: ServiceAddr = good.parse().expect(good);
            assert_eq!(addr.to_string(), good);
        }
        for bad in [
            "chat",
            "chat:",
            ":50051",
            "chat:port",
            "chat:70000",
            "a b:1",
            "",
        ] {
            assert!(bad.parse::<ServiceAddr>().is_err(), "{bad:?} is refused");
        }
        let from_socket: ServiceAddr = SocketAddr::from(([127, 0, 0, 1], 9)).into();
        assert_eq!(from_socket.uri(), "http://127.0.0.1:9");
    }

    /// A name is resolved to listen on.
    #[tokio::test]
    async fn a_name_can_be_bound() {
        let addr: ServiceAddr = "localhost:0".parse().expect("parses");
        let listener = addr.bind().await.expect("localhost resolves and binds");
        assert!(listener.local_addr().expect("bound").ip().is_loopback());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: ServiceCommon,
    }

    /// Passwords in URLs and the internal token never reach Debug output.
    #[test]
    fn debug_output_hides_secrets() {
        let common = ServiceCommon {
            database_url: "postgres://app:hunter2@db:5432/chatai".into(),
            redis_url: Some("redis://:s3cret@cache:6379".into()),
            auth: InternalAuth {
                internal_token: Some("t0ken".into()),
                ..InternalAuth::default()
            },
            ..ServiceCommon::default()
        };
        let shown = format!("{common:?}");
        for secret in ["hunter2", "s3cret", "t0ken"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("postgres://app:<redacted>@db:5432/chatai"),
            "{shown}"
        );
        assert_eq!(
            redact_url("sqlite://data/chatai.db"),
            "sqlite://data/chatai.db"
        );
    }

    /// The development flag is a switch (its variable takes `1`, `true`,
    /// `yes`…: the process tests set it); TLS needs its three files, each
    /// readable PEM.
    #[test]
    fn internal_auth_flags() {
        let parse = |args: &[&str]| {
            let matches = Cli::command()
                .mut_args(|arg| arg.env(None::<&str>))
                .try_get_matches_from(args)?;
            <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        };
        let flag = |args: &[&str]| parse(args).expect("parses").common.auth.insecure_internal;
        assert!(!flag(&["x"]));
        assert!(flag(&["x", "--insecure-internal"]));

        let folder = tempfile::tempdir().expect("a folder");
        let pem = folder.path().join("a.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").expect("written");
        let pem = pem.to_str().expect("a UTF-8 path");
        let alone = parse(&["x", "--internal-tls-cert", pem]);
        assert!(
            alone.is_err(),
            "a certificate without key and CA is refused"
        );
        let all = parse(&[
            "x",
            "--internal-tls-cert",
            pem,
            "--internal-tls-key",
            pem,
            "--internal-tls-ca",
            pem,
        ])
        .expect("all three");
        assert_eq!(
            all.common.auth.tls.ca.map(|ca| ca.path().to_owned()),
            Some(std::path::PathBuf::from(pem))
        );
        let missing = folder.path().join("missing.pem");
        let missing = missing.to_str().expect("a UTF-8 path");
        let error = parse(&[
            "x",
            "--internal-tls-cert",
            missing,
            "--internal-tls-key",
            pem,
            "--internal-tls-ca",
            pem,
        ])
        .err()
        .expect("an unreadable file is refused");
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }

    /// The defaults are clap's, not the environment's, and flattening the
    /// shared settings into a command adds no clash.
    #[test]
    fn defaults_come_from_the_flags() {
        let default = ServiceCommon::default();
        assert_eq!(default.database_url, "sqlite://data/chatai.db");
        assert_eq!(default.redis_url, None);
        assert_eq!(default.redis_prefix, "chatai");
        assert_eq!(default.auth.internal_token, None);
        assert_eq!(default.events.retention_secs, 25 * 3600);
        assert_eq!(default.events.max_per_recipient, 10_000);
        assert_eq!(default.events.live_buffer, 65_536);
        Cli::command().debug_assert();
    }
}
