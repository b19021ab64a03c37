//! Dialog rooms as clients name them and as the gateway leaves them: the one
//! reading of a `room_id` (`join_room` and `leave_room` both go through
//! [`dialog_of`], so every spelling that joins a room also leaves it), and the
//! end of an operator's hold on a dialog ([`EndedHold`]), read from the
//! `handoff_completed` the handoff service sends that operator, after which
//! the operator's connections leave the dialog's room with a `room_left`
//! ([`LeftReason`]).

use chatai_kit::events::{Delivery, Recipient};
use serde::Deserialize;

use crate::service_id::ServiceId;

/// The dialog a client's `room_id` names: `dialog:{id}`, the id read as an
/// integer, so `dialog:01` and `dialog:+1` name dialog 1 (its room is
/// `Recipient::dialog_room(1)`, spelled `dialog:1`). `None` for anything else.
pub fn dialog_of(room_id: &str) -> Option<i64> {
    room_id.strip_prefix("dialog:")?.parse::<i64>().ok()
}

/// Why a connection was taken out of a dialog's room (`room_left`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftReason {
    /// The operator's handoff of the dialog was completed (by them or an admin).
    HandoffCompleted,
    /// The handoff was taken back from the operator (no reply in time, or they
    /// went offline) to be given to someone else.
    Reassigned,
    /// The dialog went back to the assistant.
    ReturnedToAssistant,
    /// The operator handed the dialog on (`transfer_handoff`).
    Transferred,
}

impl LeftReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftReason::HandoffCompleted => "handoff_completed",
            LeftReason::Reassigned => "reassigned",
            LeftReason::ReturnedToAssistant => "returned_to_assistant",
            LeftReason::Transferred => "transferred",
        }
    }

    /// From `handoff_completed`'s `outcome`; a completion when the field is
    /// absent (an older handoff service) or unknown: the hold ended either way.
    fn from_outcome(outcome: Option<&str>) -> Self {
        match outcome {
            Some("reassigned") => LeftReason::Reassigned,
            Some("returned_to_assistant") => LeftReason::ReturnedToAssistant,
            Some("transferred") => LeftReason::Transferred,
            _ => LeftReason::HandoffCompleted,
        }
    }
}

/// An operator's hold on a dialog ended: the `handoff_completed` the handoff
/// service delivered to that operator (completed, taken back, returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedHold {
    pub dialog_id: i64,
    pub operator_id: i64,
    pub reason: LeftReason,
}

/// The fields of `handoff_completed` read here.
#[derive(Deserialize)]
struct Completed {
    dialog_id: i64,
    operator_id: i64,
    #[serde(default)]
    outcome: Option<String>,
}

impl EndedHold {
    /// The hold `delivery` ends, when it is a `handoff_completed` from the
    /// handoff service to the operator it names. Only such events are parsed,
    /// so other deliveries cost a string comparison.
    pub fn of(service: ServiceId, delivery: &Delivery) -> Option<EndedHold> {
        let event = &delivery.event;
        if service != ServiceId::Handoff || event.kind != "handoff_completed" {
            return None;
        }
        let Recipient::Operator(operator_id) = delivery.recipient else {
            return None;
        };
        let completed: Completed = match serde_json::from_slice(&event.body) {
            Ok(completed) => completed,
            Err(err) => {
                tracing::warn!(cause = %err, "unreadable handoff_completed; no room left");
                return None;
            }
        };
        (completed.operator_id == operator_id).then_some(EndedHold {
            dialog_id: completed.dialog_id,
            operator_id,
            reason: LeftReason::from_outcome(completed.outcome.as_deref()),
        })
    }

