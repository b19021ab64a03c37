//! What every end-to-end test shares: [`spawn_app`] starts the whole system
//! in-process on port 0 (the gateway and the four services, each speaking
//! real gRPC on its own loopback port, with a fresh database), and returns a
//! [`TestApp`] with the addresses, the JWT secret, token minting, WebSocket
//! clients ([`WsClient`] on tokio-tungstenite, [`RawWs`] for frames
//! tungstenite refuses to write) and gRPC clients carrying a caller identity.
//!
//! Nothing here sleeps to wait for readiness: listeners are bound before the
//! parts start, start-up is over when `GET /api/websocket/health` answers 200
//! (polled in a bounded loop), and frames are awaited with a timeout. The
//! timeouts bound how long a test waits; no test asserts how long anything took.
//!
//! Databases: SQLite in a fresh temporary folder by default; with
//! [`TestOptions::postgres`], a fresh PostgreSQL database
//! (`chatai_testkit::TestDatabase`), dropped `WITH (FORCE)` when the app
//! stops or is dropped. An unreachable server fails the test.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatai::{Listeners, Parts, SystemConfig};
use chatai_chat::ChatConfig;
use chatai_gateway::GatewayConfig;
use chatai_gateway::auth::TokenKeys;
use chatai_handoff::HandoffConfig;
use chatai_kit::config::{ServiceAddrs, ServiceCommon};
use chatai_kit::identity::{Caller, Role};
use chatai_notification::NotificationConfig;
use chatai_presence::PresenceConfig;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_testkit::TestDatabase;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long a test waits for a frame, a close or a state before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The question the built-in FAQ assistant answers.
pub const FAQ_QUESTION: &str = "How do I reset my password?";

/// What `assistant_name` the default assistant signs with.
pub const ASSISTANT_NAME: &str = "Support Assistant";

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

    /// Open connections per user before the oldest is closed.
    pub fn max_connections_per_user(mut self, max: usize) -> Self {
        self.gateway.max_connections_per_user = max;
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
    /// The HS256 secret the gateway verifies client tokens with.
    pub jwt_secret: String,
    /// The services' database URL.
    pub database_url: String,
    /// The starting balance of a new user, in units.
    pub starting_balance: f64,
    /// The price of 1 000 assistant tokens, in units.
    pub price_per_1k_tokens: f64,
    pub keys: TokenKeys,
    http: reqwest::Client,
    shutdown: CancellationToken,
    parts: Option<Parts>,
    storage: Option<TestDatabase>,
}

/// Starts the whole system on port 0 and returns once the gateway reports
/// healthy (every service stream attached).
pub async fn spawn_app(options: TestOptions) -> TestApp {
    let TestOptions {
        database,
        gateway,
        chat,
        handoff,
        presence,
        notification,
        mut common,
    } = options;
    let storage = match database {
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
    let database_url = storage.url().to_owned();
    // Every service that stores anything gets the test's database, never
    // the default file under `./data/`.
    common.database_url = database_url.clone();
    let port_zero = SocketAddr::from(([127, 0, 0, 1], 0));
    let any_port = ServiceAddrs {
        chat: port_zero.into(),
        handoff: port_zero.into(),
        presence: port_zero.into(),
        notification: port_zero.into(),
    };
    let listeners = Listeners::bind(gateway.listen, &any_port)
        .await
        .expect("binding the listeners");
    let gateway_addr = listeners.gateway_addr().expect("the gateway's address");
    let services = listeners.service_addrs().expect("the services' addresses");
    let jwt_secret = gateway.jwt_secret().to_owned();
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
        keys: TokenKeys::new(jwt_secret.as_bytes()),
        jwt_secret,
        database_url,
        starting_balance,
        price_per_1k_tokens,
        http: reqwest::Client::new(),
        shutdown,
        parts: Some(parts),
        storage: Some(storage),
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

    /// `http://{gateway}{path}`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_addr)
    }

    /// `ws://{gateway}{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.gateway_addr)
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
        if let Some(storage) = self.storage.take() {
            storage.remove().await;
        }
    }
}

