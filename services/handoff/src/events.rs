//! The bodies of the events the handoff service sends, in the field names of
//! the original design (docs/protocol.md, "Frames"), plus `handoff_id`. The gateway adds
//! `type`, `timestamp`, `event_id` and `cursor`.

use serde::Serialize;

use crate::transcripts::TranscriptMessage;

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
    /// The queue version this arrival is as of (`ListQueue.version`): a
    /// client holding a `queue_snapshot` of version `V` drops events at or
    /// below `V`.
    pub version: u64,
}

/// `handoff_dequeued`: a handoff left the queue, to every operator
/// (`Recipient::Role(Operator)`, live only), so a `queue_snapshot` stays
/// current.
#[derive(Debug, Serialize)]
pub struct HandoffDequeued {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub reason: DequeuedReason,
    /// As `HandoffRequest::version`.
    pub version: u64,
}

/// Why a handoff left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DequeuedReason {
    /// An operator got it (assigned or claimed).
    Assigned,
    /// Its user withdrew it.
    Cancelled,
    /// It waited too long; the assistant has the dialog again.
    ReturnedToAssistant,
    /// An admin or service completed it while it waited.
    Completed,
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
    /// The operator who handed the dialog on, when it came by a transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transferred_from: Option<i64>,
    /// The transferring operator's words, when it came by a transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_reason: Option<&'a str>,
    /// To the operator only: the dialog's last messages (see
    /// `transcripts`), when they could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<&'a [TranscriptMessage]>,
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
    /// Its operator handed it on (`transfer_handoff`): to another operator,
    /// or back to the queue.
    Transferred,
    /// Its user withdrew it while it waited (`cancel_handoff`); the
    /// assistant has the dialog again.
    Cancelled,
}

/// The resolution sent to an operator whose handoff was taken back because
/// they did not reply in time.
pub const REASSIGNED_NO_REPLY: &str = "reassigned: no reply";
/// The resolution sent to an operator whose handoff was taken back because
/// they went offline.
pub const REASSIGNED_OFFLINE: &str = "reassigned: operator offline";
/// The resolution of a completion that named none.
pub const DEFAULT_RESOLUTION: &str = "resolved";
/// The resolution sent to an operator who transferred a handoff.
pub const TRANSFERRED: &str = "transferred";
