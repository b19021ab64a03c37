//! Client → server frames: parsing one text frame into an [`Inbound`], or a [`FrameError`] that becomes an `error` frame.
//!
//! The frame formats are those of docs/protocol.md ("Frames"). Parsing checks the
//! shape of a frame only; who may send what (an operator's `chat_message`
//! needs a `dialog_id`, `set_status` is for operators) is decided by the
//! connection, and frame size limits by the socket reader.
//!
//! Rules a client author can rely on:
//! - Unknown extra fields are ignored, so fields may be added.
//! - A field whose value is `null` counts as absent.
//! - `dialog_id` is a JSON integer or a string of digits, and > 0.
//! - `id`, when present, is a string of at most 64 characters and comes back
//!   as `ref` — on errors too, whenever the frame carried a valid one.
//!
//! Error codes, in the order they are checked: [`ErrorCode::InvalidJson`],
//! [`ErrorCode::InvalidFrame`], [`ErrorCode::InvalidId`],
//! [`ErrorCode::MissingType`], [`ErrorCode::UnknownType`],
//! [`ErrorCode::MissingField`], [`ErrorCode::InvalidField`].

use chatai_kit::error_code::ErrorCode;
use serde_json::{Map, Value};

/// Longest `id` accepted, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Longest `room_id` accepted, in characters.
pub const MAX_ROOM_ID_CHARS: usize = 128;
/// How much of an unknown `type` is quoted back, in characters.
const MAX_QUOTED_TYPE_CHARS: usize = 64;

/// Every `type` a client may send: the parser knows these and no other
/// (a test checks it both ways; `docs/asyncapi.yaml` lists the same).
pub const TYPES: [&str; 15] = [
    "chat_message",
    "typing",
    "handoff_request",
    "join_room",
    "leave_room",
    "heartbeat",
    "set_status",
    "complete_handoff",
    "refresh_token",
    "get_history",
    "list_dialogs",
    "mark_read",
    "transfer_handoff",
    "claim_handoff",
    "cancel_handoff",
];

/// A parsed client frame with its optional `id` (echoed as `ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub id: Option<String>,
    pub frame: ClientFrame,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A message in a dialog; no `dialog_id` starts a new one (users only).
    ChatMessage {
        dialog_id: Option<i64>,
        message: String,
    },
    Typing {
        dialog_id: i64,
        is_typing: bool,
    },
    HandoffRequest {
        dialog_id: i64,
        /// `""` when absent.
        reason: String,
        /// [`Priority::Normal`] when absent.
        priority: Priority,
    },
    JoinRoom {
        room_id: String,
    },
    LeaveRoom {
        room_id: String,
    },
    Heartbeat,
    SetStatus {
        status: OperatorStatus,
    },
    CompleteHandoff {
        dialog_id: i64,
        /// `""` when absent.
        resolution: String,
    },
    RefreshToken {
        token: String,
    },
    /// A page of a dialog's messages, below `before_id` (none: the newest).
    GetHistory {
        dialog_id: i64,
        before_id: Option<i64>,
        /// `None`: the default page; a larger one than the service allows
        /// is read as the largest.
        limit: Option<u32>,
    },
    /// A page of the dialogs the sender may read, below `before_id`.
    ListDialogs {
        before_id: Option<i64>,
        limit: Option<u32>,
    },
    /// The sender read the dialog up to `message_id`.
    MarkRead {
        dialog_id: i64,
        message_id: i64,
    },
    /// The holding operator hands the dialog on (operators only).
    TransferHandoff {
        dialog_id: i64,
        /// `None`: back to the queue.
        to_operator_id: Option<i64>,
        /// `""` when absent.
        reason: String,
    },
    /// An operator takes a queued dialog out of order (operators only).
    ClaimHandoff {
        dialog_id: i64,
    },
    /// The user withdraws their handoff while it waits (not operators).
    CancelHandoff {
        dialog_id: i64,
    },
}

