//! The database the storing services share (chat, handoff, notification):
//! opening SQLite — a file or memory — and PostgreSQL pools the same way for
//! all of them, and applying the migrations, embedded here once (one
//! history for the whole database, see `migrations/README.md`). Each
//! service's store owns its queries; this owns the connection and the schema
//! history. A store opens with [`connect`] (or [`connect_sqlite`],
//! [`connect_postgres`]) and wraps the pool it gets.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// How long a SQLite statement waits for another connection's write lock
/// before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a SQLite file read through a memory map.
const MMAP_SIZE: u64 = 256 * 1024 * 1024;
/// SQLite's page cache per connection: negative means KiB (32 MiB).
const CACHE_SIZE: i64 = -32 * 1024;
/// Attempts at migrating SQLite, and the pause between two.
const MIGRATION_ATTEMPTS: u32 = 8;
const MIGRATION_RETRY_AFTER: Duration = Duration::from_millis(250);

/// The `migrations/sqlite` folder at the workspace root, embedded at build
/// time (`build.rs` rebuilds the crate when it changes).
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The `migrations/postgres` folder at the workspace root, embedded at build
/// time.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Holds only the scheme, so a password in the URL never reaches a log.
    #[error("unsupported database URL scheme {0:?} (expected sqlite: or postgres:)")]
    UnsupportedUrl(String),
}

/// The database servers a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path`, `sqlite::memory:`.
    Sqlite,
    /// `postgres://…`, `postgresql://…`.
    Postgres,
}

impl Backend {
    /// Which backend `url` names; any other scheme is refused by name.
    pub fn of(url: &str) -> Result<Backend, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            Err(DbError::UnsupportedUrl(scheme.to_owned()))
        }
    }
}

/// An open database with every migration applied: a pool of the backend
/// its URL named.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Opens `sqlite://path` (creating the file and its parent folder),
/// `sqlite::memory:`, or `postgres://…` / `postgresql://…`, and applies the
/// migrations it lacks. Another scheme is refused by its name alone.
pub async fn connect(url: &str) -> Result<Database, DbError> {
    Ok(match Backend::of(url)? {
        Backend::Sqlite => Database::Sqlite(connect_sqlite(url).await?),
        Backend::Postgres => Database::Postgres(connect_postgres(url).await?),
    })
}

/// Opens a SQLite database ([`open_sqlite`]) and applies the migrations it
/// lacks ([`migrate_sqlite`]).
pub async fn connect_sqlite(url: &str) -> Result<SqlitePool, DbError> {
    let pool = open_sqlite(url).await?;
    migrate_sqlite(&pool, &SQLITE_MIGRATIONS).await?;
    Ok(pool)
}

/// Opens a PostgreSQL pool ([`open_postgres`]) and applies the migrations it
/// lacks, under PostgreSQL's migration lock ([`migrate_postgres`]).
pub async fn connect_postgres(url: &str) -> Result<PgPool, DbError> {
    let pool = open_postgres(url).await?;
    migrate_postgres(&pool, &POSTGRES_MIGRATIONS).await?;
    Ok(pool)
}

/// Whether a SQLite URL names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `…?mode=memory`), which has no file or folder.
pub fn is_in_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|pair| pair == "mode=memory")
}

/// Opens `sqlite://path` (creating the file and its folder) or an in-memory
/// database.
///
/// A file is opened in WAL mode (readers never block the writer) with
/// `synchronous = NORMAL`, which in WAL mode survives a process crash and
/// only risks the last commits on power loss, for far cheaper commits, a
/// busy timeout, reads through a memory map and a larger page cache. An in-memory database lives in one connection that the pool
/// never closes, since it vanishes with its last connection.
pub async fn open_sqlite(url: &str) -> Result<SqlitePool, DbError> {
    let options = SqliteConnectOptions::from_str(url)?
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    if is_in_memory(url) {
        return Ok(SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?);
    }
    if let Some(folder) = options.get_filename().parent()
        && !folder.as_os_str().is_empty()
    {
        tokio::fs::create_dir_all(folder)
            .await
            .map_err(|source| DbError::CreateDir {
                path: folder.to_path_buf(),
                source,
            })?;
    }
    // Reads through a memory map instead of a `pread` per page, and a 32 MiB
    // page cache per connection: at thousands of messages a second the
    // syscalls were a visible share of the chat service's CPU.
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("mmap_size", MMAP_SIZE.to_string())
        .pragma("cache_size", CACHE_SIZE.to_string());
    // Turning a fresh file to WAL takes an exclusive lock, and SQLite answers
    // "database is locked" at once, without waiting, to a service opening the
    // same fresh file at that moment (the all-in-one process opens it from
    // three services together): try again.
    let mut attempt = 1;
    loop {
        match SqlitePoolOptions::new().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(cause) if attempt < MIGRATION_ATTEMPTS && is_busy(&cause) => {
                tracing::debug!(%cause, attempt, "opening SQLite: locked; trying again");
                attempt += 1;
                tokio::time::sleep(MIGRATION_RETRY_AFTER).await;
            }
            Err(cause) => return Err(cause.into()),
        }
    }
}

/// Whether SQLite said the database is busy or locked (codes 5 and 6).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("5" | "6" | "517" | "261"))
        }
        _ => false,
    }
}

/// Opens a pool to `postgres://…`.
pub async fn open_postgres(url: &str) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url)?;
    Ok(PgPoolOptions::new().connect_with(options).await?)
}

/// Applies the migrations a SQLite database lacks. SQLite gives sqlx's
/// migrator no lock, and in the all-in-one process several services migrate
/// the same file at the same moment: one of two migrators applying the same
/// migration fails ("table already exists"). Trying again finds it applied
/// and goes on.
pub async fn migrate_sqlite(pool: &SqlitePool, migrator: &Migrator) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        match migrator.run(pool).await {
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

/// Applies the migrations a PostgreSQL database lacks, under sqlx's
/// advisory lock, so services and replicas may start together.
pub async fn migrate_postgres(pool: &PgPool, migrator: &Migrator) -> Result<(), DbError> {
    Ok(migrator.run(pool).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each URL goes to its backend; another scheme is refused by its name,
    /// never with the rest of the URL (a password).
    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Backend::of("sqlite://data/x.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::of("sqlite::memory:").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://db/x").ok(), Some(Backend::Postgres));
        assert_eq!(
            Backend::of("postgresql://db/x").ok(),
            Some(Backend::Postgres)
        );
        let refused = Backend::of("mysql://root:secret@db/x")
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(refused.contains("\"mysql\""), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
    }

    /// Opening a URL of another scheme fails naming the scheme alone, never
    /// the rest of the URL (a password).
    #[tokio::test]
    async fn connect_refuses_other_schemes_by_name() {
        let refused = connect("mysql://root:secret@localhost/chat")
            .await
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(refused.contains("\"mysql\""), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
    }

    /// In-memory URLs are recognised; files are not.
    #[test]
    fn recognises_in_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://n?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite://data/chatai.db"));
        assert!(!is_in_memory("sqlite:memory.db"));
    }
}
