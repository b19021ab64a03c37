//! The bodies of the events the chat service sends, in the field names of the
//! original design (docs/protocol.md, "Frames"). The gateway adds `type`, `timestamp`,
//! `event_id` and `cursor`.

use chatai_kit::error_code::ErrorCode;
use serde::Serialize;

/// `ai_response`: the assistant's answer, to the dialog's user.
#[derive(Debug, Serialize)]
pub struct AiResponse<'a> {
    pub dialog_id: i64,
    pub message_id: i64,
    pub message: &'a str,
    pub assistant_name: &'a str,
    pub tokens_used: u32,
    /// Set when the assistant thinks a human should take over (`requested`
    /// or `no_good_answer`); the handoff service acts on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs_human: Option<&'static str>,
}

/// `chat_message`: a user's message, for the holding operator (durable) and
/// the dialog's room (live).
#[derive(Debug, Serialize)]
pub struct ChatMessageCopy<'a> {
    pub dialog_id: i64,
    pub message_id: i64,
    pub user_id: i64,
    pub message: &'a str,
}

/// `operator_message`: the holding operator's reply, to the user.
#[derive(Debug, Serialize)]
pub struct OperatorMessage<'a> {
    pub dialog_id: i64,
    pub message_id: i64,
    pub operator_id: i64,
    pub operator_name: &'a str,
    pub message: &'a str,
}

/// `typing`: someone on one side of a dialog is typing.
#[derive(Debug, Serialize)]
pub struct Typing {
    pub dialog_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_id: Option<i64>,
    pub is_typing: bool,
}

/// `read`: one side of a dialog read it up to `message_id`, to the other
/// side and the dialog's room (live).
#[derive(Debug, Serialize)]
pub struct Read {
    pub dialog_id: i64,
    pub message_id: i64,
    /// `user` or `operator`.
    pub reader: &'static str,
    /// The reader's id (the user's or the operator's).
    pub reader_id: i64,
}

/// `balance_alert`: a charge took the user's balance below the threshold.
#[derive(Debug, Serialize)]
pub struct BalanceAlert {
    pub user_id: i64,
    pub current_balance: f64,
    pub threshold: f64,
    pub message: &'static str,
}

/// `error`: a request that was accepted failed later (the assistant could
/// not answer). Carries the stable `code` like every error frame.
#[derive(Debug, Serialize)]
pub struct DeferredError {
    pub code: ErrorCode,
    pub message: &'static str,
    pub dialog_id: i64,
    pub message_id: i64,
}