impl ClientFrame {
    /// The frame's `type` as written on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::ChatMessage { .. } => "chat_message",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::HandoffRequest { .. } => "handoff_request",
            ClientFrame::JoinRoom { .. } => "join_room",
            ClientFrame::LeaveRoom { .. } => "leave_room",
            ClientFrame::Heartbeat => "heartbeat",
            ClientFrame::SetStatus { .. } => "set_status",
            ClientFrame::CompleteHandoff { .. } => "complete_handoff",
            ClientFrame::RefreshToken { .. } => "refresh_token",
            ClientFrame::TransferHandoff { .. } => "transfer_handoff",
            ClientFrame::ClaimHandoff { .. } => "claim_handoff",
            ClientFrame::CancelHandoff { .. } => "cancel_handoff",
            ClientFrame::GetHistory { .. } => "get_history",
            ClientFrame::ListDialogs { .. } => "list_dialogs",
            ClientFrame::MarkRead { .. } => "mark_read",
        }
    }
}

/// How urgently a user wants a human operator, least urgent first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// The priority as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The most a client may ask for: what its token's
    /// `chatai_max_priority` claim allows, else `normal` (an unknown value
    /// allows no more than `normal` either). A client asking for more gets
    /// this much, and its `ack` says so (docs/protocol.md).
    pub fn ceiling(claim: Option<&str>) -> Self {
        claim
            .and_then(Priority::from_wire)
            .unwrap_or(Priority::Normal)
    }

    fn from_wire(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
}

/// A status an operator may set (`offline` is the server's to say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorStatus {
    Available,
    Busy,
    Away,
}

impl OperatorStatus {
    /// The status as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorStatus::Available => "available",
            OperatorStatus::Busy => "busy",
            OperatorStatus::Away => "away",
        }
    }

    fn from_wire(text: &str) -> Option<Self> {
        match text {
            "available" => Some(OperatorStatus::Available),
            "busy" => Some(OperatorStatus::Busy),
            "away" => Some(OperatorStatus::Away),
            _ => None,
        }
    }
}

/// Why a frame was refused; becomes an `error` frame with `ref` = `ref_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The frame's `id`, when it had a valid one.
    pub ref_id: Option<String>,
    /// One of the codes listed at the top of this module.
    pub code: ErrorCode,
    /// For people; names the offending field or type.
    pub message: String,
}

/// A refusal before the `ref` is attached.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn missing(field: &str) -> Self {
        Refusal::new(ErrorCode::MissingField, format!("missing field `{field}`"))
    }

    fn invalid(field: &str, expected: &str) -> Self {
        Refusal::new(
            ErrorCode::InvalidField,
            format!("field `{field}` must be {expected}"),
        )
    }

    fn with_ref(self, ref_id: Option<String>) -> FrameError {
        FrameError {
            ref_id,
            code: self.code,
            message: self.message,
        }
    }
}

/// Parses one client text frame. Never panics, whatever the input.
pub fn parse(text: &str) -> Result<Inbound, FrameError> {
    // serde_json bounds nesting depth (128), so deep input is an error, not a
    // stack overflow.
    let value: Value = serde_json::from_str(text).map_err(|err| {
        Refusal::new(
            ErrorCode::InvalidJson,
            format!("frame is not valid JSON: {err}"),
        )
        .with_ref(None)
    })?;
    let Value::Object(object) = value else {
        return Err(
            Refusal::new(ErrorCode::InvalidFrame, "frame must be a JSON object").with_ref(None),
        );
    };
    let id = frame_id(&object).map_err(|refusal| refusal.with_ref(None))?;
    match client_frame(&Fields(&object)) {
        Ok(frame) => Ok(Inbound { id, frame }),
        Err(refusal) => Err(refusal.with_ref(id)),
    }
}

/// The frame's `id`, if it has one.
fn frame_id(object: &Map<String, Value>) -> Result<Option<String>, Refusal> {
    match object.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if id.chars().count() <= MAX_ID_CHARS => Ok(Some(id.clone())),
        Some(Value::String(_)) => Err(Refusal::new(
            ErrorCode::InvalidId,
            format!("`id` must be at most {MAX_ID_CHARS} characters"),
        )),
        Some(_) => Err(Refusal::new(ErrorCode::InvalidId, "`id` must be a string")),
    }
}