impl Drop for TestApp {
    /// A test that failed before `stop` still stops the parts; its database
    /// goes with `storage` (a `TestDatabase` removes itself when dropped).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects `id` in `role` to the gateway at `gateway` with `token`, on the
/// endpoint for the role, with `query` (like `cursor=…`, or empty) besides
/// the token, and reads `connected`.
pub async fn connect_at(
    gateway: SocketAddr,
    token: &str,
    id: i64,
    role: Role,
    query: &str,
) -> (WsClient, Value) {
    let path = match role {
        Role::Operator => format!("/ws/operator/{id}"),
        _ => format!("/ws/{id}"),
    };
    let mut url = format!("ws://{gateway}{path}?token={token}");
    if !query.is_empty() {
        url.push('&');
        url.push_str(query);
    }
    let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the WebSocket handshake finishes in time")
        .expect("the WebSocket handshake succeeds");
    let mut client = WsClient { stream };
    let connected = client.recv_type("connected").await;
    (client, connected)
}

/// A gRPC request carrying `id` in `role` as the caller.
pub fn as_caller<T>(id: i64, role: Role, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    Caller {
        id,
        role,
        name: None,
        connection_id: None,
    }
    .write_metadata(request.metadata_mut());
    request
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Asserts `frame` carries an RFC 3339 UTC `timestamp`.
pub fn assert_timestamp(frame: &Value) {
    let timestamp = frame["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp in {frame}"));
    let bytes = timestamp.as_bytes();
    let shaped = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && timestamp.ends_with('Z');
    assert!(shaped, "timestamp {timestamp:?} is not RFC 3339 UTC");
}

/// A close frame's code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// A WebSocket client (tokio-tungstenite): answers pings while it reads.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a read produced.
enum Read {
    Text(Value),
    Close(Option<Closed>),
}

impl WsClient {
    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Sends one JSON frame.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends one text frame; false when the connection is already gone.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.stream.send(Message::text(text))).await,
            Ok(Ok(()))
        )
    }

    /// Sends any message.
    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.stream.send(message))
            .await
            .expect("sending in time")
            .expect("sending a frame");
    }

    /// The next text frame or the close, skipping pings and pongs.
    async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {timeout:?}"));
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(&text)
                        .unwrap_or_else(|err| panic!("server frame {text} is not JSON: {err}"));
                    return Read::Text(value);
                }
                Some(Ok(Message::Close(frame))) => return Read::Close(frame.map(closed)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(bytes))) => {
                    panic!("the server sent a binary frame of {} bytes", bytes.len())
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    return Read::Close(None);
                }
                Some(Err(err)) => panic!("reading from the WebSocket failed: {err}"),
            }
        }
    }

    /// Keeps reading (and so answering pings) for `duration`; fails if a
    /// text frame or a close arrives meanwhile.
    pub async fn expect_nothing_for(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.stream.next()).await else {
                return;
            };
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// The next JSON frame, waiting at most `timeout`; fails on a close.
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.read(timeout).await {
            Read::Text(value) => value,
            Read::Close(closed) => panic!("closed while a frame was expected: {closed:?}"),
        }
    }

    /// The next JSON frame, waiting at most [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.recv_json(WAIT).await
    }

    /// The next frame, which must be of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
        assert_timestamp(&frame);
        frame
    }

    /// The next frame of type `kind`, skipping others (presence changes,
    /// room copies, events of other services).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends `frame` and returns its reply: the `ack` or `error` whose `ref`
    /// is the frame's `id`, skipping everything else.
    pub async fn request(&mut self, frame: Value) -> Value {
        let reference = frame["id"].clone();
        self.send_json(&frame).await;
        loop {
            let reply = self.recv().await;
            if reply["ref"] == reference && (reply["type"] == "ack" || reply["type"] == "error") {
                return reply;
            }
        }
    }

    /// The next reply to a request (a frame without `event_id`), skipping the
    /// durable events in between; returns the reply and the skipped events.
    pub async fn recv_reply(&mut self) -> (Value, Vec<Value>) {
        let mut events = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame.get("event_id").is_some() {
                events.push(frame);
            } else {
                return (frame, events);
            }
        }
    }

    /// Sends `chat_message` (with `id` = `reference`) into `dialog_id` (a new
    /// dialog when `None`) and returns its `ack`, which must come next.
    pub async fn chat(&mut self, reference: &str, dialog_id: Option<i64>, message: &str) -> Value {
        let mut frame = json!({ "type": "chat_message", "id": reference, "message": message });
        if let Some(dialog_id) = dialog_id {
            frame["dialog_id"] = dialog_id.into();
        }
        self.send_json(&frame).await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], "ack", "expected the ack of {frame}, got {ack}");
        assert_eq!(ack["ref"], reference, "{ack}");
        assert!(ack["dialog_id"].as_i64().is_some_and(|id| id > 0), "{ack}");
        assert!(ack["message_id"].as_i64().is_some_and(|id| id > 0), "{ack}");
        assert_timestamp(&ack);
        ack
    }

    /// [`chat`](Self::chat) and then the `ai_response`, which must come
    /// next; returns both.
    pub async fn chat_and_answer(
        &mut self,
        reference: &str,
        dialog_id: Option<i64>,
        message: &str,
    ) -> (Value, Value) {
        let ack = self.chat(reference, dialog_id, message).await;
        let answer = self.recv_type("ai_response").await;
        assert_eq!(answer["dialog_id"], ack["dialog_id"], "{answer}");
        (ack, answer)
    }

    /// Sends `heartbeat` with `id` = `reference` and returns the frames that
    /// came before its `heartbeat_ack` (whose `ref` must match).
    pub async fn heartbeat(&mut self, reference: &str) -> Vec<Value> {
        self.send_json(&json!({ "type": "heartbeat", "id": reference }))
            .await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["type"] == "heartbeat_ack" {
                assert_eq!(frame["ref"], reference, "{frame}");
                assert_timestamp(&frame);
                return before;
            }
            before.push(frame);
        }
    }

    /// A heartbeat round trip with nothing else in between: proves the
    /// connection is open and has nothing pending.
    pub async fn assert_quiet_and_open(&mut self, reference: &str) {
        let before = self.heartbeat(reference).await;
        assert!(before.is_empty(), "unexpected frames: {before:?}");
    }

    /// Reads until the server closes; asserts the close code and reason and
    /// returns the text frames that came before it.
    pub async fn expect_close(&mut self, code: u16, reason: &str) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            match self.read(WAIT).await {
                Read::Text(frame) => before.push(frame),
                Read::Close(closed) => {
                    let expected = Closed {
                        code,
                        reason: reason.to_owned(),
                    };
                    assert_eq!(
                        closed.as_ref(),
                        Some(&expected),
                        "wrong close (frames before it: {before:?})"
                    );
                    return before;
                }
            }
        }
    }

    /// Closes from the client side (1000) and waits for the server's end.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}

