//! [`HeldStore`]: the handoff store on one PostgreSQL connection — the one
//! that holds the leader's advisory lock ([`crate::leader`]). Every write of
//! the leader goes through the session that holds the lock, so a replica
//! whose lock connection is gone cannot write anything: its statements fail
//! with the connection. That is the fence against two leaders (see
//! docs/architecture.md, "Deployment").

use std::sync::Arc;

use sqlx::PgConnection;
use tokio::sync::{Mutex, MutexGuard};

use super::error::StoreError;
use super::sql::impl_statements;

/// The store on the lock-holding connection. The connection is shared with
/// the lease's liveness check behind an async mutex (a connection runs one
/// statement at a time, as a pool's would): the queue actor is its only
/// other user, one statement at a time, so nobody waits long for it.
#[derive(Debug, Clone)]
pub struct HeldStore {
    connection: Arc<Mutex<PgConnection>>,
}

impl HeldStore {
    /// The store on `connection` (which the caller keeps to watch).
    pub fn new(connection: Arc<Mutex<PgConnection>>) -> Self {
        HeldStore { connection }
    }

    /// The held connection for one statement.
    async fn connection(&self) -> Result<MutexGuard<'_, PgConnection>, StoreError> {
        Ok(self.connection.lock().await)
    }
}

impl_statements!(HeldStore);
