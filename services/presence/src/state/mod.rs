//! Where the presence state lives: each operator's record, each gateway's
//! reported connections, the timers (grace periods, leases) and the version
//! clock. [`StateStore`] is the seam; [`memory::MemoryState`] keeps it in the
//! process (the one-process default), [`redis::RedisState`] in Redis, shared
//! by every presence replica and kept across their restarts.
//!
//! The stores only keep records: what a report *does* is decided once, in
//! `rules`, for both. One change is a read, a decision and a commit:
//! 1. the actor reads the records the change needs, each with its revision
//!    (a gateway first, then the operators it names), and the version clock;
//! 2. `rules` decides, on those copies, what changes and which announcements
//!    it makes (with their versions);
//! 3. [`StateStore::commit`] applies the writes only if no record read has
//!    changed since, nor the clock when versions were handed out — atomically
//!    (one lock in memory, one Lua script in Redis), with the announcements
//!    in the same step where the store can (Redis publishes them from the
//!    script, so each change is announced once, by the replica that made
//!    it, in commit order). Otherwise it reports a [`Committed::Conflict`]
//!    and the actor reads again and decides again.

pub(crate) mod memory;
pub(crate) mod redis;

#[cfg(test)]
pub(crate) mod conformance;

use std::collections::BTreeMap;
use std::sync::Arc;

use chatai_kit::events::Event;
use serde::{Deserialize, Serialize};

use crate::model::ChosenStatus;

/// What is kept of one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OperatorRecord {
    /// From their latest connection's token; empty when unknown.
    #[serde(default)]
    pub name: String,
    pub chosen: ChosenStatus,
    /// Whether a connection of theirs has been seen since the state began
    /// (a restart of the one-process mode, or an empty Redis), or a grace
    /// period given instead (see `rules`).
    pub accounted: bool,
    /// The version of the last announced change.
    pub version: u64,
    pub load: u32,
    pub online: bool,
    /// Live connections over every gateway (the gateways' records hold
    /// which).
    pub connections: u32,
    /// When the grace period after the last connection ends (ms, see
    /// `clock`), while it runs.
    pub grace_until: Option<i64>,
    pub since_ms: i64,
}

impl OperatorRecord {
    /// Someone first heard of now: offline, no load, with `chosen`.
    pub fn new(chosen: ChosenStatus, now_ms: i64) -> Self {
        OperatorRecord {
            name: String::new(),
            chosen,
            accounted: false,
            version: 0,
            load: 0,
            online: false,
            connections: 0,
            grace_until: None,
            since_ms: now_ms,
        }
    }
}

/// The operator connections one gateway holds, and where its reports stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GatewayRecord {
    /// Connection id → operator.
    pub connections: BTreeMap<String, i64>,
    /// When its lease ends (ms), once it has refreshed.
    pub lease_until: Option<i64>,
    /// The run of the gateway the reports below come from.
    pub incarnation: u64,
    /// Connection id → sequence of the last open or close applied for it,
    /// kept until a refresh newer than it (`presence.proto`, `ReportOrder`).
    pub last_report: BTreeMap<String, u64>,
}

impl GatewayRecord {
    /// Whether this record says nothing any more (it is then deleted).
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.lease_until.is_none() && self.last_report.is_empty()
    }
}

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// The operator's grace period after their last connection went.
    Grace(i64),
    /// The gateway's lease on its connections.
    Lease(String),
}

impl Timer {
    /// As kept in Redis: `g:{operator}` or `l:{gateway}`.
    pub fn encode(&self) -> String {
        match self {
            Timer::Grace(operator_id) => format!("g:{operator_id}"),
            Timer::Lease(gateway) => format!("l:{gateway}"),
        }
    }

    /// The reverse of [`encode`](Self::encode).
    pub fn decode(text: &str) -> Option<Timer> {
        match text.split_once(':')? {
            ("g", id) => id.parse().ok().map(Timer::Grace),
            ("l", gateway) => Some(Timer::Lease(gateway.to_owned())),
            _ => None,
        }
    }
}

