//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! chat store. The queries themselves are shared, in `sql.rs`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::error::StoreError;
use super::sql::impl_chat_store;

/// The `migrations/sqlite` folder, embedded at build time.
static MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a statement waits for another connection's write lock before
/// failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The chat store on SQLite: the embedded default, one file, no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its parent folder) or
    /// `sqlite::memory:`, and applies the migrations.
    ///
    /// A file is opened in WAL mode (readers never block the writer) with
    /// `synchronous = NORMAL`, which in WAL mode survives a process crash and
    /// only risks the last commits on power loss, for far cheaper commits.
    /// An in-memory database lives in one connection that the pool never
    /// closes, since it vanishes with its last connection.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = if is_in_memory(url) {
            SqlitePoolOptions::new()
                .min_connections(1)
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            if let Some(folder) = options.get_filename().parent()
                && !folder.as_os_str().is_empty()
            {
                tokio::fs::create_dir_all(folder).await.map_err(|source| {
                    StoreError::CreateDir {
                        path: folder.to_path_buf(),
                        source,
                    }
                })?;
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            SqlitePoolOptions::new().connect_with(options).await?
        };
        let store = Self::from_pool(pool);
        // SQLite has no migration lock: another service migrating the same
        // file at the same moment makes one of them fail on a migration the
        // other applied. Trying again finds it applied and goes on.
        let mut attempt = 1;
        loop {
            match store.migrate().await {
                Ok(()) => return Ok(store),
                Err(cause) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::debug!(%cause, attempt, "migrating SQLite failed; trying again");
                    attempt += 1;
                    tokio::time::sleep(MIGRATION_RETRY_AFTER).await;
                }
                Err(cause) => return Err(cause),
            }
        }
    }
}

/// How often, and how far apart, SQLite migration is tried.
const MIGRATION_ATTEMPTS: u32 = 5;
const MIGRATION_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

impl_chat_store!(SqliteStore, SqlitePool, MIGRATIONS);

/// Whether the URL names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `…?mode=memory`), which has no file or folder to create.
fn is_in_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|pair| pair == "mode=memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChatStore, Money, NewMessage, Sender};

    #[test]
    fn recognises_in_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://chat?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite://data/chat.db"));
        assert!(!is_in_memory("sqlite:memory.db"));
    }

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
