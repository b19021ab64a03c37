//! The running system for a test: [`spawn_app`] starts the gateway and the
//! four services in-process on port 0 (each speaking real gRPC on its own
//! loopback port, with a fresh database) and returns a [`TestApp`] with the
//! addresses, the JWT secret, token minting, WebSocket and gRPC clients.
//!
//! Nothing here sleeps to wait for readiness: listeners are bound before the
//! parts start, and start-up is over when `GET /api/websocket/health` answers
//! 200 (polled in a bounded loop).
//!
//! Databases: SQLite in a fresh temporary folder by default; with
//! [`TestOptions::postgres`], a fresh PostgreSQL database
//! (`chatai_testkit::TestDatabase`), dropped `WITH (FORCE)` when the app
//! stops or is dropped. An unreachable server fails the test.

use std::net::SocketAddr;
use std::time::Duration;

use chatai::{Listeners, Parts, SystemConfig};
use chatai_chat::ChatConfig;
use chatai_gateway::GatewayConfig;
use chatai_handoff::HandoffConfig;
use chatai_kit::config::{ServiceAddrs, ServiceCommon};
use chatai_kit::identity::Role;
use chatai_notification::NotificationConfig;
use chatai_presence::PresenceConfig;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_testkit::TestDatabase;
use chatai_tokens::TokenKeys;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{RawWs, WAIT, WsClient, as_caller, connect_at};

/// Which database the chat service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// A file in a fresh temporary folder.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// How to start the system: the database and each part's settings (the
/// database URL is filled in by [`spawn_app`]). Start from
/// `TestOptions::default()` and change what the test is about.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub database: Database,
    pub gateway: GatewayConfig,
    pub chat: ChatConfig,
    pub handoff: HandoffConfig,
    pub presence: PresenceConfig,
    pub notification: NotificationConfig,
    pub common: ServiceCommon,
}

impl Default for TestOptions {
    fn default() -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        TestOptions {
            database: Database::Sqlite,
            gateway: GatewayConfig {
                listen,
                jwt_secret: Some(format!("e2e-secret-{}", uuid::Uuid::new_v4().simple())),
                gateway_id: Some("e2e".to_owned()),
                ..GatewayConfig::default()
            },
            chat: ChatConfig::default(),
            handoff: HandoffConfig::default(),
            presence: PresenceConfig::default(),
            notification: NotificationConfig::default(),
            common: ServiceCommon::default(),
        }
    }
}

impl TestOptions {
    /// Runs the chat service on a fresh PostgreSQL database.
    pub fn postgres(mut self) -> Self {
        self.database = Database::Postgres;
        self
    }

    /// Seconds between heartbeats (announced, and the ping period) and the
    /// idle timeout (at least one more than the heartbeat interval).
    pub fn heartbeat(mut self, interval_secs: u64, idle_timeout_secs: u64) -> Self {
        self.gateway.heartbeat_interval_secs = interval_secs;
        self.gateway.idle_timeout_secs = idle_timeout_secs;
        self
    }

    /// Frames per second, burst, and refused frames in a row before 1008.
    pub fn rate_limit(mut self, per_sec: u32, burst: u32, strikes: u32) -> Self {
        self.gateway.rate_limit_per_sec = per_sec;
        self.gateway.rate_limit_burst = burst;
        self.gateway.rate_limit_strikes = strikes;
        self
    }

    /// Largest client frame accepted, in bytes.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.gateway.max_frame_bytes = bytes;
        self
    }

    /// Frames queued per connection before it counts as too slow.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.gateway.outbound_queue = frames;
        self
    }
}

