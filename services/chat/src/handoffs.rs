//! What the chat service needs to know from the handoff service, behind a
//! trait: who holds a dialog, asking for an operator, and telling it an
//! operator replied. The gRPC implementation talks to the handoff service;
//! tests use a fake.

use std::time::Duration;

use chatai_kit::grpc::TokenInterceptor;
use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_client::HandoffClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

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

/// The handoff service, as the chat service uses it.
#[async_trait::async_trait]
pub trait Handoffs: Send + Sync + 'static {
    /// Who holds the dialog now, if anyone.
    async fn holder(&self, dialog_id: i64) -> Result<Option<Holder>, HandoffError>;
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
    client: HandoffClient<InterceptedService<Channel, TokenInterceptor>>,
    timeout: Duration,
}

impl GrpcHandoffs {
    /// A lazily connecting client of the handoff service at `addr`.
    pub fn new(
        addr: &chatai_kit::config::ServiceAddr,
        interceptor: TokenInterceptor,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = addr.channel()?;
        Ok(GrpcHandoffs {
            client: HandoffClient::with_interceptor(channel, interceptor),
            timeout: Duration::from_secs(5),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        Caller::service().write_metadata(request.metadata_mut());
        request.set_timeout(self.timeout);
        request
    }
}

#[async_trait::async_trait]
impl Handoffs for GrpcHandoffs {
    async fn holder(&self, dialog_id: i64) -> Result<Option<Holder>, HandoffError> {
        let response = self
            .client
            .clone()
            .get_active_handoff(self.request(pb::GetActiveHandoffRequest { dialog_id }))
            .await?
            .into_inner();
        Ok(response.handoff.map(|handoff| match handoff.operator_id {
            0 => Holder::Queued,
            id => Holder::Operator {
                id,
                name: handoff.operator_name,
            },
        }))
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
    async fn holder(&self, _: i64) -> Result<Option<Holder>, HandoffError> {
        Ok(None)
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
