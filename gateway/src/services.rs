//! The gateway's calls into the services' own APIs: caller identity and trace
//! context in metadata, a deadline on every call, retries where they are
//! safe, and the one mapping from a failed call to an `error` frame
//! ([`CallError::client_error`]).
//!
//! Callers give and get the gateway's own types (below, and the frames'
//! [`OperatorStatus`] and [`Priority`]); the gRPC messages are built and read
//! here, through the conversions in `wire.rs`.

use std::time::Duration;

use chatai_kit::error_code::ErrorCode;
use chatai_kit::identity::Caller;
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_proto::v1::handoff_client::HandoffClient;
use chatai_proto::v1::notification_client::NotificationClient;
use chatai_proto::v1::presence_client::PresenceClient;
use tonic::{Code, Status};

use crate::frames::inbound::{OperatorStatus, Priority};
use crate::registry::{OperatorConnection, ReportOrder};
use crate::upstream::ServiceChannel;

/// A call to a service that failed: what the service said, for the log,
/// and through [`client_error`](Self::client_error) what the client is told.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CallError(#[from] Status);

impl CallError {
    /// The `code` and `message` of the `error` frame for this failure. A code
    /// set by a service is passed on with its message (written for people);
    /// anything else gets a generic code and message, and the detail is
    /// logged.
    pub fn client_error(&self) -> (ErrorCode, String) {
        let status = &self.0;
        if let Some(code) = error_code(status).and_then(|code| code.parse().ok()) {
            return (code, status.message().to_owned());
        }
        let (code, message) = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => (
                ErrorCode::ServiceUnavailable,
                "The service is unavailable; try again",
            ),
            Code::PermissionDenied => (ErrorCode::Forbidden, "You may not do that"),
            Code::Unauthenticated => (ErrorCode::Unauthorized, "Not authenticated"),
            Code::NotFound => (ErrorCode::NotFound, "Not found"),
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                (ErrorCode::InvalidRequest, "The request was refused")
            }
            Code::ResourceExhausted => (ErrorCode::RateLimited, "Too many requests; slow down"),
            _ => (ErrorCode::InternalError, "Something went wrong on our side"),
        };
        tracing::warn!(grpc_code = ?status.code(), cause = %status.message(), "service call failed");
        (code, message.to_owned())
    }
}

/// A message the chat service stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMessage {
    pub dialog_id: i64,
    pub message_id: i64,
}

/// A requested handoff: queued (with a position and a wait), or already
/// with an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffTicket {
    pub handoff_id: i64,
    /// 1-based position in the queue while queued, else 0.
    pub position: u32,
    /// `None` while queued with nobody online to serve the queue.
    pub estimated_wait_seconds: Option<u32>,
    /// Online operators who chose available.
    pub operators_online: u32,
    /// 0 while queued.
    pub operator_id: i64,
}

/// A handoff its operator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedHandoff {
    pub duration_seconds: u32,
}

/// A page of a dialog's history, in the JSON shape clients read (the
/// `get_history` ack and `GET /api/dialogs/{id}/messages`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryPage {
    pub dialog_id: i64,
    /// Oldest first.
    pub messages: Vec<HistoryMessage>,
    /// Older messages exist: ask with `before_id` = the first one's id.
    pub has_more: bool,
}

/// One message of a history page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryMessage {
    pub message_id: i64,
    /// `user`, `assistant` or `operator`.
    pub sender: &'static str,
    /// The user's or operator's id; `null` for the assistant.
    pub sender_id: Option<i64>,
    pub message: String,
    /// When it was stored, RFC 3339.
    pub timestamp: String,
}

/// A page of the dialogs a caller may read (the `list_dialogs` ack and
/// `GET /api/dialogs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DialogPage {
    /// Newest first.
    pub dialogs: Vec<DialogItem>,
    /// Older dialogs exist: ask with `before_id` = the last one's id.
    pub has_more: bool,
}

/// One dialog of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DialogItem {
    pub dialog_id: i64,
    pub user_id: i64,
    pub created_at: String,
    pub last_message_at: String,
    /// `assistant`, `queued` or `operator`.
    pub state: &'static str,
    /// The holding operator, only when `state` is `operator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_id: Option<i64>,
}

/// The queue as of a version, for an operator's `queue_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue version: live `handoff_request` / `handoff_dequeued` at or
    /// below it are already reflected.
    pub version: u64,
    /// In queue order.
    pub waiting: Vec<WaitingHandoff>,
}

/// One handoff waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingHandoff {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub user_id: i64,
    pub reason: String,
    pub priority: Priority,
    /// 1-based.
    pub position: u32,
    /// Since it (re-)entered the queue.
    pub waiting_secs: u32,
}

