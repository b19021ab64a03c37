//! The handoff service's gRPC adapter: wire types in, domain calls, wire
//! types out. The only place `chatai.v1` handoff messages are touched.

use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_server::Handoff;
use tonic::{Request, Response, Status};

use crate::error::HandoffError;
use crate::replica::Current;
use crate::service::{HandoffView, NewRequest};
use crate::store::{HandoffState, Priority};

/// `chatai.v1.Handoff` over the queue this replica leads; a standby answers
/// every call `UNAVAILABLE` ([`HandoffError::NotLeader`]).
pub struct HandoffApi {
    current: Current,
}

impl HandoffApi {
    pub fn new(current: Current) -> Self {
        HandoffApi { current }
    }
}

#[tonic::async_trait]
impl Handoff for HandoffApi {
    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn request_handoff(
        &self,
        request: Request<pb::RequestHandoffRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        let priority = priority_from_wire(request.priority)?;
        let view = self
            .current
            .service()?
            .request(
                &caller,
                NewRequest {
                    dialog_id: request.dialog_id,
                    user_id: request.user_id,
                    reason: request.reason,
                    priority,
                },
            )
            .await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn complete_handoff(
        &self,
        request: Request<pb::CompleteHandoffRequest>,
    ) -> Result<Response<pb::CompleteHandoffResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        let completed = self
            .current
            .service()?
            .complete(&caller, request.dialog_id, &request.resolution)
            .await?;
        Ok(Response::new(pb::CompleteHandoffResponse {
            handoff: Some(completed.view.into()),
            duration_seconds: completed.duration_secs,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn get_active_handoff(
        &self,
        request: Request<pb::GetActiveHandoffRequest>,
    ) -> Result<Response<pb::GetActiveHandoffResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let dialog_id = request.into_inner().dialog_id;
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", dialog_id);
        let holding = self.current.service()?.holding(&caller, dialog_id).await?;
        Ok(Response::new(pb::GetActiveHandoffResponse {
            handoff: holding.view.map(Into::into),
            version: holding.version,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn operator_replied(
        &self,
        request: Request<pb::OperatorRepliedRequest>,
    ) -> Result<Response<pb::OperatorRepliedResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        self.current
            .service()?
            .operator_replied(&caller, request.dialog_id, request.operator_id)
            .await?;
        Ok(Response::new(pb::OperatorRepliedResponse {}))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn list_queue(
        &self,
        request: Request<pb::ListQueueRequest>,
    ) -> Result<Response<pb::ListQueueResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        let listing = self.current.service()?.list(&caller).await?;
        Ok(Response::new(pb::ListQueueResponse {
            queued: listing.queued.into_iter().map(Into::into).collect(),
            assigned: listing.assigned.into_iter().map(Into::into).collect(),
            version: listing.version,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn transfer_handoff(
        &self,
        request: Request<pb::TransferHandoffRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        let to = (request.to_operator_id > 0).then_some(request.to_operator_id);
        let view = self
            .current
            .service()?
            .transfer(&caller, request.dialog_id, to, &request.reason)
            .await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn claim_handoff(
        &self,
        request: Request<pb::ClaimHandoffRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let dialog_id = request.into_inner().dialog_id;
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", dialog_id);
        let view = self.current.service()?.claim(&caller, dialog_id).await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn cancel_handoff(
        &self,
        request: Request<pb::CancelHandoffRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let dialog_id = request.into_inner().dialog_id;
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", dialog_id);
        let view = self.current.service()?.cancel(&caller, dialog_id).await?;
        Ok(Response::new(view.into()))
    }
}

/// Unspecified means normal; numbers the API does not know are refused.
fn priority_from_wire(priority: i32) -> Result<Priority, HandoffError> {
    match pb::Priority::try_from(priority) {
        Ok(pb::Priority::Unspecified) => Ok(Priority::Normal),
        Ok(pb::Priority::Low) => Ok(Priority::Low),
        Ok(pb::Priority::Normal) => Ok(Priority::Normal),
        Ok(pb::Priority::High) => Ok(Priority::High),
        Ok(pb::Priority::Urgent) => Ok(Priority::Urgent),
        Err(_) => Err(HandoffError::UnknownPriority(priority)),
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

impl From<HandoffView> for pb::HandoffRecord {
    fn from(view: HandoffView) -> Self {
        let handoff = view.handoff;
        pb::HandoffRecord {
            handoff_id: handoff.id,
            dialog_id: handoff.dialog_id,
            user_id: handoff.user_id,
            state: pb::HandoffState::from(handoff.state) as i32,
            priority: pb::Priority::from(handoff.priority) as i32,
            reason: handoff.reason,
            operator_id: handoff.operator_id.unwrap_or_default(),
            operator_name: handoff.operator_name.unwrap_or_default(),
            position: view.position,
            estimated_wait_seconds: view.wait_secs.unwrap_or_default(),
            wait_unknown: view.wait_secs.is_none(),
            operators_online: view.operators_online,
            waiting_seconds: view.waiting_secs,
            requested_at_ms: handoff.requested_at_ms,
            assigned_at_ms: handoff.assigned_at_ms.unwrap_or_default(),
            completed_at_ms: handoff.completed_at_ms.unwrap_or_default(),
            resolution: handoff.resolution.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unspecified priority is normal; an unknown number is refused.
    #[test]
    fn priority_defaults_to_normal() {
        assert_eq!(priority_from_wire(0).ok(), Some(Priority::Normal));
        assert_eq!(priority_from_wire(4).ok(), Some(Priority::Urgent));
        assert!(matches!(
            priority_from_wire(9),
            Err(HandoffError::UnknownPriority(9))
        ));
    }
}
