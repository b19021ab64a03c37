//! What the chat service needs to know from the handoff service, behind a
//! trait: who holds a dialog, asking for an operator, and telling it an
//! operator replied. The gRPC implementation talks to the handoff service;
//! tests use a fake. [`follow_holders`] keeps the service's
//! [`HolderView`] fed from the handoff service's holder notes.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_kit::follow::{Followed, Follower, ServiceChannel};
use chatai_kit::holders::{self, HeldBy, HolderNote};
use chatai_kit::identity::service_request;
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_client::HandoffClient;
use tokio_util::sync::CancellationToken;

use crate::holders::HolderView;

/// A dialog's active handoff, as the chat service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Waiting in the queue: nobody answers but the assistant stays quiet.
    Queued,
    /// Held by this operator.
    Operator { id: i64, name: String },
}

/// Why the handoff service could not answer.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// It refused the request, with the status to pass on to the client.
    #[error("handoff service refused: {0}")]
    Refused(tonic::Status),
    /// It could not be reached in time.
    #[error("handoff service unavailable: {0}")]
    Unavailable(tonic::Status),
}

impl From<tonic::Status> for HandoffError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => HandoffError::Unavailable(status),
            _ => HandoffError::Refused(status),
        }
    }
}

/// Who holds a dialog, as of a holder version ([`chatai_kit::holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub holder: Option<Holder>,
    pub version: u64,
}

/// The handoff service, as the chat service uses it.
#[async_trait::async_trait]
pub trait Handoffs: Send + Sync + 'static {
    /// Who holds the dialog now, if anyone.
    async fn holding(&self, dialog_id: i64) -> Result<Holding, HandoffError>;
    /// Asks for a human operator for the user's dialog.
    async fn request(
        &self,
        dialog_id: i64,
        user_id: i64,
        reason: &str,
        priority: pb::Priority,
    ) -> Result<pb::HandoffRecord, HandoffError>;
    /// The holding operator replied (stops the handoff's no-reply timer).
    async fn operator_replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError>;
}

/// [`Handoffs`] over gRPC.
#[derive(Clone)]
pub struct GrpcHandoffs {
    client: HandoffClient<ServiceChannel>,
}

impl GrpcHandoffs {
    /// A client of the handoff service on `channel` (lazily connecting).
    pub fn new(channel: ServiceChannel) -> Self {
        GrpcHandoffs {
            client: HandoffClient::new(channel),
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        service_request(message, Some(CALL_TIMEOUT))
    }
}

#[async_trait::async_trait]
impl Handoffs for GrpcHandoffs {
    async fn holding(&self, dialog_id: i64) -> Result<Holding, HandoffError> {
        let response = self
            .client
            .clone()
            .get_active_handoff(self.request(pb::GetActiveHandoffRequest { dialog_id }))
            .await?
            .into_inner();
        Ok(Holding {
            holder: response.handoff.map(|handoff| match handoff.operator_id {
                0 => Holder::Queued,
                id => Holder::Operator {
                    id,
                    name: handoff.operator_name,
                },
            }),
            version: response.version,
        })
    }

    async fn request(
        &self,
        dialog_id: i64,
        user_id: i64,
        reason: &str,
        priority: pb::Priority,
    ) -> Result<pb::HandoffRecord, HandoffError> {
        let message = pb::RequestHandoffRequest {
            dialog_id,
            user_id,
            reason: reason.to_owned(),
            priority: priority as i32,
        };
        Ok(self
            .client
            .clone()
            .request_handoff(self.request(message))
            .await?
            .into_inner())
    }

    async fn operator_replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError> {
        let message = pb::OperatorRepliedRequest {
            dialog_id,
            operator_id,
        };
        self.client
            .clone()
            .operator_replied(self.request(message))
            .await?;
        Ok(())
    }
}

/// No handoff service: nothing is ever handed off (for tests of the
/// assistant path, and deployments without operators).
#[derive(Debug, Default, Clone)]
pub struct NoHandoffs;

#[async_trait::async_trait]
impl Handoffs for NoHandoffs {
    async fn holding(&self, _: i64) -> Result<Holding, HandoffError> {
        Ok(Holding {
            holder: None,
            version: 0,
        })
    }

    async fn request(
        &self,
        _: i64,
        _: i64,
        _: &str,
        _: pb::Priority,
    ) -> Result<pb::HandoffRecord, HandoffError> {
        Err(HandoffError::Refused(tonic::Status::unimplemented(
            "no handoff service",
        )))
    }

    async fn operator_replied(&self, _: i64, _: i64) -> Result<(), HandoffError> {
        Ok(())
    }
}

/// Deadline of each call to the handoff service.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How this client introduces itself on the handoff service's stream.
const HELLO_ID: &str = "chat-service";

/// Feeds `view` from the handoff service's holder notes until `shutdown`:
/// its listing after each attach, then every note.
pub async fn follow_holders(
    channel: ServiceChannel,
    view: Arc<HolderView>,
    shutdown: CancellationToken,
) {
    let mut follower = HolderFollower {
        client: HandoffClient::new(channel.clone()),
        view,
    };
    chatai_kit::follow::follow(
        channel,
        HELLO_ID,
        "handoff",
        Recipient::Room(holders::ROOM.into()),
        &mut follower,
        shutdown,
    )
    .await;
}

struct HolderFollower {
    client: HandoffClient<ServiceChannel>,
    view: Arc<HolderView>,
}

#[async_trait::async_trait]
impl Follower for HolderFollower {
    async fn snapshot(&mut self) -> Result<Followed, tonic::Status> {
        let listing = self
            .client
            .list_queue(service_request(pb::ListQueueRequest {}, Some(CALL_TIMEOUT)))
            .await?
            .into_inner();
        let queued = listing
            .queued
            .iter()
            .map(|handoff| (handoff.dialog_id, HeldBy::Queued));
        let assigned = listing.assigned.into_iter().map(|handoff| {
            let holder = HeldBy::Operator {
                operator_id: handoff.operator_id,
                operator_name: handoff.operator_name,
            };
            (handoff.dialog_id, holder)
        });
        self.view
            .reset(queued.chain(assigned).collect(), listing.version);
        Ok(Followed::Continue)
    }

    async fn event(&mut self, event: pb::Event) -> Followed {
        if event.r#type != holders::KIND {
            return Followed::Continue;
        }
        match serde_json::from_slice::<HolderNote>(&event.body) {
            Ok(note) => self.view.apply(note),
            Err(cause) => tracing::warn!(%cause, "ignoring a holder note that does not parse"),
        }
        Followed::Continue
    }

    fn detached(&mut self) {
        self.view.detached();
    }
}
