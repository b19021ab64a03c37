//! The leader's lease: which handoff replica may own the queue. One at a
//! time, so a dialog is never given to two operators.
//!
//! On PostgreSQL the lease is a session-level advisory lock
//! ([`LOCK_KEY`], `pg_try_advisory_lock`) taken on a connection the replica
//! keeps open for as long as it leads. PostgreSQL frees it the moment that
//! session ends — the process killed, the connection closed or terminated —
//! so a standby polling for it wins within one poll. The leader writes every
//! transition on that same connection ([`HeldStore`]): once the session that
//! holds the lock is gone, nothing the old leader still tries can be written,
//! which fences a leader that has not noticed yet. It checks the connection
//! every poll ([`Held::lost`]) and stops acting when it fails or does not
//! answer.
//!
//! On SQLite there is one process (the embedded mode): it always leads.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::db::Database;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::store::{HandoffStore, HeldStore};

/// The advisory lock's key: `"chathand"` in ASCII. Advisory locks belong to
/// one database, so deployments on separate databases never meet.
pub const LOCK_KEY: i64 = 0x6368_6174_6861_6e64;

/// Why the lease could not be tried or checked.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The held connection did not answer a check in time.
    #[error("the lock connection did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// How this replica takes the lease.
#[derive(Debug, Clone)]
pub enum Lease {
    /// SQLite: the only process; always the leader.
    Sole,
    /// PostgreSQL: the advisory lock, on a connection of this pool's
    /// database (taken out of the pool for as long as it is held).
    Postgres(PgPool),
}

/// A lease this replica holds. Dropping it gives it up (the connection
/// closes, and PostgreSQL frees the lock).
#[derive(Debug)]
pub enum Held {
    Sole,
    Postgres {
        /// The session holding the lock; the leader's writes run on it.
        connection: Arc<Mutex<PgConnection>>,
        /// Its server process (to find it in `pg_stat_activity`).
        backend_pid: i32,
    },
}

impl Lease {
    /// The lease for the database the service runs on.
    pub fn on(database: &Database) -> Lease {
        match database {
            Database::Sqlite(_) => Lease::Sole,
            Database::Postgres(pool) => Lease::Postgres(pool.clone()),
        }
    }

