//! The handoff service's error type, and its one mapping to a gRPC `Status`.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::status::with_code;
use tonic::{Code, Status};

use crate::store::StoreError;

/// What a handoff request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("the reason is longer than {max} characters")]
    ReasonTooLong { max: usize },
    #[error("unknown priority {0}")]
    UnknownPriority(i32),
    #[error("this role may not do that")]
    Forbidden,
    #[error("operator {operator_id} does not hold the handoff of dialog {dialog_id}")]
    NotHolder { dialog_id: i64, operator_id: i64 },
    #[error("dialog {0} already has a handoff in progress")]
    Exists(i64),
    #[error("the handoff queue is full")]
    QueueFull,
    #[error("user {0} already has as many handoffs waiting as one user may")]
    TooManyForUser(i64),
    #[error("dialog {0} has no active handoff")]
    NotFound(i64),
    #[error("operator {0} is offline or holds as many handoffs as they may")]
    OperatorUnavailable(i64),
    #[error("the handoff of dialog {0} is not waiting in the queue")]
    NotQueued(i64),
    #[error("a handoff cannot be transferred to the operator who holds it")]
    TransferToSelf,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue is not running (the service is stopping, or this replica
    /// stopped leading mid-call).
    #[error("the handoff queue is not running")]
    Stopped,
    /// This replica is a standby: another one leads the queue.
    #[error("this handoff replica is not the leader")]
    NotLeader,
}

impl From<HandoffError> for Status {
    fn from(err: HandoffError) -> Self {
        match &err {
            HandoffError::Missing(_)
            | HandoffError::ReasonTooLong { .. }
            | HandoffError::UnknownPriority(_)
            | HandoffError::TransferToSelf => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidRequest,
                err.to_string(),
            ),
            HandoffError::Forbidden | HandoffError::NotHolder { .. } => with_code(
                Code::PermissionDenied,
                ErrorCode::Forbidden,
                err.to_string(),
            ),
            HandoffError::Exists(_) | HandoffError::Store(StoreError::ActiveExists { .. }) => {
                with_code(
                    Code::AlreadyExists,
                    ErrorCode::HandoffExists,
                    "This dialog is already waiting for or talking to an operator.",
                )
            }
            HandoffError::QueueFull => with_code(
                Code::ResourceExhausted,
                ErrorCode::QueueFull,
                "All our operators are busy and the queue is full. Please try again in a few minutes.",
            ),
            HandoffError::TooManyForUser(_) => with_code(
                Code::ResourceExhausted,
                ErrorCode::TooManyHandoffs,
                "You already have requests waiting for an operator. Please wait until one is answered.",
            ),
            HandoffError::NotFound(_) => {
                with_code(Code::NotFound, ErrorCode::HandoffNotFound, err.to_string())
            }
            HandoffError::OperatorUnavailable(_) => with_code(
                Code::FailedPrecondition,
                ErrorCode::OperatorUnavailable,
                "That operator is offline or cannot take another dialog right now.",
            ),
            HandoffError::NotQueued(_) => with_code(
                Code::FailedPrecondition,
                ErrorCode::HandoffNotQueued,
                "An operator already has this dialog; it is no longer waiting.",
            ),
            HandoffError::Store(cause) => {
                tracing::error!(%cause, "handoff storage failed");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "storage is unavailable, try again",
                )
            }
            HandoffError::Stopped => with_code(
                Code::Unavailable,
                ErrorCode::ServiceUnavailable,
                "the handoff service is stopping, try again",
            ),
            // Clean and retryable: the caller's balancing moves the call to
            // another replica (docs/architecture.md, "Deployment").
            HandoffError::NotLeader => with_code(
                Code::Unavailable,
                ErrorCode::ServiceUnavailable,
                "not the leader: another handoff replica serves the queue, try again",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatai_kit::status::error_code;

    /// Each error reaches the wire with its stable code.
    #[test]
    fn errors_map_to_stable_codes() {
        let cases = [
            (
                HandoffError::Exists(1),
                Code::AlreadyExists,
                "handoff_exists",
            ),
            (
                HandoffError::QueueFull,
                Code::ResourceExhausted,
                "queue_full",
            ),
            (
                HandoffError::TooManyForUser(7),
                Code::ResourceExhausted,
                "too_many_handoffs",
            ),
            (
                HandoffError::NotFound(1),
                Code::NotFound,
                "handoff_not_found",
            ),
            (HandoffError::Forbidden, Code::PermissionDenied, "forbidden"),
            (
                HandoffError::OperatorUnavailable(7),
                Code::FailedPrecondition,
                "operator_unavailable",
            ),
            (
                HandoffError::NotQueued(1),
                Code::FailedPrecondition,
                "handoff_not_queued",
            ),
            (
                HandoffError::TransferToSelf,
                Code::InvalidArgument,
                "invalid_request",
            ),
            (
                HandoffError::Missing("user_id"),
                Code::InvalidArgument,
                "invalid_request",
            ),
            (
                HandoffError::Store(StoreError::ActiveExists { dialog_id: 1 }),
                Code::AlreadyExists,
                "handoff_exists",
            ),
            (
                HandoffError::Stopped,
                Code::Unavailable,
                "service_unavailable",
            ),
            (
                HandoffError::NotLeader,
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
