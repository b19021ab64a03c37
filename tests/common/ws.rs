//! The WebSocket client of the tests, on tokio-tungstenite: [`WsClient`]
//! sends frames and reads the server's (answering pings while it reads),
//! with the calls the tests make — a chat round trip, a request and its
//! reply, a heartbeat, an expected close. Every read waits at most
//! [`WAIT`](super::WAIT) (or the timeout given); no test asserts how long
//! anything took.

use std::net::SocketAddr;
use std::time::Duration;

use chatai_kit::identity::Role;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{WAIT, assert_timestamp};

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

/// Adds a header to a WebSocket request.
pub fn with_header(mut request: Request<()>, name: &'static str, value: &str) -> Request<()> {
    request.headers_mut().insert(
        name,
        HeaderValue::from_str(value).expect("a valid header value"),
    );
    request
}
