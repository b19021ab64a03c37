//! Property tests of the client frame parser ([`parse`]): arbitrary text and
//! bytes, arbitrary JSON values, and near-valid frames of every type (fields
//! of wrong types, huge and negative numbers, odd unicode, nesting, unknown
//! extra fields).
//!
//! Properties: `parse` never panics; a refusal carries one of the parser's
//! codes (docs/protocol.md, "Error codes") and its `error` frame is valid
//! JSON with that code and the `ref` rule; the stage that refuses (not JSON,
//! not an object, bad `id`, `type`, fields) is the documented one; and a frame
//! of a known type is accepted exactly when each field follows the rules of
//! the module docs — with the values sent — else refused naming a bad field.
//!
//! Each property runs 256 cases; `PROPTEST_CASES=100000` runs more (see
//! [`config`]).

use std::str::FromStr;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;
use crate::frames::outbound;

/// The codes `parse` may answer with, in the order it checks them.
const PARSER_CODES: [ErrorCode; 7] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidFrame,
    ErrorCode::InvalidId,
    ErrorCode::MissingType,
    ErrorCode::UnknownType,
    ErrorCode::MissingField,
    ErrorCode::InvalidField,
];

/// Every field some client frame reads.
const FIELDS: [&str; 14] = [
    "dialog_id",
    "message",
    "is_typing",
    "reason",
    "priority",
    "room_id",
    "status",
    "resolution",
    "token",
    "id",
    "before_id",
    "message_id",
    "limit",
    "to_operator_id",
];

/// 256 cases per property unless `PROPTEST_CASES` says otherwise (proptest
/// reads that variable into its default config).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

// ---- strategies ----

/// Strings a parser might choke on: any unicode, words of the protocol,
/// digits, whitespace of all kinds, controls and bidi marks, lengths around
/// the limits.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(
            TYPES
                .iter()
                .chain(&FIELDS)
                .chain(&[
                    "low",
                    "normal",
                    "high",
                    "urgent",
                    "URGENT",
                    "available",
                    "busy",
                    "away",
                    "offline",
                    "dialog:1",
                    "dialog:01",
                    "true",
                    "null",
                    "",
                ])
                .copied()
                .collect::<Vec<_>>()
        )
        .prop_map(str::to_owned),
        "[0-9]{1,25}",
        "[-+ ]?[0-9]{1,5}[ a.e]?",
        "[\u{ff10}-\u{ff19}\u{0660}-\u{0669}]{1,3}",
        "[ \t\n\r\u{a0}\u{2003}\u{2028}\u{feff}\u{85}]{0,8}",
        "[\u{0}-\u{1f}\u{7f}\u{200b}-\u{200f}\u{202a}-\u{202e}\u{fe0f}\u{1f600}-\u{1f64f}\u{10ffff}é a]{0,40}",
        "[a-zé\u{1f600}]{60,70}",
        "[a-z]{120,135}",
    ]
    .boxed()
}

/// Numbers at and past the edges: `i64`/`u64` extremes, zero, negatives,
/// fractions, huge floats.
fn odd_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-3i64..1000).prop_map(Value::from),
        prop::sample::select(vec![0, 1, -1, i64::MAX, i64::MIN, i64::MIN + 1])
            .prop_map(Value::from),
        ((i64::MAX as u64)..=u64::MAX).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![1.0, 1.5, -0.0, 0.5, 1e308, -1e308, 9.3e18])
            .prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, nested up to four levels.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An object key: mostly the protocol's own, sometimes anything.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS.iter().chain(&["type"]).copied().collect::<Vec<_>>())
            .prop_map(str::to_owned),
        1 => odd_string(),
    ]
    .boxed()
}

