//! `POST /api/frames`: a client frame over HTTP, for SSE clients (and
//! anyone who cannot hold a WebSocket). The body is exactly what a
//! WebSocket client would send; the response body is the `ack` or `error`
//! frame it would get back.
//!
//! - A frame whose `connection_id` names one of the caller's live SSE
//!   streams (`sse.rs`) is handed to that stream's connection task and
//!   handled there, as if it had come in on a WebSocket: its rooms, its
//!   token, its rate limit (a flood closes the stream, 1008).
//! - A frame without `connection_id` is handled on its own, by the same
//!   code ([`requests::handle`]), under a per-caller rate limit of the
//!   same size; the frames that act on a connection (`join_room`,
//!   `leave_room`, `refresh_token`) get `stream_required`.
//!
//! HTTP statuses: 200 for every answer, `error` frames included; 401 for a
//! missing or invalid token, 400 for a body that is not JSON (or not
//! UTF-8), 413 for one over `CHATAI_MAX_FRAME_BYTES` — each still with an
//! `error` frame as its body.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::Role;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use crate::auth::{self, Claims};
use crate::config::GatewayConfig;
use crate::connection::requests::{self, Answer, Handled, Sender};
use crate::frames::inbound::{self, Inbound, Priority};
use crate::frames::outbound;
use crate::gateway::Gateway;
use crate::sse::{StreamRequest, verified};

/// Callers the per-caller limiter remembers before it forgets the idle ones.
const LIMITER_KEYS: usize = 10_000;

/// The rate limit of frames sent without a stream, per caller (role and
/// id): the per-connection limit's rate and burst.
pub struct CallerLimits(DefaultKeyedRateLimiter<(Role, i64)>);

impl CallerLimits {
    pub fn new(config: &GatewayConfig) -> Self {
        let per_second = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(per_second);
        CallerLimits(RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    }

    /// Whether `caller` may send one more frame now.
    fn allow(&self, role: Role, id: i64) -> bool {
        if self.0.len() > LIMITER_KEYS {
            self.0.retain_recent();
        }
        self.0.check_key(&(role, id)).is_ok()
    }
}

impl std::fmt::Debug for CallerLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerLimits").finish_non_exhaustive()
    }
}

/// A frame as the response body, with `status`.
fn frame_response(status: StatusCode, frame: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], frame).into_response()
}

/// `POST /api/frames` (see the module docs).
pub async fn post_frame(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match verified(&gateway, auth::bearer(&headers)).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let (status, frame) = answer(&gateway, &claims, &body).await;
    frame_response(status, frame)
}

/// Where a posted frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// To the stream with this connection id.
    Stream {
        text: &'a str,
        connection_id: String,
    },
    /// Handled on its own.
    OnItsOwn(&'a str),
}

/// Reads a posted body (at most `max_bytes`): the frame's text and where it
/// goes, or the status and `error` frame to answer at once.
pub fn route(body: &[u8], max_bytes: usize) -> Result<Route<'_>, (StatusCode, String)> {
    if body.len() > max_bytes {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            outbound::error(None, ErrorCode::InvalidFrame, "Frame too large"),
        ));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err((
            StatusCode::BAD_REQUEST,
            outbound::error(None, ErrorCode::InvalidJson, "The body is not UTF-8"),
        ));
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            let frame = match inbound::parse(text) {
                Err(err) => requests::parse_error(&err),
                Ok(_) => outbound::error(None, ErrorCode::InvalidJson, "The body is not JSON"),
            };
            return Err((StatusCode::BAD_REQUEST, frame));
        }
    };
    match value.get("connection_id") {
        None | Some(Value::Null) => Ok(Route::OnItsOwn(text)),
        Some(Value::String(connection_id)) => Ok(Route::Stream {
            text,
            connection_id: connection_id.clone(),
        }),
        Some(_) => {
            let reference = value
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| id.chars().count() <= inbound::MAX_ID_CHARS);
            Err((
                StatusCode::OK,
                outbound::error(
                    reference,
                    ErrorCode::InvalidField,
                    "`connection_id` must be a string",
                ),
            ))
        }
    }
}

/// The answer to one posted frame: its status and its body.
pub async fn answer(gateway: &Gateway, claims: &Claims, body: &[u8]) -> (StatusCode, String) {
    match route(body, gateway.config.max_frame_bytes) {
        Err(refused) => refused,
        Ok(Route::OnItsOwn(text)) => (StatusCode::OK, on_its_own(gateway, claims, text).await),
        Ok(Route::Stream {
            text,
            connection_id,
        }) => (
            StatusCode::OK,
            for_stream(gateway, claims, &connection_id, text).await,
        ),
    }
}

/// Hands the frame to the stream's connection task and waits for its answer.
async fn for_stream(gateway: &Gateway, claims: &Claims, connection_id: &str, text: &str) -> String {
    let not_found = || {
        let reference = inbound::parse(text).ok().and_then(|i| i.id);
        outbound::error(
            reference.as_deref(),
            ErrorCode::StreamNotFound,
            "No live stream of yours has this connection_id; open GET /sse again",
        )
    };
    let Some(stream) = gateway.streams.of(connection_id, claims.role, claims.sub) else {
        return not_found();
    };
    let (answer, answered) = oneshot::channel();
    let request = StreamRequest {
        text: Utf8Bytes::from(text.to_owned()),
        answer,
    };
    if stream.inbox.send(request).await.is_err() {
        return not_found();
    }
    answered.await.unwrap_or_else(|_| not_found())
}

/// Handles a frame that names no stream (see the module docs).
async fn on_its_own(gateway: &Gateway, claims: &Claims, text: &str) -> String {
    if !gateway.caller_limits.allow(claims.role, claims.sub) {
        return requests::rate_limited(text);
    }
    let Inbound { id, frame } = match requests::read_frame(text) {
        Ok(inbound) => inbound,
        Err(frame) => return frame,
    };
    let caller = auth::caller_of(claims, None);
    let span = tracing::info_span!(
        parent: None,
        "frame",
        otel.name = "gateway.frame",
        chatai.part = "gateway",
        r#type = frame.type_name(),
        id = id.as_deref(),
        caller = claims.sub,
        transport = "http",
    );
    let reference = id.as_deref();
    let sender = Sender {
        gateway,
        caller: &caller,
        max_priority: Priority::ceiling(claims.max_priority.as_deref()),
        handoff_seen: 0,
    };
    match requests::handle(sender, reference, frame)
        .instrument(span)
        .await
    {
        Handled::Answer(Answer::Reply(frame) | Answer::Refused(frame, _)) => frame,
        // `typing` without an `id`: acknowledged, since HTTP answers.
        Handled::Answer(Answer::Silent) => outbound::ack(None, json!({})),
        Handled::NeedsConnection(frame) => outbound::error(
            reference,
            ErrorCode::StreamRequired,
            &format!(
                "`{}` acts on an SSE stream: add the stream's connection_id",
                frame.type_name()
            ),
        ),
    }
}
