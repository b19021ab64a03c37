//! The notification service's domain logic: who may notify, what a
//! notification may look like, storing connection events, and the analytics
//! pushed to admins. The gRPC adapter only decodes wire types; everything
//! here authorizes first, then validates.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::identity::{Caller, Role};
use chatai_kit::lease::Lease;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::analytics::{Change, GatewayReport, Metrics, Pushed, Reports};
use crate::error::NotificationError;
use crate::events::{AnalyticsUpdate, SystemAlert};
use crate::store::{ConnectionEvent, ConnectionKind, ConnectionStats, NotificationStore};

/// The largest `Notify` body, in bytes of JSON text.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Frame types only the gateway itself sends: a notification of one of these
/// would pass for the server's answer to a client request.
pub const RESERVED_TYPES: [&str; 4] = ["ack", "error", "connected", "heartbeat_ack"];
/// Fields the gateway writes on every event frame; a body repeating one would
/// produce a frame with the key twice, and a client might read either.
pub const ENVELOPE_FIELDS: [&str; 4] = ["type", "timestamp", "event_id", "cursor"];
/// The longest `system_alert` message, in characters.
pub const MAX_ALERT_CHARS: usize = 2_000;
/// At most this many `affected_services`, each at most this long.
pub const MAX_AFFECTED_SERVICES: usize = 32;
pub const MAX_SERVICE_NAME_CHARS: usize = 64;
/// The most connection events in one `RecordConnections` call (a gateway
/// sends at most 500).
pub const MAX_CONNECTION_EVENTS: usize = 1_000;
/// The longest connection or gateway id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// The longest a gateway report may stay valid.
pub const MAX_REPORT_TTL: Duration = Duration::from_secs(3_600);
/// Old connection events deleted per statement while trimming.
const TRIM_BATCH: u32 = 10_000;

/// The analytics pusher's lease: `"chatnote"` in ASCII (the handoff
/// leader's is `"chathand"`).
pub const ANALYTICS_LOCK_KEY: i64 = 0x6368_6174_6e6f_7465;

/// How often a standby pusher tries the lease, and the pusher checks it.
const LEASE_POLL: Duration = Duration::from_secs(1);

const ADMIN_OR_SERVICE: &[Role] = &[Role::Admin, Role::Service];
const SERVICE_ONLY: &[Role] = &[Role::Service];

/// How serious a `system_alert` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// Reads `info`, `warning` or `critical`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A delivered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notified {
    pub event_id: String,
    /// Position in the recipient's log; 0 for a live-only recipient.
    pub position: u64,
}

/// The notification service. Cheap to clone.
#[derive(Clone)]
pub struct NotificationService {
    store: Arc<dyn NotificationStore>,
    log: Arc<dyn EventLog>,
    reports: Arc<Reports>,
    /// The connection statistics of the analytics window, as last read by
    /// the analytics push (so `GetAnalytics` costs no query).
    connections: Arc<Mutex<ConnectionStats>>,
    /// The window of those statistics.
    window: Duration,
}

