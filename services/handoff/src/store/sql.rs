//! The SQL, written once for both databases, and the macro that turns it into
//! a [`HandoffStore`](super::HandoffStore) implementation for each pool type.
//!
//! Both SQLite and PostgreSQL accept `$n` placeholders, `RETURNING` and
//! partial indexes, and the schema stores times as BIGINT milliseconds, so
//! every statement below runs unchanged on both. The backend modules
//! (`sqlite.rs`, `postgres.rs`) only open pools, migrate, and invoke
//! [`impl_handoff_store!`].

use super::error::StoreError;
use super::types::{Handoff, HandoffState, Priority};

/// The columns every statement returns, in [`HandoffRow`]'s order.
macro_rules! columns {
    () => {
        "id, dialog_id, user_id, operator_id, operator_name, priority, reason, state, \
         requested_at, requeued_at, assigned_at, first_reply_at, completed_at, resolution"
    };
}

/// A new queued handoff. The partial unique index
/// `handoffs_one_active_per_dialog` refuses a second active one per dialog.
pub(super) const CREATE: &str = concat!(
    "INSERT INTO handoffs (dialog_id, user_id, priority, reason, state, requested_at) \
     VALUES ($1, $2, $3, $4, 'queued', $5) RETURNING ",
    columns!()
);

pub(super) const ASSIGN: &str = concat!(
    "UPDATE handoffs SET state = 'assigned', operator_id = $2, operator_name = $3, \
     assigned_at = $4, first_reply_at = NULL \
     WHERE id = $1 AND state = 'queued' RETURNING ",
    columns!()
);

/// Only the first reply counts, and only from the operator holding it.
pub(super) const FIRST_REPLY: &str = concat!(
    "UPDATE handoffs SET first_reply_at = $3 \
     WHERE id = $1 AND state = 'assigned' AND operator_id = $2 AND first_reply_at IS NULL \
     RETURNING ",
    columns!()
);

pub(super) const REQUEUE: &str = concat!(
    "UPDATE handoffs SET state = 'queued', operator_id = NULL, operator_name = NULL, \
     assigned_at = NULL, first_reply_at = NULL, requeued_at = $2 \
     WHERE id = $1 AND state = 'assigned' RETURNING ",
    columns!()
);

pub(super) const COMPLETE: &str = concat!(
    "UPDATE handoffs SET state = 'completed', completed_at = $2, resolution = $3 \
     WHERE id = $1 AND state IN ('queued', 'assigned') RETURNING ",
    columns!()
);

pub(super) const RETURN_TO_ASSISTANT: &str = concat!(
    "UPDATE handoffs SET state = 'returned', completed_at = $2, resolution = $3 \
     WHERE id = $1 AND state = 'queued' RETURNING ",
    columns!()
);

/// Only from the operator who holds it: a transfer that crossed a take-back
/// or a completion changes nothing.
pub(super) const TRANSFER: &str = concat!(
    "UPDATE handoffs SET operator_id = $3, operator_name = $4, assigned_at = $5, \
     first_reply_at = NULL \
     WHERE id = $1 AND state = 'assigned' AND operator_id = $2 RETURNING ",
    columns!()
);

/// The user withdrew the request while it waited: back to the assistant.
pub(super) const CANCEL: &str = concat!(
    "UPDATE handoffs SET state = 'returned', completed_at = $2, resolution = $3 \
     WHERE id = $1 AND state = 'queued' RETURNING ",
    columns!()
);

pub(super) const HANDOFF: &str = concat!("SELECT ", columns!(), " FROM handoffs WHERE id = $1");

/// Spelled like the partial index `handoffs_one_active_per_dialog`, so it applies.
pub(super) const ACTIVE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM handoffs WHERE state IN ('queued', 'assigned') ORDER BY id"
);

/// Index `handoffs_completed_at`; admin completions of queued handoffs (no
/// operator, no handling) are left out.
pub(super) const RECENT_HANDLING: &str = "\
    SELECT completed_at - assigned_at FROM handoffs \
    WHERE state = 'completed' AND assigned_at IS NOT NULL \
    ORDER BY completed_at DESC, id DESC LIMIT $1";

