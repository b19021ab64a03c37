//! Server → client frames. Events are prepared once per delivery (the JSON
//! text split around the place the cursor goes) and rendered per connection
//! by splicing in its cursor; frames that carry no cursor are rendered once
//! and shared by every connection they go to.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::Delivery;
use serde_json::{Map, Value, json};

use crate::frames::rooms::{EndedHold, LeftReason};
use crate::service_id::ServiceId;
use crate::services::{Metric, OperatorsSnapshot, QueueSnapshot};

pub use chatai_kit::timestamps::{now_rfc3339, timestamp_of};

/// A service event made ready for the wire once: `head` holds `type`,
/// `timestamp` and `event_id`, `tail` the event's own fields and the closing
/// brace; the cursor, when there is one, goes between them.
#[derive(Debug)]
pub struct PreparedEvent {
    /// The service the event came from.
    pub service: ServiceId,
    /// Position in the recipient's log at that service (0 = not durable).
    pub position: u64,
    /// The connection whose request caused the event.
    pub origin: Option<String>,
    /// The operator's hold on a dialog this event ends (a `handoff_completed`
    /// to that operator): their connections leave the dialog's room.
    pub ends_hold: Option<EndedHold>,
    /// When the service created the event, ms since the Unix epoch.
    pub created_ms: i64,
    head: String,
    tail: String,
}

/// An event whose body is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("event body is not a JSON object")]
pub struct BadEventBody;

impl PreparedEvent {
    pub fn prepare(service: ServiceId, delivery: &Delivery) -> Result<Self, BadEventBody> {
        let event = &delivery.event;
        let body = std::str::from_utf8(&event.body)
            .map_err(|_| BadEventBody)?
            .trim();
        let inner = body
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .ok_or(BadEventBody)?
            .trim();
        let head = format!(
            "{{\"type\":{},\"timestamp\":\"{}\",\"event_id\":{}",
            Value::from(event.kind.as_str()),
            timestamp_of(event.timestamp_ms),
            Value::from(event.id.as_str()),
        );
        let tail = if inner.is_empty() {
            "}".to_owned()
        } else {
            format!(",{inner}}}")
        };
        Ok(PreparedEvent {
            service,
            position: delivery.position,
            origin: delivery.event.origin_connection.clone(),
            ends_hold: EndedHold::of(service, delivery),
            created_ms: event.timestamp_ms,
            head,
            tail,
        })
    }

    /// Whether the event is durable (has a position, and so a cursor).
    pub fn is_durable(&self) -> bool {
        self.position > 0
    }

    /// The frame text, with `cursor` when given.
    pub fn render(&self, cursor: Option<&str>) -> String {
        let mut text = String::with_capacity(self.head.len() + self.tail.len() + 64);
        text.push_str(&self.head);
        if let Some(cursor) = cursor {
            text.push_str(",\"cursor\":\"");
            text.push_str(cursor);
            text.push('"');
        }
        text.push_str(&self.tail);
        text
    }
}

