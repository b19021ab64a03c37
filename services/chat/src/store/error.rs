//! The storage layer's one error type, [`StoreError`]. Callers map it to the
//! wire in one place; the variants say what went wrong, not how to show it.

use std::path::PathBuf;

/// Everything a [`ChatStore`](super::ChatStore) call or [`connect`](super::connect) can fail with.
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

    /// The row the call needs does not exist (e.g. `what: "user"`).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: i64 },

    /// A message's token count does not fit the 32-bit column.
    #[error("tokens_used {0} is above the storable maximum {max}", max = i32::MAX)]
    TokensOutOfRange(u32),

    /// A stored row holds a value the schema's checks should have refused.
    #[error("stored {column} holds an invalid value {value:?}")]
    InvalidStoredValue { column: &'static str, value: String },
}

impl StoreError {
    /// True for [`StoreError::NotFound`], whatever was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}
