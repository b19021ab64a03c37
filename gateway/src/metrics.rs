//! The gateway's Prometheus metrics, defined here once and recorded by small
//! calls where things happen (connections, frames, closes, deliveries). All
//! carry `service="gateway"`; other labels come from closed sets: a frame
//! type from the protocol's list (anything else is `other`), an error code
//! from [`ErrorCode`], a close code, a role. The recorder and the buckets
//! are `chatai_kit::metrics`'s.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::Role;

use crate::close::CloseReason;

/// The `service` label of every gateway series.
pub const SERVICE: &str = "gateway";

/// Open WebSocket connections, by `role`.
pub const CONNECTIONS: &str = "chatai_gateway_connections";
/// Client frames received, by `type` (`invalid` when it did not parse,
/// `limited` when refused for the rate limit before being read).
pub const FRAMES_IN: &str = "chatai_gateway_frames_in_total";
/// Frames written to clients, by `type`.
pub const FRAMES_OUT: &str = "chatai_gateway_frames_out_total";
/// `error` frames sent, by `code`.
pub const ERRORS: &str = "chatai_gateway_errors_total";
/// Connections closed by the gateway, by close `code`.
pub const CLOSES: &str = "chatai_gateway_closes_total";
/// Connections cut for reading too slowly (4002).
pub const SLOW_DISCONNECTS: &str = "chatai_gateway_slow_disconnects_total";
/// Frames waiting in a connection's outbound queue when its task wakes to
/// write them.
pub const OUTBOUND_QUEUE_DEPTH: &str = "chatai_gateway_outbound_queue_depth";
/// From a live event's creation at a service to its write to the socket.
pub const DELIVERY_LAG: &str = "chatai_gateway_delivery_lag_seconds";
/// Clients told `cursor_expired` (their replay could not be complete).
pub const CURSOR_EXPIRED: &str = "chatai_gateway_cursor_expired_total";
/// Connection records dropped because the reporting queue was full.
pub const CONNECTION_EVENTS_DROPPED: &str = "chatai_gateway_connection_events_dropped_total";

/// Every metric the gateway records.
pub const NAMES: &[&str] = &[
    CONNECTIONS,
    FRAMES_IN,
    FRAMES_OUT,
    ERRORS,
    CLOSES,
    SLOW_DISCONNECTS,
    OUTBOUND_QUEUE_DEPTH,
    DELIVERY_LAG,
    CURSOR_EXPIRED,
    CONNECTION_EVENTS_DROPPED,
];

/// Frame types a `type` label may take (client and server frames of
/// docs/protocol.md); any other is counted as `other`.
const FRAME_TYPES: &[&str] = &[
    "ack",
    "ai_response",
    "analytics_snapshot",
    "analytics_update",
    "balance_alert",
    "cancel_handoff",
    "chat_message",
    "claim_handoff",
    "complete_handoff",
    "connected",
    "error",
    "get_history",
    "handoff_completed",
    "handoff_dequeued",
    "handoff_queued",
    "handoff_request",
    "heartbeat",
    "heartbeat_ack",
    "join_room",
    "leave_room",
    "list_dialogs",
    "mark_read",
    "operator_assigned",
    "operator_message",
    "operator_status_change",
    "operators_snapshot",
    "queue_snapshot",
    "read",
    "refresh_token",
    "room_left",
    "set_status",
    "system_alert",
    "transfer_handoff",
    "typing",
];

/// `name` if it is a known frame type, else `other`: a label value from a
/// closed set whatever a client or service sends.
pub fn frame_type(name: &str) -> &'static str {
    FRAME_TYPES
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("other")
}

/// The `type` of a frame the gateway writes: every one starts with
/// `{"type":"…"`.
pub fn outbound_type(text: &str) -> &'static str {
    text.strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split_once('"'))
        .map_or("other", |(name, _)| frame_type(name))
}