/// The running system.
pub struct TestApp {
    /// Where the gateway listens (HTTP and WebSocket).
    pub gateway_addr: SocketAddr,
    /// Where each service listens (gRPC).
    pub services: ServiceAddrs,
    /// The HS256 secret the gateway verifies client tokens with (unless a
    /// JWKS URL is set).
    pub jwt_secret: String,
    /// The services' database URL.
    pub database_url: String,
    /// The starting balance of a new user, in units.
    pub starting_balance: f64,
    /// The price of 1 000 assistant tokens, in units.
    pub price_per_1k_tokens: f64,
    /// Mints HS256 tokens the gateway accepts (with its `iss`/`aud`).
    pub keys: TokenKeys,
    /// Whether the gateway speaks TLS (`https://`, `wss://`).
    pub tls: bool,
    http: reqwest::Client,
    shutdown: CancellationToken,
    parts: Option<Parts>,
    storage: Option<TestDatabase>,
    /// What the system was started with, for [`TestApp::restart`].
    options: TestOptions,
}

/// Starts the whole system on port 0 and returns once the gateway reports
/// healthy (every service stream attached).
pub async fn spawn_app(options: TestOptions) -> TestApp {
    let storage = match options.database {
        Database::Sqlite => {
            let storage = TestDatabase::sqlite();
            // Workaround, see the end-to-end suite's report: services opening
            // one fresh SQLite file at the same moment now and then fail with
            // "database is locked" (switching it to WAL); so the file is
            // created, switched to WAL and migrated before they start.
            drop(
                chatai_chat::store::connect(storage.url())
                    .await
                    .expect("preparing the SQLite file"),
            );
            storage
        }
        Database::Postgres => TestDatabase::postgres().await,
    };
    start_on(options, storage).await
}

/// Starts the system on `storage` (fresh, or kept from a stopped run).
async fn start_on(options: TestOptions, storage: TestDatabase) -> TestApp {
    let TestOptions {
        database: _,
        gateway,
        chat,
        handoff,
        presence,
        notification,
        mut common,
    } = options.clone();
    let database_url = storage.url().to_owned();
    // Every service that stores anything gets the test's database, never
    // the default file under `./data/`.
    common.database_url = database_url.clone();
    let port_zero = SocketAddr::from(([127, 0, 0, 1], 0));
    let any_port = ServiceAddrs::listening(
        port_zero.into(),
        port_zero.into(),
        port_zero.into(),
        port_zero.into(),
    );
    let listeners = Listeners::bind(gateway.listen, &any_port)
        .await
        .expect("binding the listeners");
    let gateway_addr = listeners.gateway_addr().expect("the gateway's address");
    let services = listeners.service_addrs().expect("the services' addresses");
    let tls = gateway.tls_cert.is_some();
    let jwt_secret = gateway.jwt_secret().to_owned();
    let keys = TokenKeys::new(jwt_secret.as_bytes()).expecting(gateway.expected_claims());
    let starting_balance = chat.starting_balance;
    let price_per_1k_tokens = chat.price_per_1k_tokens;
    let shutdown = CancellationToken::new();
    let mut parts = Parts::new();
    chatai::spawn_all(
        listeners,
        SystemConfig {
            gateway,
            chat,
            handoff,
            presence,
            notification,
            common,
        },
        &shutdown,
        &mut parts,
    )
    .expect("starting the system");
    let mut app = TestApp {
        gateway_addr,
        services,
        keys,
        jwt_secret,
        database_url,
        starting_balance,
        price_per_1k_tokens,
        // Over TLS, the test's own certificate: the health polling does not
        // check it (the TLS tests check the chain with their own client).
        http: reqwest::Client::builder()
            .danger_accept_invalid_certs(tls)
            .build()
            .expect("an HTTP client"),
        tls,
        shutdown,
        parts: Some(parts),
        storage: Some(storage),
        options,
    };
    app.wait_until_healthy().await;
    app
}

