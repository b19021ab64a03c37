//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! handoff store, and migrating it. The queries themselves are shared, in
//! `sql.rs`.

use sqlx::SqlitePool;

use chatai_kit::db;

use super::error::StoreError;
use super::sql::impl_handoff_store;

/// The handoff store on SQLite: the embedded default, one file (shared with
/// the other services), no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its folder) or an
    /// in-memory database, and applies the migrations — see
    /// [`chatai_kit::db`] for how, and why SQLite migration is retried.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(db::connect_sqlite(url).await?))
    }
}

impl_handoff_store!(SqliteStore, SqlitePool);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HandoffStore, NewHandoff, Priority};

    /// An in-memory store keeps its rows across calls (one shared connection).
    #[tokio::test]
    async fn in_memory_store_keeps_rows_across_calls() -> Result<(), StoreError> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        let created = store
            .create(NewHandoff {
                dialog_id: 1,
                user_id: 2,
                priority: Priority::High,
                reason: "stuck",
                requested_at_ms: 10,
            })
            .await?;
        assert_eq!(store.active().await?, vec![created]);
        Ok(())
    }
}
