//! The presence service's error type, and its one mapping to a gRPC `Status`.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::status::with_code;
use tonic::{Code, Status};

/// What a presence request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("{field}: {problem}")]
    InvalidField {
        field: &'static str,
        problem: &'static str,
    },
    #[error("operator {0} is not known")]
    OperatorNotFound(i64),
    #[error("this caller may not do that")]
    Forbidden,
    /// The actor has stopped: the service is shutting down.
    #[error("the presence service is shutting down")]
    Unavailable,
    /// The chosen status could not be stored (logged where it happened).
    #[error("the chosen status could not be stored")]
    Storage,
    /// The presence state (Redis) could not be read or written, or a change
    /// kept conflicting with other replicas' (logged where it happened).
    #[error("the presence state is unavailable")]
    State,
}

impl From<PresenceError> for Status {
    fn from(err: PresenceError) -> Self {
        match &err {
            PresenceError::InvalidField { .. } => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidField,
                err.to_string(),
            ),
            PresenceError::OperatorNotFound(_) => {
                with_code(Code::NotFound, ErrorCode::OperatorNotFound, err.to_string())
            }
            PresenceError::Forbidden => with_code(
                Code::PermissionDenied,
                ErrorCode::Forbidden,
                err.to_string(),
            ),
            PresenceError::Unavailable => {
                tracing::warn!("presence call refused: the service is stopping");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "the presence service is stopping, try again",
                )
            }
            PresenceError::Storage => with_code(
                Code::Unavailable,
                ErrorCode::ServiceUnavailable,
                "the chosen status could not be stored, try again",
            ),
            PresenceError::State => with_code(
                Code::Unavailable,
                ErrorCode::ServiceUnavailable,
                "the presence state is unavailable, try again",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatai_kit::status::error_code;

    /// Each error maps to its gRPC code and stable error code.
    #[test]
    fn errors_map_to_stable_codes() {
        let cases = [
            (
                PresenceError::InvalidField {
                    field: "status",
                    problem: "must be available, busy or away",
                },
                Code::InvalidArgument,
                "invalid_field",
            ),
            (
                PresenceError::OperatorNotFound(7),
                Code::NotFound,
                "operator_not_found",
            ),
            (
                PresenceError::Forbidden,
                Code::PermissionDenied,
                "forbidden",
            ),
            (
                PresenceError::Unavailable,
                Code::Unavailable,
                "service_unavailable",
            ),
            (
                PresenceError::Storage,
                Code::Unavailable,
                "service_unavailable",
            ),
            (
                PresenceError::State,
                Code::Unavailable,
                "service_unavailable",
            ),
        ];
        for (err, code, stable) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(error_code(&status), Some(stable));
        }
    }
}
