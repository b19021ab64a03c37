//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! notification store, and migrating it. The queries themselves are shared,
//! in `sql.rs`.

use sqlx::SqlitePool;

use chatai_kit::db;

use super::error::StoreError;
use super::sql::impl_notification_store;

/// The notification store on SQLite: the embedded default, one file (the
/// chat service's), no server.
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

impl_notification_store!(SqliteStore, SqlitePool);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectionEvent, ConnectionKind, NotificationStore};
    use chatai_kit::identity::Role;

    /// An in-memory store keeps its rows across calls (one shared connection).
    #[tokio::test]
    async fn in_memory_store_keeps_rows_across_calls() -> Result<(), StoreError> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        let event = ConnectionEvent {
            connection_id: "gw:1".into(),
            gateway_id: "gw".into(),
            role: Role::User,
            principal_id: 7,
            kind: ConnectionKind::Connect,
            at_ms: 1,
            duration_ms: None,
            close_code: None,
        };
        store
            .record_connections(std::slice::from_ref(&event))
            .await?;
        let stored = store.connection_events(0, 10).await?;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].event, event);
        Ok(())
    }

    /// Two stores opening one fresh file at the same moment both start: the
    /// migration race of the all-in-one process ends well for both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_openers_of_one_file_both_migrate() -> Result<(), StoreError> {
        let folder = tempfile::tempdir().map_err(|source| db::DbError::CreateDir {
            path: std::env::temp_dir(),
            source,
        })?;
        let url = format!("sqlite://{}", folder.path().join("race.db").display());
        let (a, b) = tokio::join!(SqliteStore::connect(&url), SqliteStore::connect(&url));
        a?.ping().await?;
        b?.ping().await?;
        Ok(())
    }
}
