//! `GET /api/dev/token?sub=42&role=user|operator|admin&name=Ann`: a client
//! token for trying the system out (the widget's demo page gets its token
//! here). **Development only**: served only while the gateway signs with
//! the built-in development secret — no `CHATAI_JWT_SECRET` and no
//! `CHATAI_JWKS_URL` — where anyone can mint any token anyway (the secret
//! is public); 404 otherwise. Answer `{"token":"…","expires_at":…}` (Unix
//! seconds), a token valid for one hour.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::Role;
use serde_json::json;

use crate::auth::{self, TokenKeys};
use crate::config::DEVELOPMENT_SECRET;
use crate::gateway::Gateway;
use crate::sse::error_response;

/// How long a development token lives.
const TTL: Duration = Duration::from_secs(3600);

/// Whether this gateway serves development tokens.
pub fn enabled(gateway: &Gateway) -> bool {
    gateway.config.jwks_url().is_none() && gateway.config.jwt_secret() == DEVELOPMENT_SECRET
}

/// `GET /api/dev/token` (see the module docs).
pub async fn mint(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Response {
    if !enabled(&gateway) {
        return error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "Development tokens are off: the gateway has a JWT secret of its own",
        );
    }
    let sub = auth::query_param(&uri, "sub").and_then(|sub| sub.parse::<i64>().ok());
    let Some(sub) = sub.filter(|sub| *sub > 0) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            "`sub` must be a positive integer",
        );
    };
    let role = auth::query_param(&uri, "role").unwrap_or_else(|| "user".to_owned());
    let role = match role.parse::<Role>() {
        Ok(role @ (Role::User | Role::Operator | Role::Admin)) => role,
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                "`role` must be user, operator or admin",
            );
        }
    };
    let name = auth::query_param(&uri, "name").filter(|name| !name.trim().is_empty());
    let keys =
        TokenKeys::new(DEVELOPMENT_SECRET.as_bytes()).expecting(gateway.config.expected_claims());
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
        + TTL.as_secs();
    match keys.mint(sub, role, name.as_deref(), TTL) {
        Ok(token) => {
            axum::Json(json!({ "token": token, "expires_at": expires_at })).into_response()
        }
        Err(err) => error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            &err.to_string(),
        ),
    }
}
