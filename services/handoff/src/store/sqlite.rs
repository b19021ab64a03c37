//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! handoff store, and migrating it. The queries themselves are shared, in
//! `sql.rs`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::time::Instant;

use super::error::StoreError;
use super::sql::impl_handoff_store;

/// The `migrations/sqlite` folder, embedded at build time (the whole folder:
/// the services sharing the database share one migration history, see
/// `migrations/README.md`).
static MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a statement waits for another connection's write lock before
/// failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long migrations this file lacks are left to another migrator first.
const MIGRATION_GRACE: Duration = Duration::from_secs(2);
/// How often the file is checked during [`MIGRATION_GRACE`].
const MIGRATION_POLL: Duration = Duration::from_millis(25);
/// Attempts at migrating before the error is returned.
const MIGRATION_ATTEMPTS: u32 = 3;
/// Pause between two attempts.
const MIGRATION_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The handoff store on SQLite: the embedded default, one file (shared with
/// the other services), no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its parent folder) or
    /// `sqlite::memory:`, and applies the migrations.
    ///
    /// A file is opened as the chat service opens it: WAL mode (readers never
    /// block the writer), `synchronous = NORMAL`, a busy timeout. An
    /// in-memory database lives in one connection that the pool never closes.
    ///
    /// SQLite gives sqlx's migrator no lock (on PostgreSQL it takes an
    /// advisory lock), and in the all-in-one process the chat and
    /// notification services migrate this same file at the same moment: two
    /// migrators applying one migration make the later fail ("table already
    /// exists"). So when the file lacks migrations, they are left for up to
    /// a grace period (2 s) to whoever else is applying them, and only then
    /// applied here, with a retry (the same dance as the notification store).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = is_in_memory(url);
        let pool = if in_memory {
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
        if !in_memory {
            store.leave_migrations_to_others().await;
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations that this database lacks, retrying
    /// when another migrator of the same file got there first (the retry
    /// finds the migration applied and goes on).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match MIGRATIONS.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(cause) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::debug!(%cause, attempt, "migrating SQLite failed; trying again");
                    attempt += 1;
                    tokio::time::sleep(MIGRATION_RETRY_AFTER).await;
                }
                Err(cause) => return Err(cause.into()),
            }
        }
    }

    /// Waits up to [`MIGRATION_GRACE`] while the file lacks some of the
    /// embedded migrations, so that a migrator already at work finishes alone.
    async fn leave_migrations_to_others(&self) {
        let deadline = Instant::now() + MIGRATION_GRACE;
        while self.lacks_migrations().await && Instant::now() < deadline {
            tokio::time::sleep(MIGRATION_POLL).await;
        }
    }

    /// Whether an embedded migration is not yet recorded as applied. Reads
    /// sqlx's own bookkeeping table (absent = nothing applied).
    async fn lacks_migrations(&self) -> bool {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(applied) => applied,
                Err(_) => return true,
            };
        MIGRATIONS
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .any(|m| !applied.contains(&m.version))
    }
}

impl_handoff_store!(SqliteStore, SqlitePool);

/// Whether the URL names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `…?mode=memory`), which has no file or folder to
/// create and no other migrator.
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
    use crate::store::{HandoffStore, NewHandoff, Priority};

    #[test]
    fn recognises_in_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://h?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite://data/chatai.db"));
    }

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
