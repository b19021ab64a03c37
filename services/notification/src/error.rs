//! The notification service's error type, and its one mapping to a gRPC
//! `Status` with a stable code (`forbidden`, `invalid_request`,
//! `service_unavailable`).

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::EventLogError;
use chatai_kit::identity::Role;
use chatai_kit::status::with_code;
use tonic::{Code, Status};

use crate::store::StoreError;

/// What a notification request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("role {role} may not {action}")]
    Forbidden { role: Role, action: &'static str },

    #[error("recipient is missing or invalid")]
    InvalidRecipient,
    #[error(
        "type must be snake_case ASCII: a lowercase letter, then at most 63 lowercase letters, digits or underscores"
    )]
    InvalidType,
    #[error("type {0:?} is reserved for the server's own frames")]
    ReservedType(String),
    #[error("body_json is larger than {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("body_json is not JSON: {0}")]
    BodyNotJson(#[source] serde_json::Error),
    #[error("body_json is not a JSON object")]
    BodyNotObject,
    #[error("body_json may not set {0:?}: the gateway sets it on every event")]
    ReservedField(String),

    #[error("severity must be info, warning or critical")]
    InvalidSeverity,
    #[error("alert message is empty")]
    EmptyAlert,
    #[error("alert message is longer than {max} characters")]
    AlertTooLong { max: usize },
    #[error(
        "affected_services holds more than {max} names, or an empty or longer than {max_len} characters one"
    )]
    InvalidAffectedServices { max: usize, max_len: usize },

    #[error("more than {max} connection events in one call")]
    TooManyConnectionEvents { max: usize },
    #[error("connection event {index}: {reason}")]
    InvalidConnectionEvent { index: usize, reason: &'static str },
    #[error("gateway report: {0}")]
    InvalidReport(&'static str),

    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Events(#[from] EventLogError),
}

impl From<NotificationError> for Status {
    fn from(err: NotificationError) -> Self {
        use NotificationError as E;
        match &err {
            E::Forbidden { .. } => with_code(
                Code::PermissionDenied,
                ErrorCode::Forbidden,
                err.to_string(),
            ),
            E::InvalidRecipient
            | E::InvalidType
            | E::ReservedType(_)
            | E::BodyTooLarge { .. }
            | E::BodyNotJson(_)
            | E::BodyNotObject
            | E::ReservedField(_)
            | E::InvalidSeverity
            | E::EmptyAlert
            | E::AlertTooLong { .. }
            | E::InvalidAffectedServices { .. }
            | E::TooManyConnectionEvents { .. }
            | E::InvalidConnectionEvent { .. }
            | E::InvalidReport(_) => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidRequest,
                err.to_string(),
            ),
            E::Store(cause) => {
                tracing::error!(%cause, "notification storage failed");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "storage is unavailable, try again",
                )
            }
            E::Events(cause) => {
                tracing::error!(%cause, "notification event delivery failed");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "event delivery is unavailable, try again",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatai_kit::status::error_code;

    /// Each kind of failure reaches the wire with its gRPC code and stable code.
    #[test]
    fn errors_map_to_codes() {
        let forbidden = Status::from(NotificationError::Forbidden {
            role: Role::User,
            action: "send notifications",
        });
        assert_eq!(forbidden.code(), Code::PermissionDenied);
        assert_eq!(error_code(&forbidden), Some("forbidden"));

        let invalid = Status::from(NotificationError::InvalidType);
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert_eq!(error_code(&invalid), Some("invalid_request"));

        let store = Status::from(NotificationError::Store(StoreError::Db(
            chatai_kit::db::DbError::UnsupportedUrl("secret-scheme".into()),
        )));
        assert_eq!(store.code(), Code::Unavailable);
        assert_eq!(error_code(&store), Some("service_unavailable"));
        assert!(
            !store.message().contains("secret"),
            "details stay in the log"
        );
    }
}