impl TestApp {
    /// Polls the health endpoint until it says 200; fails the test if a part
    /// stops or the system is not healthy within [`WAIT`].
    async fn wait_until_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(parts) = self.parts.as_mut()
                && let Some(ended) = parts.try_join_next()
            {
                panic!("a part stopped during start-up: {ended:?}");
            }
            let last = match self
                .http
                .get(self.http_url("/api/websocket/health"))
                .send()
                .await
            {
                Ok(response) if response.status() == 200 => return,
                Ok(response) => response.status().to_string(),
                Err(err) => err.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "the system did not become healthy: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://{gateway}{path}` (`https://` over TLS).
    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.gateway_addr)
    }

    /// `ws://{gateway}{path}` (`wss://` over TLS).
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.gateway_addr)
    }

    /// `GET path` on the gateway: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(self.http_url(path))
            .send()
            .await
            .expect("the gateway answers HTTP");
        let status = response.status().as_u16();
        let body = response.text().await.expect("a readable body");
        (status, body)
    }

    /// `GET /api/websocket/health`, parsed.
    pub async fn health(&self) -> (u16, Value) {
        let (status, body) = self.http_get("/api/websocket/health").await;
        let body = serde_json::from_str(&body).expect("health is JSON");
        (status, body)
    }

    /// Waits until the gateway counts `expected` open connections.
    pub async fn wait_for_connection_count(&self, expected: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, health) = self.health().await;
            if health["active_connections"].as_u64() == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway still counts {} connections, not {expected}",
                health["active_connections"]
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client token for `sub` in `role`, valid for an hour.
    pub fn token(&self, sub: i64, role: Role) -> String {
        self.token_with_ttl(sub, role, Duration::from_secs(3600))
    }

    /// A client token for `sub` in `role`, valid for `ttl` (whole seconds).
    pub fn token_with_ttl(&self, sub: i64, role: Role, ttl: Duration) -> String {
        self.keys
            .mint(sub, role, None, ttl)
            .expect("minting a token")
    }

    /// Opens a WebSocket on `path` (which may carry a query) with `token` as
    /// the `token` query parameter, if given. Reads nothing.
    pub async fn ws_connect(&self, path: &str, token: Option<&str>) -> WsClient {
        let url = match token {
            Some(token) if path.contains('?') => format!("{}&token={token}", self.ws_url(path)),
            Some(token) => format!("{}?token={token}", self.ws_url(path)),
            None => self.ws_url(path),
        };
        self.ws_connect_request(url.into_client_request().expect("a valid URL"))
            .await
            .0
    }

    /// Opens a WebSocket with a request the test built (headers, subprotocols).
    pub async fn ws_connect_request(&self, request: Request<()>) -> (WsClient, WsResponse) {
        let (stream, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
                .await
                .expect("the WebSocket handshake finishes in time")
                .expect("the WebSocket handshake succeeds");
        (WsClient { stream }, response)
    }

    /// A request for `path` on the gateway, to add headers to.
    pub fn ws_request(&self, path: &str) -> Request<()> {
        self.ws_url(path)
            .into_client_request()
            .expect("a valid URL")
    }

    /// Connects user `id` (role `user`) on `/ws/{id}` and reads `connected`.
    pub async fn connect_user(&self, id: i64) -> (WsClient, Value) {
        self.connect_as(id, Role::User, "").await
    }

    /// Connects `id` in `role` on the endpoint for that role, with `query`
    /// (like `cursor=…`, or empty) besides the token, and reads `connected`.
    pub async fn connect_as(&self, id: i64, role: Role, query: &str) -> (WsClient, Value) {
        connect_at(self.gateway_addr, &self.token(id, role), id, role, query).await
    }

    /// A raw WebSocket connection (handshake done, nothing read) on `path`
    /// with the token as a query parameter.
    pub async fn raw_connect(&self, path: &str, token: &str) -> RawWs {
        RawWs::connect(self.gateway_addr, &format!("{path}?token={token}")).await
    }

    /// A gRPC client of the chat service.
    pub async fn chat_client(&self) -> ChatClient<Channel> {
        ChatClient::connect(format!("http://{}", self.services.chat))
            .await
            .expect("connecting to the chat service")
    }

    /// The history of `dialog_id` read over gRPC as `id` in `role`.
    pub async fn history_as(
        &self,
        id: i64,
        role: Role,
        dialog_id: i64,
    ) -> Result<pb::GetHistoryResponse, tonic::Status> {
        self.chat_client()
            .await
            .get_history(as_caller(
                id,
                role,
                pb::GetHistoryRequest {
                    dialog_id,
                    before_message_id: 0,
                    limit: 0,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `user_id`'s balance read over gRPC as that user, in units.
    pub async fn balance_of(&self, user_id: i64) -> f64 {
        self.chat_client()
            .await
            .get_balance(as_caller(
                user_id,
                Role::User,
                pb::GetBalanceRequest { user_id },
            ))
            .await
            .expect("GetBalance as the user")
            .into_inner()
            .balance
    }

    /// Polls the history of `dialog_id` (as its owner) until it holds
    /// `count` messages; returns them.
    pub async fn wait_for_history(
        &self,
        owner: i64,
        dialog_id: i64,
        count: usize,
    ) -> Vec<pb::ChatMessage> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let history = self
                .history_as(owner, Role::User, dialog_id)
                .await
                .expect("GetHistory as the owner");
            if history.messages.len() >= count {
                return history.messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dialog {dialog_id} has {} messages, not {count}",
                history.messages.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the system (the shutdown signal, then every part), checks that
    /// every part ended cleanly, and removes the database.
    pub async fn stop(mut self) {
        self.stop_parts().await;
        if let Some(storage) = self.storage.take() {
            storage.remove().await;
        }
    }

    /// Stops every part, then starts the whole system again on the same
    /// database, as an operator restarting the all-in-one would. Addresses
    /// change (port 0): connect again through the returned app.
    pub async fn restart(mut self) -> TestApp {
        self.stop_parts().await;
        let storage = self.storage.take().expect("the database is kept");
        start_on(self.options.clone(), storage).await
    }

    /// Sends the shutdown signal and checks that every part ended cleanly.
    async fn stop_parts(&mut self) {
        self.shutdown.cancel();
        if let Some(mut parts) = self.parts.take() {
            let all = async {
                let mut ended = Vec::new();
                while let Some(joined) = parts.join_next().await {
                    ended.push(joined);
                }
                ended
            };
            let ended = tokio::time::timeout(WAIT * 3, all)
                .await
                .expect("every part stops after the shutdown signal");
            for joined in ended {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((part, Err(err))) => panic!("the {part} failed: {err:#}"),
                    Err(join_error) => panic!("a part panicked: {join_error}"),
                }
            }
        }
    }
}

/// A second gateway on a [`TestApp`]'s services, in-process on port 0
/// (default settings, the app's JWT secret): what a client on another
/// gateway process sees. Stopped by cancelling `stop`.
pub struct ExtraGateway {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts an [`ExtraGateway`] named `id` and returns once it reports
    /// healthy (its streams to every service attached).
    pub async fn start_gateway(&self, id: &str) -> ExtraGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let config = GatewayConfig {
            listen: addr,
            jwt_secret: Some(self.jwt_secret.clone()),
            gateway_id: Some(id.into()),
            ..GatewayConfig::default()
        };
        let stop = CancellationToken::new();
        let run = chatai_gateway::run(
            listener,
            config,
            self.services.clone(),
            Default::default(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            run.await.expect("the gateway runs");
        });
        let health = format!("http://{addr}/api/websocket/health");
        let deadline = tokio::time::Instant::now() + WAIT;
        while self
            .http
            .get(&health)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway {id} not healthy in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ExtraGateway { addr, stop, task }
    }
}

impl Drop for TestApp {
    /// A test that failed before `stop` still stops the parts; its database
    /// goes with `storage` (a `TestDatabase` removes itself when dropped).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