fn closed(frame: CloseFrame) -> Closed {
    Closed {
        code: u16::from(frame.code),
        reason: frame.reason.to_string(),
    }
}

/// A WebSocket client written by hand over TCP, for what tungstenite will not
/// do: send a text frame that is not UTF-8, or never answer pings.
pub struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// A frame as the server sent it.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

impl RawWs {
    /// Connects and upgrades `path_and_query` by hand; fails unless the
    /// server answers 101.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> RawWs {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the gateway");
        Self::upgrade(stream, addr, path_and_query).await
    }

    /// Like [`connect`](Self::connect), with a receive buffer of about
    /// `bytes` (a client that does not read then soon stops the server's writes).
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        path_and_query: &str,
        bytes: u32,
    ) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .set_recv_buffer_size(bytes)
            .expect("setting the receive buffer");
        let stream = socket
            .connect(addr)
            .await
            .expect("connecting to the gateway");
        Self::upgrade(stream, addr, path_and_query).await
    }

    async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path_and_query: &str) -> RawWs {
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("writing the upgrade request");
        let mut raw = RawWs {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(at) = raw.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buffer[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "the upgrade was refused: {head}"
        );
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong Sec-WebSocket-Accept: {head}"
        );
        raw.buffer.drain(..head_end);
        raw
    }

    /// Reads more bytes into the buffer; fails on end of stream or after [`WAIT`].
    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server sends in time")
            .expect("reading from the gateway");
        assert!(read > 0, "the server closed the TCP connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }

    /// Writes one masked frame with `fin` set.
    pub async fn write_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .write_all(&frame)
            .await
            .expect("writing a frame");
    }

    /// Writes one text frame (the bytes as given, UTF-8 or not).
    pub async fn send_text_bytes(&mut self, payload: &[u8]) {
        self.write_frame(OP_TEXT, payload).await;
    }

    /// Writes one JSON text frame.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text_bytes(frame.to_string().as_bytes()).await;
    }

    /// The next frame the server sent (server frames are unmasked and whole).
    pub async fn read_frame(&mut self) -> RawFrame {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                return frame;
            }
            self.fill().await;
        }
    }

    /// The next text frame as JSON, skipping pings (never answered).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let frame = self.read_frame().await;
            match frame.opcode {
                OP_TEXT => {
                    return serde_json::from_slice(&frame.payload).unwrap_or_else(|err| {
                        panic!("server frame is not JSON: {err}: {:?}", frame.payload)
                    });
                }
                OP_PING | OP_PONG => {}
                OP_CLOSE => panic!(
                    "closed while a frame was expected: {:?}",
                    parse_close(&frame)
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// Reads everything until the server's close frame or the end of the
    /// stream: the text frames (a frame cut off by the end is not one) and
    /// the close, if one came.
    pub async fn read_until_end(&mut self) -> (Vec<Value>, Option<Closed>) {
        let mut frames = Vec::new();
        loop {
            while let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                match frame.opcode {
                    OP_TEXT => frames.push(
                        serde_json::from_slice(&frame.payload).expect("server frames are JSON"),
                    ),
                    OP_CLOSE => return (frames, parse_close(&frame)),
                    _ => {}
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the server sends or closes in time");
            match read {
                Ok(0) | Err(_) => return (frames, None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server's close frame; asserts its code and reason and
    /// returns how many pings came before it.
    pub async fn expect_close(&mut self, code: u16, reason: &str) -> usize {
        let mut pings = 0;
        loop {
            let frame = self.read_frame().await;
            match frame.opcode {
                OP_CLOSE => {
                    let expected = Closed {
                        code,
                        reason: reason.to_owned(),
                    };
                    assert_eq!(parse_close(&frame), Some(expected));
                    return pings;
                }
                OP_PING => pings += 1,
                OP_PONG => {}
                OP_TEXT => panic!(
                    "a text frame came before the close: {}",
                    String::from_utf8_lossy(&frame.payload)
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }
}

/// One whole frame at the start of `bytes`, and how many bytes it used.
fn parse_frame(bytes: &[u8]) -> Option<(RawFrame, usize)> {
    let [first, second, rest @ ..] = bytes else {
        return None;
    };
    assert!(first & 0x80 != 0, "the server sent a fragmented frame");
    assert!(second & 0x80 == 0, "the server masked a frame");
    let (len, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(header..header + len)?.to_vec();
    Some((
        RawFrame {
            opcode: first & 0x0f,
            payload,
        },
        header + len,
    ))
}

fn parse_close(frame: &RawFrame) -> Option<Closed> {
    let [high, low, reason @ ..] = frame.payload.as_slice() else {
        return None;
    };
    Some(Closed {
        code: u16::from_be_bytes([*high, *low]),
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}

/// Adds a header to a WebSocket request.
pub fn with_header(mut request: Request<()>, name: &'static str, value: &str) -> Request<()> {
    request.headers_mut().insert(
        name,
        HeaderValue::from_str(value).expect("a valid header value"),
    );
    request
}
