//! Domain to wire: the chat service's answers and a handoff refusal passed
//! on, as `chatai.v1` messages and a `Status`. The one place those are made;
//! [`super::from_proto`] goes the other way.

use chatai_kit::status::with_code;
use chatai_proto::v1 as pb;
use tonic::{Code, Status};

use crate::handoffs::{HandoffRecord, HandoffState, Priority, Refusal, RefusalKind};
use crate::service::{DialogList, DialogState, DialogSummary, History, Sent};
use crate::store::{Dialog, Message, Money, Sender};

impl From<Sent> for pb::SendMessageResponse {
    fn from(sent: Sent) -> Self {
        pb::SendMessageResponse {
            dialog_id: sent.dialog_id,
            message_id: sent.message_id,
            created: sent.created,
        }
    }
}

impl From<Message> for pb::ChatMessage {
    fn from(message: Message) -> Self {
        pb::ChatMessage {
            message_id: message.id,
            dialog_id: message.dialog_id,
            sender: match message.sender {
                Sender::User => pb::Sender::User,
                Sender::Assistant => pb::Sender::Assistant,
                Sender::Operator => pb::Sender::Operator,
            } as i32,
            sender_id: message.sender_id.unwrap_or_default(),
            text: message.text,
            tokens_used: message.tokens_used,
            created_at_ms: message.created_at_ms,
        }
    }
}

impl From<History> for pb::GetHistoryResponse {
    fn from(history: History) -> Self {
        pb::GetHistoryResponse {
            dialog_id: history.dialog.id,
            user_id: history.dialog.user_id,
            messages: history
                .messages
                .into_iter()
                .map(pb::ChatMessage::from)
                .collect(),
            has_more: history.has_more,
        }
    }
}

impl From<DialogSummary> for pb::DialogSummary {
    fn from(summary: DialogSummary) -> Self {
        let (state, operator_id) = match summary.state {
            DialogState::Assistant => (pb::DialogState::Assistant, 0),
            DialogState::Queued => (pb::DialogState::Queued, 0),
            DialogState::Operator(id) => (pb::DialogState::Operator, id),
        };
        pb::DialogSummary {
            dialog_id: summary.dialog.id,
            user_id: summary.dialog.user_id,
            created_at_ms: summary.dialog.created_at_ms,
            last_message_at_ms: summary.dialog.updated_at_ms,
            state: state as i32,
            operator_id,
        }
    }
}

impl From<DialogList> for pb::ListDialogsResponse {
    fn from(list: DialogList) -> Self {
        pb::ListDialogsResponse {
            dialogs: list
                .dialogs
                .into_iter()
                .map(pb::DialogSummary::from)
                .collect(),
            has_more: list.has_more,
        }
    }
}

/// A dialog the caller may see, and its holding operator (0 for none).
pub fn access(dialog: Dialog, operator_id: i64) -> pb::CheckAccessResponse {
    pb::CheckAccessResponse {
        dialog_id: dialog.id,
        user_id: dialog.user_id,
        operator_id,
    }
}

/// A user's balance.
pub fn balance(user_id: i64, balance: Money) -> pb::GetBalanceResponse {
    pb::GetBalanceResponse {
        user_id,
        balance: balance.as_units(),
    }
}

impl From<Priority> for pb::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => pb::Priority::Low,
            Priority::Normal => pb::Priority::Normal,
            Priority::High => pb::Priority::High,
            Priority::Urgent => pb::Priority::Urgent,
        }
    }
}

impl From<HandoffState> for pb::HandoffState {
    fn from(state: HandoffState) -> Self {
        match state {
            HandoffState::Queued => pb::HandoffState::Queued,
            HandoffState::Assigned => pb::HandoffState::Assigned,
            HandoffState::Completed => pb::HandoffState::Completed,
            HandoffState::Returned => pb::HandoffState::Returned,
        }
    }
}

