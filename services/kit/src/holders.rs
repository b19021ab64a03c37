//! Who holds a dialog, as the handoff service tells the chat service: the
//! contract between the two, written once.
//!
//! After every event the handoff service sends to a user or an operator it
//! publishes a [`HolderNote`] — live only, in the room [`ROOM`], which no
//! client may join — saying who holds the event's dialog as of a
//! [`version`](HolderNote::version) and which position the event got in its
//! recipient's log. The chat service follows that room and so routes each
//! message by its own view instead of asking per message.
//!
//! The rule the notes make possible: a caller's request carries the last
//! position of its own handoff log its connection was delivered; when the
//! view has applied the notes of that recipient up to that position, the
//! view reflects every transition the caller has seen, so a user who has
//! seen `operator_assigned` reaches that operator (never the assistant), and
//! one who has seen `handoff_completed` or `handoff_queued` never reaches the
//! former holder. Otherwise the chat service asks the handoff service.
//!
//! Versions only grow, also across a restart of the handoff service
//! ([`VersionClock`], from [`crate::versioned`]), so a view can tell an
//! older answer from a newer one.

use serde::{Deserialize, Serialize};

/// The room the notes are published in (live only; the gateway refuses any
/// client `join_room` other than `dialog:{id}`).
pub const ROOM: &str = "service:handoff-holders";
/// The event type of a note.
pub const KIND: &str = "holder_changed";

/// Who holds a dialog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HeldBy {
    /// No queued or assigned handoff: the assistant answers.
    Assistant,
    /// Waiting in the queue: nobody answers, the assistant stays quiet.
    Queued,
    /// Held by this operator.
    Operator {
        operator_id: i64,
        operator_name: String,
    },
}

/// The recipient of the event a note follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotedFor {
    User(i64),
    Operator(i64),
}

/// One note: the dialog's holder as of `version`, after an event for
/// `recipient` at `position` of its log at the handoff service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderNote {
    pub dialog_id: i64,
    /// The dialog's owner.
    pub user_id: i64,
    pub holder: HeldBy,
    pub version: u64,
    pub recipient: NotedFor,
    /// 0 when the event could not be stored (the note still says who holds).
    pub position: u64,
}

pub use crate::versioned::VersionClock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_as_written() -> Result<(), serde_json::Error> {
        let note = HolderNote {
            dialog_id: 3,
            user_id: 5,
            holder: HeldBy::Operator {
                operator_id: 7,
                operator_name: "Bo".into(),
            },
            version: 42,
            recipient: NotedFor::User(5),
            position: 9,
        };
        let text = serde_json::to_string(&note)?;
        assert!(text.contains(r#""state":"operator""#), "{text}");
        assert_eq!(serde_json::from_str::<HolderNote>(&text)?, note);
        Ok(())
    }
}
