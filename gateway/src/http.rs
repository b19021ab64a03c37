//! The gateway's HTTP side: the routes (the WebSocket endpoints, with
//! authentication before the upgrade and the upgrade itself onto
//! tokio-tungstenite; health and Prometheus metrics here, the rest in their
//! modules: the HTTP API, SSE, the browser assets of [`web`]), and the CORS
//! and origin rules of the browser-facing routes.
//!
//! A browser cannot read the HTTP status of a failed upgrade, so refused
//! clients are upgraded and then closed with the code docs/protocol.md names
//! (1008 `Invalid token` / `Unauthorized`; 1013 `Try again later` when the
//! gateway, or the client's address, holds as many connections as it may).
//! The exception is a browser page from an origin not on
//! `CHATAI_ALLOWED_ORIGINS`: 403 before the upgrade. The upgrade itself must
//! finish within `CHATAI_UPGRADE_TIMEOUT_SECS`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::accept::ClientSocket;
use crate::auth::{self, Claims};
use crate::close::CloseReason;
use crate::config::AllowedOrigins;
use crate::connection::{self, Session};
use crate::cursor::Cursor;
use crate::frames::outbound::now_rfc3339;
use crate::gateway::Gateway;
use crate::limits;
use crate::web;
use crate::{alerts, api, dev_token, http_frames, sse};

/// The routes, one line each.
pub fn router(gateway: Arc<Gateway>) -> Router {
    // What a browser page may call from another origin: the SSE stream and
    // the HTTP API. Outermost, CORS answers preflights (`OPTIONS`) before
    // anything else looks at them; inside it, a request from an origin off
    // the list is refused (403) before its handler does any work.
    let browser = Router::new()
        .route("/sse", get(sse::stream))
        .route("/api/frames", post(http_frames::post_frame))
        .route("/api/alerts", post(alerts::send))
        .route("/api/dev/token", get(dev_token::mint))
        .route("/api/dialogs", get(api::list_dialogs))
        .route(
            "/api/dialogs/{dialog_id}/messages",
            get(api::dialog_messages),
        )
        .route("/api/users/{user_id}/balance/top-up", post(api::top_up))
        .route("/api/websocket/health", get(health))
        .route("/api/websocket/stats", get(stats))
        .layer(middleware::from_fn_with_state(
            gateway.clone(),
            refuse_foreign_origin,
        ))
        .layer(cors(&gateway.config.allowed_origins));
    Router::new()
        .route("/ws/operator/{operator_id}", get(operator_socket))
        .route("/ws/{user_id}", get(user_socket))
        .route("/metrics", get(metrics))
        // Public files with their own headers (`web.rs`): outside the CORS
        // allow-list, which is for the APIs.
        .route("/web/{*path}", get(web::asset))
        .route("/console", get(web::console))
        .route("/widget", get(web::widget))
        .route("/demo", get(web::demo))
        .merge(browser)
        .with_state(gateway)
}

/// Cross-origin requests to the browser-facing routes: from the origins of
/// `CHATAI_ALLOWED_ORIGINS` (any origin when it is empty, as for the
/// WebSocket), with the headers a client sends (`Authorization`,
/// `Content-Type`, `Last-Event-ID`). No cookies are involved: the token is
/// a header, so no credentials mode.
fn cors(allowed: &AllowedOrigins) -> CorsLayer {
    let origins = if allowed.0.is_empty() {
        AllowOrigin::any()
    } else {
        let allowed = allowed.clone();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            allowed.allow(Some(origin.as_bytes()))
        })
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600))
}

/// A browser page from an origin off `CHATAI_ALLOWED_ORIGINS` gets 403 (an
/// `error` frame `forbidden`) instead of the work being done for a page
/// that may not read the answer — the WebSocket's Origin check, for HTTP.
async fn refuse_foreign_origin(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let origin = request.headers().get(header::ORIGIN);
    if gateway
        .config
        .allowed_origins
        .allow(origin.map(HeaderValue::as_bytes))
    {
        return next.run(request).await;
    }
    tracing::info!(?origin, "origin not allowed");
    sse::error_response(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "Origin not allowed",
    )
}

