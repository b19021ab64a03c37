//! [`ErrorCode`]: every `code` a client can find in an `error` frame (or in
//! the `chatai-error-code` of a service's `Status`), in one list.
//!
//! The gateway writes these into `error` frames and the services put them in
//! their `Status` (see [`crate::status`]); docs/protocol.md's "Error codes"
//! table documents each, and a test below checks the table against
//! [`ErrorCode::ALL`] both ways. On the wire a code is its snake_case name;
//! those strings never change once published.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stable, client-facing error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is JSON but not an object.
    InvalidFrame,
    /// `id` is not a string or is longer than 64 characters.
    InvalidId,
    /// No `type`, or `type` is not a string.
    MissingType,
    /// A `type` no client may send.
    UnknownType,
    /// A required field is absent (or `null`).
    MissingField,
    /// A field has the wrong type or value.
    InvalidField,
    /// A chat message is empty or too long.
    InvalidMessage,
    /// No such dialog.
    DialogNotFound,
    /// The caller may not do that (someone else's dialog, the wrong role).
    Forbidden,
    /// Too many frames or requests: this one was not processed.
    RateLimited,
    /// A `refresh_token` with a token that does not verify.
    InvalidToken,
    /// A `refresh_token` with a token for another subject or role.
    Unauthorized,
    /// Events after the resume cursor are gone; live delivery continues.
    CursorExpired,
    /// (Deferred) the assistant could not answer an accepted message.
    AssistantUnavailable,
    /// A service could not do the work in time; nothing was stored.
    ServiceUnavailable,
    /// The dialog already has a queued or held handoff.
    HandoffExists,
    /// The handoff queue is full.
    QueueFull,
    /// The user already has as many handoffs waiting as one user may.
    TooManyHandoffs,
    /// The dialog has no active handoff.
    HandoffNotFound,
    /// The presence service does not know the operator.
    OperatorNotFound,
    /// The operator a transfer names is offline or at their cap, or the
    /// claiming operator is at their cap.
    OperatorUnavailable,
    /// The dialog's handoff is not waiting in the queue (an operator holds
    /// it): it cannot be claimed or cancelled.
    HandoffNotQueued,
    /// The user's balance is used up: the assistant does not answer (a
    /// human operator can still be asked for).
    InsufficientBalance,
    /// A service said something was missing without a code of its own.
    NotFound,
    /// (`POST /api/frames`) the frame acts on a connection (`join_room`,
    /// `leave_room`, `refresh_token`) and names no SSE stream.
    StreamRequired,
    /// (`POST /api/frames`) `connection_id` names no live SSE stream of
    /// the caller's.
    StreamNotFound,
    /// A service refused the request's values.
    InvalidRequest,
    /// Anything else; the detail is only in the logs.
    InternalError,
}

impl ErrorCode {
    /// Every code, once, in declaration order (a test fails when a variant
    /// is missing here).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidFrame,
        ErrorCode::InvalidId,
        ErrorCode::MissingType,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::InvalidMessage,
        ErrorCode::DialogNotFound,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::InvalidToken,
        ErrorCode::Unauthorized,
        ErrorCode::CursorExpired,
        ErrorCode::AssistantUnavailable,
        ErrorCode::ServiceUnavailable,
        ErrorCode::HandoffExists,
        ErrorCode::QueueFull,
        ErrorCode::TooManyHandoffs,
        ErrorCode::HandoffNotFound,
        ErrorCode::OperatorNotFound,
        ErrorCode::OperatorUnavailable,
        ErrorCode::HandoffNotQueued,
        ErrorCode::InsufficientBalance,
        ErrorCode::NotFound,
        ErrorCode::StreamRequired,
        ErrorCode::StreamNotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::InternalError,
    ];

    /// The code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::DialogNotFound => "dialog_not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::AssistantUnavailable => "assistant_unavailable",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::HandoffExists => "handoff_exists",
            ErrorCode::OperatorUnavailable => "operator_unavailable",
            ErrorCode::HandoffNotQueued => "handoff_not_queued",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::TooManyHandoffs => "too_many_handoffs",
            ErrorCode::HandoffNotFound => "handoff_not_found",
            ErrorCode::OperatorNotFound => "operator_not_found",
            ErrorCode::InsufficientBalance => "insufficient_balance",
            ErrorCode::NotFound => "not_found",
            ErrorCode::StreamRequired => "stream_required",
            ErrorCode::StreamNotFound => "stream_not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of the codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
            .ok_or_else(|| UnknownErrorCode(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `ALL` holds every variant, once, in declaration order. The variants
    /// are counted independently of `ALL`: serde's derived `Deserialize`
    /// reads a variant from its index (0, 1, …) and refuses the first index
    /// past the last variant.
    #[test]
    fn all_lists_every_variant() {
        use serde::de::value::{Error, U32Deserializer};
        let every: Vec<ErrorCode> = (0u32..)
            .map_while(|index| ErrorCode::deserialize(U32Deserializer::<Error>::new(index)).ok())
            .collect();
        assert_eq!(every, ErrorCode::ALL);
    }

    /// Each code's text is its serde form, parses back, and is unique.
    #[test]
    fn codes_round_trip_through_their_text() {
        let mut texts = BTreeSet::new();
        for &code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(texts.insert(text), "{text} listed twice");
            assert_eq!(text.parse::<ErrorCode>(), Ok(code));
            assert_eq!(code.to_string(), text);
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(text))
            );
        }
        assert!("no_such_code".parse::<ErrorCode>().is_err());
    }

    /// The codes in docs/protocol.md's "Error codes" table: every backquoted
    /// name in the first column of its rows.
    fn documented_codes() -> BTreeSet<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
        let text = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
        let table = text
            .split("### Error codes")
            .nth(1)
            .expect("docs/protocol.md has an \"### Error codes\" section");
        let mut codes = BTreeSet::new();
        let from_first_row = table.lines().skip_while(|line| !line.starts_with('|'));
        for line in from_first_row {
            let Some(row) = line.strip_prefix('|') else {
                break; // the table ends at its first line that is not a row
            };
            let first_cell = row.split('|').next().unwrap_or_default();
            codes.extend(first_cell.split('`').skip(1).step_by(2).map(str::to_owned));
        }
        codes
    }

    /// docs/protocol.md documents every code, and only real ones.
    #[test]
    fn protocol_doc_lists_exactly_these_codes() {
        let documented = documented_codes();
        let real: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|code| code.as_str().to_owned())
            .collect();
        let undocumented: Vec<_> = real.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&real).collect();
        assert!(
            undocumented.is_empty(),
            "codes missing from docs/protocol.md's error table: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "docs/protocol.md documents codes that do not exist: {unknown:?}"
        );
    }
}