fn client_frame(fields: &Fields<'_>) -> Result<ClientFrame, Refusal> {
    let Some(Value::String(kind)) = fields.get("type") else {
        return Err(Refusal::new(
            ErrorCode::MissingType,
            "frame needs a string `type`",
        ));
    };
    Ok(match kind.as_str() {
        "chat_message" => ClientFrame::ChatMessage {
            dialog_id: fields.optional_dialog_id()?,
            message: fields.required_text("message")?,
        },
        "typing" => ClientFrame::Typing {
            dialog_id: fields.dialog_id()?,
            is_typing: fields.required_bool("is_typing")?,
        },
        "handoff_request" => ClientFrame::HandoffRequest {
            dialog_id: fields.dialog_id()?,
            reason: fields.optional_string("reason")?,
            priority: fields
                .optional_choice(
                    "priority",
                    Priority::from_wire,
                    "low, normal, high or urgent",
                )?
                .unwrap_or_default(),
        },
        "join_room" => ClientFrame::JoinRoom {
            room_id: fields.room_id()?,
        },
        "leave_room" => ClientFrame::LeaveRoom {
            room_id: fields.room_id()?,
        },
        "heartbeat" => ClientFrame::Heartbeat,
        "set_status" => ClientFrame::SetStatus {
            status: fields
                .optional_choice(
                    "status",
                    OperatorStatus::from_wire,
                    "available, busy or away",
                )?
                .ok_or_else(|| Refusal::missing("status"))?,
        },
        "complete_handoff" => ClientFrame::CompleteHandoff {
            dialog_id: fields.dialog_id()?,
            resolution: fields.optional_string("resolution")?,
        },
        "refresh_token" => ClientFrame::RefreshToken {
            token: fields.required_text("token")?,
        },
        "get_history" => ClientFrame::GetHistory {
            dialog_id: fields.dialog_id()?,
            before_id: fields.optional_positive_id("before_id")?,
            limit: fields.optional_limit()?,
        },
        "list_dialogs" => ClientFrame::ListDialogs {
            before_id: fields.optional_positive_id("before_id")?,
            limit: fields.optional_limit()?,
        },
        "mark_read" => ClientFrame::MarkRead {
            dialog_id: fields.dialog_id()?,
            message_id: fields
                .optional_positive_id("message_id")?
                .ok_or_else(|| Refusal::missing("message_id"))?,
        },
        "transfer_handoff" => ClientFrame::TransferHandoff {
            dialog_id: fields.dialog_id()?,
            to_operator_id: fields.optional_positive_id("to_operator_id")?,
            reason: fields.optional_string("reason")?,
        },
        "claim_handoff" => ClientFrame::ClaimHandoff {
            dialog_id: fields.dialog_id()?,
        },
        "cancel_handoff" => ClientFrame::CancelHandoff {
            dialog_id: fields.dialog_id()?,
        },
        other => {
            let quoted: String = other.chars().take(MAX_QUOTED_TYPE_CHARS).collect();
            return Err(Refusal::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {quoted:?}"),
            ));
        }
    })
}

