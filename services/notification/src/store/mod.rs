//! The notification service's storage: the history of gateway connections,
//! behind one trait, [`NotificationStore`], with a SQLite implementation (the
//! embedded default) and a PostgreSQL one. Handlers never see SQL.
//!
//! Layout:
//! - `types.rs`: the domain types ([`ConnectionEvent`], [`ConnectionKind`],
//!   [`StoredConnectionEvent`], [`ConnectionStats`]).
//! - `error.rs`: [`StoreError`], the one error type of this layer.
//! - `sql.rs`: every statement, written once, and the macro that implements
//!   [`NotificationStore`] from them for a pool type.
//! - `sqlite.rs`, `postgres.rs`: opening and migrating a pool of each kind;
//!   [`SqliteStore`], [`PostgresStore`].
//!
//! The service shares its database with the chat service (same
//! `CHATAI_DATABASE_URL`) and owns only its own table, `connection_events`
//! (`migrations/*/0002_notification.sql`). Migrations are one history per
//! database for both services, so each embeds the whole folder and applies
//! whatever is missing.

mod error;
mod postgres;
mod sql;
mod sqlite;
mod types;

use std::sync::Arc;

use chatai_kit::db::{self, Database};

pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{ConnectionEvent, ConnectionKind, ConnectionStats, StoredConnectionEvent};

/// The notification service's storage. Cheap to share: implementations hold
/// a pool.
#[async_trait::async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Stores every event of the batch, in order, in one transaction: all
    /// or none. An empty batch writes nothing.
    async fn record_connections(&self, events: &[ConnectionEvent]) -> Result<(), StoreError>;

    /// Up to `limit` events that happened at or after `since_ms`, oldest
    /// first (insertion order within one millisecond).
    async fn connection_events(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredConnectionEvent>, StoreError>;

    /// Counts over the events that happened at or after `since_ms`: for
    /// `total_connections`, `average_connection_duration` and `error_rate`.
    async fn connection_stats(&self, since_ms: i64) -> Result<ConnectionStats, StoreError>;

    /// Deletes up to `limit` of the oldest events that happened before
    /// `before_ms`; returns how many it deleted (fewer than `limit`: none
    /// older is left).
    async fn trim_connection_events(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Cheap liveness check for health checking.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the database `url` names and applies the migrations it lacks (see
/// [`chatai_kit::db::connect`]), and returns the store on it.
pub async fn connect(url: &str) -> Result<Arc<dyn NotificationStore>, StoreError> {
    Ok(store_on(db::connect(url).await?))
}

/// The store on a database already open (and migrated).
pub fn store_on(database: Database) -> Arc<dyn NotificationStore> {
    match database {
        Database::Sqlite(pool) => Arc::new(SqliteStore::from_pool(pool)),
        Database::Postgres(pool) => Arc::new(PostgresStore::from_pool(pool)),
    }
}
