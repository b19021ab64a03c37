//! The SQL, written once for both databases, and the macro that turns it into
//! a [`NotificationStore`](super::NotificationStore) implementation for each
//! pool type.
//!
//! Both SQLite and PostgreSQL accept `$n` placeholders, and the schema stores
//! times as BIGINT milliseconds, so every statement below runs unchanged on
//! both. The backend modules (`sqlite.rs`, `postgres.rs`) only open pools,
//! migrate, and invoke [`impl_notification_store!`].

use chatai_kit::identity::Role;

use super::error::StoreError;
use super::types::{ConnectionEvent, ConnectionKind, ConnectionStats, StoredConnectionEvent};

/// One connection event; run once per event of a batch, inside one
/// transaction (the statement is prepared once per connection and reused).
pub(super) const INSERT_CONNECTION_EVENT: &str = "\
    INSERT INTO connection_events \
    (connection_id, gateway_id, role, principal_id, kind, at_ms, duration_ms, close_code) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Events at or after `$1`, oldest first, at most `$2` (index
/// `connection_events_at_ms`; `id` orders events of the same millisecond).
pub(super) const CONNECTION_EVENTS_SINCE: &str = "\
    SELECT id, connection_id, gateway_id, role, principal_id, kind, at_ms, duration_ms, close_code \
    FROM connection_events WHERE at_ms >= $1 ORDER BY at_ms, id LIMIT $2";

/// What the analytics need of the events at or after `$1`, in one pass
/// over the `connection_events_at_ms` range: connections opened; connections
/// closed; of those, the ones with a duration and its sum; and the ones
/// closed with an error code (any code but 1000 normal, 1001 going away and
/// 4004 replaced; a close without a code — the client closed, or the socket
/// went away — is no error of the server's). Every sum is cast to BIGINT:
/// PostgreSQL's `SUM(bigint)` is `NUMERIC`.
pub(super) const CONNECTION_STATS_SINCE: &str = "\
    SELECT \
    CAST(COALESCE(SUM(CASE WHEN kind = 'connect' THEN 1 ELSE 0 END), 0) AS BIGINT) AS opened, \
    CAST(COALESCE(SUM(CASE WHEN kind = 'disconnect' THEN 1 ELSE 0 END), 0) AS BIGINT) AS closed, \
    CAST(COALESCE(SUM(CASE WHEN duration_ms IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS timed, \
    CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS duration_ms, \
    CAST(COALESCE(SUM(CASE WHEN close_code IS NOT NULL AND close_code NOT IN (1000, 1001, 4004) \
        THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors \
    FROM connection_events WHERE at_ms >= $1";

/// Deletes up to `$2` of the oldest events before `$1` (a bounded batch, so
/// a large backlog never holds the write lock for long). A subquery, since
/// neither database's `DELETE` takes a `LIMIT` here.
pub(super) const TRIM_CONNECTION_EVENTS: &str = "\
    DELETE FROM connection_events WHERE id IN \
    (SELECT id FROM connection_events WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)";

pub(super) const PING: &str = "SELECT 1";

/// The row of [`CONNECTION_STATS_SINCE`].
#[derive(sqlx::FromRow)]
pub(super) struct ConnectionStatsRow {
    opened: i64,
    closed: i64,
    timed: i64,
    duration_ms: i64,
    errors: i64,
}

impl From<ConnectionStatsRow> for ConnectionStats {
    fn from(row: ConnectionStatsRow) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        ConnectionStats {
            opened: count(row.opened),
            closed: count(row.closed),
            timed: count(row.timed),
            duration_ms: count(row.duration_ms),
            errors: count(row.errors),
        }
    }
}

/// A row of `connection_events`, as both databases return it.
#[derive(sqlx::FromRow)]
pub(super) struct ConnectionEventRow {
    id: i64,
    connection_id: String,
    gateway_id: String,
    role: String,
    principal_id: i64,
    kind: String,
    at_ms: i64,
    duration_ms: Option<i64>,
    close_code: Option<i32>,
}

impl TryFrom<ConnectionEventRow> for StoredConnectionEvent {
    type Error = StoreError;

