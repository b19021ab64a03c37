//! The notification service's gRPC adapter: wire types in, domain calls,
//! wire types out. The only place `chatai.v1` notification messages are
//! touched. Decoding refuses only what the domain types cannot represent
//! (a missing recipient, an unknown enum); the rules are the service's.

use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::notification_server::Notification;
use tonic::{Request, Response, Status};

use crate::analytics::{GatewayCounts, GatewayReport, Metrics};
use crate::error::NotificationError;
use crate::service::NotificationService;
use crate::store::{ConnectionEvent, ConnectionKind};

/// `chatai.v1.Notification` over a [`NotificationService`].
pub struct NotificationApi {
    service: NotificationService,
}

impl NotificationApi {
    pub fn new(service: NotificationService) -> Self {
        NotificationApi { service }
    }
}

#[tonic::async_trait]
impl Notification for NotificationApi {
    #[tracing::instrument(skip_all, fields(caller))]
    async fn notify(
        &self,
        request: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        let request = request.into_inner();
        let recipient = request
            .recipient
            .as_ref()
            .and_then(|r| Recipient::try_from(r).ok())
            .ok_or(NotificationError::InvalidRecipient)?;
        let notified = self
            .service
            .notify(&caller, recipient, &request.r#type, &request.body_json)
            .await?;
        Ok(Response::new(pb::NotifyResponse {
            event_id: notified.event_id,
            position: notified.position,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn system_alert(
        &self,
        request: Request<pb::SystemAlertRequest>,
    ) -> Result<Response<pb::SystemAlertResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        let request = request.into_inner();
        let event_id = self
            .service
            .system_alert(
                &caller,
                &request.severity,
                &request.message,
                &request.affected_services,
            )
            .await?;
        Ok(Response::new(pb::SystemAlertResponse { event_id }))
    }

    #[tracing::instrument(skip_all, fields(caller, events))]
    async fn record_connections(
        &self,
        request: Request<pb::RecordConnectionsRequest>,
    ) -> Result<Response<pb::RecordConnectionsResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("events", request.events.len());
        let events = request
            .events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                ConnectionEvent::try_from(event)
                    .map_err(|reason| NotificationError::InvalidConnectionEvent { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.service.record_connections(&caller, &events).await?;
        Ok(Response::new(pb::RecordConnectionsResponse {}))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn report_gateway(
        &self,
        request: Request<pb::GatewayReport>,
    ) -> Result<Response<pb::ReportGatewayResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        self.service
            .report_gateway(&caller, request.into_inner().into())?;
        Ok(Response::new(pb::ReportGatewayResponse {}))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn get_analytics(
        &self,
        request: Request<pb::GetAnalyticsRequest>,
    ) -> Result<Response<pb::GetAnalyticsResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        let metrics = self.service.analytics(&caller)?;
        Ok(Response::new(metrics.into()))
    }
}

/// Decodes a wire connection event; the error says what cannot be represented.
impl TryFrom<pb::ConnectionEvent> for ConnectionEvent {
    type Error = &'static str;

    fn try_from(event: pb::ConnectionEvent) -> Result<Self, Self::Error> {
        use pb::connection_event::Kind;
        let role = event
            .role
            .parse()
            .map_err(|_| "role must be user, operator or admin")?;
        let kind = match Kind::try_from(event.kind) {
            Ok(Kind::Connect) => ConnectionKind::Connect,
            Ok(Kind::Disconnect) => ConnectionKind::Disconnect,
            _ => return Err("kind must be connect or disconnect"),
        };
        let close_code = match event.close_code {
            0 => None,
            code => Some(u16::try_from(code).map_err(|_| "close_code is above 65535")?),
        };
        // On the wire a connect carries a zero duration; a disconnect's
        // duration is always meaningful (0 = closed within the millisecond).
        let duration_ms = match (kind, event.duration_ms) {
            (ConnectionKind::Connect, 0) => None,
            (_, ms) => Some(ms),
        };
        Ok(ConnectionEvent {
            connection_id: event.connection_id,
            gateway_id: event.gateway_id,
            role,
            principal_id: event.principal_id,
            kind,
            at_ms: event.at_ms,
            duration_ms,
            close_code,
        })
    }
}

impl From<pb::GatewayReport> for GatewayReport {
    fn from(report: pb::GatewayReport) -> Self {
        GatewayReport {
            gateway_id: report.gateway_id,
            counts: GatewayCounts {
                connections: report.connections,
                users: report.users,
                operators: report.operators,
                admins: report.admins,
                messages_last_minute: report.messages_last_minute,
            },
            ttl: Duration::from_secs(u64::from(report.ttl_seconds)),
        }
    }
}

impl From<Metrics> for pb::GetAnalyticsResponse {
    fn from(metrics: Metrics) -> Self {
        pb::GetAnalyticsResponse {
            metrics: metrics
                .named()
                .into_iter()
                .map(|(name, value)| pb::Metric {
                    name: name.to_owned(),
                    value: value.as_f64(),
                })
                .collect(),
        }
    }
}
