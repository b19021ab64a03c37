//! The bodies of the events the handoff service sends, in the field names of
//! the original design (docs/protocol.md, "Frames"), plus `handoff_id`. The gateway adds
//! `type`, `timestamp`, `event_id` and `cursor`.

use serde::Serialize;

/// `handoff_request`: a dialog asks for a human, to every operator
/// (`Recipient::Role(Operator)`, live only).
#[derive(Debug, Serialize)]
pub struct HandoffRequest<'a> {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub user_id: i64,
    pub reason: &'a str,
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: &'static str,
}

/// `handoff_queued`: to the user, on request, whenever their position
/// changes, and when their handoff is put back in the queue.
#[derive(Debug, Serialize)]
pub struct HandoffQueued {
    pub handoff_id: i64,
    pub dialog_id: i64,
    /// 1-based.
    pub position: u32,
    /// Seconds; `null` when no operator who could serve the queue is online.
    pub estimated_wait_time: Option<u32>,
    /// Online operators who chose available.
    pub operators_online: u32,
}

/// `operator_assigned`: to the user and to the operator.
#[derive(Debug, Serialize)]
pub struct OperatorAssigned<'a> {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub operator_id: i64,
    pub operator_name: &'a str,
    /// The wait the user actually had this time in the queue, in seconds.
    pub estimated_wait_time: u32,
    pub user_id: i64,
    pub reason: &'a str,
    pub priority: &'static str,
}

/// `handoff_completed`: to the user and the operator when a handoff ends; to
/// the operator alone when it is taken back from them (`reassigned: …`); to
/// the user alone when it goes back to the assistant (`operator_id` 0,
/// `returned_to_assistant`).
#[derive(Debug, Serialize)]
pub struct HandoffCompleted<'a> {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub operator_id: i64,
    pub resolution: &'a str,
    /// Seconds since the operator got it (0 when nobody had).
    pub duration: u32,
    /// How the handoff ended, in a fixed vocabulary (`resolution` is free
    /// text from the operator). The gateway takes the operator's connections
    /// out of the dialog's room on this event, giving this as the reason.
    pub outcome: Outcome,
}

/// How a handoff ended, as `handoff_completed`'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed by its operator (or an admin).
    Completed,
    /// Taken back from its operator (no reply, or the operator went
    /// offline) and queued again.
    Reassigned,
    /// Waited too long in the queue; the assistant has the dialog again.
    ReturnedToAssistant,
}

/// The resolution sent to an operator whose handoff was taken back because
/// they did not reply in time.
pub const REASSIGNED_NO_REPLY: &str = "reassigned: no reply";
/// The resolution sent to an operator whose handoff was taken back because
/// they went offline.
pub const REASSIGNED_OFFLINE: &str = "reassigned: operator offline";
/// The resolution of a completion that named none.
pub const DEFAULT_RESOLUTION: &str = "resolved";
