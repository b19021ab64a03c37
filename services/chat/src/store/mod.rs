//! The chat service's storage: users and their balances, dialogs and their
//! messages, behind one trait, [`ChatStore`], with a SQLite implementation
//! (the embedded default) and a PostgreSQL one. Handlers never see SQL.
//!
//! Writes go through one writer per store (group commit): a task that takes
//! every waiting write request, runs them all in one transaction with a few
//! set-based statements, commits, and only then answers each — so a write
//! that returned `Ok` is committed. A batch whose transaction fails is run
//! again one request at a time, so a bad request fails alone. Reads
//! (`user`, `dialog`, `history`, `balance`, `ping`) skip the writer and use
//! the pool (on a SQLite file, WAL readers beside the writer).
//!
//! Layout:
//! - `types.rs`: the domain types ([`Money`], [`Sender`], [`Dialog`], [`Message`], …).
//! - `error.rs`: [`StoreError`], the one error type of this layer.
//! - `writer.rs`: the writer task and its handle (the queue, batching,
//!   answering after commit, one-by-one retry; users already ensured).
//! - `batch.rs`: one batch in one transaction, for both databases, over the
//!   per-backend set-based statements (trait `Backend`).
//! - `sql.rs`: the shared read statements and row types, and the macro that
//!   implements [`ChatStore`] for a pool type from them and the writer.
//! - `sqlite.rs`, `postgres.rs`: opening a pool of each kind; [`SqliteStore`],
//!   [`PostgresStore`]; each backend's batch statements (`json_each` on
//!   SQLite, `UNNEST` on PostgreSQL).
//!
//! The schema lives in `migrations/sqlite` and `migrations/postgres` at the
//! workspace root (see `migrations/README.md`); both are embedded in the binary
//! and applied by [`connect`]. Every implementation must pass
//! `tests/store_conformance.rs`.

mod batch;
mod error;
mod postgres;
mod sql;
mod sqlite;
mod types;
mod writer;

use std::sync::Arc;

use chatai_kit::db::{self, Database};

pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{Charge, Dialog, DialogRef, Message, Money, NewMessage, Sender, User};

/// The chat service's storage. Cheap to share: implementations hold a pool
/// and the handle of their writer.
///
/// Every write (`ensure_user`, `create_dialog`, `append_message`,
/// `append_answer`, `charge`) is committed when it returns `Ok`.
#[async_trait::async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Creates the user with `starting_balance` if unknown; updates the name
    /// when given. Idempotent, safe under concurrent calls for the same id;
    /// never changes an existing user's balance. The store remembers (a
    /// bounded number of) users it has ensured: a repeated call with the same
    /// name, or none, returns at once without touching the database.
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

    /// Appends a message (and bumps the dialog's updated_at), into a new
    /// dialog opened with it for [`DialogRef::New`]. With an idempotency key
    /// used by the same sender+sender_id less than 24 hours ago, returns the
    /// earlier message and `false`, inserting nothing and opening no dialog
    /// (the earlier message may belong to another dialog; the caller decides
    /// whether that is an error); an older use gives the key to the new
    /// message. `NotFound { what: "dialog" }` for an unknown dialog,
    /// `NotFound { what: "user" }` for a new dialog of an unknown user.
    async fn append_message(&self, message: NewMessage<'_>) -> Result<(Message, bool), StoreError>;

    /// Appends a message as [`append_message`](Self::append_message) does,
    /// but a new one only while `payer`'s balance is above zero, read in the
    /// same transaction: `InsufficientBalance` otherwise, storing nothing
    /// (`NotFound { what: "user" }` for an unknown payer). An earlier message
    /// its idempotency key returns is returned whatever the balance.
    async fn append_funded_message(
        &self,
        message: NewMessage<'_>,
        payer: i64,
    ) -> Result<(Message, bool), StoreError>;

    /// Appends the assistant's `answer` as [`append_message`](Self::append_message)
    /// does, and in the same transaction charges `charge` (user id, amount),
    /// returning the charge's before/after; a zero amount is no charge
    /// (`None`). When the idempotency key returns an earlier message, nothing
    /// is stored or charged (`None`). `NotFound { what: "user" }` for an
    /// unknown charged user, and then the answer is not stored either.
    async fn append_answer(
        &self,
        answer: NewMessage<'_>,
        charge: Option<(i64, Money)>,
    ) -> Result<(Message, Option<Charge>), StoreError>;

    /// Up to `limit` messages with id < `before` (None = newest), returned
    /// oldest first. An unknown dialog has an empty history.
    async fn history(
        &self,
        dialog_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// Up to `limit` dialogs with id < `before` (None = newest), newest
    /// first: those of `user_id`, or every dialog for `None`.
    async fn list_dialogs(
        &self,
        user_id: Option<i64>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Dialog>, StoreError>;

    /// Subtracts `amount` from the balance atomically (may go negative) and
    /// returns before/after; a negative amount adds (a top-up). NotFound for
    /// an unknown user.
    async fn charge(&self, user_id: i64, amount: Money) -> Result<Charge, StoreError>;

    /// The user's balance, `None` for an unknown user.
    async fn balance(&self, user_id: i64) -> Result<Option<Money>, StoreError>;

    /// Cheap liveness check for health endpoints.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the database `url` names and applies the migrations it lacks (see
/// [`chatai_kit::db::connect`]), and returns the store on it.
pub async fn connect(url: &str) -> Result<Arc<dyn ChatStore>, StoreError> {
    Ok(match db::connect(url).await? {
        Database::Sqlite(pool) => Arc::new(SqliteStore::from_pool(pool)),
        Database::Postgres(pool) => Arc::new(PostgresStore::from_pool(pool)),
    })
}
