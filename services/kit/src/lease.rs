//! [`Lease`]: which replica of a service does a job only one may do at a
//! time (the handoff queue's owner, the analytics pusher).
//!
//! On PostgreSQL a lease is a session-level advisory lock on a key of the
//! caller's (`pg_try_advisory_lock`), taken on a connection the replica keeps
//! open for as long as it holds it. PostgreSQL frees it the moment that
//! session ends — the process killed, the connection closed or terminated —
//! so a standby polling for it wins within one poll. The holder checks the
//! connection every poll ([`Held::lost`]) and stops acting when it fails or
//! does not answer. Whoever must also fence a holder that has not noticed
//! yet writes on the held connection itself ([`Held::connection`]): once
//! its session is gone, nothing it still tries can be written.
//!
//! On SQLite there is one process (the embedded mode): it always holds every
//! lease.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::db::Database;

/// Why a lease could not be tried or checked.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The held connection did not answer a check in time.
    #[error("the lock connection did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// How this replica takes one lease.
#[derive(Debug, Clone)]
pub struct Lease {
    on: On,
    /// The advisory lock's key: one per job. Advisory locks belong to one
    /// database, so deployments on separate databases never meet.
    key: i64,
    /// What the lease is for, in log lines ("the handoff queue").
    what: &'static str,
}

#[derive(Debug, Clone)]
enum On {
    /// SQLite: the only process; always holds it.
    Sole,
    /// PostgreSQL: on a connection of this pool's database (taken out of
    /// the pool for as long as it is held).
    Postgres(PgPool),
}

/// A lease this replica holds. Dropping it gives it up (the connection
/// closes, and PostgreSQL frees the lock).
#[derive(Debug)]
pub enum Held {
    Sole,
    Postgres {
        /// The session holding the lock.
        connection: Arc<Mutex<PgConnection>>,
        /// Its server process (to find it in `pg_stat_activity`).
        backend_pid: i32,
    },
}

impl Lease {
    /// The lease `key` (for `what`) on the database the service runs on.
    pub fn on(database: &Database, key: i64, what: &'static str) -> Lease {
        let on = match database {
            Database::Sqlite(_) => On::Sole,
            Database::Postgres(pool) => On::Postgres(pool.clone()),
        };
        Lease { on, key, what }
    }

    /// The pool a PostgreSQL lease is taken on.
    pub fn pool(&self) -> Option<&PgPool> {
        match &self.on {
            On::Sole => None,
            On::Postgres(pool) => Some(pool),
        }
    }

    /// Waits until this replica holds the lease, trying every `poll` on one
    /// standby connection (opened again after a failure, which is logged).
    pub async fn acquire(&self, poll: Duration) -> Held {
        let pool = match &self.on {
            On::Sole => return Held::Sole,
            On::Postgres(pool) => pool,
        };
        let mut standby: Option<PgConnection> = None;
        let mut waiting_logged = false;
        loop {
            let attempt = async {
                let mut connection = match standby.take() {
                    Some(connection) => connection,
                    None => pool.acquire().await?.detach(),
                };
                match self.try_lock(&mut connection).await? {
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
                    tracing::info!(lease = self.what, "another replica holds it; standing by");
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(lease = self.what, cause = %err, "cannot try the lease's lock");
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// One try: the lease if nobody holds it now.
    pub async fn try_acquire(&self) -> Result<Option<Held>, LeaseError> {
        let pool = match &self.on {
            On::Sole => return Ok(Some(Held::Sole)),
            On::Postgres(pool) => pool,
        };
        let mut connection = pool.acquire().await?.detach();
        match self.try_lock(&mut connection).await? {
            Some(backend_pid) => Ok(Some(held(connection, backend_pid))),
            None => {
                let _ = connection.close().await;
                Ok(None)
            }
        }
    }

    /// `pg_try_advisory_lock` on `connection`: its backend's pid when won.
    async fn try_lock(&self, connection: &mut PgConnection) -> Result<Option<i32>, LeaseError> {
        let (won, backend_pid): (bool, i32) =
            sqlx::query_as("SELECT pg_try_advisory_lock($1), pg_backend_pid()")
                .bind(self.key)
                .fetch_one(&mut *connection)
                .await?;
        Ok(won.then_some(backend_pid))
    }
}

fn held(connection: PgConnection, backend_pid: i32) -> Held {
    Held::Postgres {
        connection: Arc::new(Mutex::new(connection)),
        backend_pid,
    }
}

impl Held {
    /// The session holding the lock, if on PostgreSQL: what a holder that
    /// must be fenced writes on.
    pub fn connection(&self) -> Option<&Arc<Mutex<PgConnection>>> {
        match self {
            Held::Sole => None,
            Held::Postgres { connection, .. } => Some(connection),
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
    /// `poll` fails, or does not answer within three polls (a holder that
    /// cannot tell whether it still holds the lease stops acting). Never on
    /// SQLite.
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