/// Every operator presence knows, as of a version, for `operators_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorsSnapshot {
    /// The presence version: `operator_status_change` at or below it is
    /// already reflected.
    pub version: u64,
    pub operators: Vec<OperatorSummary>,
}

/// One operator in an [`OperatorsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSummary {
    pub operator_id: i64,
    pub name: String,
    pub status: EffectiveStatus,
    /// `None` when presence has none on record.
    pub chosen_status: Option<OperatorStatus>,
    pub online: bool,
    pub active_handoffs: u32,
    pub max_handoffs: u32,
}

/// One analytics metric's current value, for an admin's `analytics_snapshot`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// As `analytics_update`'s `metric`.
    pub name: String,
    pub value: f64,
}

/// An operator's effective status, the one everyone sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveStatus {
    Available,
    Busy,
    Away,
    Offline,
}

impl EffectiveStatus {
    /// The status as clients read it.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectiveStatus::Available => "available",
            EffectiveStatus::Busy => "busy",
            EffectiveStatus::Away => "away",
            EffectiveStatus::Offline => "offline",
        }
    }
}

/// Clients of the services' APIs.
#[derive(Clone)]
pub struct Services {
    chat: ChatClient<ServiceChannel>,
    handoff: HandoffClient<ServiceChannel>,
    presence: PresenceClient<ServiceChannel>,
    notification: NotificationClient<ServiceChannel>,
    timeout: Duration,
}

impl Services {
    pub fn new(
        chat: ServiceChannel,
        handoff: ServiceChannel,
        presence: ServiceChannel,
        notification: ServiceChannel,
        timeout: Duration,
    ) -> Self {
        Services {
            chat: ChatClient::new(chat),
            handoff: HandoffClient::new(handoff),
            presence: PresenceClient::new(presence),
            notification: NotificationClient::new(notification),
            timeout,
        }
    }

    fn request<T>(&self, caller: &Caller, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        caller.write_metadata(request.metadata_mut());
        request.set_timeout(self.timeout);
        request
    }