pub(super) const PING: &str = "SELECT 1";

/// Turns a unique violation on insert into "the dialog has an active handoff".
pub(super) fn active_exists(err: sqlx::Error, dialog_id: i64) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::ActiveExists { dialog_id }
        }
        _ => StoreError::Database(err),
    }
}

/// A transition that updated no row: the handoff is missing or elsewhere.
pub(super) fn transition(
    row: Option<HandoffRow>,
    id: i64,
    expected: &'static str,
) -> Result<Handoff, StoreError> {
    row.ok_or(StoreError::NotInState { id, expected })?
        .try_into()
}

/// A row of `handoffs`, as both databases return it.
#[derive(sqlx::FromRow)]
pub(super) struct HandoffRow {
    id: i64,
    dialog_id: i64,
    user_id: i64,
    operator_id: Option<i64>,
    operator_name: Option<String>,
    priority: String,
    reason: String,
    state: String,
    requested_at: i64,
    requeued_at: Option<i64>,
    assigned_at: Option<i64>,
    first_reply_at: Option<i64>,
    completed_at: Option<i64>,
    resolution: Option<String>,
}

impl TryFrom<HandoffRow> for Handoff {
    type Error = StoreError;

    fn try_from(row: HandoffRow) -> Result<Handoff, StoreError> {
        let priority =
            Priority::parse(&row.priority).ok_or_else(|| StoreError::InvalidStoredValue {
                column: "handoffs.priority",
                value: row.priority.clone(),
            })?;
        let state =
            HandoffState::parse(&row.state).ok_or_else(|| StoreError::InvalidStoredValue {
                column: "handoffs.state",
                value: row.state.clone(),
            })?;
        Ok(Handoff {
            id: row.id,
            dialog_id: row.dialog_id,
            user_id: row.user_id,
            operator_id: row.operator_id,
            operator_name: row.operator_name,
            priority,
            reason: row.reason,
            state,
            requested_at_ms: row.requested_at,
            requeued_at_ms: row.requeued_at,
            assigned_at_ms: row.assigned_at,
            first_reply_at_ms: row.first_reply_at,
            completed_at_ms: row.completed_at,
            resolution: row.resolution,
        })
    }
}

/// Implements `from_pool`, `pool` and [`HandoffStore`](super::HandoffStore)
/// for a backend struct with a `pool: $pool` field, from the statements
/// above: each statement runs on a connection taken from the pool.
macro_rules! impl_handoff_store {
    ($store:ident, $pool:ty) => {
        impl $store {
            /// Wraps an existing pool. Does not migrate.
            pub fn from_pool(pool: $pool) -> Self {
                Self { pool }
            }

            /// The underlying pool, e.g. to close it on shutdown.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// A connection of the pool for one statement.
            async fn connection(
                &self,
            ) -> Result<
                sqlx::pool::PoolConnection<<$pool as $crate::store::sql::PoolOf>::Database>,
                $crate::store::StoreError,
            > {
                Ok(self.pool.acquire().await?)
            }
        }

        $crate::store::sql::impl_statements!($store);
    };
}

/// The database a pool type connects to (for [`impl_handoff_store!`]).
pub(crate) trait PoolOf {
    type Database: sqlx::Database;
}

impl<DB: sqlx::Database> PoolOf for sqlx::Pool<DB> {
    type Database = DB;
}

/// Runs a statement and records how long it took in
/// `chatai_db_statement_duration_seconds{service="handoff", statement}`.
pub(super) async fn timed<F: Future>(statement: &'static str, run: F) -> F::Output {
    chatai_kit::metrics::timed_statement(crate::metrics::SERVICE, statement, run).await
}

