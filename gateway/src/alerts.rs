//! `POST /api/alerts`: an admin broadcasts a `system_alert` to every
//! connected client, through `chatai.v1.Notification/SystemAlert` (which
//! checks the role again and the body's values). Body
//! `{"message":"…","severity":"info|warning|critical","affected_services":["…"]}`
//! (`severity` defaults to `info`, `affected_services` to none); answer
//! **202** `{"status":"sent","event_id":"…"}`. Refusals carry an `error`
//! frame: 401 without a valid `Authorization: Bearer` token, 403 for a
//! role other than admin, 400 for a body that is not JSON or of the wrong
//! shape, or values the service refuses (`invalid_request`), 503 when the
//! notification service cannot be reached.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::Role;
use serde::Deserialize;
use serde_json::json;

use crate::api::status_of;
use crate::auth;
use crate::gateway::Gateway;
use crate::sse::{error_response, verified};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    pub message: String,
    #[serde(default = "info")]
    pub severity: String,
    #[serde(default)]
    pub affected_services: Vec<String>,
}

fn info() -> String {
    "info".to_owned()
}

/// Reads an alert body: the alert, or the status and `error` code to answer.
pub fn read_body(body: &[u8]) -> Result<AlertBody, (StatusCode, ErrorCode, String)> {
    serde_json::from_slice::<AlertBody>(body).map_err(|err| {
        let code = match err.classify() {
            serde_json::error::Category::Data => ErrorCode::InvalidField,
            _ => ErrorCode::InvalidJson,
        };
        (StatusCode::BAD_REQUEST, code, err.to_string())
    })
}

/// `POST /api/alerts` (see the module docs).
#[tracing::instrument(skip_all, fields(caller))]
pub async fn send(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match verified(&gateway, auth::bearer(&headers)).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    tracing::Span::current().record("caller", claims.sub);
    if claims.role != Role::Admin {
        return error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "Only admins may send system alerts",
        );
    }
    let alert = match read_body(&body) {
        Ok(alert) => alert,
        Err((status, code, message)) => return error_response(status, code, &message),
    };
    let caller = auth::caller_of(&claims, None);
    match gateway
        .services
        .system_alert(
            &caller,
            &alert.severity,
            &alert.message,
            &alert.affected_services,
        )
        .await
    {
        Ok(event_id) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "status": "sent", "event_id": event_id })),
        )
            .into_response(),
        Err(err) => {
            let (code, message) = err.client_error();
            let status = match status_of(code) {
                StatusCode::NOT_FOUND => StatusCode::BAD_REQUEST,
                status => status,
            };
            error_response(status, code, &message)
        }
    }
}
