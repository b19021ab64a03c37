//! The SQL both databases share — the reads, on the pool — the row types,
//! and the macro that turns them, with the store's writer, into a
//! [`ChatStore`](super::ChatStore) implementation for each pool type.
//!
//! Both SQLite and PostgreSQL accept `$n` placeholders, `RETURNING` and
//! `ON CONFLICT`, and the schema stores times as BIGINT milliseconds and money
//! as BIGINT micros, so every statement here runs unchanged on both. Writes
//! go through the writer (`writer.rs`) in batches (`batch.rs`), whose
//! set-based statements each backend module spells its own way.

use std::time::{SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::types::{Dialog, Message, Money, Sender, User};

/// The columns of a message row, in [`MessageRow`]'s order.
macro_rules! message_columns {
    () => {
        "id, dialog_id, sender, sender_id, body, tokens_used, idempotency_key, created_at"
    };
}
pub(super) use message_columns;

pub(super) const USER: &str = "\
    SELECT id, name, balance_micros, created_at FROM users WHERE id = $1";

pub(super) const DIALOG: &str = "\
    SELECT id, user_id, created_at, updated_at FROM dialogs WHERE id = $1";

/// The newest `$3` messages below id `$2` (index `messages_dialog_id_id`,
/// bounded by the LIMIT); the caller reverses them.
pub(super) const HISTORY: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE dialog_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
);

/// A user's dialogs below id `$2`, newest first (index `dialogs_user_id`,
/// which on SQLite also orders by id — the rowid; on PostgreSQL the few
/// dialogs of one user are sorted after the index lookup).
pub(super) const USER_DIALOGS: &str = "\
    SELECT id, user_id, created_at, updated_at FROM dialogs \
    WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

/// Every dialog below id `$1`, newest first (the primary key, bounded by
/// the LIMIT).
pub(super) const ALL_DIALOGS: &str = "\
    SELECT id, user_id, created_at, updated_at FROM dialogs \
    WHERE id < $1 ORDER BY id DESC LIMIT $2";

pub(super) const BALANCE: &str = "SELECT balance_micros FROM users WHERE id = $1";

pub(super) const PING: &str = "SELECT 1";

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub(super) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
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
    pub id: i64,
    pub user_id: i64,
    pub created_at: i64,
    pub updated_at: i64,
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

/// A message as stored, its idempotency key included (the batch matches
/// rows to requests by it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct MessageRow {
    pub id: i64,
    pub dialog_id: i64,
    pub sender: String,
    pub sender_id: Option<i64>,
    pub body: String,
    pub tokens_used: i32,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
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
/// for a backend struct with fields `pool: $pool` and `writer: Writer`:
/// reads run the statements above on the pool; writes go to the writer.
///
/// `$migrator` is that backend's embedded migrations (in `chatai_kit::db`);
/// `$backend` the [`Backend`](super::batch::Backend) of its batches.
macro_rules! impl_chat_store {
    ($store:ident, $pool:ty, $migrator:path, $backend:ty) => {
        impl $store {
            /// Wraps an existing pool and starts the store's writer task on
            /// the current Tokio runtime (it stops when the last clone of
            /// the store is dropped). Does not migrate: call
            /// [`migrate`](Self::migrate) unless the schema is known current.
            ///
            /// # Panics
            /// Outside a Tokio runtime.
            pub fn from_pool(pool: $pool) -> Self {
                let writer = $crate::store::writer::Writer::spawn::<$backend>(pool.clone());
                Self { pool, writer }
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
                self.writer
                    .ensure_user(user_id, name, starting_balance)
                    .await
            }

            async fn user(
                &self,
                user_id: i64,
            ) -> Result<Option<$crate::store::User>, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: Option<sql::UserRow> = chatai_kit::metrics::timed_statement(
                    "chat",
                    "user",
                    sqlx::query_as(sql::USER)
                        .bind(user_id)
                        .fetch_optional(&self.pool),
                )
                .await?;
                Ok(row.map(Into::into))
            }

            async fn create_dialog(
                &self,
                user_id: i64,
            ) -> Result<$crate::store::Dialog, $crate::store::StoreError> {
                self.writer.create_dialog(user_id).await
            }

            async fn dialog(
                &self,
                dialog_id: i64,
            ) -> Result<Option<$crate::store::Dialog>, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: Option<sql::DialogRow> = chatai_kit::metrics::timed_statement(
                    "chat",
                    "dialog",
                    sqlx::query_as(sql::DIALOG)
                        .bind(dialog_id)
                        .fetch_optional(&self.pool),
                )
                .await?;
                Ok(row.map(Into::into))
            }

            async fn append_message(
                &self,
                message: $crate::store::NewMessage<'_>,
            ) -> Result<($crate::store::Message, bool), $crate::store::StoreError> {
                let (message, created, _) = self.writer.append(message, None, None).await?;
                Ok((message, created))
            }

            async fn append_funded_message(
                &self,
                message: $crate::store::NewMessage<'_>,
                payer: i64,
            ) -> Result<($crate::store::Message, bool), $crate::store::StoreError> {
                let (message, created, _) = self.writer.append(message, None, Some(payer)).await?;
                Ok((message, created))
            }

            async fn append_answer(
                &self,
                answer: $crate::store::NewMessage<'_>,
                charge: Option<(i64, $crate::store::Money)>,
            ) -> Result<
                ($crate::store::Message, Option<$crate::store::Charge>),
                $crate::store::StoreError,
            > {
                let (message, _, charge) = self.writer.append(answer, charge, None).await?;
                Ok((message, charge))
            }

            async fn history(
                &self,
                dialog_id: i64,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::Message>, $crate::store::StoreError> {
                use $crate::store::sql;
                let rows: Vec<sql::MessageRow> = chatai_kit::metrics::timed_statement(
                    "chat",
                    "history",
                    sqlx::query_as(sql::HISTORY)
                        .bind(dialog_id)
                        .bind(before.unwrap_or(i64::MAX))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool),
                )
                .await?;
                rows.into_iter().rev().map(TryInto::try_into).collect()
            }

            async fn list_dialogs(
                &self,
                user_id: Option<i64>,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::Dialog>, $crate::store::StoreError> {
                use $crate::store::sql;
                let before = before.unwrap_or(i64::MAX);
                let rows: Vec<sql::DialogRow> = match user_id {
                    Some(user_id) => {
                        chatai_kit::metrics::timed_statement(
                            "chat",
                            "user_dialogs",
                            sqlx::query_as(sql::USER_DIALOGS)
                                .bind(user_id)
                                .bind(before)
                                .bind(i64::from(limit))
                                .fetch_all(&self.pool),
                        )
                        .await?
                    }
                    None => {
                        chatai_kit::metrics::timed_statement(
                            "chat",
                            "all_dialogs",
                            sqlx::query_as(sql::ALL_DIALOGS)
                                .bind(before)
                                .bind(i64::from(limit))
                                .fetch_all(&self.pool),
                        )
                        .await?
                    }
                };
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn charge(
                &self,
                user_id: i64,
                amount: $crate::store::Money,
            ) -> Result<$crate::store::Charge, $crate::store::StoreError> {
                self.writer.charge(user_id, amount).await
            }

            async fn balance(
                &self,
                user_id: i64,
            ) -> Result<Option<$crate::store::Money>, $crate::store::StoreError> {
                use $crate::store::sql;
                let micros: Option<i64> = chatai_kit::metrics::timed_statement(
                    "chat",
                    "balance",
                    sqlx::query_scalar(sql::BALANCE)
                        .bind(user_id)
                        .fetch_optional(&self.pool),
                )
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