/// Implements [`HandoffStore`](super::HandoffStore) from the statements above
/// for a struct with an `async fn connection(&self)` that returns what the
/// statement runs on (anything that dereferences to a connection): a pool's
/// connection, or the one connection a leader holds
/// ([`HeldStore`](super::HeldStore)). Every statement but the health ping is
/// timed in `chatai_db_statement_duration_seconds{service="handoff",
/// statement}` (the statement named after its method), the connection's
/// wait not included.
macro_rules! impl_statements {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::HandoffStore for $store {
            async fn create(
                &self,
                new: $crate::store::NewHandoff<'_>,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: sql::HandoffRow = sql::timed(
                    "create",
                    sqlx::query_as(sql::CREATE)
                        .bind(new.dialog_id)
                        .bind(new.user_id)
                        .bind(new.priority.as_str())
                        .bind(new.reason)
                        .bind(new.requested_at_ms)
                        .fetch_one(&mut *connection),
                )
                .await
                .map_err(|err| sql::active_exists(err, new.dialog_id))?;
                row.try_into()
            }

            async fn assign(
                &self,
                id: i64,
                operator_id: i64,
                operator_name: &str,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "assign",
                    sqlx::query_as(sql::ASSIGN)
                        .bind(id)
                        .bind(operator_id)
                        .bind(operator_name)
                        .bind(at_ms)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "queued")
            }

            async fn record_first_reply(
                &self,
                id: i64,
                operator_id: i64,
                at_ms: i64,
            ) -> Result<Option<$crate::store::Handoff>, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "record_first_reply",
                    sqlx::query_as(sql::FIRST_REPLY)
                        .bind(id)
                        .bind(operator_id)
                        .bind(at_ms)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn requeue(
                &self,
                id: i64,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "requeue",
                    sqlx::query_as(sql::REQUEUE)
                        .bind(id)
                        .bind(at_ms)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "assigned")
            }

            async fn complete(
                &self,
                id: i64,
                resolution: &str,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "complete",
                    sqlx::query_as(sql::COMPLETE)
                        .bind(id)
                        .bind(at_ms)
                        .bind(resolution)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "queued or assigned")
            }

            async fn return_to_assistant(
                &self,
                id: i64,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "return_to_assistant",
                    sqlx::query_as(sql::RETURN_TO_ASSISTANT)
                        .bind(id)
                        .bind(at_ms)
                        .bind($crate::store::RETURNED_TO_ASSISTANT)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "queued")
            }

            async fn transfer(
                &self,
                id: i64,
                from_operator: i64,
                to_operator: i64,
                to_name: &str,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "transfer",
                    sqlx::query_as(sql::TRANSFER)
                        .bind(id)
                        .bind(from_operator)
                        .bind(to_operator)
                        .bind(to_name)
                        .bind(at_ms)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "assigned to the transferring operator")
            }

            async fn cancel(
                &self,
                id: i64,
                at_ms: i64,
            ) -> Result<$crate::store::Handoff, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "cancel",
                    sqlx::query_as(sql::CANCEL)
                        .bind(id)
                        .bind(at_ms)
                        .bind($crate::store::CANCELLED)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                sql::transition(row, id, "queued")
            }

            async fn handoff(
                &self,
                id: i64,
            ) -> Result<Option<$crate::store::Handoff>, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let row: Option<sql::HandoffRow> = sql::timed(
                    "handoff",
                    sqlx::query_as(sql::HANDOFF)
                        .bind(id)
                        .fetch_optional(&mut *connection),
                )
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn active(
                &self,
            ) -> Result<Vec<$crate::store::Handoff>, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let rows: Vec<sql::HandoffRow> = sql::timed(
                    "active",
                    sqlx::query_as(sql::ACTIVE).fetch_all(&mut *connection),
                )
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn recent_handling_ms(
                &self,
                limit: u32,
            ) -> Result<Vec<i64>, $crate::store::StoreError> {
                use $crate::store::sql;
                let mut connection = self.connection().await?;
                let durations: Vec<i64> = sql::timed(
                    "recent_handling_ms",
                    sqlx::query_scalar(sql::RECENT_HANDLING)
                        .bind(i64::from(limit))
                        .fetch_all(&mut *connection),
                )
                .await?;
                Ok(durations)
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::sql::PING)
                    .execute(&mut *self.connection().await?)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_handoff_store;
pub(crate) use impl_statements;