impl NotificationService {
    /// The service on `store` and `log`, with connection metrics over the
    /// last `window`.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        log: Arc<dyn EventLog>,
        window: Duration,
    ) -> Self {
        NotificationService {
            store,
            log,
            reports: Arc::new(Reports::default()),
            connections: Arc::new(Mutex::new(ConnectionStats::default())),
            window,
        }
    }

    /// Delivers an event of type `kind` with the JSON object `body_json` to
    /// `recipient`: durably (with a position) to a user or an operator, live
    /// otherwise. Admins and internal services only.
    #[tracing::instrument(skip_all, fields(caller = caller.id, role = %caller.role, %recipient, kind))]
    pub async fn notify(
        &self,
        caller: &Caller,
        recipient: Recipient,
        kind: &str,
        body_json: &str,
    ) -> Result<Notified, NotificationError> {
        require(caller, ADMIN_OR_SERVICE, "send notifications")?;
        if !is_frame_type(kind) {
            return Err(NotificationError::InvalidType);
        }
        tracing::Span::current().record("kind", kind);
        if RESERVED_TYPES.contains(&kind) {
            return Err(NotificationError::ReservedType(kind.to_owned()));
        }
        let body = parse_body(body_json)?;
        let event = Event::new(kind, &body)?.with_origin(None);
        let event_id = event.id.clone();
        let position = self.log.deliver(recipient, Arc::new(event)).await?;
        tracing::info!(%event_id, position, "notification delivered");
        Ok(Notified { event_id, position })
    }

    /// Sends a `system_alert` to every connected client (live); returns its
    /// event id. Admins and internal services only.
    #[tracing::instrument(skip_all, fields(caller = caller.id, role = %caller.role, severity))]
    pub async fn system_alert(
        &self,
        caller: &Caller,
        severity: &str,
        message: &str,
        affected_services: &[String],
    ) -> Result<String, NotificationError> {
        require(caller, ADMIN_OR_SERVICE, "send system alerts")?;
        let severity = Severity::parse(severity).ok_or(NotificationError::InvalidSeverity)?;
        tracing::Span::current().record("severity", severity.as_str());
        if message.trim().is_empty() {
            return Err(NotificationError::EmptyAlert);
        }
        if message.chars().count() > MAX_ALERT_CHARS {
            return Err(NotificationError::AlertTooLong {
                max: MAX_ALERT_CHARS,
            });
        }
        let bad_name =
            |name: &String| name.trim().is_empty() || name.chars().count() > MAX_SERVICE_NAME_CHARS;
        if affected_services.len() > MAX_AFFECTED_SERVICES || affected_services.iter().any(bad_name)
        {
            return Err(NotificationError::InvalidAffectedServices {
                max: MAX_AFFECTED_SERVICES,
                max_len: MAX_SERVICE_NAME_CHARS,
            });
        }
        let body = SystemAlert {
            severity: severity.as_str(),
            message,
            affected_services,
        };
        let event = Event::new("system_alert", &body)?.with_origin(None);
        let event_id = event.id.clone();
        self.log
            .deliver(Recipient::Everyone, Arc::new(event))
            .await?;
        tracing::info!(%event_id, "system alert sent");
        Ok(event_id)
    }

    /// Stores a gateway's connection events, all or none. Internal services
    /// (gateways) only.
    #[tracing::instrument(skip_all, fields(caller = caller.id, role = %caller.role, events = events.len()))]
    pub async fn record_connections(
        &self,
        caller: &Caller,
        events: &[ConnectionEvent],
    ) -> Result<(), NotificationError> {
        require(caller, SERVICE_ONLY, "record connection events")?;
        if events.len() > MAX_CONNECTION_EVENTS {
            return Err(NotificationError::TooManyConnectionEvents {
                max: MAX_CONNECTION_EVENTS,
            });
        }
        for (index, event) in events.iter().enumerate() {
            check_connection_event(event)
                .map_err(|reason| NotificationError::InvalidConnectionEvent { index, reason })?;
        }
        self.store.record_connections(events).await?;
        Ok(())
    }

    /// Keeps `report` as its gateway's latest until its ttl runs out.
    /// Internal services (gateways) only.
    #[tracing::instrument(skip_all, fields(caller = caller.id, role = %caller.role, gateway_id = %report.gateway_id))]
    pub fn report_gateway(
        &self,
        caller: &Caller,
        report: GatewayReport,
    ) -> Result<(), NotificationError> {
        require(caller, SERVICE_ONLY, "report gateway counts")?;
        if report.gateway_id.is_empty() || report.gateway_id.chars().count() > MAX_ID_CHARS {
            return Err(NotificationError::InvalidReport(
                "gateway_id must have 1 to 128 characters",
            ));
        }
        if report.ttl.is_zero() || report.ttl > MAX_REPORT_TTL {
            return Err(NotificationError::InvalidReport(
                "ttl_seconds must be between 1 and 3600",
            ));
        }
        self.reports.record(report, Instant::now());
        Ok(())
    }

    /// The metrics as they stand now (what the next push compares against).
    /// Admins and internal services only.
    #[tracing::instrument(skip_all, fields(caller = caller.id, role = %caller.role))]
    pub fn analytics(&self, caller: &Caller) -> Result<Metrics, NotificationError> {
        require(caller, ADMIN_OR_SERVICE, "read analytics")?;
        Ok(self.metrics())
    }

    /// The gateways' live sums with the last connection statistics read.
    fn metrics(&self) -> Metrics {
        let connections = *self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Metrics {
            connections,
            ..self.reports.metrics(Instant::now())
        }
    }

    /// Reads the connection statistics of the window ending now; on a
    /// store error keeps the last ones (and says so).
    #[tracing::instrument(skip_all)]
    async fn refresh_connection_stats(&self) {
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let since_ms = chatai_kit::now_ms().saturating_sub(window_ms);
        match self.store.connection_stats(since_ms).await {
            Ok(stats) => {
                *self
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = stats;
            }
            Err(cause) => {
                tracing::warn!(%cause, "connection statistics not read; keeping the last ones");
            }
        }
    }

    /// Every `every`, deletes the connection events older than `retention`,
    /// until `shutdown`. The first round runs at once.
    pub async fn trim_connection_events(
        self,
        retention: Duration,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Its own root span (not a child of a span living until
            // shutdown), marked as background work for the trace sampler.
            let round = tracing::info_span!(
                parent: None,
                "notification.trim_connection_events",
                chatai.background = true,
                deleted = tracing::field::Empty
            );
            let deleted = tokio::select! {
                _ = shutdown.cancelled() => return,
                deleted = self.trim_once(retention).instrument(round.clone()) => deleted,
            };
            round.record("deleted", deleted);
        }
    }

    /// Deletes the events older than `retention`, a batch at a time;
    /// returns how many.
    async fn trim_once(&self, retention: Duration) -> u64 {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let before_ms = chatai_kit::now_ms().saturating_sub(retention_ms);
        let mut deleted = 0;
        loop {
            match self
                .store
                .trim_connection_events(before_ms, TRIM_BATCH)
                .await
            {
                Ok(count) => {
                    deleted += count;
                    if count < u64::from(TRIM_BATCH) {
                        break;
                    }
                }
                Err(cause) => {
                    tracing::warn!(%cause, "old connection events not trimmed; trying again later");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "old connection events trimmed");
        }
        deleted
    }

    /// Pushes the analytics as [`push_analytics`](Self::push_analytics)
    /// does while this replica holds `lease`, standing by while another one
    /// does, until `shutdown`: of several replicas (each holding every
    /// gateway's reports) one pushes, so admins get each change once. A
    /// replica that takes the lease over pushes every metric in its first
    /// round.
    pub async fn push_analytics_while_leading(
        self,
        lease: Lease,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let held = tokio::select! {
                _ = shutdown.cancelled() => return,
                held = lease.acquire(LEASE_POLL) => held,
            };
            tracing::info!("this replica pushes the analytics");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cause = held.lost(LEASE_POLL) => {
                    tracing::warn!(%cause, "the analytics lease was lost; standing by");
                }
                () = self.clone().push_analytics(every, shutdown.clone()) => return,
            }
        }
    }

    /// Every `every`, pushes the metrics that changed to admins, until
    /// `shutdown`. The first round (at once) pushes them all. Each round is
    /// a root span of its own, marked as background work for the sampler.
    pub async fn push_analytics(self, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pushed = Pushed::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let round = tracing::info_span!(
                parent: None,
                "notification.push_analytics",
                chatai.background = true,
                changed = tracing::field::Empty
            );
            self.push_changes(&mut pushed).instrument(round).await;
        }
    }

    /// One round: an `analytics_update` to `Role(Admin)` per changed metric.
    /// A change that could not be delivered is offered again next round.
    async fn push_changes(&self, pushed: &mut Pushed) {
        self.refresh_connection_stats().await;
        let changes = pushed.changes(&self.metrics());
        tracing::Span::current().record("changed", changes.len());
        for change in changes {
            match self.push(&change).await {
                Ok(()) => pushed.pushed(&change),
                Err(cause) => {
                    tracing::warn!(%cause, metric = change.metric, "analytics update not delivered");
                }
            }
        }
    }

    async fn push(&self, change: &Change) -> Result<(), NotificationError> {
        let body = AnalyticsUpdate {
            metric: change.metric,
            value: change.value.to_json(),
            change: change.change.clone(),
        };
        let event = Event::new("analytics_update", &body)?.with_origin(None);
        self.log
            .deliver(Recipient::Role(Role::Admin), Arc::new(event))
            .await?;
        Ok(())
    }
}