/// A value for field `name`: half the time one of the kind the field wants
/// (still sometimes wrong: zero, too big, blank, too long), else absent,
/// `null` or anything else.
fn field(name: &str) -> BoxedStrategy<Option<Value>> {
    let wanted = match name {
        "dialog_id" | "before_id" | "message_id" | "to_operator_id" => prop_oneof![
            (1..=i64::MAX).prop_map(Value::from),
            (0..1000i64).prop_map(Value::from),
            "0{0,2}[0-9]{1,20}".prop_map(Value::String),
            // The edges: zero, the largest id, one past it.
            prop::sample::select(vec![
                Value::from(0),
                Value::from(-1),
                Value::from(1),
                Value::from(i64::MAX),
                Value::from(i64::MAX as u64 + 1),
                Value::from("0"),
                Value::from("00"),
                Value::from("9223372036854775807"),
                Value::from("9223372036854775808"),
            ]),
        ]
        .boxed(),
        "limit" => prop_oneof![
            (0..150u64).prop_map(Value::from),
            prop::sample::select(vec![
                Value::from(0),
                Value::from(-1),
                Value::from(1),
                Value::from(100),
                Value::from(101),
                Value::from(u64::from(u32::MAX) + 1),
                Value::from(u64::MAX),
                Value::from(2.0),
                Value::from("10"),
            ]),
        ]
        .boxed(),
        "is_typing" => any::<bool>().prop_map(Value::Bool).boxed(),
        "priority" => prop::sample::select(vec!["low", "normal", "high", "urgent", "Urgent"])
            .prop_map(Value::from)
            .boxed(),
        "status" => prop::sample::select(vec!["available", "busy", "away", "offline"])
            .prop_map(Value::from)
            .boxed(),
        _ => odd_string().prop_map(Value::String).boxed(),
    };
    prop_oneof![
        8 => wanted.prop_map(Some),
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        2 => odd_number().prop_map(Some),
        2 => odd_string().prop_map(|s| Some(Value::String(s))),
        1 => json_value().prop_map(Some),
    ]
    .boxed()
}

/// A frame object of a known type with every field some frame reads, each
/// absent, `null`, right or wrong; plus unknown extra fields. `id` is left to
/// the caller.
fn near_valid_frame() -> impl Strategy<Value = Map<String, Value>> {
    let fields: Vec<_> = FIELDS
        .iter()
        .filter(|&&name| name != "id")
        .map(|name| field(name))
        .collect();
    let extras = prop::collection::vec((odd_string(), json_value()), 0..3);
    (prop::sample::select(&TYPES[..]), fields, extras).prop_map(|(kind, values, extras)| {
        let mut object = Map::new();
        for (name, value) in extras {
            if !FIELDS.contains(&name.as_str()) && name != "type" {
                object.insert(name, value);
            }
        }
        object.insert("type".into(), kind.into());
        for (name, value) in FIELDS.iter().filter(|&&name| name != "id").zip(values) {
            if let Some(value) = value {
                object.insert((*name).into(), value);
            }
        }
        object
    })
}

/// An `id` that is valid: absent, `null`, or a string of at most 64 characters.
fn valid_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        "[a-z0-9-]{0,12}".prop_map(|s| Some(Value::String(s))),
        "[é\u{1f600}\u{0}]{64}".prop_map(|s| Some(Value::String(s))),
    ]
}

// ---- the checks every outcome passes ----

