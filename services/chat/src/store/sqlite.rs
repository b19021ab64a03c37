//! [`SqliteStore`]: opening a SQLite database (a file, or memory) for the
//! chat store, and [`SqliteBatch`], the set-based write statements on
//! SQLite: a batch's rows travel as one JSON array parameter, read with
//! `json_each`. The shared reads are in `sql.rs`.
//!
//! On a file (WAL mode), reads use the pool's other connections while the
//! writer holds one; an in-memory database has one connection, which the
//! writer takes for each batch.

use serde::Serialize;
use sqlx::{Pool, Sqlite, SqliteConnection, SqlitePool, Transaction};

use chatai_kit::db;

use super::batch::{Backend, KeyRef, MessageInsert, UserUpsert};
use super::error::StoreError;
use super::sql::{DialogRow, MessageRow, impl_chat_store, message_columns};
use super::writer::Writer;

/// The chat store on SQLite: the embedded default, one file, no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Writer,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its folder) or an
    /// in-memory database, and applies the migrations — see
    /// [`chatai_kit::db`] for how, and why SQLite migration is retried.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(db::connect_sqlite(url).await?))
    }
}

impl_chat_store!(SqliteStore, SqlitePool, db::SQLITE_MIGRATIONS, SqliteBatch);

/// Upserts users from `[{"i": id, "n": name, "b": balance}, …]`. `WHERE true`
/// keeps SQLite from reading `ON CONFLICT` as a join constraint of the SELECT.
const UPSERT_USERS: &str = "\
    INSERT INTO users (id, name, balance_micros, created_at) \
    SELECT value ->> 'i', value ->> 'n', value ->> 'b', $2 FROM json_each($1) WHERE true \
    ON CONFLICT (id) DO UPDATE SET name = excluded.name \
    WHERE excluded.name IS NOT NULL AND (users.name IS NULL OR users.name <> excluded.name)";

/// Messages holding any key of `$1` (`[{"s", "u", "k"}, …]`, sender ids set)
/// or `$2` (`[{"s", "k"}, …]`, no sender id); each half is spelled so its
/// partial unique index applies.
const FIND_BY_KEYS: &str = "\
    SELECT m.id, m.dialog_id, m.sender, m.sender_id, m.body, m.tokens_used, m.idempotency_key, m.created_at \
    FROM json_each($1) AS j JOIN messages AS m \
    ON m.sender = j.value ->> 's' AND m.sender_id = j.value ->> 'u' AND m.idempotency_key = j.value ->> 'k' \
    WHERE m.sender_id IS NOT NULL AND m.idempotency_key IS NOT NULL \
    UNION ALL \
    SELECT m.id, m.dialog_id, m.sender, m.sender_id, m.body, m.tokens_used, m.idempotency_key, m.created_at \
    FROM json_each($2) AS j JOIN messages AS m \
    ON m.sender = j.value ->> 's' AND m.idempotency_key = j.value ->> 'k' \
    WHERE m.sender_id IS NULL AND m.idempotency_key IS NOT NULL";

const CLEAR_KEYS: &str = "\
    UPDATE messages SET idempotency_key = NULL WHERE id IN (SELECT value FROM json_each($1))";

/// One dialog per user id of the array `$1`.
const INSERT_DIALOGS: &str = "\
    INSERT INTO dialogs (user_id, created_at, updated_at) \
    SELECT value, $2, $2 FROM json_each($1) \
    RETURNING id, user_id, created_at, updated_at";

/// Messages from `[{"d", "s", "u", "b", "t", "k"}, …]`. With no conflict
/// target, either idempotency index skips a row whose key is taken; other
/// errors (foreign key, checks) still fail.
const INSERT_MESSAGES: &str = concat!(
    "INSERT INTO messages (dialog_id, sender, sender_id, body, tokens_used, idempotency_key, created_at) ",
    "SELECT value ->> 'd', value ->> 's', value ->> 'u', value ->> 'b', value ->> 't', value ->> 'k', $2 ",
    "FROM json_each($1) WHERE true ON CONFLICT DO NOTHING RETURNING ",
    message_columns!()
);

/// Moves `updated_at` forward, never back (a clock step must not reorder dialogs).
const TOUCH_DIALOGS: &str = "\
    UPDATE dialogs SET updated_at = CASE WHEN updated_at < $2 THEN $2 ELSE updated_at END \
    WHERE id IN (SELECT value FROM json_each($1))";

/// The balances of the user ids of the array `$1`.
const BALANCES: &str = "\
    SELECT id, balance_micros FROM users WHERE id IN (SELECT value FROM json_each($1))";

/// Subtracts each `{"i": user, "a": micros}` of `$1` (one per user).
const CHARGE: &str = "\
    UPDATE users SET balance_micros = balance_micros - c.amount \
    FROM (SELECT value ->> 'i' AS uid, value ->> 'a' AS amount FROM json_each($1)) AS c \
    WHERE users.id = c.uid RETURNING id, balance_micros";

#[derive(Serialize)]
struct UserJson<'a> {
    i: i64,
    n: Option<&'a str>,
    b: i64,
}

#[derive(Serialize)]
struct KeyJson<'a> {
    s: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<i64>,
    k: &'a str,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    d: i64,
    s: &'a str,
    u: Option<i64>,
    b: &'a str,
    t: i32,
    k: Option<&'a str>,
}

