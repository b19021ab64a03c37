//! The gateway's calls into the services' own APIs: caller identity and trace
//! context in metadata, a deadline on every call, retries where they are
//! safe, and the one mapping from a failed call to an `error` frame.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chatai_kit::identity::Caller;
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_proto::v1::handoff_client::HandoffClient;
use chatai_proto::v1::presence_client::PresenceClient;
use tonic::{Code, Status};

use crate::upstream::ServiceChannel;

/// Clients of the services' APIs.
#[derive(Clone)]
pub struct Services {
    chat: ChatClient<ServiceChannel>,
    handoff: HandoffClient<ServiceChannel>,
    presence: PresenceClient<ServiceChannel>,
    timeout: Duration,
}

impl Services {
    pub fn new(
        chat: ServiceChannel,
        handoff: ServiceChannel,
        presence: ServiceChannel,
        timeout: Duration,
    ) -> Self {
        Services {
            chat: ChatClient::new(chat),
            handoff: HandoffClient::new(handoff),
            presence: PresenceClient::new(presence),
            timeout,
        }
    }

    fn request<T>(&self, caller: &Caller, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        caller.write_metadata(request.metadata_mut());
        request.set_timeout(self.timeout);
        request
    }

    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(response) => Ok(response?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(
                "the service did not answer in time",
            )),
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
    ) -> Result<pb::SendMessageResponse, Status> {
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
        (|| async {
            let request = self.request(caller, message.clone());
            self.deadline(self.chat.clone().send_message(request)).await
        })
        .retry(retry_policy())
        .when(|status: &Status| status.code() == Code::Unavailable)
        .await
    }

    /// Asks for a human operator for the caller's dialog (through the chat
    /// service, which checks the caller owns it).
    pub async fn request_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        reason: String,
        priority: pb::Priority,
    ) -> Result<pb::HandoffRecord, Status> {
        let message = pb::RequestHandoffForDialogRequest {
            dialog_id,
            reason,
            priority: priority as i32,
        };
        let request = self.request(caller, message);
        self.deadline(self.chat.clone().request_handoff(request))
            .await
    }

    /// Whether the caller may see the dialog (for `dialog:{id}` rooms).
    pub async fn check_access(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<pb::CheckAccessResponse, Status> {
        let request = self.request(caller, pb::CheckAccessRequest { dialog_id });
        self.deadline(self.chat.clone().check_access(request)).await
    }

    /// An operator's chosen status.
    pub async fn set_status(
        &self,
        caller: &Caller,
        status: pb::OperatorStatus,
    ) -> Result<pb::OperatorInfo, Status> {
        let message = pb::SetStatusRequest {
            operator_id: caller.id,
            status: status as i32,
        };
        let request = self.request(caller, message);
        self.deadline(self.presence.clone().set_status(request))
            .await
    }

    /// The holding operator ends a handoff.
    pub async fn complete_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        resolution: String,
    ) -> Result<pb::CompleteHandoffResponse, Status> {
        let request = self.request(
            caller,
            pb::CompleteHandoffRequest {
                dialog_id,
                resolution,
            },
        );
        self.deadline(self.handoff.clone().complete_handoff(request))
            .await
    }

    /// Tells the presence service an operator connection opened.
    pub async fn operator_connected(
        &self,
        gateway_id: &str,
        connection: pb::OperatorConnection,
    ) -> Result<(), Status> {
        let message = pb::ConnectionOpenedRequest {
            gateway_id: gateway_id.to_owned(),
            connection: Some(connection),
        };
        let request = self.request(&Caller::service(), message);
        self.deadline(self.presence.clone().connection_opened(request))
            .await
            .map(|_| ())
    }

    /// Tells the presence service an operator connection closed.
    pub async fn operator_disconnected(
        &self,
        gateway_id: &str,
        operator_id: i64,
        connection_id: &str,
    ) -> Result<(), Status> {
        let message = pb::ConnectionClosedRequest {
            gateway_id: gateway_id.to_owned(),
            operator_id,
            connection_id: connection_id.to_owned(),
        };
        let request = self.request(&Caller::service(), message);
        self.deadline(self.presence.clone().connection_closed(request))
            .await
            .map(|_| ())
    }

    /// Relays a typing indicator (not retried: a lost one is soon replaced).
    pub async fn typing(
        &self,
        caller: &Caller,
        dialog_id: i64,
        is_typing: bool,
        handoff_position: u64,
    ) -> Result<(), Status> {
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

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(3)
        .with_jitter()
}

/// The `code` and `message` of the `error` frame for a failed call. Codes
/// set by a service are passed on with its message (written for people);
/// anything else gets a generic code and message, and the detail is logged.
pub fn error_for(status: &Status) -> (String, String) {
    if let Some(code) = error_code(status) {
        return (code.to_owned(), status.message().to_owned());
    }
    let (code, message) = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => (
            "service_unavailable",
            "The service is unavailable; try again",
        ),
        Code::PermissionDenied => ("forbidden", "You may not do that"),
        Code::Unauthenticated => ("unauthorized", "Not authenticated"),
        Code::NotFound => ("not_found", "Not found"),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ("invalid_request", "The request was refused")
        }
        Code::ResourceExhausted => ("rate_limited", "Too many requests; slow down"),
        _ => ("internal_error", "Something went wrong on our side"),
    };
    tracing::warn!(grpc_code = ?status.code(), cause = %status.message(), "service call failed");
    (code.to_owned(), message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's own code reaches the client; otherwise the gRPC code
    /// decides, and internal detail is not shown.
    #[test]
    fn errors_map_to_stable_codes() {
        let own = chatai_kit::status::with_code(
            Code::NotFound,
            chatai_kit::error_code::ErrorCode::DialogNotFound,
            "dialog 9 does not exist",
        );
        assert_eq!(
            error_for(&own),
            ("dialog_not_found".into(), "dialog 9 does not exist".into())
        );
        let (code, message) = error_for(&Status::internal("db password wrong"));
        assert_eq!(code, "internal_error");
        assert!(!message.contains("password"));
        assert_eq!(
            error_for(&Status::unavailable("x")).0,
            "service_unavailable"
        );
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