/// Sets every series the gateway records without labels of its own to 0
/// and describes them, so `/metrics` shows them from the start.
pub fn register() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    chatai_kit::metrics::handle();
    describe_gauge!(CONNECTIONS, "open WebSocket connections");
    describe_counter!(FRAMES_IN, "client frames received");
    describe_counter!(FRAMES_OUT, "frames written to clients");
    describe_counter!(ERRORS, "error frames sent");
    describe_counter!(CLOSES, "connections closed by the gateway");
    describe_counter!(
        SLOW_DISCONNECTS,
        "connections cut for reading too slowly (4002)"
    );
    describe_histogram!(
        OUTBOUND_QUEUE_DEPTH,
        "frames queued when a connection writes"
    );
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "a live event's creation to its write to the socket"
    );
    describe_counter!(CURSOR_EXPIRED, "clients told cursor_expired");
    describe_counter!(
        CONNECTION_EVENTS_DROPPED,
        "connection records dropped (reporting queue full)"
    );
    for counter in [SLOW_DISCONNECTS, CURSOR_EXPIRED, CONNECTION_EVENTS_DROPPED] {
        metrics::counter!(counter, "service" => SERVICE).increment(0);
    }
    for role in [Role::User, Role::Operator, Role::Admin] {
        metrics::gauge!(CONNECTIONS, "service" => SERVICE, "role" => role.as_str()).increment(0.0);
    }
}

/// A connection of `role` opened (`+1`) or closed (`-1`).
pub fn connection(role: Role, change: f64) {
    metrics::gauge!(CONNECTIONS, "service" => SERVICE, "role" => role.as_str()).increment(change);
}

/// A client frame of `kind` arrived.
pub fn frame_in(kind: &'static str) {
    metrics::counter!(FRAMES_IN, "service" => SERVICE, "type" => kind).increment(1);
}

/// A frame of `kind` (see [`outbound_type`]) went out.
pub fn frame_out(kind: &'static str) {
    metrics::counter!(FRAMES_OUT, "service" => SERVICE, "type" => kind).increment(1);
}

/// An `error` frame with `code` was made to be sent.
pub fn error(code: ErrorCode) {
    metrics::counter!(ERRORS, "service" => SERVICE, "code" => code.as_str()).increment(1);
}

/// The gateway closed a connection for `reason`.
pub fn close(reason: CloseReason) {
    metrics::counter!(CLOSES, "service" => SERVICE, "code" => reason.code().to_string())
        .increment(1);
    if reason == CloseReason::TooSlow {
        metrics::counter!(SLOW_DISCONNECTS, "service" => SERVICE).increment(1);
    }
}

/// A connection woke to write `depth` queued frames.
pub fn outbound_queue(depth: usize) {
    metrics::histogram!(OUTBOUND_QUEUE_DEPTH, "service" => SERVICE).record(depth as f64);
}

/// A live event created at `created_ms` (ms since the epoch) was written.
pub fn delivered(created_ms: i64) {
    let lag_ms = chatai_kit::now_ms().saturating_sub(created_ms).max(0);
    metrics::histogram!(DELIVERY_LAG, "service" => SERVICE).record(lag_ms as f64 / 1000.0);
}

/// A client was told `cursor_expired`.
pub fn cursor_expired() {
    metrics::counter!(CURSOR_EXPIRED, "service" => SERVICE).increment(1);
}

/// `count` connection records were dropped.
pub fn connection_events_dropped(count: u64) {
    metrics::counter!(CONNECTION_EVENTS_DROPPED, "service" => SERVICE).increment(count);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values come from the closed list, whatever the text says.
    #[test]
    fn frame_types_are_a_closed_set() {
        assert_eq!(outbound_type(r#"{"type":"ack","ref":"1"}"#), "ack");
        assert_eq!(outbound_type(r#"{"type":"user-4711"}"#), "other");
        assert_eq!(outbound_type("not json"), "other");
        assert_eq!(frame_type("typing"), "typing");
    }

    /// Every name follows the conventions of `chatai_kit::metrics`.
    #[test]
    fn names_follow_the_conventions() {
        for name in NAMES {
            assert!(name.starts_with("chatai_gateway_"), "{name}");
        }
    }
}