fn frame(kind: &str, reference: Option<&str>, fields: Map<String, Value>) -> String {
    let mut object = Map::with_capacity(fields.len() + 3);
    object.insert("type".into(), kind.into());
    if let Some(reference) = reference {
        object.insert("ref".into(), reference.into());
    }
    object.extend(fields);
    object.insert("timestamp".into(), now_rfc3339().into());
    Value::Object(object).to_string()
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The first frame of a connection.
pub fn connected(
    connection_id: &str,
    principal_id: i64,
    role: &str,
    cursor: &str,
    heartbeat_interval: u64,
    recovered: Option<bool>,
) -> String {
    let mut map = fields(json!({
        "connection_id": connection_id,
        "user_id": principal_id,
        "role": role,
        "cursor": cursor,
        "heartbeat_interval": heartbeat_interval,
    }));
    if let Some(recovered) = recovered {
        map.insert("recovered".into(), recovered.into());
    }
    frame("connected", None, map)
}

/// `ack` for a request, with what it produced.
pub fn ack(reference: Option<&str>, produced: Value) -> String {
    frame("ack", reference, fields(produced))
}

/// `error` with a stable `code` and a message for people.
pub fn error(reference: Option<&str>, code: ErrorCode, message: &str) -> String {
    crate::metrics::error(code);
    frame(
        "error",
        reference,
        fields(json!({ "code": code.as_str(), "message": message })),
    )
}

/// `room_left`: the server took this connection out of `room` (a dialog's
/// room, in its canonical spelling) for `reason`.
pub fn room_left(room: &str, reason: LeftReason) -> String {
    frame(
        "room_left",
        None,
        fields(json!({ "room_id": room, "reason": reason.as_str() })),
    )
}

/// `queue_snapshot`: every waiting handoff, in queue order, as of `version`
/// (an operator's connection gets it right after `connected`).
pub fn queue_snapshot(snapshot: &QueueSnapshot) -> String {
    let handoffs: Vec<Value> = snapshot
        .waiting
        .iter()
        .map(|waiting| {
            json!({
                "handoff_id": waiting.handoff_id,
                "dialog_id": waiting.dialog_id,
                "user_id": waiting.user_id,
                "reason": waiting.reason,
                "priority": waiting.priority.as_str(),
                "position": waiting.position,
                "waiting_secs": waiting.waiting_secs,
            })
        })
        .collect();
    frame(
        "queue_snapshot",
        None,
        fields(json!({ "handoffs": handoffs, "version": snapshot.version })),
    )
}

/// `operators_snapshot`: every operator presence knows, as of `version`.
pub fn operators_snapshot(snapshot: &OperatorsSnapshot) -> String {
    let operators: Vec<Value> = snapshot
        .operators
        .iter()
        .map(|operator| {
            json!({
                "operator_id": operator.operator_id,
                "name": operator.name,
                "status": operator.status.as_str(),
                "chosen_status": operator.chosen_status.map(|chosen| chosen.as_str()),
                "online": operator.online,
                "active_handoffs": operator.active_handoffs,
                "max_handoffs": operator.max_handoffs,
            })
        })
        .collect();
    frame(
        "operators_snapshot",
        None,
        fields(json!({ "operators": operators, "version": snapshot.version })),
    )
}

/// `analytics_snapshot`: every metric's current value, by name (an admin's
/// connection gets it right after `connected`, before `analytics_update`s).
/// Whole values are written as integers, as `analytics_update` writes them.
pub fn analytics_snapshot(metrics: &[Metric]) -> String {
    let values: Map<String, Value> = metrics
        .iter()
        .map(|metric| {
            let value = if metric.value.fract() == 0.0 && metric.value.abs() < 9.0e15 {
                json!(metric.value as i64)
            } else {
                json!(metric.value)
            };
            (metric.name.clone(), value)
        })
        .collect();
    frame(
        "analytics_snapshot",
        None,
        fields(json!({ "metrics": values })),
    )
}

/// `closed`: the last event of an SSE stream, with the close code and
/// reason a WebSocket would have been closed with.
pub fn closed(code: u16, reason: &str) -> String {
    frame(
        "closed",
        None,
        fields(json!({ "code": code, "reason": reason })),
    )
}

/// `heartbeat_ack`.
pub fn heartbeat_ack(reference: Option<&str>) -> String {
    frame("heartbeat_ack", reference, Map::new())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chatai_kit::events::{Event, Recipient};

    use super::*;

    fn delivery(body: &str, position: u64) -> Delivery {
        Delivery {
            recipient: Recipient::User(1),
            position,
            event: Arc::new(Event {
                id: "e1".into(),
                kind: "ai_response".into(),
                body: body.as_bytes().to_vec().into(),
                timestamp_ms: 1_700_000_000_123,
                trace_context: Default::default(),
                origin_connection: None,
                durable_recipient: None,
            }),
        }
    }

    /// A prepared event renders as one JSON object with the event's fields,
    /// the envelope, and the cursor when given.
    #[test]
    fn prepared_event_renders_valid_json() {
        let prepared = PreparedEvent::prepare(
            ServiceId::Chat,
            &delivery(r#"{"dialog_id":7,"message":"hi \"you\""}"#, 3),
        )
        .unwrap();
        let with: Value = serde_json::from_str(&prepared.render(Some("abc"))).unwrap();
        assert_eq!(with["type"], "ai_response");
        assert_eq!(with["event_id"], "e1");
        assert_eq!(with["cursor"], "abc");
        assert_eq!(with["dialog_id"], 7);
        assert_eq!(with["message"], "hi \"you\"");
        assert_eq!(with["timestamp"], "2023-11-14T22:13:20.123Z");
        let without: Value = serde_json::from_str(&prepared.render(None)).unwrap();
        assert!(without.get("cursor").is_none());
        let empty = PreparedEvent::prepare(ServiceId::Chat, &delivery("{}", 0)).unwrap();
        let empty: Value = serde_json::from_str(&empty.render(None)).unwrap();
        assert_eq!(empty["type"], "ai_response");
    }

    /// A body that is not an object is refused, not spliced.
    #[test]
    fn non_object_bodies_are_refused() {
        assert!(PreparedEvent::prepare(ServiceId::Chat, &delivery("[1]", 1)).is_err());
        assert!(PreparedEvent::prepare(ServiceId::Chat, &delivery("", 1)).is_err());
    }

    /// Every built frame has a type and a timestamp, and `ref` when given.
    #[test]
    fn frames_carry_type_timestamp_and_ref() {
        let ack: Value = serde_json::from_str(&ack(Some("r1"), json!({"dialog_id": 1}))).unwrap();
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["ref"], "r1");
        assert_eq!(ack["dialog_id"], 1);
        assert!(ack["timestamp"].is_string());
        let err: Value = serde_json::from_str(&error(None, ErrorCode::InvalidJson, "bad")).unwrap();
        assert_eq!(err["code"], "invalid_json");
        assert!(err.get("ref").is_none());
        let connected: Value =
            serde_json::from_str(&connected("g:1", 5, "user", "c", 25, Some(false))).unwrap();
        assert_eq!(connected["recovered"], false);
        assert_eq!(connected["user_id"], 5);
        let left: Value =
            serde_json::from_str(&room_left("dialog:9", LeftReason::Reassigned)).unwrap();
        assert_eq!(left["type"], "room_left");
        assert_eq!(left["room_id"], "dialog:9");
        assert_eq!(left["reason"], "reassigned");
        assert!(left["timestamp"].is_string());
    }
}
