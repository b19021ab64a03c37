//! The HTTP API next to the WebSocket, for clients that read rather than
//! talk: the dialogs a caller may read and their history, and an admin's
//! balance top-up. The token is the one the WebSocket takes, as
//! `Authorization: Bearer <token>` only (query strings end up in logs). Each
//! route makes the same chat-service call as its WebSocket frame, so the
//! answers have the same JSON shape and the same rules (docs/protocol.md,
//! "HTTP API").
//!
//! Errors are `{"error": code, "message": …}` with the codes of `error`
//! frames: 401 without a valid token, 404 both for a dialog that does not
//! exist and for one the caller may not read (the service answers both the
//! same), 400 for bad parameters, 403 for a role that may not, 503 when a
//! service cannot be reached.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::{Caller, Role};
use serde_json::{Value, json};

use crate::auth;
use crate::gateway::Gateway;
use crate::services::CallError;

/// A refused HTTP request: its status and the `error` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(field: &str, expected: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("`{field}` must be {expected}"),
        )
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        let (code, message) = err.client_error();
        ApiError::new(status_of(code), code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The HTTP status of an error code.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::DialogNotFound
        | ErrorCode::NotFound
        | ErrorCode::HandoffNotFound
        | ErrorCode::OperatorNotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidToken | ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ServiceUnavailable | ErrorCode::AssistantUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The caller behind the request's `Authorization: Bearer` token; 401 for
/// none or one that does not verify.
async fn caller(gateway: &Gateway, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "Invalid token",
        )
    };
    let claims = gateway
        .verifier
        .verify_presented(auth::bearer(headers))
        .await
        .ok_or_else(unauthorized)?;
    Ok(auth::caller_of(&claims, None))
}

/// `before_id` and `limit` of the query string: absent, or positive
/// integers (a `limit` above the largest page is read as the largest).
fn page(uri: &Uri) -> Result<(Option<i64>, Option<u32>), ApiError> {
    let before_id = match auth::query_param(uri, "before_id") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => return Err(ApiError::invalid("before_id", "a positive integer")),
        },
    };
    let limit = match auth::query_param(uri, "limit") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(limit) if limit > 0 => Some(u32::try_from(limit).unwrap_or(u32::MAX)),
            _ => return Err(ApiError::invalid("limit", "a positive integer")),
        },
    };
    Ok((before_id, limit))
}

/// `GET /api/dialogs?before_id=&limit=`: the `list_dialogs` answer.
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_dialogs(
    State(gateway): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let caller = caller(&gateway, &headers).await?;
        tracing::Span::current().record("caller", caller.id);
        let (before_id, limit) = page(&uri)?;
        let page = gateway
            .services
            .list_dialogs(&caller, before_id, limit)
            .await?;
        Ok::<Value, ApiError>(json!({ "dialogs": page.dialogs, "has_more": page.has_more }))
    };
    match answer.await {
        Ok(body) => axum::Json(body).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `GET /api/dialogs/{id}/messages?before_id=&limit=`: the `get_history`
/// answer; 404 for a dialog that does not exist or the caller may not read.
#[tracing::instrument(skip_all, fields(caller, dialog_id))]
pub async fn dialog_messages(
    State(gateway): State<Arc<Gateway>>,
    Path(dialog_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let caller = caller(&gateway, &headers).await?;
        tracing::Span::current().record("caller", caller.id);
        // Not a dialog id at all: no such dialog, like any other.
        let dialog_id = dialog_id
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::DialogNotFound,
                    format!("dialog {dialog_id} does not exist"),
                )
            })?;
        tracing::Span::current().record("dialog_id", dialog_id);
        let (before_id, limit) = page(&uri)?;
        let page = gateway
            .services
            .get_history(&caller, dialog_id, before_id, limit)
            .await?;
        Ok::<Value, ApiError>(json!({
            "dialog_id": page.dialog_id,
            "messages": page.messages,
            "has_more": page.has_more,
        }))
    };
    match answer.await {
        Ok(body) => axum::Json(body).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `POST /api/users/{id}/balance/top-up` with `{"amount": 5.0}` (admins):
/// `{"user_id": …, "balance": …}`, the new balance.
#[tracing::instrument(skip_all, fields(caller, user_id))]
pub async fn top_up(
    State(gateway): State<Arc<Gateway>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = async {
        let caller = caller(&gateway, &headers).await?;
        tracing::Span::current().record("caller", caller.id);
        if caller.role != Role::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "Admins only",
            ));
        }
        let user_id = user_id
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::invalid("user_id", "a positive integer"))?;
        tracing::Span::current().record("user_id", user_id);
        let body: Value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                "the body must be JSON: {\"amount\": …}",
            )
        })?;
        let amount = body
            .get("amount")
            .and_then(Value::as_f64)
            .filter(|amount| amount.is_finite() && *amount > 0.0)
            .ok_or_else(|| ApiError::invalid("amount", "a number above 0"))?;
        let balance = gateway.services.top_up(&caller, user_id, amount).await?;
        Ok::<Value, ApiError>(json!({ "user_id": user_id, "balance": balance }))
    };
    match answer.await {
        Ok(body) => axum::Json(body).into_response(),
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paging parameters: absent, positive integers, or a 400 naming the field.
    #[test]
    fn page_parameters() {
        let uri = |text: &str| text.parse::<Uri>().expect("a URI");
        assert_eq!(page(&uri("/api/dialogs")).ok(), Some((None, None)));
        assert_eq!(
            page(&uri("/api/dialogs?before_id=7&limit=20")).ok(),
            Some((Some(7), Some(20)))
        );
        assert_eq!(
            page(&uri("/api/dialogs?limit=99999999999")).ok(),
            Some((None, Some(u32::MAX)))
        );
        for bad in [
            "?before_id=0",
            "?before_id=x",
            "?limit=0",
            "?limit=-1",
            "?limit=1.5",
        ] {
            let err = page(&uri(&format!("/api/dialogs{bad}"))).expect_err(bad);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.code, ErrorCode::InvalidField, "{bad}");
        }
    }

    /// A dialog nobody may read and a missing one are both 404.
    #[test]
    fn not_found_codes_are_404() {
        assert_eq!(status_of(ErrorCode::DialogNotFound), StatusCode::NOT_FOUND);
        assert_eq!(status_of(ErrorCode::InvalidToken), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(ErrorCode::InvalidField), StatusCode::BAD_REQUEST);
    }
}
