//! The event-stream library: how events get from a service to the gateways
//! that hold their recipients, and how a client catches up after a gap.
//!
//! - A service [`deliver`](EventLog::deliver)s an [`Event`] to a [`Recipient`].
//!   For a user or an operator the event is appended to that recipient's log
//!   at this service, which gives it a position, and published live; for a
//!   room, a role group or everyone it is only published live. The deliveries
//!   one request causes go together with [`deliver_many`](EventLog::deliver_many):
//!   one lock or one Redis round trip for the batch.
//! - Every gateway attaches to every service with one `EventStream.Attach`
//!   stream (`stream::EventStreamService`) and subscribes the recipients it
//!   holds connections for; it receives their events live, several in one
//!   message when several are ready at once (if it accepts batches).
//! - `EventStream.Replay` reads a recipient's log after a position, so a
//!   connection resumes from the cursor its client kept, or from where the
//!   recipient was last seen.
//!
//! Layout:
//! - this file — the domain types and the [`EventLog`] trait (the backend);
//! - [`convert`] — domain ↔ wire types, in one place;
//!
//! and with the `server` feature (services only, not the gateway):
//! - `paging` — the paging rules every backend's `read` follows (where a
//!   replay starts, when it is complete, what a page says), written once;
//! - `memory` — the in-memory backend of the embedded default;
//! - `redis` — the Redis backend (Streams + pub/sub) for production;
//! - `stream` — the `EventStream` gRPC service over any backend;
//! - `metered` — counting a log's appends, replays and failures;
//! - `open` and `trim_until` — opening a service's log (counted), trimming it.

pub mod convert;
#[cfg(feature = "server")]
pub mod memory;
#[cfg(feature = "server")]
mod metered;
#[cfg(feature = "server")]
mod paging;
#[cfg(feature = "server")]
pub mod redis;
#[cfg(feature = "server")]
pub mod stream;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::identity::Role;

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// Every connection of one end user. Durable.
    User(i64),
    /// Every connection of one operator. Durable.
    Operator(i64),
    /// Every member of a room such as `dialog:42`. Live only.
    Room(Arc<str>),
    /// Every connection with this role. Live only.
    Role(Role),
    /// Every connection. Live only.
    Everyone,
}

impl Recipient {
    /// Whether events for this recipient are kept in a log (and so carry a
    /// position and survive disconnects).
    pub fn is_durable(&self) -> bool {
        matches!(self, Recipient::User(_) | Recipient::Operator(_))
    }

    /// The room of a dialog.
    pub fn dialog_room(dialog_id: i64) -> Self {
        Recipient::Room(format!("dialog:{dialog_id}").into())
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::User(id) => write!(f, "user:{id}"),
            Recipient::Operator(id) => write!(f, "operator:{id}"),
            Recipient::Room(room) => write!(f, "room:{room}"),
            Recipient::Role(role) => write!(f, "role:{role}"),
            Recipient::Everyone => f.write_str("everyone"),
        }
    }
}

/// One event, produced once and shared by every delivery of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id (UUID v7), sent to clients as `event_id`.
    pub id: String,
    /// The client frame `type`, e.g. `ai_response`.
    pub kind: String,
    /// The frame's own fields as one serialized JSON object.
    pub body: Bytes,
    /// When it happened, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// W3C trace context of the request that caused it.
    pub trace_context: HashMap<String, String>,
    /// The gateway connection the causing request came from.
    pub origin_connection: Option<String>,
    /// The recipient that also gets this event in its own log: room copies
    /// skip its connections (they have the durable copy).
    pub durable_recipient: Option<Recipient>,
}

impl Event {
    /// A new event of `kind` with `body` (a struct that serializes to a JSON
    /// object), stamped now and with the current trace context.
    pub fn new(kind: &str, body: &impl serde::Serialize) -> Result<Self, EventLogError> {
        let body = serde_json::to_vec(body).map_err(EventLogError::Body)?;
        if body.first() != Some(&b'{') {
            return Err(EventLogError::BodyNotObject);
        }
        Ok(Event {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            body: Bytes::from(body),
            timestamp_ms: crate::now_ms(),
            trace_context: crate::telemetry::current_context_map(),
            origin_connection: None,
            durable_recipient: None,
        })
    }

    /// The same event, marked as caused by a request from `connection`.
    pub fn with_origin(mut self, connection: Option<String>) -> Self {
        self.origin_connection = connection;
        self
    }

    /// The same event, marked as also delivered durably to `recipient`, so
    /// its room copy skips that recipient's connections.
    pub fn with_durable_recipient(mut self, recipient: Option<Recipient>) -> Self {
        self.durable_recipient = recipient;
        self
    }
}

/// An event for one recipient, with its position in that recipient's log
/// (0 for live-only events).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub recipient: Recipient,
    pub position: u64,
    pub event: Arc<Event>,
}

/// Where the generation of a recipient's log that `position` belongs to
/// starts: its first event is at `generation_start(p) + 1`.
///
/// A log that is lost and begins again (a memory log whose service
/// restarted, a Redis that lost its data) starts at a new random base
/// (20 bits, shifted left 32, never 0), so positions of one generation never
/// pass for another's: a reader holding a position of an older generation
/// knows what it missed is gone, and can read the new generation whole from
/// its start.
pub fn generation_start(position: u64) -> u64 {
    position & !u64::from(u32::MAX)
}