impl From<HandoffRecord> for pb::HandoffRecord {
    fn from(record: HandoffRecord) -> Self {
        pb::HandoffRecord {
            handoff_id: record.handoff_id,
            dialog_id: record.dialog_id,
            user_id: record.user_id,
            state: pb::HandoffState::from(record.state) as i32,
            priority: pb::Priority::from(record.priority) as i32,
            reason: record.reason,
            operator_id: record.operator_id.unwrap_or_default(),
            operator_name: record.operator_name.unwrap_or_default(),
            position: record.position.unwrap_or_default(),
            estimated_wait_seconds: record.estimated_wait_seconds.unwrap_or_default(),
            wait_unknown: record.estimated_wait_seconds.is_none(),
            operators_online: record.operators_online,
            requested_at_ms: record.requested_at_ms,
            assigned_at_ms: record.assigned_at_ms.unwrap_or_default(),
            completed_at_ms: record.completed_at_ms.unwrap_or_default(),
            resolution: record.resolution.unwrap_or_default(),
            // Only the queue listing (ListQueue) reports it; chat never does.
            waiting_seconds: 0,
        }
    }
}

/// The handoff service's refusal, for the client as the handoff service
/// gave it: its kind of status, its message and its stable error code.
impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal.kind {
            RefusalKind::InvalidRequest => Code::InvalidArgument,
            RefusalKind::Unauthenticated => Code::Unauthenticated,
            RefusalKind::Forbidden => Code::PermissionDenied,
            RefusalKind::NotFound => Code::NotFound,
            RefusalKind::AlreadyExists => Code::AlreadyExists,
            RefusalKind::Exhausted => Code::ResourceExhausted,
            RefusalKind::Unsupported => Code::Unimplemented,
            RefusalKind::Failed => Code::Internal,
        };
        match refusal.code {
            Some(error_code) => with_code(code, error_code, refusal.message),
            None => Status::new(code, refusal.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use chatai_kit::error_code::ErrorCode;
    use chatai_kit::status::error_code;

    use super::*;
    use crate::handoffs::HandoffError;

    /// A refusal reaches the client with the code, message and stable error
    /// code the handoff service gave; an outage is not a refusal.
    #[test]
    fn a_refusal_is_passed_on_as_given() {
        let given = with_code(
            Code::AlreadyExists,
            ErrorCode::HandoffExists,
            "This dialog is already waiting for or talking to an operator.",
        );
        let HandoffError::Refused(refusal) = HandoffError::from(given.clone()) else {
            panic!("a refusal");
        };
        assert_eq!(refusal.kind, RefusalKind::AlreadyExists);
        let passed_on = Status::from(refusal);
        assert_eq!(passed_on.code(), given.code());
        assert_eq!(passed_on.message(), given.message());
        assert_eq!(error_code(&passed_on), Some("handoff_exists"));
        assert!(matches!(
            HandoffError::from(Status::deadline_exceeded("slow")),
            HandoffError::Unavailable { .. }
        ));
    }

    /// A handoff record crosses the chat service unchanged.
    #[test]
    fn a_handoff_record_round_trips() {
        let wire = pb::HandoffRecord {
            handoff_id: 3,
            dialog_id: 4,
            user_id: 5,
            state: pb::HandoffState::Assigned as i32,
            priority: pb::Priority::Urgent as i32,
            reason: "help".into(),
            operator_id: 7,
            operator_name: "Bo".into(),
            position: 0,
            estimated_wait_seconds: 0,
            requested_at_ms: 10,
            assigned_at_ms: 20,
            completed_at_ms: 0,
            resolution: String::new(),
            wait_unknown: false,
            operators_online: 2,
            waiting_seconds: 0,
        };
        let domain = HandoffRecord::try_from(wire.clone()).expect("a known state");
        assert_eq!(pb::HandoffRecord::from(domain), wire);
        let queued = pb::HandoffRecord {
            state: pb::HandoffState::Queued as i32,
            operator_id: 0,
            operator_name: String::new(),
            position: 2,
            estimated_wait_seconds: 30,
            assigned_at_ms: 0,
            ..wire
        };
        let domain = HandoffRecord::try_from(queued.clone()).expect("a known state");
        assert_eq!(pb::HandoffRecord::from(domain), queued);
        let unknown = pb::HandoffRecord {
            estimated_wait_seconds: 0,
            wait_unknown: true,
            operators_online: 0,
            ..queued
        };
        let domain = HandoffRecord::try_from(unknown.clone()).expect("a known state");
        assert_eq!(domain.estimated_wait_seconds, None);
        assert_eq!(pb::HandoffRecord::from(domain), unknown);
    }
}
