//! The handoff service, called over gRPC: [`GrpcHandoffs`] implements
//! [`Handoffs`], and [`follow_holders`] keeps the service's [`HolderView`]
//! fed from the handoff service's holder notes. Messages are converted by
//! [`super::from_proto`] and [`super::to_proto`]. Calls go to whichever
//! replica answers: one refused with `UNAVAILABLE` (unreachable, or a
//! standby that is not the leader) is made again on another.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_kit::follow::{Followed, Follower, ServiceChannel};
use chatai_kit::grpc::retry_unavailable;
use chatai_kit::holders;
use chatai_kit::identity::service_request;
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_client::HandoffClient;
use tokio_util::sync::CancellationToken;

use super::from_proto;
use crate::handoffs::{HandoffError, HandoffRecord, Handoffs, Holding, Priority};
use crate::holders::HolderView;

/// Deadline of each call to the handoff service.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How this client introduces itself on the handoff service's stream.
const HELLO_ID: &str = "chat-service";

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
        let response = retry_unavailable(|| {
            let mut client = self.client.clone();
            let request = self.request(pb::GetActiveHandoffRequest { dialog_id });
            async move { client.get_active_handoff(request).await }
        })
        .await?
        .into_inner();
        Ok(response.into())
    }

    async fn request(
        &self,
        dialog_id: i64,
        user_id: i64,
        reason: &str,
        priority: Priority,
    ) -> Result<HandoffRecord, HandoffError> {
        let message = pb::RequestHandoffRequest {
            dialog_id,
            user_id,
            reason: reason.to_owned(),
            priority: pb::Priority::from(priority) as i32,
        };
        // A repeat of one that went through is refused (the dialog has
        // one): never two handoffs.
        retry_unavailable(|| {
            let mut client = self.client.clone();
            let request = self.request(message.clone());
            async move { client.request_handoff(request).await }
        })
        .await?
        .into_inner()
        .try_into()
    }

    async fn operator_replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError> {
        let message = pb::OperatorRepliedRequest {
            dialog_id,
            operator_id,
        };
        retry_unavailable(|| {
            let mut client = self.client.clone();
            let request = self.request(message);
            async move { client.operator_replied(request).await }
        })
        .await?;
        Ok(())
    }
}

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
        let (held, version) = from_proto::held_dialogs(listing);
        self.view.reset(held, version);
        Ok(Followed::Continue)
    }

    async fn event(&mut self, event: pb::Event) -> Followed {
        match from_proto::holder_note(&event) {
            Ok(Some(note)) => self.view.apply(note),
            Ok(None) => {}
            Err(cause) => tracing::warn!(%cause, "ignoring a holder note that does not parse"),
        }
        Followed::Continue
    }

    fn detached(&mut self) {
        self.view.detached();
    }
}
