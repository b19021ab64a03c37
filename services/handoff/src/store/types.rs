//! The domain types the store reads and writes: priorities, states and the
//! handoff itself. Nothing here knows about SQL or the wire.

use std::fmt;

/// How urgent a handoff is. Ordered: `Low < Normal < High < Urgent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// The stored (and event) name: `low`, `normal`, `high` or `urgent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The inverse of [`Priority::as_str`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a handoff is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoffState {
    /// Waiting in the queue; no operator.
    Queued,
    /// An operator holds it.
    Assigned,
    /// Ended by its operator (or an admin / service).
    Completed,
    /// Went back to the assistant: waited too long, or its user cancelled it
    /// (the resolution says which).
    Returned,
}

impl HandoffState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffState::Queued => "queued",
            HandoffState::Assigned => "assigned",
            HandoffState::Completed => "completed",
            HandoffState::Returned => "returned",
        }
    }

    /// The inverse of [`HandoffState::as_str`].
    pub fn parse(text: &str) -> Option<HandoffState> {
        [
            HandoffState::Queued,
            HandoffState::Assigned,
            HandoffState::Completed,
            HandoffState::Returned,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Queued or assigned: the dialog is in a human's hands (or waiting for them).
    pub fn is_active(self) -> bool {
        matches!(self, HandoffState::Queued | HandoffState::Assigned)
    }
}

/// The resolution written when a handoff waited too long in the queue.
pub const RETURNED_TO_ASSISTANT: &str = "returned_to_assistant";
/// The resolution of a handoff its user cancelled while it waited (state
/// [`HandoffState::Returned`]: the assistant has the dialog again).
pub const CANCELLED: &str = "cancelled";

/// A handoff as stored. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub id: i64,
    pub dialog_id: i64,
    pub user_id: i64,
    /// The operator holding it (or who completed it); `None` while queued.
    pub operator_id: Option<i64>,
    /// That operator's display name when they got it.
    pub operator_name: Option<String>,
    pub priority: Priority,
    pub reason: String,
    pub state: HandoffState,
    pub requested_at_ms: i64,
    /// The last time it was taken back from an operator.
    pub requeued_at_ms: Option<i64>,
    pub assigned_at_ms: Option<i64>,
    pub first_reply_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub resolution: Option<String>,
}

impl Handoff {
    /// Since when it has been waiting in the queue this time: the request, or
    /// the last time it was taken back.
    pub fn queued_since_ms(&self) -> i64 {
        self.requeued_at_ms.unwrap_or(self.requested_at_ms)
    }
}

/// A handoff to create (queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewHandoff<'a> {
    pub dialog_id: i64,
    pub user_id: i64,
    pub priority: Priority,
    pub reason: &'a str,
    pub requested_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_and_round_trip() {
        assert!(Priority::Urgent > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        for priority in Priority::ALL {
            assert_eq!(Priority::parse(priority.as_str()), Some(priority));
        }
        assert_eq!(Priority::parse("URGENT"), None);
    }

    #[test]
    fn states_round_trip() {
        for state in [
            HandoffState::Queued,
            HandoffState::Assigned,
            HandoffState::Completed,
            HandoffState::Returned,
        ] {
            assert_eq!(HandoffState::parse(state.as_str()), Some(state));
        }
        assert!(HandoffState::Queued.is_active());
        assert!(!HandoffState::Returned.is_active());
    }
}