    /// Waits until this replica holds the lease, trying every `poll` on one
    /// standby connection (opened again after a failure, which is logged).
    pub async fn acquire(&self, poll: Duration) -> Held {
        let pool = match self {
            Lease::Sole => return Held::Sole,
            Lease::Postgres(pool) => pool,
        };
        let mut standby: Option<PgConnection> = None;
        let mut waiting_logged = false;
        loop {
            let attempt = async {
                let mut connection = match standby.take() {
                    Some(connection) => connection,
                    None => pool.acquire().await?.detach(),
                };
                match try_lock(&mut connection).await? {
                    Some(backend_pid) => Ok(Some(held(connection, backend_pid))),
                    None => {
                        standby = Some(connection);
                        Ok::<_, LeaseError>(None)
                    }
                }
            };
            match attempt.await {
                Ok(Some(held)) => return held,
                Ok(None) if !waiting_logged => {
                    tracing::info!("another replica leads the handoff queue; standing by");
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot try the handoff leader's lock");
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// One try: the lease if nobody holds it now.
    pub async fn try_acquire(&self) -> Result<Option<Held>, LeaseError> {
        let pool = match self {
            Lease::Sole => return Ok(Some(Held::Sole)),
            Lease::Postgres(pool) => pool,
        };
        let mut connection = pool.acquire().await?.detach();
        match try_lock(&mut connection).await? {
            Some(backend_pid) => Ok(Some(held(connection, backend_pid))),
            None => {
                let _ = connection.close().await;
                Ok(None)
            }
        }
    }
}

/// `pg_try_advisory_lock` on `connection`: its backend's pid when won.
async fn try_lock(connection: &mut PgConnection) -> Result<Option<i32>, LeaseError> {
    let (won, backend_pid): (bool, i32) =
        sqlx::query_as("SELECT pg_try_advisory_lock($1), pg_backend_pid()")
            .bind(LOCK_KEY)
            .fetch_one(&mut *connection)
            .await?;
    Ok(won.then_some(backend_pid))
}

fn held(connection: PgConnection, backend_pid: i32) -> Held {
    Held::Postgres {
        connection: Arc::new(Mutex::new(connection)),
        backend_pid,
    }
}

impl Held {
    /// The store the leader writes through: on PostgreSQL the lock-holding
    /// connection itself; on SQLite `pooled`, the service's own store.
    pub fn store(&self, pooled: &Arc<dyn HandoffStore>) -> Arc<dyn HandoffStore> {
        match self {
            Held::Sole => pooled.clone(),
            Held::Postgres { connection, .. } => Arc::new(HeldStore::new(connection.clone())),
        }
    }

    /// The lock session's server process, if on PostgreSQL.
    pub fn backend_pid(&self) -> Option<i32> {
        match self {
            Held::Sole => None,
            Held::Postgres { backend_pid, .. } => Some(*backend_pid),
        }
    }

    /// Resolves when the lease is lost: the held connection checked every
    /// `poll` fails, or does not answer within three polls (a leader that
    /// cannot tell whether it still leads stops acting). Never on SQLite.
    pub async fn lost(&self, poll: Duration) -> LeaseError {
        let connection = match self {
            Held::Sole => return std::future::pending().await,
            Held::Postgres { connection, .. } => connection,
        };
        let limit = poll * 3;
        loop {
            tokio::time::sleep(poll).await;
            let check = async {
                let mut connection = connection.lock().await;
                connection.ping().await
            };
            match tokio::time::timeout(limit, check).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return LeaseError::Database(err),
                Err(_) => return LeaseError::NoAnswer(limit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatai_testkit::TestDatabase;

    async fn lease(database: &TestDatabase) -> Lease {
        let opened = chatai_kit::db::connect(database.url())
            .await
            .expect("the test database opens");
        Lease::on(&opened)
    }

    /// Two contenders on one database: one leads; the other's tries fail
    /// until the leader gives the lease up, then it leads.
    #[tokio::test]
    async fn one_contender_leads_until_it_lets_go() {
        let database = TestDatabase::postgres().await;
        let (first, second) = (lease(&database).await, lease(&database).await);
        let leader = first
            .try_acquire()
            .await
            .expect("tried")
            .expect("the first leads");
        assert!(second.try_acquire().await.expect("tried").is_none());
        assert!(first.try_acquire().await.expect("tried").is_none());
        drop(leader);
        let next = tokio::time::timeout(
            Duration::from_secs(15),
            second.acquire(Duration::from_millis(20)),
        )
        .await
        .expect("the second takes over");
        assert!(next.backend_pid().is_some());
        drop(next);
        database.remove().await;
    }

    /// The leader's lock connection terminated by the server (as when its
    /// process dies or the network drops it): the leader notices, its
    /// writes through the held store fail, and the standby takes over.
    #[tokio::test]
    async fn a_lost_connection_hands_over_and_fences_the_old_leader() {
        let database = TestDatabase::postgres().await;
        let (first, second) = (lease(&database).await, lease(&database).await);
        let poll = Duration::from_millis(20);
        let leader = first.acquire(poll).await;
        let pid = leader.backend_pid().expect("on PostgreSQL");
        let Lease::Postgres(pool) = &first else {
            panic!("a PostgreSQL lease");
        };
        let pooled = crate::store::store_on(Database::Postgres(pool.clone()));
        let old_store = leader.store(&pooled);
        let standby = tokio::spawn(async move { second.acquire(poll).await });

        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(pool)
            .await
            .expect("terminated");
        tokio::time::timeout(Duration::from_secs(15), leader.lost(poll))
            .await
            .expect("the leader notices");
        let written = old_store
            .create(crate::store::NewHandoff {
                dialog_id: 1,
                user_id: 2,
                priority: crate::store::Priority::Normal,
                reason: "after the loss",
                requested_at_ms: 1,
            })
            .await;
        assert!(written.is_err(), "the old leader cannot write");
        let next = tokio::time::timeout(Duration::from_secs(15), standby)
            .await
            .expect("the standby takes over")
            .expect("the standby task");
        assert_ne!(next.backend_pid(), Some(pid));
        assert!(pooled.active().await.expect("read").is_empty());
        drop(next);
        pool.close().await;
        database.remove().await;
    }

    /// SQLite: the one process always leads.
    #[tokio::test]
    async fn sqlite_always_leads() {
        let database = TestDatabase::sqlite();
        let lease = lease(&database).await;
        assert!(matches!(lease.try_acquire().await, Ok(Some(Held::Sole))));
        assert!(matches!(lease.try_acquire().await, Ok(Some(Held::Sole))));
        database.remove().await;
    }
}
