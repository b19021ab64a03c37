//! The chat service's error type, and its one mapping to a gRPC `Status`.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::EventLogError;
use chatai_kit::status::with_code;
use tonic::{Code, Status};

use crate::handoffs::HandoffError;
use crate::store::StoreError;

/// What a chat request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("message is empty")]
    EmptyMessage,
    #[error("message is longer than {max} characters")]
    MessageTooLong { max: usize },
    #[error("dialog {0} does not exist")]
    DialogNotFound(i64),
    #[error("dialog {0} belongs to someone else")]
    NotParticipant(i64),
    #[error("this role may not do that")]
    Forbidden,
    #[error("dialog_id is required")]
    DialogRequired,
    #[error("the balance is used up: top it up, or ask for a human operator")]
    InsufficientBalance,
    #[error("message {message_id} is not in dialog {dialog_id}")]
    MessageNotInDialog { dialog_id: i64, message_id: i64 },
    #[error("a top-up needs a user id above 0 and an amount above 0")]
    InvalidTopUp,
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Events(#[from] EventLogError),
}

impl From<ChatError> for Status {
    fn from(err: ChatError) -> Self {
        match &err {
            ChatError::EmptyMessage | ChatError::MessageTooLong { .. } => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidMessage,
                err.to_string(),
            ),
            ChatError::DialogNotFound(_) => {
                with_code(Code::NotFound, ErrorCode::DialogNotFound, err.to_string())
            }
            // Answered as if the dialog did not exist (same code, same
            // words), so nobody can tell others' dialogs from missing ones
            // and count them.
            ChatError::NotParticipant(id) => {
                tracing::debug!(dialog_id = id, "refused: someone else's dialog");
                with_code(
                    Code::NotFound,
                    ErrorCode::DialogNotFound,
                    ChatError::DialogNotFound(*id).to_string(),
                )
            }
            ChatError::Forbidden => with_code(
                Code::PermissionDenied,
                ErrorCode::Forbidden,
                err.to_string(),
            ),
            ChatError::DialogRequired => with_code(
                Code::InvalidArgument,
                ErrorCode::MissingField,
                err.to_string(),
            ),
            ChatError::InsufficientBalance => with_code(
                Code::FailedPrecondition,
                ErrorCode::InsufficientBalance,
                err.to_string(),
            ),
            ChatError::MessageNotInDialog { .. } => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidField,
                err.to_string(),
            ),
            ChatError::InvalidTopUp => with_code(
                Code::InvalidArgument,
                ErrorCode::InvalidRequest,
                err.to_string(),
            ),
            // The handoff service's own refusal (handoff_exists, queue_full, …) goes to the client as it is.
            ChatError::Handoff(HandoffError::Refused(refusal)) => refusal.clone().into(),
            ChatError::Handoff(HandoffError::Unavailable { cause }) => {
                tracing::error!(%cause, "handoff service unavailable");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "the handoff service is unavailable, try again",
                )
            }
            ChatError::Store(StoreError::NotFound { what: "dialog", id }) => with_code(
                Code::NotFound,
                ErrorCode::DialogNotFound,
                format!("dialog {id} does not exist"),
            ),
            ChatError::Store(cause) => {
                tracing::error!(%cause, "chat storage failed");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "storage is unavailable, try again",
                )
            }
            ChatError::Events(cause) => {
                tracing::error!(%cause, "chat event delivery failed");
                with_code(
                    Code::Unavailable,
                    ErrorCode::ServiceUnavailable,
                    "event delivery is unavailable, try again",
                )
            }
        }
    }
}
