//! The storage layer's one error type, [`StoreError`]. Callers map it to the
//! wire in one place; the variants say what went wrong, not how to show it.

/// Everything a [`ChatStore`](super::ChatStore) call or [`connect`](super::connect) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed, or its URL names no
    /// supported backend.
    #[error(transparent)]
    Db(#[from] chatai_kit::db::DbError),

    /// The database refused or failed a query, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// The row the call needs does not exist (e.g. `what: "user"`).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: i64 },

    /// A message that must be paid for was not stored: the user's balance
    /// is zero or below.
    #[error("the balance is used up")]
    InsufficientBalance,

    /// A message's token count does not fit the 32-bit column.
    #[error("tokens_used {0} is above the storable maximum {max}", max = i32::MAX)]
    TokensOutOfRange(u32),

    /// The store's writer task is gone (its runtime is shutting down), so
    /// the write was not done, or its outcome is unknown.
    #[error("the store's writer has stopped")]
    WriterStopped,

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
