//! The presence service's gRPC adapter: wire types in, domain calls, wire
//! types out. The only place `chatai.v1` presence messages are touched.

use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::presence_server::Presence;
use tonic::{Request, Response, Status as GrpcStatus};

use crate::model::{ChosenStatus, Connection, OperatorView, ReportOrder, Status};
use crate::service::PresenceService;

/// `chatai.v1.Presence` over a [`PresenceService`].
pub struct PresenceApi {
    service: PresenceService,
}

impl PresenceApi {
    pub fn new(service: PresenceService) -> Self {
        PresenceApi { service }
    }
}

/// Reads the caller and records it on the handler's span.
fn caller<T>(request: &Request<T>) -> Result<Caller, GrpcStatus> {
    let caller = Caller::from_metadata(request.metadata())?;
    let span = tracing::Span::current();
    span.record("caller_id", caller.id);
    span.record("caller_role", caller.role.as_str());
    Ok(caller)
}

#[tonic::async_trait]
impl Presence for PresenceApi {
    #[tracing::instrument(skip_all, fields(caller_id, caller_role, gateway_id, operator_id))]
    async fn connection_opened(
        &self,
        request: Request<pb::ConnectionOpenedRequest>,
    ) -> Result<Response<pb::OperatorInfo>, GrpcStatus> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = tracing::Span::current();
        span.record("gateway_id", request.gateway_id.as_str());
        if let Some(connection) = &request.connection {
            span.record("operator_id", connection.operator_id);
        }
        let view = self
            .service
            .connection_opened(
                &caller,
                request.gateway_id,
                request.connection.map(Connection::from),
                order(request.order),
            )
            .await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role, gateway_id, operator_id))]
    async fn connection_closed(
        &self,
        request: Request<pb::ConnectionClosedRequest>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = tracing::Span::current();
        span.record("gateway_id", request.gateway_id.as_str());
        span.record("operator_id", request.operator_id);
        // The gateway's own map says whose connection it was; the operator
        // id in the request is only logged.
        self.service
            .connection_closed(
                &caller,
                request.gateway_id,
                request.connection_id,
                order(request.order),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role, gateway_id, connections))]
    async fn refresh_connections(
        &self,
        request: Request<pb::RefreshConnectionsRequest>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = tracing::Span::current();
        span.record("gateway_id", request.gateway_id.as_str());
        span.record("connections", request.connections.len());
        self.service
            .refresh_connections(
                &caller,
                request.gateway_id,
                request
                    .connections
                    .into_iter()
                    .map(Connection::from)
                    .collect(),
                request.ttl_seconds,
                order(request.order),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role, operator_id))]
    async fn set_status(
        &self,
        request: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::OperatorInfo>, GrpcStatus> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        tracing::Span::current().record("operator_id", request.operator_id);
        let view = self
            .service
            .set_status(&caller, request.operator_id, chosen(request.status))
            .await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role, operator_id))]
    async fn set_load(
        &self,
        request: Request<pb::SetLoadRequest>,
    ) -> Result<Response<pb::OperatorInfo>, GrpcStatus> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        tracing::Span::current().record("operator_id", request.operator_id);
        let view = self
            .service
            .set_load(&caller, request.operator_id, request.active_handoffs)
            .await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role, operator_id))]
    async fn get_operator(
        &self,
        request: Request<pb::GetOperatorRequest>,
    ) -> Result<Response<pb::OperatorInfo>, GrpcStatus> {
        let caller = caller(&request)?;
        let operator_id = request.into_inner().operator_id;
        tracing::Span::current().record("operator_id", operator_id);
        let view = self.service.get_operator(&caller, operator_id).await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(caller_id, caller_role))]
    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, GrpcStatus> {
        let caller = caller(&request)?;
        let listing = self.service.list_operators(&caller).await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: listing
                .operators
                .into_iter()
                .map(pb::OperatorInfo::from)
                .collect(),
            version: listing.version,
        }))
    }
}

/// A report's place among its gateway's others; `None` when the gateway
/// does not order its reports.
fn order(order: Option<pb::ReportOrder>) -> Option<ReportOrder> {
    order
        .filter(|order| order.incarnation != 0)
        .map(|order| ReportOrder {
            incarnation: order.incarnation,
            sequence: order.sequence,
        })
}

/// A wire status an operator may choose; `None` for unspecified, offline
/// or an unknown value.
fn chosen(status: i32) -> Option<ChosenStatus> {
    match pb::OperatorStatus::try_from(status).ok()? {
        pb::OperatorStatus::Available => Some(ChosenStatus::Available),
        pb::OperatorStatus::Busy => Some(ChosenStatus::Busy),
        pb::OperatorStatus::Away => Some(ChosenStatus::Away),
        pb::OperatorStatus::Unspecified | pb::OperatorStatus::Offline => None,
    }
}

impl From<Status> for pb::OperatorStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Available => pb::OperatorStatus::Available,
            Status::Busy => pb::OperatorStatus::Busy,
            Status::Away => pb::OperatorStatus::Away,
            Status::Offline => pb::OperatorStatus::Offline,
        }
    }
}

impl From<pb::OperatorConnection> for Connection {
    fn from(connection: pb::OperatorConnection) -> Self {
        Connection {
            operator_id: connection.operator_id,
            connection_id: connection.connection_id,
            name: connection.name,
        }
    }
}

impl From<OperatorView> for pb::OperatorInfo {
    fn from(view: OperatorView) -> Self {
        pb::OperatorInfo {
            operator_id: view.operator_id,
            status: pb::OperatorStatus::from(view.status) as i32,
            chosen_status: pb::OperatorStatus::from(Status::from(view.chosen_status)) as i32,
            online: view.online,
            active_handoffs: view.active_handoffs,
            max_handoffs: view.max_handoffs,
            connections: view.connections,
            name: view.name,
            since_ms: view.since_ms,
            version: view.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only available, busy and away can be chosen.
    #[test]
    fn chosen_statuses() {
        use pb::OperatorStatus as W;
        assert_eq!(chosen(W::Available as i32), Some(ChosenStatus::Available));
        assert_eq!(chosen(W::Busy as i32), Some(ChosenStatus::Busy));
        assert_eq!(chosen(W::Away as i32), Some(ChosenStatus::Away));
        assert_eq!(chosen(W::Offline as i32), None);
        assert_eq!(chosen(W::Unspecified as i32), None);
        assert_eq!(chosen(42), None);
    }
}
