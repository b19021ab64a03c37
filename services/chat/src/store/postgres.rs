//! [`PostgresStore`]: opening a PostgreSQL pool for the chat store, and
//! [`PostgresBatch`], the set-based write statements on PostgreSQL: a
//! batch's rows travel as typed arrays, one per column, read with `UNNEST`.
//! The shared reads are in `sql.rs`.

use sqlx::{PgConnection, PgPool, Pool, Postgres, Transaction};

use chatai_kit::db;

use super::batch::{Backend, KeyRef, MessageInsert, UserUpsert};
use super::error::StoreError;
use super::sql::{DialogRow, MessageRow, impl_chat_store, message_columns};
use super::writer::Writer;

/// The chat store on PostgreSQL, for production and several replicas.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    writer: Writer,
}

impl PostgresStore {
    /// Opens a pool to `postgres://…` and applies the migrations (under
    /// PostgreSQL's migration lock, so replicas may start together).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(db::connect_postgres(url).await?))
    }
}

impl_chat_store!(
    PostgresStore,
    PgPool,
    db::POSTGRES_MIGRATIONS,
    PostgresBatch
);

/// Upserts users (one row per id: PostgreSQL refuses to update a row twice
/// in one statement).
const UPSERT_USERS: &str = "\
    INSERT INTO users (id, name, balance_micros, created_at) \
    SELECT i, n, b, $4::bigint FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS u(i, n, b) \
    ON CONFLICT (id) DO UPDATE SET name = excluded.name \
    WHERE excluded.name IS NOT NULL AND (users.name IS NULL OR users.name <> excluded.name)";

/// Messages holding any key of ($1 senders, $2 sender ids, $3 keys) or of
/// ($4 senders, $5 keys) without sender id; each half is spelled so its
/// partial unique index applies.
const FIND_BY_KEYS: &str = "\
    SELECT m.id, m.dialog_id, m.sender, m.sender_id, m.body, m.tokens_used, m.idempotency_key, m.created_at \
    FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS k(s, u, key) JOIN messages AS m \
    ON m.sender = k.s AND m.sender_id = k.u AND m.idempotency_key = k.key \
    WHERE m.sender_id IS NOT NULL AND m.idempotency_key IS NOT NULL \
    UNION ALL \
    SELECT m.id, m.dialog_id, m.sender, m.sender_id, m.body, m.tokens_used, m.idempotency_key, m.created_at \
    FROM UNNEST($4::text[], $5::text[]) AS k(s, key) JOIN messages AS m \
    ON m.sender = k.s AND m.idempotency_key = k.key \
    WHERE m.sender_id IS NULL AND m.idempotency_key IS NOT NULL";

const CLEAR_KEYS: &str = "\
    UPDATE messages SET idempotency_key = NULL WHERE id = ANY($1::bigint[])";

/// One dialog per user id of `$1`.
const INSERT_DIALOGS: &str = "\
    INSERT INTO dialogs (user_id, created_at, updated_at) \
    SELECT u, $2::bigint, $2::bigint FROM UNNEST($1::bigint[]) AS d(u) \
    RETURNING id, user_id, created_at, updated_at";

/// Messages, one array per column. With no conflict target, either
/// idempotency index skips a row whose key is taken (waiting for the
/// transaction that took it); other errors (foreign key, checks) still fail.
const INSERT_MESSAGES: &str = concat!(
    "INSERT INTO messages (dialog_id, sender, sender_id, body, tokens_used, idempotency_key, created_at) ",
    "SELECT d, s, u, b, t, k, $7::bigint ",
    "FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::text[]) AS r(d, s, u, b, t, k) ",
    "ON CONFLICT DO NOTHING RETURNING ",
    message_columns!()
);

/// Moves `updated_at` forward, never back (a clock step must not reorder dialogs).
const TOUCH_DIALOGS: &str = "\
    UPDATE dialogs SET updated_at = GREATEST(updated_at, $2::bigint) WHERE id = ANY($1::bigint[])";

/// The balances of the user ids of `$1`.
const BALANCES: &str = "SELECT id, balance_micros FROM users WHERE id = ANY($1::bigint[])";

