//! The handoff service's storage: the `handoffs` table behind one trait,
//! [`HandoffStore`], with a SQLite implementation (the embedded default) and a
//! PostgreSQL one. The queue logic never sees SQL.
//!
//! Layout:
//! - `types.rs`: the domain types ([`Handoff`], [`Priority`], [`HandoffState`], …).
//! - `error.rs`: [`StoreError`], the one error type of this layer.
//! - `sql.rs`: every statement, written once, and the macro that implements
//!   [`HandoffStore`] from them for a pool type.
//! - `sqlite.rs`, `postgres.rs`: opening (and migrating) a pool of each kind;
//!   [`SqliteStore`], [`PostgresStore`].
//! - `held.rs`: [`HeldStore`], the same statements on the one connection
//!   that holds the leader's lock (PostgreSQL; see [`crate::leader`]).
//!
//! Every transition is one conditional `UPDATE … WHERE id = $1 AND state = …
//! RETURNING …`: a handoff moves only from the state the transition starts
//! from, or the call fails with [`StoreError::NotInState`]. The schema lives
//! in `migrations/{sqlite,postgres}/0003_handoff.sql` (the database, and the
//! migration history, are shared with the other services; see
//! `migrations/README.md`). Every implementation must pass
//! `tests/store_conformance.rs`.

mod error;
mod held;
mod postgres;
mod sql;
mod sqlite;
mod types;

use std::sync::Arc;

use chatai_kit::db::{self, Database};

pub use error::StoreError;
pub use held::HeldStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{CANCELLED, Handoff, HandoffState, NewHandoff, Priority, RETURNED_TO_ASSISTANT};

/// The handoff service's storage. Cheap to share: implementations hold a pool.
#[async_trait::async_trait]
pub trait HandoffStore: Send + Sync + 'static {
    /// Creates a queued handoff. [`StoreError::ActiveExists`] when the dialog
    /// already has a queued or assigned one (also under concurrent calls).
    async fn create(&self, new: NewHandoff<'_>) -> Result<Handoff, StoreError>;

    /// Queued → assigned to `operator_id` at `at_ms`.
    async fn assign(
        &self,
        id: i64,
        operator_id: i64,
        operator_name: &str,
        at_ms: i64,
    ) -> Result<Handoff, StoreError>;

    /// Records the first reply of the operator holding the handoff. `None`
    /// (and nothing written) when the handoff is not assigned to
    /// `operator_id` or they had already replied.
    async fn record_first_reply(
        &self,
        id: i64,
        operator_id: i64,
        at_ms: i64,
    ) -> Result<Option<Handoff>, StoreError>;

    /// Assigned → queued again (taken back from its operator) at `at_ms`: the
    /// operator, assignment and reply are cleared, `requeued_at` is set.
    async fn requeue(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError>;

    /// Queued or assigned → completed, with the resolution.
    async fn complete(&self, id: i64, resolution: &str, at_ms: i64) -> Result<Handoff, StoreError>;

    /// Queued → returned to the assistant (resolution
    /// [`RETURNED_TO_ASSISTANT`]).
    async fn return_to_assistant(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError>;

    /// Assigned to `from_operator` → assigned to `to_operator` at `at_ms`
    /// (a transfer): the reply is cleared, the new operator's timer starts.
    async fn transfer(
        &self,
        id: i64,
        from_operator: i64,
        to_operator: i64,
        to_name: &str,
        at_ms: i64,
    ) -> Result<Handoff, StoreError>;

    /// Queued → returned to the assistant because its user withdrew it
    /// (resolution [`CANCELLED`]).
    async fn cancel(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError>;

    /// The handoff with this id, if any.
    async fn handoff(&self, id: i64) -> Result<Option<Handoff>, StoreError>;

    /// Every queued and assigned handoff, by id.
    async fn active(&self) -> Result<Vec<Handoff>, StoreError>;

    /// How long (completed − assigned, ms) the `limit` most recently
    /// completed handoffs that had an operator took, newest first.
    async fn recent_handling_ms(&self, limit: u32) -> Result<Vec<i64>, StoreError>;

    /// Cheap liveness check for health endpoints.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the database `url` names and applies the migrations it lacks (see
/// [`chatai_kit::db::connect`]), and returns the store on it.
pub async fn connect(url: &str) -> Result<Arc<dyn HandoffStore>, StoreError> {
    Ok(store_on(db::connect(url).await?))
}

/// The store on an open database.
pub fn store_on(database: Database) -> Arc<dyn HandoffStore> {
    match database {
        Database::Sqlite(pool) => Arc::new(SqliteStore::from_pool(pool)),
        Database::Postgres(pool) => Arc::new(PostgresStore::from_pool(pool)),
    }
}
