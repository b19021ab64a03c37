//! The storage layer's one error type, [`StoreError`]. The service maps it to
//! the wire in one place; the variants say what went wrong, not how to show it.

/// Everything a [`HandoffStore`](super::HandoffStore) call or
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

    /// The dialog already has a queued or assigned handoff.
    #[error("dialog {dialog_id} already has an active handoff")]
    ActiveExists { dialog_id: i64 },

    /// The handoff does not exist, or is not in a state the transition starts
    /// from (e.g. completing a handoff that was already completed).
    #[error("handoff {id} is not {expected}")]
    NotInState { id: i64, expected: &'static str },

    /// A stored row holds a value the schema's checks should have refused.
    #[error("stored {column} holds an invalid value {value:?}")]
    InvalidStoredValue { column: &'static str, value: String },
}
