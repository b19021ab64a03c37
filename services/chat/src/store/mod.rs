//! The chat service's storage: users and their balances, dialogs and their
//! messages, behind one trait, [`ChatStore`], with a SQLite implementation
//! (the embedded default) and a PostgreSQL one. Handlers never see SQL.
//!
//! Layout:
//! - `types.rs`: the domain types ([`Money`], [`Sender`], [`Dialog`], [`Message`], …).
//! - `error.rs`: [`StoreError`], the one error type of this layer.
//! - `sql.rs`: every statement, written once, and the macro that implements
//!   [`ChatStore`] from them for a pool type.
//! - `sqlite.rs`, `postgres.rs`: opening a pool of each kind; [`SqliteStore`],
//!   [`PostgresStore`].
//!
//! The schema lives in `migrations/sqlite` and `migrations/postgres` at the
//! workspace root (see `migrations/README.md`); both are embedded in the binary
//! and applied by [`connect`]. Every implementation must pass
//! `tests/store_conformance.rs`.

mod error;
mod postgres;
mod sql;
mod sqlite;
mod types;

use std::sync::Arc;

pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{Charge, Dialog, Message, Money, NewMessage, Sender, User};

/// The chat service's storage. Cheap to share: implementations hold a pool.
#[async_trait::async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Creates the user with `starting_balance` if unknown; updates the name
    /// when given. Idempotent, safe under concurrent calls for the same id;
    /// never changes an existing user's balance.
    async fn ensure_user(
        &self,
        user_id: i64,
        name: Option<&str>,
        starting_balance: Money,
    ) -> Result<(), StoreError>;

    /// The user with this id, if known.
    async fn user(&self, user_id: i64) -> Result<Option<User>, StoreError>;

    /// Opens a new dialog for the user. `NotFound { what: "user" }` for an
    /// unknown user (call [`ensure_user`](Self::ensure_user) first).
    async fn create_dialog(&self, user_id: i64) -> Result<Dialog, StoreError>;

    /// The dialog with this id, if any.
    async fn dialog(&self, dialog_id: i64) -> Result<Option<Dialog>, StoreError>;

    /// Appends a message (and bumps the dialog's updated_at). With an
    /// idempotency key already used by the same sender+sender_id, returns the
    /// earlier message and `false`, inserting nothing (the earlier message
    /// may belong to another dialog; the caller decides whether that is an
    /// error). `NotFound { what: "dialog" }` for an unknown dialog.
    async fn append_message(&self, message: NewMessage<'_>) -> Result<(Message, bool), StoreError>;

    /// Up to `limit` messages with id < `before` (None = newest), returned
    /// oldest first. An unknown dialog has an empty history.
    async fn history(
        &self,
        dialog_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// Subtracts `amount` from the balance atomically (may go negative) and
    /// returns before/after. NotFound for an unknown user.
    async fn charge(&self, user_id: i64, amount: Money) -> Result<Charge, StoreError>;

    /// The user's balance, `None` for an unknown user.
    async fn balance(&self, user_id: i64) -> Result<Option<Money>, StoreError>;

    /// Cheap liveness check for health endpoints.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens `sqlite://path` (creating the file and its parent folder; WAL mode;
/// busy timeout), `sqlite::memory:`, or `postgres://…` / `postgresql://…`,
/// applies the migrations, returns the store.
pub async fn connect(url: &str) -> Result<Arc<dyn ChatStore>, StoreError> {
    Ok(match chatai_kit::db::Backend::of(url)? {
        chatai_kit::db::Backend::Sqlite => Arc::new(SqliteStore::connect(url).await?),
        chatai_kit::db::Backend::Postgres => Arc::new(PostgresStore::connect(url).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsupported_url_names_only_the_scheme() {
        let err = connect("mysql://root:secret@localhost/chat")
            .await
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