/// Refuses `caller` unless its role is one of `allowed`.
fn require(
    caller: &Caller,
    allowed: &[Role],
    action: &'static str,
) -> Result<(), NotificationError> {
    if allowed.contains(&caller.role) {
        Ok(())
    } else {
        Err(NotificationError::Forbidden {
            role: caller.role,
            action,
        })
    }
}

/// `^[a-z][a-z0-9_]{0,63}$`.
fn is_frame_type(kind: &str) -> bool {
    let bytes = kind.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// A `Notify` body: a JSON object of at most [`MAX_BODY_BYTES`] that sets
/// none of the [`ENVELOPE_FIELDS`].
fn parse_body(
    body_json: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, NotificationError> {
    if body_json.len() > MAX_BODY_BYTES {
        return Err(NotificationError::BodyTooLarge {
            max: MAX_BODY_BYTES,
        });
    }
    let serde_json::Value::Object(body) =
        serde_json::from_str(body_json).map_err(NotificationError::BodyNotJson)?
    else {
        return Err(NotificationError::BodyNotObject);
    };
    if let Some(field) = ENVELOPE_FIELDS.iter().find(|f| body.contains_key(**f)) {
        return Err(NotificationError::ReservedField((*field).to_owned()));
    }
    Ok(body)
}

/// Why a connection event cannot be stored, if it cannot.
fn check_connection_event(event: &ConnectionEvent) -> Result<(), &'static str> {
    let id_ok = |id: &str| !id.is_empty() && id.chars().count() <= MAX_ID_CHARS;
    if !id_ok(&event.connection_id) {
        return Err("connection_id must have 1 to 128 characters");
    }
    if !id_ok(&event.gateway_id) {
        return Err("gateway_id must have 1 to 128 characters");
    }
    if event.role == Role::Service {
        return Err("role must be user, operator or admin");
    }
    if event.at_ms < 0 {
        return Err("at_ms is negative");
    }
    match event.kind {
        ConnectionKind::Connect if event.duration_ms.is_some() || event.close_code.is_some() => {
            Err("a connect has no duration_ms or close_code")
        }
        ConnectionKind::Disconnect if event.duration_ms.is_some_and(|ms| ms < 0) => {
            Err("duration_ms is negative")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame types are snake_case ASCII of 1 to 64 characters.
    #[test]
    fn frame_types() {
        for good in ["a", "promo_offer", "x1_2", &"a".repeat(64)] {
            assert!(is_frame_type(good), "{good}");
        }
        for bad in [
            "",
            "Promo",
            "1abc",
            "_a",
            "a-b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_frame_type(bad), "{bad}");
        }
    }

    /// Bodies must be JSON objects within the size limit, without envelope fields.
    #[test]
    fn bodies() {
        assert!(parse_body(r#"{"title":"Hi"}"#).is_ok());
        assert!(parse_body("{}").is_ok());
        assert!(matches!(
            parse_body("[1]"),
            Err(NotificationError::BodyNotObject)
        ));
        assert!(matches!(
            parse_body("nope"),
            Err(NotificationError::BodyNotJson(_))
        ));
        assert!(matches!(
            parse_body(r#"{"type":"ack"}"#),
            Err(NotificationError::ReservedField(f)) if f == "type"
        ));
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_BODY_BYTES));
        assert!(matches!(
            parse_body(&big),
            Err(NotificationError::BodyTooLarge { .. })
        ));
    }

    fn event(kind: ConnectionKind) -> ConnectionEvent {
        ConnectionEvent {
            connection_id: "gw:1".into(),
            gateway_id: "gw".into(),
            role: Role::User,
            principal_id: 1,
            kind,
            at_ms: 1,
            duration_ms: None,
            close_code: None,
        }
    }

    /// Connects carry no duration or close code; disconnects no negative duration.
    #[test]
    fn connection_event_rules() {
        assert!(check_connection_event(&event(ConnectionKind::Connect)).is_ok());
        let with_code = ConnectionEvent {
            close_code: Some(1000),
            duration_ms: Some(5),
            ..event(ConnectionKind::Disconnect)
        };
        assert!(check_connection_event(&with_code).is_ok());
        let connect_with_code = ConnectionEvent {
            close_code: Some(1000),
            ..event(ConnectionKind::Connect)
        };
        assert!(check_connection_event(&connect_with_code).is_err());
        let negative = ConnectionEvent {
            duration_ms: Some(-1),
            ..event(ConnectionKind::Disconnect)
        };
        assert!(check_connection_event(&negative).is_err());
        let service = ConnectionEvent {
            role: Role::Service,
            ..event(ConnectionKind::Connect)
        };
        assert!(check_connection_event(&service).is_err());
        let no_id = ConnectionEvent {
            connection_id: String::new(),
            ..event(ConnectionKind::Connect)
        };
        assert!(check_connection_event(&no_id).is_err());
    }
}