/// A record as read, with its revision: 0 when there is none, and one more
/// with every write, so a commit can tell whether it changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned<T> {
    pub revision: u64,
    pub record: Option<T>,
}

impl<T> Versioned<T> {
    pub fn absent() -> Self {
        Versioned {
            revision: 0,
            record: None,
        }
    }
}

/// Operators read for one change, and the version clock as it was.
#[derive(Debug, Clone)]
pub(crate) struct OperatorsRead {
    pub operators: BTreeMap<i64, Versioned<OperatorRecord>>,
    pub clock: u64,
}

/// One change, to apply only if what it was decided on still holds.
#[derive(Debug, Default)]
pub(crate) struct Commit {
    /// Every gateway read and the revision it had.
    pub read_gateways: Vec<(String, u64)>,
    /// Every operator read and the revision it had.
    pub read_operators: Vec<(i64, u64)>,
    /// When the change hands out versions: the clock as read (it must not
    /// have moved) and its new value.
    pub clock: Option<(u64, u64)>,
    /// Gateways to write; `None` deletes.
    pub gateways: Vec<(String, Option<GatewayRecord>)>,
    /// Operators to write.
    pub operators: Vec<(i64, OperatorRecord)>,
    /// Timers to set (when they end, ms) or clear (`None`).
    pub timers: Vec<(Timer, Option<i64>)>,
    /// The `operator_status_change`s the change makes, in order, for the
    /// operator role group.
    pub events: Vec<Arc<Event>>,
}

/// How a commit went.
#[derive(Debug)]
pub(crate) enum Committed {
    /// Applied. The events the store did not publish itself, for the caller
    /// to deliver (the memory store publishes none).
    Applied { unpublished: Vec<Arc<Event>> },
    /// A record read, or the clock, changed since: nothing was applied.
    Conflict,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("Redis namespace: {0}")]
    Namespace(#[from] chatai_kit::redis_keys::NamespaceError),
    #[error("the stored {what} {id} does not read: {cause}")]
    Corrupt {
        what: &'static str,
        id: String,
        cause: serde_json::Error,
    },
    #[error("the record could not be written: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the stored timer {0:?} does not read")]
    BadTimer(String),
    #[error("the change kept conflicting with other replicas' ({attempts} attempts)")]
    Contended { attempts: u32 },
}

/// Where the presence state is kept. Every implementation passes the same
/// conformance suite (`conformance.rs`).
#[async_trait::async_trait]
pub(crate) trait StateStore: Send + Sync + 'static {
    /// One gateway's record.
    async fn gateway(&self, gateway: &str) -> Result<Versioned<GatewayRecord>, StateError>;

    /// These operators' records (absent ones too), and the version clock,
    /// as of one moment.
    async fn operators(&self, ids: &[i64]) -> Result<OperatorsRead, StateError>;

    /// Applies `commit` if nothing it was decided on has changed since.
    async fn commit(&self, commit: Commit) -> Result<Committed, StateError>;

    /// One operator's record.
    async fn operator(&self, id: i64) -> Result<Option<OperatorRecord>, StateError>;

    /// Every operator's record by id, and the version clock, as of one
    /// moment (so the listing is as of that version).
    async fn list(&self) -> Result<(Vec<(i64, OperatorRecord)>, u64), StateError>;

    /// Timers that have ended by `now_ms`, the earliest first, at most
    /// `limit`.
    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StateError>;

    /// When the earliest timer ends.
    async fn next_due(&self) -> Result<Option<i64>, StateError>;

    /// Whether other processes share this state, so timers they set are
    /// learned by asking [`next_due`](Self::next_due) now and then.
    fn shared(&self) -> bool;

    /// Cheap liveness check for health endpoints.
    async fn ping(&self) -> Result<(), StateError>;
}

/// Reads a stored JSON record.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    id: impl ToString,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|cause| StateError::Corrupt {
        what,
        id: id.to_string(),
        cause,
    })
}