/// Parses `text` and checks what holds for any input: a refusal has one of
/// the parser's codes and a well-formed `error` frame; an acceptance comes
/// from a JSON object whose `type` and `id` are the ones parsed.
fn parse_checked(text: &str) -> Result<Inbound, FrameError> {
    let result = parse(text);
    match &result {
        Ok(inbound) => {
            let value: Value = serde_json::from_str(text).expect("an accepted frame is JSON");
            assert_eq!(value["type"], inbound.frame.type_name(), "{text:?}");
            assert_eq!(
                value.get("id").and_then(Value::as_str),
                inbound.id.as_deref(),
                "{text:?}"
            );
        }
        Err(err) => {
            assert!(PARSER_CODES.contains(&err.code), "{text:?}: {err:?}");
            if let Some(id) = &err.ref_id {
                let value: Value = serde_json::from_str(text).expect("a ref comes from JSON");
                assert_eq!(value["id"].as_str(), Some(id.as_str()), "{text:?}");
            }
            let wire: Value = serde_json::from_str(&outbound::error(
                err.ref_id.as_deref(),
                err.code,
                &err.message,
            ))
            .expect("an error frame is JSON");
            assert_eq!(wire["type"], "error");
            let code = wire["code"].as_str().expect("a string code");
            assert_eq!(ErrorCode::from_str(code).ok(), Some(err.code));
            assert_eq!(
                wire.get("ref").and_then(Value::as_str),
                err.ref_id.as_deref()
            );
            assert!(wire["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    result
}

// ---- a model of the field rules in the module docs ----

/// What the rules say about one field of a frame.
enum Verdict<T> {
    Valid(T),
    Missing,
    Invalid,
}

use Verdict::{Invalid, Missing, Valid};

/// `null` counts as absent.
fn present<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// `dialog_id`: a JSON integer or a string of ASCII digits, 1 ..= `i64::MAX`.
fn dialog_id(object: &Map<String, Value>) -> Verdict<Option<i64>> {
    positive_id(object, "dialog_id")
}

/// An id field (`dialog_id`, `before_id`, `message_id`): as `dialog_id`.
fn positive_id(object: &Map<String, Value>, name: &str) -> Verdict<Option<i64>> {
    let Some(value) = present(object, name) else {
        return Valid(None);
    };
    let number: Option<i128> = match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string().parse().ok(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let digits = s.trim_start_matches('0');
            if digits.len() > 20 {
                None
            } else {
                Some(digits.parse().unwrap_or(0))
            }
        }
        _ => None,
    };
    match number {
        Some(n) if n > 0 && n <= i128::from(i64::MAX) => Valid(Some(n as i64)),
        _ => Invalid,
    }
}

fn required_dialog_id(object: &Map<String, Value>) -> Verdict<i64> {
    match dialog_id(object) {
        Valid(Some(id)) => Valid(id),
        Valid(None) => Missing,
        _ => Invalid,
    }
}

/// `limit`: a JSON integer above 0 (one past `u32::MAX` reads as it).
fn limit(object: &Map<String, Value>) -> Verdict<Option<u32>> {
    match present(object, "limit") {
        None => Valid(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(limit) if limit > 0 => Valid(Some(u32::try_from(limit).unwrap_or(u32::MAX))),
            _ => Invalid,
        },
        Some(_) => Invalid,
    }
}

/// A string with something other than whitespace in it, at most `max` characters.
fn text(object: &Map<String, Value>, name: &str, max: usize) -> Verdict<String> {
    match present(object, name) {
        None => Missing,
        Some(Value::String(s))
            if s.chars().any(|c| !c.is_whitespace()) && s.chars().count() <= max =>
        {
            Valid(s.clone())
        }
        Some(_) => Invalid,
    }
}

/// A string, `""` when absent.
fn optional_string(object: &Map<String, Value>, name: &str) -> Verdict<String> {
    match present(object, name) {
        None => Valid(String::new()),
        Some(Value::String(s)) => Valid(s.clone()),
        Some(_) => Invalid,
    }
}

fn boolean(object: &Map<String, Value>, name: &str) -> Verdict<bool> {
    match present(object, name) {
        None => Missing,
        Some(Value::Bool(b)) => Valid(*b),
        Some(_) => Invalid,
    }
}

/// One of `choices` (wire spelling, value); `default` when absent.
fn choice<T: Copy>(
    object: &Map<String, Value>,
    name: &str,
    choices: &[(&str, T)],
    default: Option<T>,
) -> Verdict<T> {
    match present(object, name) {
        None => default.map_or(Missing, Valid),
        Some(Value::String(s)) => choices
            .iter()
            .find(|(wire, _)| wire == s)
            .map_or(Invalid, |(_, value)| Valid(*value)),
        Some(_) => Invalid,
    }
}

/// The frame the rules expect for `object`, or the fields (name, code) that
/// make it refused.
fn expected(object: &Map<String, Value>) -> Result<ClientFrame, Vec<(&'static str, ErrorCode)>> {
    let mut bad = Vec::new();
    let mut note = |name: &'static str, missing: bool, invalid: bool| {
        if missing {
            bad.push((name, ErrorCode::MissingField));
        }
        if invalid {
            bad.push((name, ErrorCode::InvalidField));
        }
    };
    macro_rules! take {
        ($name:literal, $verdict:expr) => {
            match $verdict {
                Valid(value) => Some(value),
                Missing => {
                    note($name, true, false);
                    None
                }
                Invalid => {
                    note($name, false, true);
                    None
                }
            }
        };
    }
    let priorities = [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
        ("urgent", Priority::Urgent),
    ];
    let statuses = [
        ("available", OperatorStatus::Available),
        ("busy", OperatorStatus::Busy),
        ("away", OperatorStatus::Away),
    ];
    let kind = object["type"].as_str().expect("a known type");
    let frame = match kind {
        "chat_message" => {
            let dialog_id = take!("dialog_id", dialog_id(object));
            let message = take!("message", text(object, "message", usize::MAX));
            dialog_id
                .zip(message)
                .map(|(dialog_id, message)| ClientFrame::ChatMessage { dialog_id, message })
        }
        "typing" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let is_typing = take!("is_typing", boolean(object, "is_typing"));
            dialog_id
                .zip(is_typing)
                .map(|(dialog_id, is_typing)| ClientFrame::Typing {
                    dialog_id,
                    is_typing,
                })
        }
        "handoff_request" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let reason = take!("reason", optional_string(object, "reason"));
            let priority = take!(
                "priority",
                choice(object, "priority", &priorities, Some(Priority::Normal))
            );
            match (dialog_id, reason, priority) {
                (Some(dialog_id), Some(reason), Some(priority)) => {
                    Some(ClientFrame::HandoffRequest {
                        dialog_id,
                        reason,
                        priority,
                    })
                }
                _ => None,
            }
        }
        "join_room" => take!("room_id", text(object, "room_id", MAX_ROOM_ID_CHARS))
            .map(|room_id| ClientFrame::JoinRoom { room_id }),
        "leave_room" => take!("room_id", text(object, "room_id", MAX_ROOM_ID_CHARS))
            .map(|room_id| ClientFrame::LeaveRoom { room_id }),
        "heartbeat" => Some(ClientFrame::Heartbeat),
        "set_status" => take!("status", choice(object, "status", &statuses, None))
            .map(|status| ClientFrame::SetStatus { status }),
        "complete_handoff" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let resolution = take!("resolution", optional_string(object, "resolution"));
            dialog_id
                .zip(resolution)
                .map(|(dialog_id, resolution)| ClientFrame::CompleteHandoff {
                    dialog_id,
                    resolution,
                })
        }
        "refresh_token" => take!("token", text(object, "token", usize::MAX))
            .map(|token| ClientFrame::RefreshToken { token }),
        "get_history" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let before_id = take!("before_id", positive_id(object, "before_id"));
            let limit = take!("limit", limit(object));
            match (dialog_id, before_id, limit) {
                (Some(dialog_id), Some(before_id), Some(limit)) => Some(ClientFrame::GetHistory {
                    dialog_id,
                    before_id,
                    limit,
                }),
                _ => None,
            }
        }
        "list_dialogs" => {
            let before_id = take!("before_id", positive_id(object, "before_id"));
            let limit = take!("limit", limit(object));
            before_id
                .zip(limit)
                .map(|(before_id, limit)| ClientFrame::ListDialogs { before_id, limit })
        }
        "mark_read" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let message_id = take!(
                "message_id",
                match positive_id(object, "message_id") {
                    Valid(Some(id)) => Valid(id),
                    Valid(None) => Missing,
                    _ => Invalid,
                }
            );
            dialog_id
                .zip(message_id)
                .map(|(dialog_id, message_id)| ClientFrame::MarkRead {
                    dialog_id,
                    message_id,
                })
        }
        "transfer_handoff" => {
            let dialog_id = take!("dialog_id", required_dialog_id(object));
            let to_operator_id = take!("to_operator_id", positive_id(object, "to_operator_id"));
            let reason = take!("reason", optional_string(object, "reason"));
            match (dialog_id, to_operator_id, reason) {
                (Some(dialog_id), Some(to_operator_id), Some(reason)) => {
                    Some(ClientFrame::TransferHandoff {
                        dialog_id,
                        to_operator_id,
                        reason,
                    })
                }
                _ => None,
            }
        }
        "claim_handoff" => take!("dialog_id", required_dialog_id(object))
            .map(|dialog_id| ClientFrame::ClaimHandoff { dialog_id }),
        "cancel_handoff" => take!("dialog_id", required_dialog_id(object))
            .map(|dialog_id| ClientFrame::CancelHandoff { dialog_id }),
        other => panic!("not a client type: {other}"),
    };
    frame.ok_or(bad)
}

