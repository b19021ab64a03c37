//! Server-Sent Events, for networks that break WebSockets: `GET /sse`
//! streams a connection's frames as `text/event-stream`, and its requests
//! arrive over `POST /api/frames` (`http_frames.rs`) naming the stream's
//! `connection_id`. The connection itself is the WebSocket's task
//! (`connection/`) over [`SseTransport`]: the same registry, queue, catch-up,
//! per-user limit, slow-consumer cut, rate limit and close reasons.
//!
//! On the stream each frame is one event: `data:` the frame's JSON text,
//! no `event:` (a browser's `onmessage` gets them all), and `id:` its
//! cursor when it carries one (durable events, and `connected`), so the
//! browser's own `Last-Event-ID` resumes it. Heartbeats are comments
//! (`: ping`); a close reason is a last event
//! `{"type":"closed","code":…,"reason":"…"}` before the stream ends.
//! [`Streams`] maps the live streams' connection ids to their request
//! inboxes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use crate::accept::ClientSocket;
use crate::auth::{self, Claims};
use crate::close::CloseReason;
use crate::connection::transport::{Closed, Incoming, Transport};
use crate::connection::{self, Session};
use crate::cursor::Cursor;
use crate::frames::outbound;
use crate::gateway::Gateway;

/// Requests waiting for one stream's connection task; a sender beyond it
/// waits (its HTTP request stays open), as a WebSocket client waits on TCP.
const INBOX: usize = 8;

/// Body chunks waiting to be written to the client; beyond it the
/// connection task waits, as on a full socket, and its queue fills (4002).
const BODY_CHUNKS: usize = 4;

/// A batch's events gather up to this many bytes before they are sent.
const CHUNK_BYTES: usize = 4 * 1024;

/// A request for a stream's connection: a client frame, and where its
/// answer goes.
#[derive(Debug)]
pub struct StreamRequest {
    pub text: Utf8Bytes,
    pub answer: oneshot::Sender<String>,
}

/// Whose a stream is, and how to reach its connection task.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub role: Role,
    pub sub: i64,
    pub inbox: mpsc::Sender<StreamRequest>,
}

/// The live SSE streams of this gateway, by connection id.
#[derive(Debug, Default)]
pub struct Streams(DashMap<String, StreamEntry>);

impl Streams {
    /// The stream `connection_id`, if it is live and `role`/`sub`'s.
    pub fn of(&self, connection_id: &str, role: Role, sub: i64) -> Option<StreamEntry> {
        self.0
            .get(connection_id)
            .filter(|entry| entry.role == role && entry.sub == sub)
            .map(|entry| entry.clone())
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One event of the stream: `id:` when given (and fit for the field), then
/// the frame's lines as `data:` lines, then the blank line that ends it.
/// A frame's JSON text has no line breaks (serde's compact output escapes
/// them); should one have some, each line is its own `data:` line, which
/// the client joins with `\n` again.
pub fn write_event(buffer: &mut BytesMut, frame: &str, id: Option<&str>) {
    if let Some(id) = id.filter(|id| !id.contains(['\n', '\r', '\0'])) {
        buffer.put_slice(b"id: ");
        buffer.put_slice(id.as_bytes());
        buffer.put_u8(b'\n');
    }
    for line in frame.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        for part in line.split('\r') {
            buffer.put_slice(b"data: ");
            buffer.put_slice(part.as_bytes());
            buffer.put_u8(b'\n');
        }
    }
    buffer.put_u8(b'\n');
}

/// The last event of a stream: why it ends (the WebSocket's close code and
/// reason). A client reconnects as after that close.
pub fn closed_frame(reason: CloseReason) -> String {
    outbound::closed(reason.code(), reason.reason())
}

/// A connection's frames as an event stream (see the module docs).
pub struct SseTransport {
    body: mpsc::Sender<Result<Bytes, Infallible>>,
    inbox: mpsc::Receiver<StreamRequest>,
    buffer: BytesMut,
    /// Takes the stream out of [`Streams`] when the connection ends.
    _listed: Listed,
}

/// A stream's place in [`Streams`], given back on drop.
struct Listed {
    gateway: Arc<Gateway>,
    name: String,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.gateway.streams.0.remove(&self.name);
    }
}

impl SseTransport {
    async fn send_buffer(&mut self) -> Result<(), Closed> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.body.send(Ok(chunk)).await.map_err(|_| Closed)
    }
}

impl Transport for SseTransport {
    /// The client of a stream never speaks on it; a dead one is found by
    /// the heartbeat's write.
    const IDLE_TIMEOUT: bool = false;

    async fn next(&mut self) -> Incoming {
        tokio::select! {
            request = self.inbox.recv() => match request {
                Some(StreamRequest { text, answer }) => Incoming::Text(text, Some(answer)),
                None => Incoming::Gone,
            },
            () = self.body.closed() => Incoming::Gone,
        }
    }

    async fn write(
        &mut self,
        frame: Utf8Bytes,
        cursor: Option<&str>,
        buffered: bool,
    ) -> Result<(), Closed> {
        write_event(&mut self.buffer, frame.as_str(), cursor);
        if buffered && self.buffer.len() < CHUNK_BYTES {
            return Ok(());
        }
        self.send_buffer().await
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        self.send_buffer().await
    }

    async fn ping(&mut self) -> Result<(), Closed> {
        self.buffer.put_slice(b": ping\n\n");
        self.send_buffer().await
    }