    /// A call made again on `UNAVAILABLE` (the replica could not be
    /// reached, or it is a handoff standby: "not the leader"), each attempt
    /// under the deadline, through `chatai_kit::grpc::retry_unavailable`,
    /// which the replica set steers to another replica. For calls a repeat
    /// cannot apply twice: reads, the idempotency key of `send_message`,
    /// and changes conditional on the state they change (a repeated
    /// `complete_handoff` finds nothing left to complete).
    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        chatai_kit::grpc::retry_unavailable(|| async {
            self.deadline(call())
                .await
                .map_err(|CallError(status)| status)
        })
        .await
        .map_err(CallError)
    }

    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(response) => Ok(response?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded("the service did not answer in time").into()),
        }
    }

    /// Posts a message. Retried while the chat service is unreachable: the
    /// idempotency key makes a repeat return the first call's message
    /// instead of storing it twice. With the client's frame `id`, the key is
    /// derived from the frame (id, dialog and text), so a client that
    /// resends the same frame after a lost `ack` gets the original `ack`
    /// (within 24 hours); without one, each frame gets a key of its own.
    /// `handoff_position` is the last position of the caller's handoff log
    /// this connection was delivered (see `SendMessageRequest`).
    pub async fn send_message(
        &self,
        caller: &Caller,
        frame_id: Option<&str>,
        dialog_id: Option<i64>,
        text: String,
        handoff_position: u64,
    ) -> Result<SentMessage, CallError> {
        let idempotency_key = match frame_id {
            Some(id) => frame_key(id, dialog_id, &text),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let message = pb::SendMessageRequest {
            dialog_id,
            text,
            idempotency_key,
            handoff_position,
        };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message.clone());
            async move { client.send_message(request).await }
        })
        .await
        .map(SentMessage::from)
    }

    /// Asks for a human operator for the caller's dialog (through the chat
    /// service, which checks the caller owns it).
    pub async fn request_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        reason: String,
        priority: Priority,
    ) -> Result<HandoffTicket, CallError> {
        let message = pb::RequestHandoffForDialogRequest {
            dialog_id,
            reason,
            priority: pb::Priority::from(priority) as i32,
        };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message.clone());
            async move { client.request_handoff(request).await }
        })
        .await
        .map(HandoffTicket::from)
    }

    /// Whether the caller may see the dialog (for `dialog:{id}` rooms).
    pub async fn check_access(&self, caller: &Caller, dialog_id: i64) -> Result<(), CallError> {
        let message = pb::CheckAccessRequest { dialog_id };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message);
            async move { client.check_access(request).await }
        })
        .await
        .map(|_| ())
    }

    /// An operator's chosen status; returns their effective status.
    pub async fn set_status(
        &self,
        caller: &Caller,
        status: OperatorStatus,
    ) -> Result<EffectiveStatus, CallError> {
        let message = pb::SetStatusRequest {
            operator_id: caller.id,
            status: pb::OperatorStatus::from(status) as i32,
        };
        self.retried(|| {
            let mut client = self.presence.clone();
            let request = self.request(caller, message);
            async move { client.set_status(request).await }
        })
        .await
        .map(|info| EffectiveStatus::from(&info))
    }

    /// The holding operator ends a handoff.
    pub async fn complete_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        resolution: String,
    ) -> Result<CompletedHandoff, CallError> {
        let message = pb::CompleteHandoffRequest {
            dialog_id,
            resolution,
        };
        self.retried(|| {
            let mut client = self.handoff.clone();
            let request = self.request(caller, message.clone());
            async move { client.complete_handoff(request).await }
        })
        .await
        .map(CompletedHandoff::from)
    }

    /// The holding operator hands the dialog to `to_operator_id`, or back to
    /// the queue without one.
    pub async fn transfer_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        to_operator_id: Option<i64>,
        reason: String,
    ) -> Result<HandoffTicket, CallError> {
        let message = pb::TransferHandoffRequest {
            dialog_id,
            to_operator_id: to_operator_id.unwrap_or(0),
            reason,
        };
        self.retried(|| {
            let mut client = self.handoff.clone();
            let request = self.request(caller, message.clone());
            async move { client.transfer_handoff(request).await }
        })
        .await
        .map(HandoffTicket::from)
    }

    /// An operator takes a queued dialog out of order.
    pub async fn claim_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffTicket, CallError> {
        let message = pb::ClaimHandoffRequest { dialog_id };
        self.retried(|| {
            let mut client = self.handoff.clone();
            let request = self.request(caller, message);
            async move { client.claim_handoff(request).await }
        })
        .await
        .map(HandoffTicket::from)
    }

    /// The dialog's owner withdraws its handoff while it waits.
    pub async fn cancel_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffTicket, CallError> {
        let message = pb::CancelHandoffRequest { dialog_id };
        self.retried(|| {
            let mut client = self.handoff.clone();
            let request = self.request(caller, message);
            async move { client.cancel_handoff(request).await }
        })
        .await
        .map(HandoffTicket::from)
    }

    /// The waiting handoffs as of a queue version.
    pub async fn queue_snapshot(&self, caller: &Caller) -> Result<QueueSnapshot, CallError> {
        let message = pb::ListQueueRequest {};
        self.retried(|| {
            let mut client = self.handoff.clone();
            let request = self.request(caller, message);
            async move { client.list_queue(request).await }
        })
        .await
        .map(QueueSnapshot::from)
    }

    /// Every operator presence knows, as of a presence version.
    pub async fn operators_snapshot(
        &self,
        caller: &Caller,
    ) -> Result<OperatorsSnapshot, CallError> {
        let message = pb::ListOperatorsRequest {};
        self.retried(|| {
            let mut client = self.presence.clone();
            let request = self.request(caller, message);
            async move { client.list_operators(request).await }
        })
        .await
        .map(OperatorsSnapshot::from)
    }

    /// Every analytics metric's current value (admins).
    pub async fn analytics_snapshot(&self, caller: &Caller) -> Result<Vec<Metric>, CallError> {
        let message = pb::GetAnalyticsRequest {};
        self.retried(|| {
            let mut client = self.notification.clone();
            let request = self.request(caller, message);
            async move { client.get_analytics(request).await }
        })
        .await
        .map(|response| response.metrics.into_iter().map(Metric::from).collect())
    }

    /// Sends a `system_alert` to every connected client (admins); its event id.
    pub async fn system_alert(
        &self,
        caller: &Caller,
        severity: &str,
        message: &str,
        affected_services: &[String],
    ) -> Result<String, CallError> {
        let request = self.request(
            caller,
            pb::SystemAlertRequest {
                severity: severity.to_owned(),
                message: message.to_owned(),
                affected_services: affected_services.to_vec(),
            },
        );
        self.deadline(self.notification.clone().system_alert(request))
            .await
            .map(|response| response.event_id)
    }

    /// Tells the presence service an operator connection opened.
    pub async fn operator_connected(
        &self,
        gateway_id: &str,
        connection: &OperatorConnection,
        order: ReportOrder,
    ) -> Result<(), CallError> {
        let message = pb::ConnectionOpenedRequest {
            gateway_id: gateway_id.to_owned(),
            connection: Some(connection.into()),
            order: Some(order.into()),
        };
        self.retried(|| {
            let mut client = self.presence.clone();
            let request = self.request(&Caller::service(), message.clone());
            async move { client.connection_opened(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Tells the presence service an operator connection closed.
    pub async fn operator_disconnected(
        &self,
        gateway_id: &str,
        operator_id: i64,
        connection_id: &str,
        order: ReportOrder,
    ) -> Result<(), CallError> {
        let message = pb::ConnectionClosedRequest {
            gateway_id: gateway_id.to_owned(),
            operator_id,
            connection_id: connection_id.to_owned(),
            order: Some(order.into()),
        };
        self.retried(|| {
            let mut client = self.presence.clone();
            let request = self.request(&Caller::service(), message.clone());
            async move { client.connection_closed(request).await }
        })
        .await
        .map(|_| ())
    }

    /// A page of a dialog's history (`limit` `None`: the default page).
    pub async fn get_history(
        &self,
        caller: &Caller,
        dialog_id: i64,
        before_id: Option<i64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, CallError> {
        let message = pb::GetHistoryRequest {
            dialog_id,
            before_message_id: before_id.unwrap_or(0),
            limit: limit.unwrap_or(0),
        };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message);
            async move { client.get_history(request).await }
        })
        .await
        .map(HistoryPage::from)
    }

    /// A page of the dialogs the caller may read.
    pub async fn list_dialogs(
        &self,
        caller: &Caller,
        before_id: Option<i64>,
        limit: Option<u32>,
    ) -> Result<DialogPage, CallError> {
        let message = pb::ListDialogsRequest {
            before_dialog_id: before_id.unwrap_or(0),
            limit: limit.unwrap_or(0),
        };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message);
            async move { client.list_dialogs(request).await }
        })
        .await
        .map(DialogPage::from)
    }

    /// The caller read a dialog up to `message_id`; the other side is told.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        dialog_id: i64,
        message_id: i64,
        handoff_position: u64,
    ) -> Result<(), CallError> {
        let message = pb::MarkReadRequest {
            dialog_id,
            message_id,
            handoff_position,
        };
        self.retried(|| {
            let mut client = self.chat.clone();
            let request = self.request(caller, message);
            async move { client.mark_read(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Adds `amount` (units) to a user's balance (admins); the new balance.
    /// Not retried: a repeat would add it twice.
    pub async fn top_up(
        &self,
        caller: &Caller,
        user_id: i64,
        amount: f64,
    ) -> Result<f64, CallError> {
        let request = self.request(caller, pb::TopUpRequest { user_id, amount });
        self.deadline(self.chat.clone().top_up(request))
            .await
            .map(|balance| balance.balance)
    }

    /// Relays a typing indicator (not retried: a lost one is soon replaced).
    pub async fn typing(
        &self,
        caller: &Caller,
        dialog_id: i64,
        is_typing: bool,
        handoff_position: u64,
    ) -> Result<(), CallError> {
        let request = self.request(
            caller,
            pb::TypingRequest {
                dialog_id,
                is_typing,
                handoff_position,
            },
        );
        self.deadline(self.chat.clone().typing(request))
            .await
            .map(|_| ())
    }
}

/// The idempotency key of a client's `chat_message` frame: a digest of its
/// `id`, its dialog and its text (each length-prefixed, so no two frames
/// share one by accident). The same frame sent again gets the same key; a
/// reused `id` with another text or dialog does not. The chat service scopes
/// keys to the sender.
fn frame_key(id: &str, dialog_id: Option<i64>, text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [
        id.as_bytes(),
        &dialog_id.unwrap_or(0).to_be_bytes(),
        text.as_bytes(),
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    let hash = digest.finalize();
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("frame:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_error(status: Status) -> (ErrorCode, String) {
        CallError(status).client_error()
    }

    /// A service's own code reaches the client; otherwise the gRPC code
    /// decides, and internal detail is not shown.
    #[test]
    fn errors_map_to_stable_codes() {
        let own = chatai_kit::status::with_code(
            Code::NotFound,
            ErrorCode::DialogNotFound,
            "dialog 9 does not exist",
        );
        assert_eq!(
            client_error(own),
            (ErrorCode::DialogNotFound, "dialog 9 does not exist".into())
        );
        let (code, message) = client_error(Status::internal("db password wrong"));
        assert_eq!(code, ErrorCode::InternalError);
        assert!(!message.contains("password"));
        assert_eq!(
            client_error(Status::unavailable("x")).0,
            ErrorCode::ServiceUnavailable
        );
        assert_eq!(client_error(Status::not_found("x")).0, ErrorCode::NotFound);
    }

    /// The same frame gets the same key; another text, dialog or id does not.
    #[test]
    fn frame_keys_follow_the_frame() {
        let key = frame_key("m1", Some(3), "hello");
        assert_eq!(key, frame_key("m1", Some(3), "hello"));
        assert!(key.starts_with("frame:") && key.len() == 38, "{key}");
        assert_ne!(key, frame_key("m1", Some(3), "hello!"));
        assert_ne!(key, frame_key("m1", None, "hello"));
        assert_ne!(key, frame_key("m2", Some(3), "hello"));
        assert_ne!(frame_key("ab", None, "c"), frame_key("a", None, "bc"));
    }
}
