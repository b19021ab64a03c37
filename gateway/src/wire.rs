//! The one place the gateway's own types and the services' gRPC messages
//! (`chatai_proto`) turn into each other: requests going out, answers coming
//! back. The adapters that make the calls (`services.rs`, `upstream.rs`,
//! `reporting.rs`) use these; connection code never sees a `pb::` type.

use chatai_kit::events::Delivery;
use chatai_proto::v1 as pb;
use chatai_proto::v1::connection_event::Kind;

use crate::frames::inbound::{OperatorStatus, Priority};
use crate::frames::outbound::timestamp_of;
use crate::registry::{OperatorConnection, ReportOrder};
use crate::reporting::{ConnectionEvent, ConnectionEventKind};
use crate::services::{
    CompletedHandoff, DialogItem, DialogPage, EffectiveStatus, HandoffTicket, HistoryMessage,
    HistoryPage, Metric, OperatorSummary, OperatorsSnapshot, QueueSnapshot, SentMessage,
    WaitingHandoff,
};
use crate::upstream::{ReplayFrom, ReplayPage};

// To the services.

impl From<ReplayFrom> for pb::replay_request::From {
    fn from(from: ReplayFrom) -> Self {
        match from {
            ReplayFrom::After(position) => pb::replay_request::From::AfterPosition(position),
            ReplayFrom::LastSeen => pb::replay_request::From::SinceLastSeen(true),
        }
    }
}

