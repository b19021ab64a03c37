//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! chat store. The queries themselves are shared, in `sql.rs`.

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;

use chatai_kit::db;

use super::error::StoreError;
use super::sql::impl_chat_store;

/// The `migrations/sqlite` folder, embedded at build time.
static MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The chat store on SQLite: the embedded default, one file, no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its folder) or an
    /// in-memory database, and applies the migrations — see
    /// [`chatai_kit::db`] for how, and why SQLite migration is retried.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = db::open_sqlite(url).await?;
        db::migrate_sqlite(&pool, &MIGRATIONS).await?;
        Ok(Self::from_pool(pool))
    }
}

impl_chat_store!(SqliteStore, SqlitePool, MIGRATIONS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChatStore, Money, NewMessage, Sender};

    /// An in-memory store keeps its data across calls (one shared connection).
    #[tokio::test]
    async fn in_memory_store_keeps_data_across_calls() -> Result<(), StoreError> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        store.ensure_user(1, Some("Ann"), Money(10)).await?;
        let dialog = store.create_dialog(1).await?;
        let (message, created) = store
            .append_message(NewMessage {
                dialog_id: dialog.id,
                sender: Sender::User,
                sender_id: Some(1),
                text: "hi",
                tokens_used: 0,
                idempotency_key: None,
            })
            .await?;
        assert!(created);
        assert_eq!(store.history(dialog.id, None, 10).await?, vec![message]);
        assert_eq!(store.balance(1).await?, Some(Money(10)));
        Ok(())
    }
}