/// A fresh, nonzero generation base for a recipient's positions.
#[cfg(feature = "server")]
pub(crate) fn random_base() -> u64 {
    let random = uuid::Uuid::new_v4().as_u128() as u32 & 0x000F_FFFF;
    u64::from(random.max(1)) << 32
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After this position (from a client's cursor).
    After(u64),
    /// After the position delivered when the recipient was last released;
    /// from the start of the log when it never was (its offline queue).
    SinceLastSeen,
}

/// One page of a recipient's log.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// In log order.
    pub deliveries: Vec<Delivery>,
    /// False when events after the start are gone: nothing is returned then,
    /// and live delivery goes on from `next_after`.
    pub complete: bool,
    /// The position the page started after.
    pub start_after: u64,
    /// Where the next page, or live delivery, starts after.
    pub next_after: u64,
    /// More events follow this page.
    pub more: bool,
}

/// How much a log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub retained_events: u64,
    pub recipients: u64,
}

/// Failures of an event log backend.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event body does not serialize: {0}")]
    Body(#[source] serde_json::Error),
    #[error("event body is not a JSON object")]
    BodyNotObject,
    #[error("the event backend is unavailable: {0}")]
    Unavailable(String),
}

impl From<EventLogError> for tonic::Status {
    fn from(err: EventLogError) -> Self {
        match err {
            EventLogError::Unavailable(_) => {
                tracing::warn!(cause = %err, "event backend unavailable");
                tonic::Status::unavailable("event backend unavailable")
            }
            other => {
                tracing::error!(cause = %other, "event could not be built");
                tonic::Status::internal("event could not be built")
            }
        }
    }
}

/// A backend for per-recipient event logs and their live fan-out: memory for
/// the embedded default, Redis for production. Every implementation passes
/// the same conformance suite.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Delivers `event` to `recipient`: appended to the recipient's log and
    /// published live, atomically and in position order, when the recipient
    /// is durable (returns the position); only published otherwise (returns 0).
    async fn deliver(&self, recipient: Recipient, event: Arc<Event>) -> Result<u64, EventLogError>;

    /// Delivers a batch, as [`deliver`](EventLog::deliver) would each pair in
    /// turn: each durable one appended and published atomically, in input
    /// order (so a recipient's positions follow the batch order), live-only
    /// ones published in their place. Returns the positions in input order,
    /// 0 for live-only recipients; an empty batch does nothing.
    ///
    /// Backends do the whole batch at once: `MemoryLog` under one lock,
    /// `RedisLog` in one script call (one round trip); both also publish a
    /// batch contiguously, with no other delivery in between. This default
    /// calls `deliver` once per pair. On an error, part of the batch (a
    /// prefix, for this default) may have been delivered.
    async fn deliver_many(
        &self,
        batch: Vec<(Recipient, Arc<Event>)>,
    ) -> Result<Vec<u64>, EventLogError> {
        let mut positions = Vec::with_capacity(batch.len());
        for (recipient, event) in batch {
            positions.push(self.deliver(recipient, event).await?);
        }
        Ok(positions)
    }

    /// Publishes `event` to `recipient` live only, whatever the recipient:
    /// nothing is logged and it carries no position (typing indicators, say).
    async fn publish(&self, recipient: Recipient, event: Arc<Event>) -> Result<(), EventLogError>;

    /// Reads up to `limit` events of `recipient`'s log from `from`.
    async fn read(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        limit: usize,
    ) -> Result<LogPage, EventLogError>;

    /// Remembers that `recipient`'s connections saw everything up to `position`.
    async fn mark_seen(&self, recipient: &Recipient, position: u64) -> Result<(), EventLogError>;

    /// A receiver of every delivery published from now on, in order.
    fn live(&self) -> broadcast::Receiver<Delivery>;

    /// Drops events older than the retention period.
    async fn trim(&self) -> Result<(), EventLogError>;

    /// Durable events retained and recipients with a log (for health checks;
    /// may walk every log, so not for hot paths).
    async fn stats(&self) -> Result<LogStats, EventLogError>;

    /// Whether the backend is reachable (for health checks).
    async fn ping(&self) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// Opens `service`'s event log: Redis when `common.redis_url` is set (its
/// live relay runs under `supervisor` until shutdown), memory otherwise.
#[cfg(feature = "server")]
pub async fn open(
    common: &crate::config::ServiceCommon,
    service: &str,
    supervisor: &crate::supervisor::Supervisor,
) -> Result<Arc<dyn EventLog>, EventLogError> {
    let shutdown = supervisor.shutdown().clone();
    match &common.redis_url {
        Some(url) => {
            let (log, relay) = redis::RedisLog::connect(
                url,
                &common.redis_prefix,
                service,
                &common.events,
                shutdown,
            )
            .await?;
            supervisor.spawn("event relay", relay);
            tracing::info!(
                service,
                deployment = log.names().deployment(),
                "event log: Redis"
            );
            Ok(Arc::new(metered::Metered::new(
                Arc::new(log),
                service,
                "redis",
            )))
        }
        None => {
            tracing::info!(service, "event log: memory");
            let log = Arc::new(memory::MemoryLog::new(&common.events));
            Ok(Arc::new(metered::Metered::new(log, service, "memory")))
        }
    }
}

/// Trims `log` every minute until `shutdown`.
#[cfg(feature = "server")]
pub async fn trim_until(log: Arc<dyn EventLog>, shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                if let Err(err) = log.trim().await {
                    tracing::warn!(cause = %err, "trimming the event log failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "server")]
    #[test]
    fn generations_start_at_nonzero_multiples_of_two_to_the_32() {
        for _ in 0..1000 {
            let base = random_base();
            assert_ne!(base, 0);
            assert_eq!(generation_start(base), base);
            assert_eq!(generation_start(base + 1), base);
            assert_eq!(generation_start(base + u64::from(u32::MAX)), base);
            assert!(base + u64::from(u32::MAX) < 1 << 53, "exact in Lua");
        }
        assert_eq!(generation_start(0), 0);
    }
}