impl From<OperatorStatus> for pb::OperatorStatus {
    fn from(status: OperatorStatus) -> Self {
        match status {
            OperatorStatus::Available => pb::OperatorStatus::Available,
            OperatorStatus::Busy => pb::OperatorStatus::Busy,
            OperatorStatus::Away => pb::OperatorStatus::Away,
        }
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

impl From<ReportOrder> for pb::ReportOrder {
    fn from(order: ReportOrder) -> Self {
        pb::ReportOrder {
            incarnation: order.incarnation,
            sequence: order.sequence,
        }
    }
}

impl From<&OperatorConnection> for pb::OperatorConnection {
    fn from(connection: &OperatorConnection) -> Self {
        pb::OperatorConnection {
            operator_id: connection.operator_id,
            connection_id: connection.connection_id.clone(),
            name: connection
                .name
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_default(),
        }
    }
}

impl From<ConnectionEvent> for pb::ConnectionEvent {
    fn from(event: ConnectionEvent) -> Self {
        let (kind, duration_ms, close_code) = match event.kind {
            ConnectionEventKind::Connect => (Kind::Connect, 0, 0),
            ConnectionEventKind::Disconnect {
                duration_ms,
                close_code,
            } => (Kind::Disconnect, duration_ms, close_code),
        };
        pb::ConnectionEvent {
            connection_id: event.connection_id,
            gateway_id: event.gateway_id,
            role: event.role.as_str().to_owned(),
            principal_id: event.principal_id,
            kind: kind as i32,
            at_ms: event.at_ms,
            duration_ms,
            close_code,
        }
    }
}

// From the services.

/// Deliveries that do not convert are left out, with a warning: the page's
/// positions still move the connection past them.
impl From<pb::ReplayResponse> for ReplayPage {
    fn from(page: pb::ReplayResponse) -> Self {
        let deliveries = page
            .deliveries
            .into_iter()
            .filter_map(|delivery| match Delivery::try_from(delivery) {
                Ok(delivery) => Some(delivery),
                Err(err) => {
                    tracing::warn!(cause = %err, "skipping a malformed replayed event");
                    None
                }
            })
            .collect();
        ReplayPage {
            deliveries,
            complete: page.complete,
            next_after: page.next_after,
            more: page.more,
            start_after: page.start_after,
        }
    }
}

impl From<pb::SendMessageResponse> for SentMessage {
    fn from(sent: pb::SendMessageResponse) -> Self {
        SentMessage {
            dialog_id: sent.dialog_id,
            message_id: sent.message_id,
        }
    }
}

impl From<pb::GetHistoryResponse> for HistoryPage {
    fn from(history: pb::GetHistoryResponse) -> Self {
        HistoryPage {
            dialog_id: history.dialog_id,
            messages: history
                .messages
                .into_iter()
                .map(HistoryMessage::from)
                .collect(),
            has_more: history.has_more,
        }
    }
}

impl From<pb::ChatMessage> for HistoryMessage {
    fn from(message: pb::ChatMessage) -> Self {
        let sender = match pb::Sender::try_from(message.sender) {
            Ok(pb::Sender::Assistant) => "assistant",
            Ok(pb::Sender::Operator) => "operator",
            // The chat service stores only these three.
            Ok(pb::Sender::User | pb::Sender::Unspecified) | Err(_) => "user",
        };
        HistoryMessage {
            message_id: message.message_id,
            sender,
            sender_id: Some(message.sender_id).filter(|id| *id != 0),
            message: message.text,
            timestamp: timestamp_of(message.created_at_ms),
        }
    }
}

impl From<pb::ListDialogsResponse> for DialogPage {
    fn from(list: pb::ListDialogsResponse) -> Self {
        DialogPage {
            dialogs: list.dialogs.into_iter().map(DialogItem::from).collect(),
            has_more: list.has_more,
        }
    }
}

impl From<pb::DialogSummary> for DialogItem {
    fn from(dialog: pb::DialogSummary) -> Self {
        let state = match pb::DialogState::try_from(dialog.state) {
            Ok(pb::DialogState::Queued) => "queued",
            Ok(pb::DialogState::Operator) => "operator",
            Ok(pb::DialogState::Assistant | pb::DialogState::Unspecified) | Err(_) => "assistant",
        };
        DialogItem {
            dialog_id: dialog.dialog_id,
            user_id: dialog.user_id,
            created_at: timestamp_of(dialog.created_at_ms),
            last_message_at: timestamp_of(dialog.last_message_at_ms),
            state,
            operator_id: Some(dialog.operator_id).filter(|id| state == "operator" && *id != 0),
        }
    }
}

impl From<pb::HandoffRecord> for HandoffTicket {
    fn from(handoff: pb::HandoffRecord) -> Self {
        HandoffTicket {
            handoff_id: handoff.handoff_id,
            position: handoff.position,
            estimated_wait_seconds: (!handoff.wait_unknown)
                .then_some(handoff.estimated_wait_seconds),
            operators_online: handoff.operators_online,
            operator_id: handoff.operator_id,
        }
    }
}

impl From<pb::CompleteHandoffResponse> for CompletedHandoff {
    fn from(done: pb::CompleteHandoffResponse) -> Self {
        CompletedHandoff {
            duration_seconds: done.duration_seconds,
        }
    }
}

/// An unknown or unset status reads as `offline`.
impl From<&pb::OperatorInfo> for EffectiveStatus {
    fn from(info: &pb::OperatorInfo) -> Self {
        match pb::OperatorStatus::try_from(info.status) {
            Ok(pb::OperatorStatus::Available) => EffectiveStatus::Available,
            Ok(pb::OperatorStatus::Busy) => EffectiveStatus::Busy,
            Ok(pb::OperatorStatus::Away) => EffectiveStatus::Away,
            _ => EffectiveStatus::Offline,
        }
    }
}

/// The waiting handoffs of a listing, in queue order (the assigned ones are
/// not part of the snapshot). An unknown priority reads as `normal`.
impl From<pb::ListQueueResponse> for QueueSnapshot {
    fn from(listing: pb::ListQueueResponse) -> Self {
        let waiting = listing
            .queued
            .into_iter()
            .map(|record| WaitingHandoff {
                priority: priority_from_wire(record.priority),
                handoff_id: record.handoff_id,
                dialog_id: record.dialog_id,
                user_id: record.user_id,
                reason: record.reason,
                position: record.position,
                waiting_secs: record.waiting_seconds,
            })
            .collect();
        QueueSnapshot {
            version: listing.version,
            waiting,
        }
    }
}

fn priority_from_wire(priority: i32) -> Priority {
    match pb::Priority::try_from(priority) {
        Ok(pb::Priority::Low) => Priority::Low,
        Ok(pb::Priority::High) => Priority::High,
        Ok(pb::Priority::Urgent) => Priority::Urgent,
        _ => Priority::Normal,
    }
}

impl From<pb::ListOperatorsResponse> for OperatorsSnapshot {
    fn from(listing: pb::ListOperatorsResponse) -> Self {
        let operators = listing
            .operators
            .into_iter()
            .map(|info| OperatorSummary {
                status: EffectiveStatus::from(&info),
                chosen_status: match pb::OperatorStatus::try_from(info.chosen_status) {
                    Ok(pb::OperatorStatus::Available) => Some(OperatorStatus::Available),
                    Ok(pb::OperatorStatus::Busy) => Some(OperatorStatus::Busy),
                    Ok(pb::OperatorStatus::Away) => Some(OperatorStatus::Away),
                    _ => None,
                },
                operator_id: info.operator_id,
                name: info.name,
                online: info.online,
                active_handoffs: info.active_handoffs,
                max_handoffs: info.max_handoffs,
            })
            .collect();
        OperatorsSnapshot {
            version: listing.version,
            operators,
        }
    }
}

impl From<pb::Metric> for Metric {
    fn from(metric: pb::Metric) -> Self {
        Metric {
            name: metric.name,
            value: metric.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use chatai_kit::identity::Role;

    use super::*;

    /// A close carries its duration and code; an opening carries zeros.
    #[test]
    fn connection_events_convert() {
        let event = |kind| ConnectionEvent {
            connection_id: "g:1".into(),
            gateway_id: "g".into(),
            role: Role::Operator,
            principal_id: 7,
            kind,
            at_ms: 5,
        };
        let opened = pb::ConnectionEvent::from(event(ConnectionEventKind::Connect));
        assert_eq!(opened.kind, Kind::Connect as i32);
        assert_eq!((opened.duration_ms, opened.close_code), (0, 0));
        assert_eq!(opened.role, "operator");
        let closed = pb::ConnectionEvent::from(event(ConnectionEventKind::Disconnect {
            duration_ms: 1200,
            close_code: 4002,
        }));
        assert_eq!(closed.kind, Kind::Disconnect as i32);
        assert_eq!((closed.duration_ms, closed.close_code), (1200, 4002));
    }

    /// Replay pages keep their positions and drop deliveries that do not convert.
    #[test]
    fn replay_pages_drop_malformed_deliveries() {
        let page = ReplayPage::from(pb::ReplayResponse {
            deliveries: vec![pb::Delivery::default()],
            complete: true,
            next_after: 9,
            more: false,
            start_after: 3,
        });
        assert!(page.deliveries.is_empty());
        assert_eq!((page.start_after, page.next_after), (3, 9));
        assert!(page.complete && !page.more);
    }
}