/// The stage at which the rules refuse an arbitrary JSON value, before the
/// fields are read: `Some(code, ref)`, or `None` when it gets to the fields.
fn expected_stage(value: &Value) -> Option<(ErrorCode, Option<String>)> {
    let Value::Object(object) = value else {
        return Some((ErrorCode::InvalidFrame, None));
    };
    let id = match present(object, "id") {
        None => None,
        Some(Value::String(id)) if id.chars().count() <= MAX_ID_CHARS => Some(id.clone()),
        Some(_) => return Some((ErrorCode::InvalidId, None)),
    };
    match present(object, "type") {
        Some(Value::String(kind)) if TYPES.contains(&kind.as_str()) => None,
        Some(Value::String(_)) => Some((ErrorCode::UnknownType, id)),
        _ => Some((ErrorCode::MissingType, id)),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any text: no panic, only the parser's codes, well-formed error frames.
    #[test]
    fn any_text(text in any::<String>()) {
        let _ = parse_checked(&text);
    }

    /// Any bytes, as the reader would hand them over if they were UTF-8.
    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_checked(&String::from_utf8_lossy(&bytes));
    }

    /// A valid frame with one byte changed, cut or inserted: JSON-like text
    /// that reaches every stage of the parser.
    #[test]
    fn mutated_frames(
        object in near_valid_frame(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        edit in 0..3u8,
    ) {
        let mut bytes = Value::Object(object).to_string().into_bytes();
        let at = at.index(bytes.len());
        match edit {
            0 => bytes[at] = byte,
            1 => bytes.truncate(at),
            _ => {
                let syntax = b"{}[]\",:0\\-";
                bytes.insert(at, syntax[usize::from(byte) % syntax.len()]);
            }
        }
        let _ = parse_checked(&String::from_utf8_lossy(&bytes));
    }

    /// Any JSON value is refused at the documented stage, with the
    /// documented `ref`, or gets as far as the fields of a known type.
    #[test]
    fn any_json_value(value in json_value()) {
        let text = value.to_string();
        let result = parse_checked(&text);
        match (expected_stage(&value), result) {
            (Some(stage), Err(err)) => prop_assert_eq!((err.code, err.ref_id), stage, "{}", text),
            (Some(stage), Ok(inbound)) => prop_assert!(false, "{} accepted as {:?}, expected {:?}", text, inbound, stage),
            (None, Ok(_)) => {}
            (None, Err(err)) => prop_assert!(
                matches!(err.code, ErrorCode::MissingField | ErrorCode::InvalidField),
                "{}: {:?}", text, err
            ),
        }
    }

    /// A frame of a known type with right, wrong, absent and `null` fields is
    /// accepted exactly when every field it reads follows the rules — with
    /// the values sent, extra fields ignored — and otherwise refused with
    /// `missing_field` or `invalid_field` naming a field that breaks them,
    /// the `id` coming back as `ref` either way.
    #[test]
    fn near_valid_frames(mut object in near_valid_frame(), id in valid_id()) {
        if let Some(id) = &id {
            object.insert("id".into(), id.clone());
        }
        let id = id.and_then(|id| id.as_str().map(str::to_owned));
        let text = Value::Object(object.clone()).to_string();
        let result = parse_checked(&text);
        match (expected(&object), result) {
            (Ok(frame), Ok(inbound)) => prop_assert_eq!(inbound, Inbound { id, frame }),
            (Ok(frame), Err(err)) => prop_assert!(false, "{} refused ({:?}), expected {:?}", text, err, frame),
            (Err(bad), Ok(inbound)) => prop_assert!(false, "{} accepted as {:?}, expected {:?}", text, inbound, bad),
            (Err(bad), Err(err)) => {
                prop_assert_eq!(&err.ref_id, &id);
                prop_assert!(
                    bad.iter().any(|(name, code)| *code == err.code && err.message.contains(&format!("`{name}`"))),
                    "{}: {:?}, expected one of {:?}", text, err, bad
                );
            }
        }
    }
}
