//! The storage layer's one error type, [`StoreError`]. The service maps it to
//! the wire in one place; the variants say what went wrong, not how to show it.

use std::path::PathBuf;

/// Everything a [`NotificationStore`](super::NotificationStore) call or
/// [`connect`](super::connect) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error(transparent)]
    Db(#[from] chatai_kit::db::DbError),

    /// The database refused or failed a query, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the embedded migrations failed (e.g. an applied migration was
    /// edited, or the database is newer than this build).
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The database URL names no supported backend. Holds only the scheme,
    /// so a password in the URL never reaches a log.
    #[error("unsupported database URL scheme {0:?} (expected sqlite: or postgres:)")]
    UnsupportedUrl(String),

    /// The folder for a SQLite database file could not be created.
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A stored row holds a value the schema's checks should have refused.
    #[error("stored {column} holds an invalid value {value:?}")]
    InvalidStoredValue { column: &'static str, value: String },
}
