//! The SQL, written once for both databases, and the macro that turns it into
//! a [`ChatStore`](super::ChatStore) implementation for each pool type.
//!
//! Both SQLite and PostgreSQL accept `$n` placeholders, `RETURNING` and
//! `ON CONFLICT`, and the schema stores times as BIGINT milliseconds and money
//! as BIGINT micros, so every statement below runs unchanged on both. The
//! backend modules (`sqlite.rs`, `postgres.rs`) only open pools and invoke
//! [`impl_chat_store!`].

use std::time::{SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::types::{Dialog, Message, Money, Sender, User};

/// Creates the user, or sets the name when one is given and differs (so a
/// repeated call with the same name writes nothing). Never touches the balance
/// of an existing user. `ON CONFLICT` makes it safe under concurrent calls.
pub(super) const ENSURE_USER: &str = "\
    INSERT INTO users (id, name, balance_micros, created_at) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (id) DO UPDATE SET name = excluded.name \
    WHERE excluded.name IS NOT NULL AND (users.name IS NULL OR users.name <> excluded.name)";

pub(super) const USER: &str = "\
    SELECT id, name, balance_micros, created_at FROM users WHERE id = $1";

pub(super) const CREATE_DIALOG: &str = "\
    INSERT INTO dialogs (user_id, created_at, updated_at) VALUES ($1, $2, $2) \
    RETURNING id, user_id, created_at, updated_at";

pub(super) const DIALOG: &str = "\
    SELECT id, user_id, created_at, updated_at FROM dialogs WHERE id = $1";

/// Inserts a message unless one of the two idempotency indexes already holds
/// its key, in which case it returns no row. No conflict target: a target must
/// name one index, and a `NULL` sender id needs the second one (unique indexes
/// treat NULLs as distinct). Non-unique errors (foreign key, checks) still fail.
pub(super) const INSERT_MESSAGE: &str = "\
    INSERT INTO messages (dialog_id, sender, sender_id, body, tokens_used, idempotency_key, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT DO NOTHING \
    RETURNING id, dialog_id, sender, sender_id, body, tokens_used, created_at";

/// The earlier message behind an idempotency conflict, for a sender with an
/// id. Spelled so the partial index `messages_idempotency_with_sender_id` applies.
pub(super) const MESSAGE_BY_KEY: &str = "\
    SELECT id, dialog_id, sender, sender_id, body, tokens_used, created_at FROM messages \
    WHERE sender = $1 AND sender_id = $2 AND idempotency_key = $3";

/// As [`MESSAGE_BY_KEY`], for a sender without an id (index
/// `messages_idempotency_without_sender_id`).
pub(super) const MESSAGE_BY_KEY_WITHOUT_SENDER_ID: &str = "\
    SELECT id, dialog_id, sender, sender_id, body, tokens_used, created_at FROM messages \
    WHERE sender = $1 AND sender_id IS NULL AND idempotency_key = $2";

/// Moves `updated_at` forward, never back (a clock step must not reorder dialogs).
pub(super) const TOUCH_DIALOG: &str = "\
    UPDATE dialogs SET updated_at = CASE WHEN updated_at < $2 THEN $2 ELSE updated_at END \
    WHERE id = $1";

/// The newest `$3` messages below id `$2`; the caller reverses them.
pub(super) const HISTORY: &str = "\
    SELECT id, dialog_id, sender, sender_id, body, tokens_used, created_at FROM messages \
    WHERE dialog_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

/// One statement, so concurrent charges serialize on the row and none is lost.
pub(super) const CHARGE: &str = "\
    UPDATE users SET balance_micros = balance_micros - $2 WHERE id = $1 RETURNING balance_micros";

pub(super) const BALANCE: &str = "SELECT balance_micros FROM users WHERE id = $1";

pub(super) const PING: &str = "SELECT 1";

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub(super) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Turns a foreign-key violation on insert into "the parent row is missing".
pub(super) fn missing_parent(err: sqlx::Error, what: &'static str, id: i64) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound { what, id }
        }
        _ => StoreError::Database(err),
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: i64,
    name: Option<String>,
    balance_micros: i64,
    created_at: i64,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            id: row.id,
            name: row.name,
            balance: Money(row.balance_micros),
            created_at_ms: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DialogRow {
    id: i64,
    user_id: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<DialogRow> for Dialog {
    fn from(row: DialogRow) -> Dialog {
        Dialog {
            id: row.id,
            user_id: row.user_id,
            created_at_ms: row.created_at,
            updated_at_ms: row.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MessageRow {
    id: i64,
    dialog_id: i64,
    sender: String,
    sender_id: Option<i64>,
    body: String,
    tokens_used: i32,
    created_at: i64,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Message, StoreError> {
        let sender = Sender::parse(&row.sender).ok_or_else(|| StoreError::InvalidStoredValue {
            column: "messages.sender",
            value: row.sender.clone(),
        })?;
        let tokens_used =
            u32::try_from(row.tokens_used).map_err(|_| StoreError::InvalidStoredValue {
                column: "messages.tokens_used",
                value: row.tokens_used.to_string(),
            })?;
        Ok(Message {
            id: row.id,
            dialog_id: row.dialog_id,
            sender,
            sender_id: row.sender_id,
            text: row.body,
            tokens_used,
            created_at_ms: row.created_at,
        })
    }
}

/// Implements `from_pool`, `migrate`, `pool` and [`ChatStore`](super::ChatStore)
/// for a backend struct with a `pool: $pool` field, from the statements above.
///
/// `$migrator` is a `static sqlx::migrate::Migrator` of that backend's folder.
macro_rules! impl_chat_store {
    ($store:ident, $pool:ty, $migrator:path) => {
        impl $store {
            /// Wraps an existing pool. Does not migrate: call
            /// [`migrate`](Self::migrate) unless the schema is known current.
            pub fn from_pool(pool: $pool) -> Self {
                Self { pool }
            }

            /// Applies the embedded migrations that this database lacks.
            /// Safe to run on every start and from several processes.
            pub async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                $migrator
                    .run(&self.pool)
                    .await
                    .map_err(chatai_kit::db::DbError::from)?;
                Ok(())
            }

            /// The underlying pool, e.g. to close it on shutdown.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::ChatStore for $store {
            async fn ensure_user(
                &self,
                user_id: i64,
                name: Option<&str>,
                starting_balance: $crate::store::Money,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql;
                sqlx::query(sql::ENSURE_USER)
                    .bind(user_id)
                    .bind(name)
                    .bind(starting_balance.0)
                    .bind(sql::now_ms())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn user(
                &self,
                user_id: i64,
            ) -> Result<Option<$crate::store::User>, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: Option<sql::UserRow> = sqlx::query_as(sql::USER)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn create_dialog(
                &self,
                user_id: i64,
            ) -> Result<$crate::store::Dialog, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: sql::DialogRow = sqlx::query_as(sql::CREATE_DIALOG)
                    .bind(user_id)
                    .bind(sql::now_ms())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|err| sql::missing_parent(err, "user", user_id))?;
                Ok(row.into())
            }

            async fn dialog(
                &self,
                dialog_id: i64,
            ) -> Result<Option<$crate::store::Dialog>, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: Option<sql::DialogRow> = sqlx::query_as(sql::DIALOG)
                    .bind(dialog_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn append_message(
                &self,
                message: $crate::store::NewMessage<'_>,
            ) -> Result<($crate::store::Message, bool), $crate::store::StoreError> {
                use $crate::store::sql;
                let tokens_used = i32::try_from(message.tokens_used).map_err(|_| {
                    $crate::store::StoreError::TokensOutOfRange(message.tokens_used)
                })?;
                let now = sql::now_ms();
                // The insert comes first, so on SQLite the transaction takes the
                // write lock at once (no read-then-upgrade, no SQLITE_BUSY deadlock).
                let mut tx = self.pool.begin().await?;
                let inserted: Option<sql::MessageRow> = sqlx::query_as(sql::INSERT_MESSAGE)
                    .bind(message.dialog_id)
                    .bind(message.sender.as_str())
                    .bind(message.sender_id)
                    .bind(message.text)
                    .bind(tokens_used)
                    .bind(message.idempotency_key)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|err| sql::missing_parent(err, "dialog", message.dialog_id))?;
                let (row, created) = match inserted {
                    Some(row) => {
                        sqlx::query(sql::TOUCH_DIALOG)
                            .bind(message.dialog_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        (row, true)
                    }
                    // Only an idempotency index can make the insert return
                    // nothing, so the key is set and the earlier row exists
                    // (PostgreSQL waits for the conflicting transaction first).
                    None => {
                        let earlier = match message.sender_id {
                            Some(sender_id) => sqlx::query_as(sql::MESSAGE_BY_KEY)
                                .bind(message.sender.as_str())
                                .bind(sender_id)
                                .bind(message.idempotency_key),
                            None => sqlx::query_as(sql::MESSAGE_BY_KEY_WITHOUT_SENDER_ID)
                                .bind(message.sender.as_str())
                                .bind(message.idempotency_key),
                        };
                        let row: sql::MessageRow = earlier.fetch_one(&mut *tx).await?;
                        (row, false)
                    }
                };
                tx.commit().await?;
                Ok((row.try_into()?, created))
            }

            async fn history(
                &self,
                dialog_id: i64,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::Message>, $crate::store::StoreError> {
                use $crate::store::sql;
                let rows: Vec<sql::MessageRow> = sqlx::query_as(sql::HISTORY)
                    .bind(dialog_id)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().rev().map(TryInto::try_into).collect()
            }

            async fn charge(
                &self,
                user_id: i64,
                amount: $crate::store::Money,
            ) -> Result<$crate::store::Charge, $crate::store::StoreError> {
                use $crate::store::sql;
                let after: Option<i64> = sqlx::query_scalar(sql::CHARGE)
                    .bind(user_id)
                    .bind(amount.0)
                    .fetch_optional(&self.pool)
                    .await?;
                let after =
                    $crate::store::Money(after.ok_or($crate::store::StoreError::NotFound {
                        what: "user",
                        id: user_id,
                    })?);
                Ok($crate::store::Charge {
                    before: after + amount,
                    after,
                })
            }

            async fn balance(
                &self,
                user_id: i64,
            ) -> Result<Option<$crate::store::Money>, $crate::store::StoreError> {
                use $crate::store::sql;
                let micros: Option<i64> = sqlx::query_scalar(sql::BALANCE)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(micros.map($crate::store::Money))
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::sql::PING)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_chat_store;
