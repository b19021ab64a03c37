//! The storage layer's one error type, [`StoreError`]. The service maps it to
//! the wire in one place; the variants say what went wrong, not how to show it.

/// Everything a [`NotificationStore`](super::NotificationStore) call or
/// [`connect`](super::connect) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed, or its URL names no
    /// supported backend.
    #[error(transparent)]
    Db(#[from] chatai_kit::db::DbError),

    /// The database refused or failed a query, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// A stored row holds a value the schema's checks should have refused.
    #[error("stored {column} holds an invalid value {value:?}")]
    InvalidStoredValue { column: &'static str, value: String },
}