/// Subtracts each ($1 user, $2 micros) pair (one per user).
const CHARGE: &str = "\
    UPDATE users SET balance_micros = users.balance_micros - c.amount \
    FROM UNNEST($1::bigint[], $2::bigint[]) AS c(uid, amount) \
    WHERE users.id = c.uid RETURNING users.id, users.balance_micros";

/// The batch statements on PostgreSQL.
#[derive(Debug)]
pub(super) struct PostgresBatch;

#[async_trait::async_trait]
impl Backend for PostgresBatch {
    type Db = Postgres;

    async fn begin(pool: &Pool<Postgres>) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    async fn upsert_users(
        conn: &mut PgConnection,
        users: &[UserUpsert],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = users.iter().map(|user| user.id).collect();
        let names: Vec<Option<&str>> = users.iter().map(|user| user.name.as_deref()).collect();
        let balances: Vec<i64> = users.iter().map(|user| user.starting_balance.0).collect();
        sqlx::query(UPSERT_USERS)
            .bind(ids)
            .bind(names)
            .bind(balances)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn find_by_keys(
        conn: &mut PgConnection,
        keys: &[KeyRef<'_>],
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        let mut senders = Vec::new();
        let mut sender_ids = Vec::new();
        let mut with_id = Vec::new();
        let mut bare_senders = Vec::new();
        let mut without_id = Vec::new();
        for key in keys {
            match key.sender_id {
                Some(sender_id) => {
                    senders.push(key.sender);
                    sender_ids.push(sender_id);
                    with_id.push(key.key);
                }
                None => {
                    bare_senders.push(key.sender);
                    without_id.push(key.key);
                }
            }
        }
        sqlx::query_as(FIND_BY_KEYS)
            .bind(senders)
            .bind(sender_ids)
            .bind(with_id)
            .bind(bare_senders)
            .bind(without_id)
            .fetch_all(conn)
            .await
    }

    async fn clear_keys(conn: &mut PgConnection, message_ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query(CLEAR_KEYS)
            .bind(message_ids)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn insert_dialogs(
        conn: &mut PgConnection,
        user_ids: &[i64],
        now: i64,
    ) -> Result<Vec<DialogRow>, sqlx::Error> {
        sqlx::query_as(INSERT_DIALOGS)
            .bind(user_ids)
            .bind(now)
            .fetch_all(conn)
            .await
    }

    async fn insert_messages(
        conn: &mut PgConnection,
        messages: &[MessageInsert<'_>],
        now: i64,
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        let dialog_ids: Vec<i64> = messages.iter().map(|m| m.dialog_id).collect();
        let senders: Vec<&str> = messages.iter().map(|m| m.sender).collect();
        let sender_ids: Vec<Option<i64>> = messages.iter().map(|m| m.sender_id).collect();
        let bodies: Vec<&str> = messages.iter().map(|m| m.body).collect();
        let tokens: Vec<i32> = messages.iter().map(|m| m.tokens_used).collect();
        let keys: Vec<Option<&str>> = messages.iter().map(|m| m.key).collect();
        sqlx::query_as(INSERT_MESSAGES)
            .bind(dialog_ids)
            .bind(senders)
            .bind(sender_ids)
            .bind(bodies)
            .bind(tokens)
            .bind(keys)
            .bind(now)
            .fetch_all(conn)
            .await
    }

    async fn touch_dialogs(
        conn: &mut PgConnection,
        dialog_ids: &[i64],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(TOUCH_DIALOGS)
            .bind(dialog_ids)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn balances(
        conn: &mut PgConnection,
        user_ids: &[i64],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(BALANCES)
            .bind(user_ids)
            .fetch_all(conn)
            .await
    }

    async fn charge(
        conn: &mut PgConnection,
        charges: &[(i64, i64)],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let users: Vec<i64> = charges.iter().map(|&(user, _)| user).collect();
        let amounts: Vec<i64> = charges.iter().map(|&(_, amount)| amount).collect();
        sqlx::query_as(CHARGE)
            .bind(users)
            .bind(amounts)
            .fetch_all(conn)
            .await
    }
}
