//! One load-generator client: mints a token, opens the WebSocket (with
//! `TCP_NODELAY`, as a latency-sensitive client would) and waits for the
//! gateway's `connected` frame.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use chatai_kit::identity::Role;
use chatai_tokens::TokenKeys;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client's socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one client may take from TCP connect to `connected`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway under load and the keys to mint its tokens.
#[derive(Debug, Clone)]
pub struct Target {
    /// The first gateway (health checks, reports).
    pub addr: SocketAddr,
    /// Every gateway clients are spread over (`addr` first): client `id`
    /// connects to `gateways[id % len]`.
    pub gateways: Vec<SocketAddr>,
    keys: TokenKeys,
}

/// Why a client failed; the text is a stable code the reports count by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Failure(pub String);

impl Failure {
    pub fn new(code: impl Into<String>) -> Self {
        Failure(code.into())
    }

    /// A failure for a close frame from the server.
    pub fn closed(message: &Message) -> Self {
        match message {
            Message::Close(Some(frame)) => Failure(format!("close_{}", u16::from(frame.code))),
            _ => Failure::new("close"),
        }
    }
}

/// The fields of a server frame the load tool looks at; the rest is skipped.
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(rename = "ref", borrow, default)]
    pub reference: Option<Cow<'a, str>>,
    #[serde(default)]
    pub dialog_id: Option<i64>,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    /// `operator_assigned`'s and the `handoff_request` ack's operator.
    #[serde(default)]
    pub operator_id: Option<i64>,
}

impl Target {
    pub fn new(addr: SocketAddr, secret: &[u8]) -> Self {
        Target {
            addr,
            gateways: vec![addr],
            keys: TokenKeys::new(secret),
        }
    }

    /// The same, with clients spread over `more` gateways besides the first.
    pub fn spread_over(mut self, more: &[SocketAddr]) -> Self {
        self.gateways.extend_from_slice(more);
        self
    }

    /// The gateway client `id` connects to.
    fn gateway_for(&self, id: i64) -> SocketAddr {
        let index = id.unsigned_abs() as usize % self.gateways.len().max(1);
        self.gateways.get(index).copied().unwrap_or(self.addr)
    }

    /// Opens a connection for user `user_id` and waits for `connected`.
    pub async fn connect(&self, user_id: i64, token_ttl: Duration) -> Result<Ws, Failure> {
        self.connect_as(user_id, Role::User, token_ttl).await
    }

    /// Opens a connection for `id` in `role` (operators on
    /// `/ws/operator/{id}`, everyone else on `/ws/{id}`) and waits for
    /// `connected`.
    pub async fn connect_as(
        &self,
        id: i64,
        role: Role,
        token_ttl: Duration,
    ) -> Result<Ws, Failure> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.try_connect(id, role, token_ttl))
            .await
            .unwrap_or_else(|_| Err(Failure::new("connect_timeout")))
    }

    async fn try_connect(&self, id: i64, role: Role, token_ttl: Duration) -> Result<Ws, Failure> {
        let token = self
            .keys
            .mint(id, role, None, token_ttl)
            .map_err(|_| Failure::new("mint_token"))?;
        let gateway = self.gateway_for(id);
        let stream = TcpStream::connect(gateway)
            .await
            .map_err(|err| Failure(format!("tcp_{:?}", err.kind())))?;
        stream
            .set_nodelay(true)
            .map_err(|_| Failure::new("tcp_nodelay"))?;
        let path = match role {
            Role::Operator => format!("/ws/operator/{id}"),
            _ => format!("/ws/{id}"),
        };
        let url = format!("ws://{gateway}{path}?token={token}");
        // Small buffers: the tool itself holds up to ~19 000 sockets.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|_| Failure::new("handshake"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame<'_> = serde_json::from_str(text.as_str())
                        .map_err(|_| Failure::new("bad_frame"))?;
                    if frame.kind == "connected" {
                        return Ok(ws);
                    }
                    // Replayed events come after `connected`; anything else
                    // first is unexpected but harmless.
                }
                Some(Ok(message @ Message::Close(_))) => return Err(Failure::closed(&message)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Failure::new("socket_error")),
            }
        }
    }

    /// `GET /api/websocket/health`'s `active_connections`, if the gateway answers.
    pub async fn active_connections(&self) -> Option<u64> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await.ok()?;
            let request = format!(
                "GET /api/websocket/health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.ok()?;
            let text = String::from_utf8_lossy(&response);
            let body = text.split("\r\n\r\n").nth(1)?;
            let health: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
            health.get("active_connections")?.as_u64()
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()
            .flatten()
    }
}