    /// The room the operator's connections leave.
    pub fn room(&self) -> Recipient {
        Recipient::dialog_room(self.dialog_id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chatai_kit::events::Event;

    use super::*;

    /// Every integer spelling names the dialog; anything else names none.
    #[test]
    fn room_ids_are_read_as_dialog_numbers() {
        assert_eq!(dialog_of("dialog:1"), Some(1));
        assert_eq!(dialog_of("dialog:01"), Some(1));
        assert_eq!(dialog_of("dialog:+1"), Some(1));
        assert_eq!(dialog_of("dialog:0042"), Some(42));
        for other in [
            "dialog:",
            "dialog:x",
            "dialog: 1",
            "lobby",
            "Dialog:1",
            "dialog:1.0",
        ] {
            assert_eq!(dialog_of(other), None, "{other}");
        }
        // One canonical room for every spelling.
        let canonical = dialog_of("dialog:007").map(Recipient::dialog_room);
        assert_eq!(canonical, Some(Recipient::Room("dialog:7".into())));
    }

    fn delivery(recipient: Recipient, kind: &str, body: &str) -> Delivery {
        Delivery {
            recipient,
            position: 1,
            event: Arc::new(Event {
                id: "e".into(),
                kind: kind.into(),
                body: body.as_bytes().to_vec().into(),
                timestamp_ms: 0,
                trace_context: Default::default(),
                origin_connection: None,
                durable_recipient: None,
            }),
        }
    }

    /// A `handoff_completed` to the operator it names ends that operator's
    /// hold, with the reason its `outcome` gives.
    #[test]
    fn handoff_completed_to_its_operator_ends_the_hold() {
        let body = r#"{"handoff_id":3,"dialog_id":9,"operator_id":7,"resolution":"reassigned: no reply","duration":4,"outcome":"reassigned"}"#;
        let ended = EndedHold::of(
            ServiceId::Handoff,
            &delivery(Recipient::Operator(7), "handoff_completed", body),
        );
        assert_eq!(
            ended,
            Some(EndedHold {
                dialog_id: 9,
                operator_id: 7,
                reason: LeftReason::Reassigned
            })
        );
        assert_eq!(ended.map(|e| e.room()), Some(Recipient::dialog_room(9)));
        // A resolution that reads like a take-back is free text: the outcome decides.
        let completed = r#"{"dialog_id":9,"operator_id":7,"resolution":"reassigned: no reply","outcome":"completed"}"#;
        let ended = EndedHold::of(
            ServiceId::Handoff,
            &delivery(Recipient::Operator(7), "handoff_completed", completed),
        );
        assert_eq!(ended.map(|e| e.reason), Some(LeftReason::HandoffCompleted));
        // A transfer ends the former holder's hold, with its own reason.
        let transferred =
            r#"{"dialog_id":9,"operator_id":7,"resolution":"transferred","outcome":"transferred"}"#;
        let ended = EndedHold::of(
            ServiceId::Handoff,
            &delivery(Recipient::Operator(7), "handoff_completed", transferred),
        );
        assert_eq!(ended.map(|e| e.reason), Some(LeftReason::Transferred));
        assert_eq!(LeftReason::Transferred.as_str(), "transferred");
        let older = r#"{"dialog_id":9,"operator_id":7,"resolution":"done"}"#;
        let ended = EndedHold::of(
            ServiceId::Handoff,
            &delivery(Recipient::Operator(7), "handoff_completed", older),
        );
        assert_eq!(ended.map(|e| e.reason), Some(LeftReason::HandoffCompleted));
    }

    /// The user's copy, another operator's, another service's or another
    /// kind of event ends no hold.
    #[test]
    fn other_events_end_no_hold() {
        let body = r#"{"dialog_id":9,"operator_id":7,"resolution":"done","outcome":"completed"}"#;
        let cases = [
            (
                ServiceId::Handoff,
                Recipient::User(5),
                "handoff_completed",
                body,
            ),
            (
                ServiceId::Handoff,
                Recipient::Operator(8),
                "handoff_completed",
                body,
            ),
            (
                ServiceId::Chat,
                Recipient::Operator(7),
                "handoff_completed",
                body,
            ),
            (
                ServiceId::Handoff,
                Recipient::Operator(7),
                "operator_assigned",
                body,
            ),
            (
                ServiceId::Handoff,
                Recipient::Operator(7),
                "handoff_completed",
                "[]",
            ),
        ];
        for (service, recipient, kind, body) in cases {
            let ended = EndedHold::of(service, &delivery(recipient.clone(), kind, body));
            assert_eq!(ended, None, "{service:?} {recipient} {kind} {body}");
        }
    }
}
