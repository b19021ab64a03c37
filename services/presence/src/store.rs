//! The presence service's storage: the status each operator chose, kept
//! across restarts (table `operator_statuses`, migration `0004_presence`).
//! Connections, gateway leases and loads are not stored — gateways and the
//! handoff service report them again after a restart — but a chosen `away`
//! must not come back as `available`.
//!
//! [`StatusStore`] is the seam; [`SqlStatusStore`] implements it on the
//! shared database (SQLite or PostgreSQL, the same SQL for both).

use std::collections::HashMap;

use chatai_kit::db::{self, Database, DbError};

use crate::model::ChosenStatus;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] DbError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("operator {operator_id} has an unknown stored status {text:?}")]
    UnknownStatus { operator_id: i64, text: String },
}

/// Where chosen statuses are kept.
#[async_trait::async_trait]
pub trait StatusStore: Send + Sync + 'static {
    /// Every operator's stored choice.
    async fn chosen_statuses(&self) -> Result<HashMap<i64, ChosenStatus>, StoreError>;

    /// Records `operator_id`'s choice (the latest wins).
    async fn save_chosen(
        &self,
        operator_id: i64,
        status: ChosenStatus,
        at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Cheap liveness check for health endpoints.
    async fn ping(&self) -> Result<(), StoreError>;
}

const SELECT_ALL: &str = "SELECT operator_id, chosen_status FROM operator_statuses";
/// An upsert both databases spell the same way.
const UPSERT: &str = "\
    INSERT INTO operator_statuses (operator_id, chosen_status, updated_at) VALUES ($1, $2, $3) \
    ON CONFLICT (operator_id) DO UPDATE \
    SET chosen_status = excluded.chosen_status, updated_at = excluded.updated_at";
const PING: &str = "SELECT 1";

/// The store on the shared database.
#[derive(Debug, Clone)]
pub struct SqlStatusStore {
    db: Database,
}

impl SqlStatusStore {
    /// Opens the database `url` names and applies the migrations it lacks
    /// (see [`chatai_kit::db::connect`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(SqlStatusStore {
            db: db::connect(url).await?,
        })
    }
}

/// Runs a statement and records how long it took in
/// `chatai_db_statement_duration_seconds{service="presence", statement}`.
async fn timed<F: Future>(statement: &'static str, run: F) -> F::Output {
    chatai_kit::metrics::timed_statement(crate::metrics::SERVICE, statement, run).await
}

/// Runs the same statement on whichever pool the store holds.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

#[async_trait::async_trait]
impl StatusStore for SqlStatusStore {
    async fn chosen_statuses(&self) -> Result<HashMap<i64, ChosenStatus>, StoreError> {
        let rows: Vec<(i64, String)> = on_pool!(&self.db, |pool| {
            timed(
                "chosen_statuses",
                sqlx::query_as(SELECT_ALL).fetch_all(pool),
            )
            .await?
        });
        rows.into_iter()
            .map(|(operator_id, text)| match ChosenStatus::parse(&text) {
                Some(status) => Ok((operator_id, status)),
                None => Err(StoreError::UnknownStatus { operator_id, text }),
            })
            .collect()
    }

    async fn save_chosen(
        &self,
        operator_id: i64,
        status: ChosenStatus,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool| {
            let upsert = sqlx::query(UPSERT)
                .bind(operator_id)
                .bind(status.as_str())
                .bind(at_ms)
                .execute(pool);
            timed("save_chosen", upsert).await.map(drop)?
        });
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool| {
            sqlx::query(PING).execute(pool).await.map(drop)?
        });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod memory {
    //! The store in memory, for the actor's tests on the paused clock.

    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct MemoryStatusStore {
        pub rows: Mutex<HashMap<i64, ChosenStatus>>,
        /// Makes every write fail, as a database that went away would.
        pub failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl StatusStore for MemoryStatusStore {
        async fn chosen_statuses(&self) -> Result<HashMap<i64, ChosenStatus>, StoreError> {
            Ok(self.rows.lock().expect("not poisoned").clone())
        }

        async fn save_chosen(
            &self,
            operator_id: i64,
            status: ChosenStatus,
            _at_ms: i64,
        ) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Query(sqlx::Error::PoolTimedOut));
            }
            self.rows
                .lock()
                .expect("not poisoned")
                .insert(operator_id, status);
            Ok(())
        }

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A choice is stored, replaced by the next one, and read back whole —
    /// on SQLite and on the test PostgreSQL server.
    #[tokio::test]
    async fn choices_are_kept_and_the_latest_wins() {
        let sqlite = chatai_testkit::TestDatabase::sqlite();
        let postgres = chatai_testkit::TestDatabase::postgres().await;
        for url in [sqlite.url(), postgres.url()] {
            let store = SqlStatusStore::connect(url).await.expect("opens");
            store.ping().await.expect("answers");
            assert!(store.chosen_statuses().await.expect("reads").is_empty());
            store
                .save_chosen(7, ChosenStatus::Away, 1)
                .await
                .expect("saves");
            store
                .save_chosen(8, ChosenStatus::Busy, 2)
                .await
                .expect("saves");
            store
                .save_chosen(7, ChosenStatus::Available, 3)
                .await
                .expect("saves");
            let reopened = SqlStatusStore::connect(url).await.expect("opens again");
            assert_eq!(
                reopened.chosen_statuses().await.expect("reads"),
                HashMap::from([(7, ChosenStatus::Available), (8, ChosenStatus::Busy)])
            );
        }
        postgres.remove().await;
    }
}