    fn try_from(row: ConnectionEventRow) -> Result<Self, StoreError> {
        let invalid =
            |column: &'static str, value: String| StoreError::InvalidStoredValue { column, value };
        let role = match row.role.parse() {
            Ok(role @ (Role::User | Role::Operator | Role::Admin)) => role,
            _ => return Err(invalid("connection_events.role", row.role)),
        };
        let kind = ConnectionKind::parse(&row.kind)
            .ok_or_else(|| invalid("connection_events.kind", row.kind.clone()))?;
        let close_code = row
            .close_code
            .map(|code| {
                u16::try_from(code)
                    .map_err(|_| invalid("connection_events.close_code", code.to_string()))
            })
            .transpose()?;
        Ok(StoredConnectionEvent {
            id: row.id,
            event: ConnectionEvent {
                connection_id: row.connection_id,
                gateway_id: row.gateway_id,
                role,
                principal_id: row.principal_id,
                kind,
                at_ms: row.at_ms,
                duration_ms: row.duration_ms,
                close_code,
            },
        })
    }
}

/// Runs a statement (or a transaction) and records how long it took in
/// `chatai_db_statement_duration_seconds{service="notification", statement}`.
pub(super) async fn timed<F: Future>(statement: &'static str, run: F) -> F::Output {
    chatai_kit::metrics::timed_statement("notification", statement, run).await
}

/// Implements `from_pool`, `pool` and
/// [`NotificationStore`](super::NotificationStore) for a backend struct with a
/// `pool: $pool` field, from the statements above. Migrating is each
/// backend's own business (SQLite needs more care than PostgreSQL).
macro_rules! impl_notification_store {
    ($store:ident, $pool:ty) => {
        impl $store {
            /// Wraps an existing pool. Does not migrate: call `migrate` unless
            /// the schema is known current.
            pub fn from_pool(pool: $pool) -> Self {
                Self { pool }
            }

            /// The underlying pool, e.g. to close it on shutdown.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::NotificationStore for $store {
            async fn record_connections(
                &self,
                events: &[$crate::store::ConnectionEvent],
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql;
                if events.is_empty() {
                    return Ok(());
                }
                // The insert is the first statement, so on SQLite the
                // transaction takes the write lock at once (no read-then-upgrade).
                let batch = async {
                    let mut tx = self.pool.begin().await?;
                    for event in events {
                        sqlx::query(sql::INSERT_CONNECTION_EVENT)
                            .bind(&event.connection_id)
                            .bind(&event.gateway_id)
                            .bind(event.role.as_str())
                            .bind(event.principal_id)
                            .bind(event.kind.as_str())
                            .bind(event.at_ms)
                            .bind(event.duration_ms)
                            .bind(event.close_code.map(i32::from))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                };
                sql::timed("record_connections", batch).await?;
                Ok(())
            }

            async fn connection_events(
                &self,
                since_ms: i64,
                limit: u32,
            ) -> Result<Vec<$crate::store::StoredConnectionEvent>, $crate::store::StoreError> {
                use $crate::store::sql;
                let rows: Vec<sql::ConnectionEventRow> = sql::timed(
                    "connection_events",
                    sqlx::query_as(sql::CONNECTION_EVENTS_SINCE)
                        .bind(since_ms)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool),
                )
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn connection_stats(
                &self,
                since_ms: i64,
            ) -> Result<$crate::store::ConnectionStats, $crate::store::StoreError> {
                use $crate::store::sql;
                let row: sql::ConnectionStatsRow = sql::timed(
                    "connection_stats",
                    sqlx::query_as(sql::CONNECTION_STATS_SINCE)
                        .bind(since_ms)
                        .fetch_one(&self.pool),
                )
                .await?;
                Ok(row.into())
            }

            async fn trim_connection_events(
                &self,
                before_ms: i64,
                limit: u32,
            ) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::sql;
                let done = sql::timed(
                    "trim_connection_events",
                    sqlx::query(sql::TRIM_CONNECTION_EVENTS)
                        .bind(before_ms)
                        .bind(i64::from(limit))
                        .execute(&self.pool),
                )
                .await?;
                Ok(done.rows_affected())
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

pub(super) use impl_notification_store;