/// Which endpoint a client came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `/ws/{user_id}`: users and admins.
    User,
    /// `/ws/operator/{operator_id}`: operators.
    Operator,
}

async fn user_socket(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    upgrade(gateway, Endpoint::User, &id, request).await
}

async fn operator_socket(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    upgrade(gateway, Endpoint::Operator, &id, request).await
}

/// Checks the token against the endpoint: `Ok` with the claims, or the close reason.
async fn authorize(
    gateway: &Gateway,
    endpoint: Endpoint,
    path_id: &str,
    presented: Option<auth::PresentedToken>,
) -> Result<Claims, CloseReason> {
    let presented = presented.ok_or(CloseReason::InvalidToken)?;
    let claims = gateway
        .verifier
        .verify(&presented.token)
        .await
        .map_err(|err| {
            tracing::debug!(cause = %err, "token refused");
            CloseReason::InvalidToken
        })?;
    let same_subject = path_id.parse::<i64>().ok() == Some(claims.sub);
    let role_fits = match endpoint {
        Endpoint::User => matches!(claims.role, Role::User | Role::Admin),
        Endpoint::Operator => claims.role == Role::Operator,
    };
    if same_subject && role_fits {
        Ok(claims)
    } else {
        Err(CloseReason::Unauthorized)
    }
}

/// Why a client is upgraded and then closed.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The token does not fit (1008).
    Token(CloseReason),
    /// The node or the client's address holds as many connections as it
    /// may (1013 `Try again later`).
    Capacity(limits::Refused),
    /// The gateway is stopping (1001): connect elsewhere.
    Draining,
}

impl Refusal {
    fn frame(self) -> CloseFrame {
        match self {
            Refusal::Token(reason) => reason.frame(),
            Refusal::Capacity(_) => limits::try_again_later(),
            Refusal::Draining => CloseReason::Shutdown.frame(),
        }
    }

    /// What the log says.
    fn cause(self) -> String {
        match self {
            Refusal::Token(reason) => reason.reason().to_owned(),
            Refusal::Capacity(cause) => cause.to_string(),
            Refusal::Draining => "the gateway is draining".to_owned(),
        }
    }
}