#[derive(Serialize)]
struct ChargeJson {
    i: i64,
    a: i64,
}

/// The JSON array parameter of a batch statement.
fn json<T: Serialize>(rows: &[T]) -> Result<String, sqlx::Error> {
    serde_json::to_string(rows).map_err(|err| sqlx::Error::Encode(Box::new(err)))
}

/// The batch statements on SQLite.
#[derive(Debug)]
pub(super) struct SqliteBatch;

#[async_trait::async_trait]
impl Backend for SqliteBatch {
    type Db = Sqlite;

    async fn begin(pool: &Pool<Sqlite>) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn upsert_users(
        conn: &mut SqliteConnection,
        users: &[UserUpsert],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<UserJson<'_>> = users
            .iter()
            .map(|user| UserJson {
                i: user.id,
                n: user.name.as_deref(),
                b: user.starting_balance.0,
            })
            .collect();
        sqlx::query(UPSERT_USERS)
            .bind(json(&rows)?)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn find_by_keys(
        conn: &mut SqliteConnection,
        keys: &[KeyRef<'_>],
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        let (with_id, without_id): (Vec<KeyJson<'_>>, Vec<KeyJson<'_>>) = keys
            .iter()
            .map(|key| KeyJson {
                s: key.sender,
                u: key.sender_id,
                k: key.key,
            })
            .partition(|key| key.u.is_some());
        sqlx::query_as(FIND_BY_KEYS)
            .bind(json(&with_id)?)
            .bind(json(&without_id)?)
            .fetch_all(conn)
            .await
    }

    async fn clear_keys(
        conn: &mut SqliteConnection,
        message_ids: &[i64],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(CLEAR_KEYS)
            .bind(json(message_ids)?)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn insert_dialogs(
        conn: &mut SqliteConnection,
        user_ids: &[i64],
        now: i64,
    ) -> Result<Vec<DialogRow>, sqlx::Error> {
        sqlx::query_as(INSERT_DIALOGS)
            .bind(json(user_ids)?)
            .bind(now)
            .fetch_all(conn)
            .await
    }

    async fn insert_messages(
        conn: &mut SqliteConnection,
        messages: &[MessageInsert<'_>],
        now: i64,
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        let rows: Vec<MessageJson<'_>> = messages
            .iter()
            .map(|m| MessageJson {
                d: m.dialog_id,
                s: m.sender,
                u: m.sender_id,
                b: m.body,
                t: m.tokens_used,
                k: m.key,
            })
            .collect();
        sqlx::query_as(INSERT_MESSAGES)
            .bind(json(&rows)?)
            .bind(now)
            .fetch_all(conn)
            .await
    }

    async fn touch_dialogs(
        conn: &mut SqliteConnection,
        dialog_ids: &[i64],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(TOUCH_DIALOGS)
            .bind(json(dialog_ids)?)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn balances(
        conn: &mut SqliteConnection,
        user_ids: &[i64],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(BALANCES)
            .bind(json(user_ids)?)
            .fetch_all(conn)
            .await
    }

    async fn charge(
        conn: &mut SqliteConnection,
        charges: &[(i64, i64)],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let rows: Vec<ChargeJson> = charges.iter().map(|&(i, a)| ChargeJson { i, a }).collect();
        sqlx::query_as(CHARGE)
            .bind(json(&rows)?)
            .fetch_all(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChatStore, DialogRef, Money, NewMessage, Sender};

    /// An in-memory store keeps its data across calls (one shared connection).
    #[tokio::test]
    async fn in_memory_store_keeps_data_across_calls() -> Result<(), StoreError> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        store.ensure_user(1, Some("Ann"), Money(10)).await?;
        let dialog = store.create_dialog(1).await?;
        let (message, created) = store
            .append_message(NewMessage {
                dialog: DialogRef::Existing(dialog.id),
                sender: Sender::User,
                sender_id: Some(1),
                text: "hi",
                tokens_used: 0,
                idempotency_key: None,
            })
            .await?;
        assert!(created);
        assert_eq!(store.history(dialog.id, None, 10).await?, vec![message]);
        assert_eq!(store.balance(1).await?, Some(Money(10)));
        Ok(())
    }

    /// Requests waiting together are one batch (on a current-thread
    /// runtime all three are queued before the writer runs): the one naming
    /// an unknown dialog fails alone, the others are stored.
    #[tokio::test]
    async fn waiting_requests_share_a_batch_and_a_bad_one_fails_alone() -> Result<(), StoreError> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        store.ensure_user(1, None, Money(10)).await?;
        let dialog = store.create_dialog(1).await?;
        let message = |dialog_id, text| NewMessage {
            dialog: DialogRef::Existing(dialog_id),
            sender: Sender::User,
            sender_id: Some(1),
            text,
            tokens_used: 0,
            idempotency_key: None,
        };
        let batches = store.writer.batches();
        let (first, bad, second) = tokio::join!(
            store.append_message(message(dialog.id, "one")),
            store.append_message(message(dialog.id + 1, "lost")),
            store.append_message(message(dialog.id, "two")),
        );
        assert_eq!(store.writer.batches(), batches + 1, "one batch");
        assert!(matches!(
            bad,
            Err(StoreError::NotFound { what: "dialog", id }) if id == dialog.id + 1
        ));
        let stored = vec![first?.0, second?.0];
        assert_eq!(store.history(dialog.id, None, 10).await?, stored);
        Ok(())
    }
}