/// The fields of one frame object, read with the rules of this module.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The field's value; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    fn dialog_id(&self) -> Result<i64, Refusal> {
        self.optional_dialog_id()?
            .ok_or_else(|| Refusal::missing("dialog_id"))
    }

    fn optional_dialog_id(&self) -> Result<Option<i64>, Refusal> {
        self.optional_positive_id("dialog_id")
    }

    /// A page size: a JSON integer > 0; any size above what the service
    /// allows is read as the largest page (the service clamps).
    fn optional_limit(&self) -> Result<Option<u32>, Refusal> {
        match self.get("limit") {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if limit > 0 => Ok(Some(u32::try_from(limit).unwrap_or(u32::MAX))),
                _ => Err(Refusal::invalid("limit", "a positive integer")),
            },
            Some(_) => Err(Refusal::invalid("limit", "a positive integer")),
        }
    }

    /// A JSON integer or a string of ASCII digits, > 0.
    fn optional_positive_id(&self, name: &str) -> Result<Option<i64>, Refusal> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let id = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => None,
        };
        match id {
            Some(id) if id > 0 => Ok(Some(id)),
            _ => Err(Refusal::invalid(name, "a positive integer")),
        }
    }

    fn optional_str(&self, name: &str) -> Result<Option<&str>, Refusal> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Refusal::invalid(name, "a string")),
        }
    }

    /// A string, `""` when absent.
    fn optional_string(&self, name: &str) -> Result<String, Refusal> {
        Ok(self.optional_str(name)?.unwrap_or_default().to_owned())
    }

    /// A string with something besides whitespace in it, kept as sent.
    fn required_text(&self, name: &str) -> Result<String, Refusal> {
        let text = self
            .optional_str(name)?
            .ok_or_else(|| Refusal::missing(name))?;
        if text.trim().is_empty() {
            return Err(Refusal::invalid(name, "a non-empty string"));
        }
        Ok(text.to_owned())
    }

    fn required_bool(&self, name: &str) -> Result<bool, Refusal> {
        match self.get(name) {
            None => Err(Refusal::missing(name)),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Refusal::invalid(name, "true or false")),
        }
    }

    /// One of a fixed set of strings.
    fn optional_choice<T>(
        &self,
        name: &str,
        choose: fn(&str) -> Option<T>,
        choices: &str,
    ) -> Result<Option<T>, Refusal> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => choose(s)
                .map(Some)
                .ok_or_else(|| Refusal::invalid(name, &format!("one of {choices}"))),
            Some(_) => Err(Refusal::invalid(name, &format!("one of {choices}"))),
        }
    }

    fn room_id(&self) -> Result<String, Refusal> {
        let room = self.required_text("room_id")?;
        if room.chars().count() > MAX_ROOM_ID_CHARS {
            return Err(Refusal::invalid(
                "room_id",
                &format!("at most {MAX_ROOM_ID_CHARS} characters"),
            ));
        }
        Ok(room)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// [`TYPES`] is what the parser knows: each is a known type (at worst a
    /// field is missing), and its frames name themselves by it.
    #[test]
    fn types_are_the_parsers() {
        for kind in TYPES {
            match parse(&format!(r#"{{"type":"{kind}"}}"#)) {
                Ok(inbound) => assert_eq!(inbound.frame.type_name(), kind),
                Err(err) => assert_ne!(err.code, ErrorCode::UnknownType, "{kind}"),
            }
        }
        let unknown = parse(r#"{"type":"chat_messages"}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownType);
    }
    use serde_json::json;

    fn ok(value: Value) -> Inbound {
        let text = value.to_string();
        parse(&text).unwrap_or_else(|err| panic!("{text} refused: {err}"))
    }

    fn err(text: &str) -> FrameError {
        match parse(text) {
            Ok(inbound) => panic!("{text} accepted as {inbound:?}"),
            Err(err) => err,
        }
    }

    fn err_json(value: Value) -> FrameError {
        err(&value.to_string())
    }

    /// `get_history`, `list_dialogs` and `mark_read`: optional fields may be
    /// left out, ids are positive integers (or digit strings), `limit` a
    /// positive JSON integer (a huge one saturates; the service clamps).
    #[test]
    fn history_list_and_read_frames() {
        assert_eq!(
            ok(json!({"type": "get_history", "dialog_id": 4})).frame,
            ClientFrame::GetHistory {
                dialog_id: 4,
                before_id: None,
                limit: None
            }
        );
        assert_eq!(
            ok(json!({"type": "get_history", "dialog_id": "4", "before_id": 90, "limit": 20}))
                .frame,
            ClientFrame::GetHistory {
                dialog_id: 4,
                before_id: Some(90),
                limit: Some(20)
            }
        );
        assert_eq!(
            ok(json!({"type": "list_dialogs", "limit": 99_999_999_999u64})).frame,
            ClientFrame::ListDialogs {
                before_id: None,
                limit: Some(u32::MAX)
            }
        );
        assert_eq!(
            ok(json!({"type": "list_dialogs", "before_id": null})).frame,
            ClientFrame::ListDialogs {
                before_id: None,
                limit: None
            }
        );
        assert_eq!(
            ok(json!({"type": "mark_read", "dialog_id": 2, "message_id": 7})).frame,
            ClientFrame::MarkRead {
                dialog_id: 2,
                message_id: 7
            }
        );
        let invalid = [
            (json!({"type": "get_history", "dialog_id": 0}), "dialog_id"),
            (
                json!({"type": "get_history", "dialog_id": 1, "before_id": -1}),
                "before_id",
            ),
            (
                json!({"type": "get_history", "dialog_id": 1, "limit": 0}),
                "limit",
            ),
            (
                json!({"type": "get_history", "dialog_id": 1, "limit": -5}),
                "limit",
            ),
            (
                json!({"type": "get_history", "dialog_id": 1, "limit": 2.5}),
                "limit",
            ),
            (
                json!({"type": "get_history", "dialog_id": 1, "limit": "10"}),
                "limit",
            ),
            (
                json!({"type": "list_dialogs", "before_id": "x"}),
                "before_id",
            ),
            (
                json!({"type": "mark_read", "dialog_id": 1, "message_id": 0}),
                "message_id",
            ),
            (
                json!({"type": "mark_read", "dialog_id": 1, "message_id": true}),
                "message_id",
            ),
        ];
        for (value, field) in invalid {
            let err = err_json(value.clone());
            assert_eq!(err.code, ErrorCode::InvalidField, "{value}");
            assert!(err.message.contains(field), "{value}: {}", err.message);
        }
        let missing = [
            (json!({"type": "get_history"}), "dialog_id"),
            (json!({"type": "mark_read", "dialog_id": 1}), "message_id"),
            (json!({"type": "mark_read", "message_id": 1}), "dialog_id"),
        ];
        for (value, field) in missing {
            let err = err_json(value.clone());
            assert_eq!(err.code, ErrorCode::MissingField, "{value}");
            assert!(err.message.contains(field), "{value}: {}", err.message);
        }
    }

    /// Every client frame type parses, with defaults where fields may be left out.
    #[test]
    fn every_frame_type_parses() {
        let cases = [
            (
                json!({"type": "chat_message", "message": "hi"}),
                ClientFrame::ChatMessage {
                    dialog_id: None,
                    message: "hi".into(),
                },
            ),
            (
                json!({"type": "chat_message", "dialog_id": 12, "message": " hi "}),
                ClientFrame::ChatMessage {
                    dialog_id: Some(12),
                    message: " hi ".into(),
                },
            ),
            (
                json!({"type": "chat_message", "dialog_id": null, "message": "hi"}),
                ClientFrame::ChatMessage {
                    dialog_id: None,
                    message: "hi".into(),
                },
            ),
            (
                json!({"type": "typing", "dialog_id": "12", "is_typing": true}),
                ClientFrame::Typing {
                    dialog_id: 12,
                    is_typing: true,
                },
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 3}),
                ClientFrame::HandoffRequest {
                    dialog_id: 3,
                    reason: String::new(),
                    priority: Priority::Normal,
                },
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 3, "reason": "stuck", "priority": "urgent"}),
                ClientFrame::HandoffRequest {
                    dialog_id: 3,
                    reason: "stuck".into(),
                    priority: Priority::Urgent,
                },
            ),
            (
                json!({"type": "join_room", "room_id": "dialog:3"}),
                ClientFrame::JoinRoom {
                    room_id: "dialog:3".into(),
                },
            ),
            (
                json!({"type": "leave_room", "room_id": "dialog:3"}),
                ClientFrame::LeaveRoom {
                    room_id: "dialog:3".into(),
                },
            ),
            (json!({"type": "heartbeat"}), ClientFrame::Heartbeat),
            (
                json!({"type": "set_status", "status": "away"}),
                ClientFrame::SetStatus {
                    status: OperatorStatus::Away,
                },
            ),
            (
                json!({"type": "complete_handoff", "dialog_id": 3}),
                ClientFrame::CompleteHandoff {
                    dialog_id: 3,
                    resolution: String::new(),
                },
            ),
            (
                json!({"type": "complete_handoff", "dialog_id": 3, "resolution": "solved"}),
                ClientFrame::CompleteHandoff {
                    dialog_id: 3,
                    resolution: "solved".into(),
                },
            ),
            (
                json!({"type": "refresh_token", "token": "a.b.c"}),
                ClientFrame::RefreshToken {
                    token: "a.b.c".into(),
                },
            ),
        ];
        for (value, frame) in cases {
            let type_name = value["type"].as_str().unwrap().to_owned();
            let inbound = ok(value);
            assert_eq!(inbound, Inbound { id: None, frame });
            assert_eq!(inbound.frame.type_name(), type_name);
        }
    }

    /// Every priority and status spelling maps to its variant and back.
    #[test]
    fn priorities_and_statuses() {
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Urgent,
        ] {
            let inbound =
                ok(json!({"type": "handoff_request", "dialog_id": 1, "priority": p.as_str()}));
            assert!(
                matches!(inbound.frame, ClientFrame::HandoffRequest { priority, .. } if priority == p)
            );
        }
        for s in [
            OperatorStatus::Available,
            OperatorStatus::Busy,
            OperatorStatus::Away,
        ] {
            let inbound = ok(json!({"type": "set_status", "status": s.as_str()}));
            assert_eq!(inbound.frame, ClientFrame::SetStatus { status: s });
        }
    }

    /// Unknown extra fields are ignored and the `id` comes back.
    #[test]
    fn extra_fields_are_ignored_and_id_kept() {
        let inbound = ok(json!({"type": "heartbeat", "id": "h-1", "future": {"x": [1, 2]}}));
        assert_eq!(inbound.id.as_deref(), Some("h-1"));
        assert_eq!(inbound.frame, ClientFrame::Heartbeat);
    }

    /// Not JSON → `invalid_json`; not an object → `invalid_frame`; neither has a ref.
    #[test]
    fn not_json_or_not_object() {
        for text in [
            "",
            "{",
            "hello",
            "{\"type\":\"heartbeat\",}",
            "{'type':'heartbeat'}",
        ] {
            let e = err(text);
            assert_eq!(
                (e.code, e.ref_id),
                (ErrorCode::InvalidJson, None),
                "{text:?}"
            );
        }
        for text in [
            "[]",
            "[{\"type\":\"heartbeat\",\"id\":\"1\"}]",
            "1",
            "\"heartbeat\"",
            "null",
            "true",
        ] {
            let e = err(text);
            assert_eq!(
                (e.code, e.ref_id),
                (ErrorCode::InvalidFrame, None),
                "{text:?}"
            );
        }
    }

    /// A missing or non-string `type` → `missing_type`, ref kept.
    #[test]
    fn missing_type() {
        for value in [
            json!({"id": "r1"}),
            json!({"id": "r1", "type": null}),
            json!({"id": "r1", "type": 5}),
            json!({"id": "r1", "type": ["heartbeat"]}),
        ] {
            let e = err_json(value);
            assert_eq!(
                (e.code, e.ref_id.as_deref()),
                (ErrorCode::MissingType, Some("r1"))
            );
        }
    }

    /// An unknown `type` → `unknown_type` naming it, cut to 64 characters, ref kept.
    #[test]
    fn unknown_type() {
        let e = err_json(json!({"id": "r2", "type": "dance"}));
        assert_eq!(
            (e.code, e.ref_id.as_deref()),
            (ErrorCode::UnknownType, Some("r2"))
        );
        assert!(e.message.contains("\"dance\""), "{}", e.message);

        // Server-only types are unknown when a client sends them.
        for kind in ["ack", "connected", "ai_response", "Heartbeat", ""] {
            assert_eq!(
                err_json(json!({"type": kind})).code,
                ErrorCode::UnknownType,
                "{kind}"
            );
        }

        let long = "é".repeat(500);
        let e = err_json(json!({"type": long}));
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert!(e.message.contains(&"é".repeat(64)));
        assert!(!e.message.contains(&"é".repeat(65)));
    }

    /// A required field absent (or null) → `missing_field` naming it, ref kept.
    #[test]
    fn missing_field() {
        let cases = [
            (json!({"type": "chat_message"}), "message"),
            (json!({"type": "chat_message", "message": null}), "message"),
            (json!({"type": "typing", "is_typing": true}), "dialog_id"),
            (json!({"type": "typing", "dialog_id": 1}), "is_typing"),
            (json!({"type": "handoff_request"}), "dialog_id"),
            (json!({"type": "join_room"}), "room_id"),
            (json!({"type": "leave_room"}), "room_id"),
            (json!({"type": "set_status"}), "status"),
            (json!({"type": "complete_handoff"}), "dialog_id"),
            (json!({"type": "refresh_token"}), "token"),
        ];
        for (mut value, field) in cases {
            value["id"] = json!("r3");
            let e = err_json(value.clone());
            assert_eq!(
                (e.code, e.ref_id.as_deref()),
                (ErrorCode::MissingField, Some("r3")),
                "{value}"
            );
            assert!(e.message.contains(&format!("`{field}`")), "{}", e.message);
        }
    }

    /// A field of the wrong type or value → `invalid_field` naming it, ref kept.
    #[test]
    fn invalid_field() {
        let cases = [
            (json!({"type": "chat_message", "message": ""}), "message"),
            (
                json!({"type": "chat_message", "message": " \n\t"}),
                "message",
            ),
            (json!({"type": "chat_message", "message": 5}), "message"),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": 0}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": -4}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": 1.5}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": "12a"}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": "-3"}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": ""}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": "0"}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": u64::MAX}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": "99999999999999999999"}),
                "dialog_id",
            ),
            (
                json!({"type": "chat_message", "message": "hi", "dialog_id": true}),
                "dialog_id",
            ),
            (
                json!({"type": "typing", "dialog_id": 1, "is_typing": "yes"}),
                "is_typing",
            ),
            (
                json!({"type": "typing", "dialog_id": 1, "is_typing": 1}),
                "is_typing",
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 1, "priority": "mega"}),
                "priority",
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 1, "priority": "URGENT"}),
                "priority",
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 1, "priority": 3}),
                "priority",
            ),
            (
                json!({"type": "handoff_request", "dialog_id": 1, "reason": {}}),
                "reason",
            ),
            (json!({"type": "join_room", "room_id": ""}), "room_id"),
            (json!({"type": "join_room", "room_id": 7}), "room_id"),
            (
                json!({"type": "leave_room", "room_id": "x".repeat(129)}),
                "room_id",
            ),
            (
                json!({"type": "set_status", "status": "sleeping"}),
                "status",
            ),
            (json!({"type": "set_status", "status": "offline"}), "status"),
            (
                json!({"type": "complete_handoff", "dialog_id": 1, "resolution": 5}),
                "resolution",
            ),
            (json!({"type": "refresh_token", "token": ""}), "token"),
        ];
        for (mut value, field) in cases {
            value["id"] = json!("r4");
            let e = err_json(value.clone());
            assert_eq!(
                (e.code, e.ref_id.as_deref()),
                (ErrorCode::InvalidField, Some("r4")),
                "{value}"
            );
            assert!(e.message.contains(&format!("`{field}`")), "{}", e.message);
        }
    }

    /// `id` echo rules: strings up to 64 characters come back; others are `invalid_id` without a ref.
    #[test]
    fn id_rules() {
        let at_limit = "é".repeat(64);
        assert_eq!(
            ok(json!({"type": "heartbeat", "id": at_limit})).id,
            Some(at_limit)
        );
        assert_eq!(
            ok(json!({"type": "heartbeat", "id": ""})).id.as_deref(),
            Some("")
        );
        assert_eq!(ok(json!({"type": "heartbeat", "id": null})).id, None);

        for id in [
            json!("x".repeat(65)),
            json!(7),
            json!(true),
            json!({"a": 1}),
            json!(["r"]),
        ] {
            let e = err_json(json!({"type": "heartbeat", "id": id}));
            assert_eq!((e.code, e.ref_id), (ErrorCode::InvalidId, None), "{id}");
        }
        // A bad id is reported even when the rest is bad too.
        assert_eq!(err_json(json!({"id": 1})).code, ErrorCode::InvalidId);
        // A good id survives any later error.
        let e = err_json(json!({"id": "keep", "type": "typing", "dialog_id": "x"}));
        assert_eq!(e.ref_id.as_deref(), Some("keep"));
    }

    /// Odd input — deep nesting, huge numbers, unicode, nulls, control bytes — never panics.
    #[test]
    fn odd_input_never_panics() {
        let mut inputs = vec![
            "[".repeat(1000),
            "{\"a\":".repeat(1000),
            format!(
                "{{\"type\":\"heartbeat\",\"x\":{}{}}}",
                "[".repeat(1000),
                "]".repeat(1000)
            ),
            format!(
                "{{\"type\":\"chat_message\",\"dialog_id\":1{},\"message\":\"m\"}}",
                "0".repeat(400)
            ),
            format!("{{\"type\":\"typing\",\"dialog_id\":1e999,\"is_typing\":true}}"),
            "{\"type\":\"typing\",\"dialog_id\":-0,\"is_typing\":true}".to_owned(),
            "{\"type\":\"chat_message\",\"message\":\"\\ud800\"}".to_owned(),
            "{\"type\":\"chat_message\",\"message\":\"\u{0}\u{1f600}\u{202e}\"}".to_owned(),
            "{\"type\":\"\\u0000\"}".to_owned(),
            "{\"type\":\"heartbeat\",\"type\":\"typing\"}".to_owned(),
            "{\"type\":null,\"id\":null,\"dialog_id\":null}".to_owned(),
            "\u{feff}{\"type\":\"heartbeat\"}".to_owned(),
            "   {\"type\":\"heartbeat\"}   ".to_owned(),
            "{\"type\":\"heartbeat\"} {}".to_owned(),
            "\u{0}".to_owned(),
        ];
        // Deterministic pseudo-random mutations of valid frames.
        let seeds = [
            r#"{"type":"handoff_request","dialog_id":"42","reason":"r","priority":"high","id":"q"}"#,
            r#"{"type":"chat_message","message":"héllo 🌍","dialog_id":7}"#,
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..400 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seed = seeds[(state % 2) as usize];
            let mut bytes = seed.as_bytes().to_vec();
            let at = (state >> 8) as usize % bytes.len();
            match (state >> 40) % 3 {
                0 => bytes[at] = (state >> 16) as u8,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, b"{}[]\",:0\\"[(state >> 24) as usize % 9]),
            }
            inputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for input in &inputs {
            let _ = parse(input);
        }
        // Deep nesting is refused as not JSON, not overflowed.
        assert_eq!(err(&"[".repeat(1000)).code, ErrorCode::InvalidJson);
    }

    /// The workspace's handoff frames (issue 11) parse with the same strict
    /// checks as the others: `to_operator_id` optional, a positive integer
    /// when given; a `dialog_id` always.
    #[test]
    fn transfer_claim_and_cancel_parse_strictly() {
        assert_eq!(
            ok(json!({"type": "transfer_handoff", "dialog_id": 3, "to_operator_id": "8", "reason": "billing"})).frame,
            ClientFrame::TransferHandoff {
                dialog_id: 3,
                to_operator_id: Some(8),
                reason: "billing".into(),
            }
        );
        assert_eq!(
            ok(json!({"type": "transfer_handoff", "dialog_id": 3, "to_operator_id": null})).frame,
            ClientFrame::TransferHandoff {
                dialog_id: 3,
                to_operator_id: None,
                reason: String::new(),
            }
        );
        assert_eq!(
            ok(json!({"type": "claim_handoff", "dialog_id": "4"})).frame,
            ClientFrame::ClaimHandoff { dialog_id: 4 }
        );
        assert_eq!(
            ok(json!({"type": "cancel_handoff", "dialog_id": 5})).frame,
            ClientFrame::CancelHandoff { dialog_id: 5 }
        );
        for bad in [json!(0), json!(-2), json!("x"), json!(1.5), json!(true)] {
            let refused = err_json(
                json!({"type": "transfer_handoff", "id": "t", "dialog_id": 3, "to_operator_id": bad}),
            );
            assert_eq!(refused.code, ErrorCode::InvalidField, "{bad}");
            assert_eq!(refused.ref_id.as_deref(), Some("t"));
        }
        for kind in ["transfer_handoff", "claim_handoff", "cancel_handoff"] {
            assert_eq!(
                err_json(json!({"type": kind})).code,
                ErrorCode::MissingField,
                "{kind}"
            );
        }
        assert_eq!(
            err_json(json!({"type": "transfer_handoff", "dialog_id": 3, "reason": 7})).code,
            ErrorCode::InvalidField
        );
    }
}