async fn upgrade(
    gateway: Arc<Gateway>,
    endpoint: Endpoint,
    path_id: &str,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade is required",
        )
            .into_response();
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return (StatusCode::BAD_REQUEST, "unsupported WebSocket version").into_response();
    }
    // A page from another site: refused before the upgrade (RFC 6455
    // §4.2.2), since no legitimate client is behind it.
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    if !gateway.config.allowed_origins.allow(origin) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = auth::offers_chatai_subprotocol(headers);
    // An unreadable cursor resumes like an expired one: `recovered: false`.
    let resume = auth::query_param(request.uri(), "cursor")
        .or_else(|| auth::query_param(request.uri(), "last_seq"))
        .map(|text| Cursor::decode(&text).unwrap_or(Cursor::UNREADABLE));
    // The socket's place among the unfinished ones is kept until the
    // client is admitted or its refusal is closed.
    let socket = request.extensions_mut().remove::<ClientSocket>();
    let client = socket.as_ref().map(|socket| {
        gateway
            .limits
            .client_addr(socket.peer.ip(), request.headers())
    });
    let presented = auth::presented_token(request.uri(), request.headers());
    let verdict = authorize(&gateway, endpoint, path_id, presented)
        .await
        .map_err(Refusal::Token)
        .and_then(|claims| {
            if gateway.draining.is_cancelled() {
                Err(Refusal::Draining)
            } else {
                Ok(claims)
            }
        })
        .and_then(|claims| match client {
            Some(client) => gateway
                .limits
                .admit(client)
                .map(|admitted| (claims, Some(admitted)))
                .map_err(Refusal::Capacity),
            // Served without the listener of `accept.rs`: no counts.
            None => Ok((claims, None)),
        });
    let on_upgrade = hyper::upgrade::on(&mut request);
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        // Frames of a batch (`connection/mod.rs`) gather up to 4 KiB before a
        // write; every batch ends with a flush, so nothing waits.
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(gateway.config.max_frame_bytes))
        .max_frame_size(Some(gateway.config.max_frame_bytes));
    let upgrade_timeout = gateway.limits.upgrade_timeout;
    let span = match client {
        Some(addr) => tracing::info_span!("client", %addr),
        None => tracing::info_span!("client"),
    };
    let tasks = gateway.tasks.clone();
    tasks.spawn(
        async move {
            let upgraded = match tokio::time::timeout(upgrade_timeout, on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(err)) => {
                    tracing::debug!(cause = %err, "upgrade failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("upgrade not finished in time");
                    return;
                }
            };
            let mut socket_stream = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                WsRole::Server,
                Some(config),
            )
            .await;
            match verdict {
                Ok((claims, admitted)) => {
                    // A WebSocket now: counted as a connection, no longer
                    // as unfinished.
                    drop(socket);
                    let principal = match endpoint {
                        Endpoint::User => Recipient::User(claims.sub),
                        Endpoint::Operator => Recipient::Operator(claims.sub),
                    };
                    connection::serve(
                        connection::WebSocket(socket_stream),
                        gateway,
                        Session {
                            claims,
                            principal,
                            resume,
                        },
                    )
                    .await;
                    drop(admitted);
                }
                Err(refusal) => {
                    let frame = refusal.frame();
                    tracing::info!(
                        code = u16::from(frame.code),
                        reason = %frame.reason,
                        cause = %refusal.cause(),
                        "refused connection"
                    );
                    let closing = socket_stream.close(Some(frame));
                    let _ = tokio::time::timeout(upgrade_timeout, closing).await;
                }
            }
        }
        .instrument(span),
    );
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, "chatai.v1");
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /api/websocket/health`: 200 when every service can do its work, 503
/// naming the ones that cannot; 503 `draining` once the gateway is stopping
/// (so a load balancer sends it no new clients).
async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.draining.is_cancelled() {
        let body = json!({
            "status": "draining",
            "active_connections": gateway.registry.connection_count(),
            "outbound_queued": gateway.registry.queued_frames(),
            "timestamp": now_rfc3339(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let timeout = Duration::from_secs(1).min(gateway.config.request_timeout());
    let checks = futures::future::join_all(gateway.upstreams.iter().map(|u| async move {
        let problem = u
            .problem(timeout)
            .await
            .map(|problem| format!("{} service {problem}", u.service.name()));
        let retained = match problem {
            None => u.retained_events(timeout).await,
            Some(_) => None,
        };
        (problem, retained)
    }))
    .await;
    let queue_size: u64 = checks.iter().filter_map(|(_, retained)| *retained).sum();
    let problems: Vec<String> = checks
        .into_iter()
        .filter_map(|(problem, _)| problem)
        .chain(gateway.verifier.problem().map(str::to_owned))
        .collect();
    let mut body = json!({
        "status": if problems.is_empty() { "healthy" } else { "unhealthy" },
        "active_connections": gateway.registry.connection_count(),
        "queue_size": queue_size,
        "outbound_queued": gateway.registry.queued_frames(),
        "timestamp": now_rfc3339(),
    });
    if problems.is_empty() {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        body["error"] = problems.join("; ").into();
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// `GET /api/websocket/stats` (admin token, as `?token=` or a Bearer
/// header): the original design's real-time stats, for this gateway.
async fn stats(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let claims = match auth::presented_token(request.uri(), request.headers()) {
        Some(presented) => gateway.verifier.verify(&presented.token).await.ok(),
        None => None,
    };
    match claims {
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "Invalid token" })),
        )
            .into_response(),
        Some(claims) if claims.role != Role::Admin => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "error": "Admins only" })),
        )
            .into_response(),
        Some(_) => {
            let snapshot = gateway.registry.snapshot();
            axum::Json(json!({
                "gateway_id": gateway.registry.gateway_id(),
                "active_connections": snapshot.connections,
                "active_users": snapshot.users,
                "active_admins": snapshot.admins,
                "active_operators": snapshot.operators,
                "total_rooms": snapshot.rooms,
                "messages_last_minute": gateway.reporter.messages.last_minute(),
                "uptime": gateway.started.elapsed().as_secs(),
                "timestamp": now_rfc3339(),
            }))
            .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}