    async fn close(&mut self, reason: CloseReason, grace: Duration) {
        write_event(&mut self.buffer, &closed_frame(reason), None);
        let _ = tokio::time::timeout(grace, self.send_buffer()).await;
    }
}

/// The claims of the token an HTTP request presented, or the answer every
/// HTTP route gives to a missing or refused one: 401 `invalid_token`.
pub async fn verified(gateway: &Gateway, token: Option<&str>) -> Result<Claims, Response> {
    gateway
        .verifier
        .verify_presented(token)
        .await
        .ok_or_else(|| {
            error_response(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidToken,
                "Invalid token",
            )
        })
}

/// An `error` frame as an HTTP response with `status`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        outbound::error(None, code, message),
    )
        .into_response()
}

/// Where a stream resumes: `Last-Event-ID` (what a browser sends on its
/// own), else `?cursor=` / `?last_seq=` as on the WebSocket. An unreadable
/// cursor resumes like an expired one (`recovered: false`).
pub fn resume_point(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<Cursor> {
    headers
        .get("last-event-id")
        // Not text at all: unreadable, so expired (not a fresh start).
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .or_else(|| auth::query_param(uri, "cursor"))
        .or_else(|| auth::query_param(uri, "last_seq"))
        .map(|text| Cursor::decode(text.trim()).unwrap_or(Cursor::UNREADABLE))
}

/// `GET /sse`: the caller's connection as an event stream. The token
/// (`Authorization: Bearer`, or `?token=` for `EventSource`, which cannot
/// set headers) says who: users and admins get their user's events, as on
/// `/ws/{user_id}`; operators their operator's, as on
/// `/ws/operator/{operator_id}`.
pub async fn stream(State(gateway): State<Arc<Gateway>>, mut request: Request) -> Response {
    let presented = auth::presented_token(request.uri(), request.headers());
    let token = presented.as_ref().map(|presented| presented.token.as_str());
    let claims = match verified(&gateway, token).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let principal = match claims.role {
        Role::Operator => Recipient::Operator(claims.sub),
        _ => Recipient::User(claims.sub),
    };
    // A draining gateway takes no new streams: the client goes elsewhere.
    if gateway.draining.is_cancelled() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            "Server shutting down",
        );
    }
    let resume = resume_point(request.uri(), request.headers());
    let socket = request.extensions_mut().remove::<ClientSocket>();
    let admitted = match &socket {
        Some(socket) => {
            let client = gateway
                .limits
                .client_addr(socket.peer.ip(), request.headers());
            match gateway.limits.admit(client) {
                Ok(admitted) => {
                    // A connection now, like an upgraded WebSocket: no
                    // longer unfinished, never cut to make room.
                    socket.handshake.finish();
                    Some(admitted)
                }
                Err(refused) => {
                    tracing::info!(cause = %refused, "refused stream");
                    let mut response = error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::ServiceUnavailable,
                        "Try again later",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return response;
                }
            }
        }
        // Served without the listener of `accept.rs`: no counts.
        None => None,
    };
    let (body_tx, body_rx) = mpsc::channel(BODY_CHUNKS);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
    let id = gateway.registry.next_id();
    let name = gateway.registry.connection_name(id);
    gateway.streams.0.insert(
        name.clone(),
        StreamEntry {
            role: claims.role,
            sub: claims.sub,
            inbox: inbox_tx,
        },
    );
    let transport = SseTransport {
        body: body_tx,
        inbox: inbox_rx,
        buffer: BytesMut::new(),
        _listed: Listed {
            gateway: gateway.clone(),
            name,
        },
    };
    let span = match socket.as_ref() {
        Some(socket) => tracing::info_span!("client", addr = %socket.peer.ip(), transport = "sse"),
        None => tracing::info_span!("client", transport = "sse"),
    };
    let session = Session {
        claims,
        principal,
        resume,
    };
    let tasks = gateway.tasks.clone();
    tasks.spawn(
        async move {
            connection::serve_as(transport, gateway, session, id).await;
            drop(admitted);
        }
        .instrument(span),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // Proxies that buffer responses (nginx) would hold events back.
        .header("x-accel-buffering", "no")
        // The socket was counted as a connection: not reused after.
        .header(header::CONNECTION, "close")
        .body(Body::from_stream(ReceiverStream::new(body_rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(frame: &str, id: Option<&str>) -> String {
        let mut buffer = BytesMut::new();
        write_event(&mut buffer, frame, id);
        String::from_utf8(buffer.to_vec()).unwrap_or_default()
    }

    /// A frame is one `data:` line, with its cursor as `id:` when it has one.
    #[test]
    fn a_frame_is_one_event() {
        assert_eq!(
            event(r#"{"type":"ack"}"#, None),
            "data: {\"type\":\"ack\"}\n\n"
        );
        assert_eq!(
            event(r#"{"type":"ai_response"}"#, Some("AYCA")),
            "id: AYCA\ndata: {\"type\":\"ai_response\"}\n\n"
        );
    }

    /// Line breaks never end an event early, and an id that would break the
    /// field is left out.
    #[test]
    fn line_breaks_stay_inside_the_event() {
        assert_eq!(
            event("{\n\"a\":1\r\n}", Some("x\ny")),
            "data: {\ndata: \"a\":1\ndata: }\n\n"
        );
    }
}
