//! What an operator sees of a dialog when it is assigned to them: the
//! dialog's last messages (20 at most, 16 KiB at most, including what the
//! user wrote while waiting), read from the chat service and put in the
//! operator's `operator_assigned` as `transcript`.
//!
//! [`Transcripts`] is the seam (the queue's tests give a fixed one);
//! [`ChatTranscripts`] reads `Chat/GetHistory` as a service, with a short
//! deadline: an assignment never waits long for it, and without an answer
//! the event goes out without a transcript (the rest is a `get_history`
//! away). [`NoTranscripts`] is for deployments without a chat service.

use std::time::Duration;

use chatai_kit::config::{InternalAuth, ServiceTarget};
use chatai_kit::grpc::ServiceChannel;
use chatai_kit::identity::service_request;
use chatai_kit::timestamps::timestamp_of;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use serde::Serialize;

/// Messages in a transcript, at most.
pub const MAX_MESSAGES: u32 = 20;
/// A transcript's JSON, at most (the oldest messages are left out first).
pub const MAX_BYTES: usize = 16 * 1024;
/// How long an assignment waits for the chat service.
const DEADLINE: Duration = Duration::from_secs(1);

/// One message, in the shape of a `get_history` page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TranscriptMessage {
    pub message_id: i64,
    /// `user`, `assistant` or `operator`.
    pub sender: &'static str,
    /// The user's or operator's id; `null` for the assistant.
    pub sender_id: Option<i64>,
    pub message: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// Where transcripts come from.
#[async_trait::async_trait]
pub trait Transcripts: Send + Sync + 'static {
    /// The last messages of `dialog_id`, oldest first, within
    /// [`MAX_MESSAGES`] and [`MAX_BYTES`]; `None` when they cannot be read
    /// now (logged).
    async fn last_messages(&self, dialog_id: i64) -> Option<Vec<TranscriptMessage>>;
}

/// No transcripts (no chat service to read them from).
#[derive(Debug, Default)]
pub struct NoTranscripts;

#[async_trait::async_trait]
impl Transcripts for NoTranscripts {
    async fn last_messages(&self, _: i64) -> Option<Vec<TranscriptMessage>> {
        None
    }
}

/// Transcripts read from the chat service.
#[derive(Debug, Clone)]
pub struct ChatTranscripts {
    chat: ChatClient<ServiceChannel>,
}

impl ChatTranscripts {
    /// A lazily connecting client of the chat service at `addr`.
    pub fn new(addr: &ServiceTarget, auth: &InternalAuth) -> Result<Self, tonic::transport::Error> {
        Ok(ChatTranscripts {
            chat: ChatClient::new(chatai_kit::grpc::service_channel(
                addr,
                auth,
                crate::metrics::SERVICE,
            )?),
        })
    }
}

#[async_trait::async_trait]
impl Transcripts for ChatTranscripts {
    async fn last_messages(&self, dialog_id: i64) -> Option<Vec<TranscriptMessage>> {
        let request = service_request(
            pb::GetHistoryRequest {
                dialog_id,
                before_message_id: 0,
                limit: MAX_MESSAGES,
            },
            Some(DEADLINE),
        );
        let answer = tokio::time::timeout(DEADLINE, self.chat.clone().get_history(request)).await;
        match answer {
            Ok(Ok(history)) => Some(bounded(
                history
                    .into_inner()
                    .messages
                    .iter()
                    .map(TranscriptMessage::from)
                    .collect(),
            )),
            Ok(Err(status)) => {
                tracing::warn!(dialog_id, cause = %status, "no transcript: the chat service refused");
                None
            }
            Err(_) => {
                tracing::warn!(
                    dialog_id,
                    "no transcript: the chat service did not answer in time"
                );
                None
            }
        }
    }
}

impl From<&pb::ChatMessage> for TranscriptMessage {
    fn from(message: &pb::ChatMessage) -> Self {
        let sender = match pb::Sender::try_from(message.sender) {
            Ok(pb::Sender::User) => "user",
            Ok(pb::Sender::Operator) => "operator",
            _ => "assistant",
        };
        TranscriptMessage {
            message_id: message.message_id,
            sender,
            sender_id: (sender != "assistant").then_some(message.sender_id),
            message: message.text.clone(),
            timestamp: timestamp_of(message.created_at_ms),
        }
    }
}

/// The newest messages (oldest first) whose JSON fits [`MAX_BYTES`]; a
/// single message larger than that is left out too.
pub fn bounded(mut messages: Vec<TranscriptMessage>) -> Vec<TranscriptMessage> {
    let mut kept = 0;
    let mut size: usize = 2; // the brackets
    for message in messages.iter().rev() {
        let one = serde_json::to_vec(message).map_or(usize::MAX, |json| json.len() + 1);
        if size.saturating_add(one) > MAX_BYTES {
            break;
        }
        size += one;
        kept += 1;
    }
    messages.drain(..messages.len() - kept);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, text: &str) -> TranscriptMessage {
        TranscriptMessage {
            message_id: id,
            sender: "user",
            sender_id: Some(5),
            message: text.to_owned(),
            timestamp: "2026-11-29T12:00:00Z".into(),
        }
    }

    /// The newest messages that fit 16 KiB are kept, oldest first; what fits
    /// is kept whole.
    #[test]
    fn a_transcript_keeps_the_newest_that_fit() {
        let small: Vec<_> = (1..=3).map(|id| message(id, "hi")).collect();
        assert_eq!(bounded(small.clone()), small);

        let big = "x".repeat(6000);
        let messages: Vec<_> = (1..=5).map(|id| message(id, &big)).collect();
        let kept = bounded(messages);
        assert_eq!(
            kept.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let json = serde_json::to_vec(&kept).expect("serializes");
        assert!(json.len() <= MAX_BYTES, "{}", json.len());

        let huge = vec![message(1, &"y".repeat(MAX_BYTES))];
        assert!(bounded(huge).is_empty());
    }

    /// Wire messages read in the history shape: the assistant has no id.
    #[test]
    fn wire_messages_read_in_the_history_shape() {
        let wire = pb::ChatMessage {
            message_id: 9,
            dialog_id: 1,
            sender: pb::Sender::Assistant as i32,
            sender_id: 0,
            text: "Hello".into(),
            tokens_used: 3,
            created_at_ms: 1_700_000_000_123,
        };
        let read = TranscriptMessage::from(&wire);
        assert_eq!(read.sender, "assistant");
        assert_eq!(read.sender_id, None);
        assert_eq!(read.timestamp, "2023-11-14T22:13:20.123Z");
    }
}
