//! The handoff leader's lease: which handoff replica may own the queue. One
//! at a time, so a dialog is never given to two operators.
//!
//! The lease is [`chatai_kit::lease`]'s advisory lock on [`LOCK_KEY`]
//! (SQLite: the one process always leads). The leader writes every
//! transition on the lock's own connection ([`HeldStore`], through
//! [`leader_store`]): once the session that holds the lock is gone, nothing
//! the old leader still tries can be written, which fences a leader that has
//! not noticed yet.

use std::sync::Arc;

use chatai_kit::db::Database;
pub use chatai_kit::lease::{Held, Lease, LeaseError};

use crate::store::{HandoffStore, HeldStore};

/// The advisory lock's key: `"chathand"` in ASCII.
pub const LOCK_KEY: i64 = 0x6368_6174_6861_6e64;

/// The handoff leader's lease on the database the service runs on.
pub fn lease(database: &Database) -> Lease {
    Lease::on(database, LOCK_KEY, "the handoff queue")
}

/// The store the leader writes through: on PostgreSQL the lock-holding
/// connection itself; on SQLite `pooled`, the service's own store.
pub fn leader_store(held: &Held, pooled: &Arc<dyn HandoffStore>) -> Arc<dyn HandoffStore> {
    match held.connection() {
        None => pooled.clone(),
        Some(connection) => Arc::new(HeldStore::new(connection.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use chatai_testkit::TestDatabase;

    async fn lease_on(database: &TestDatabase) -> Lease {
        let opened = chatai_kit::db::connect(database.url())
            .await
            .expect("the test database opens");
        lease(&opened)
    }

    /// Two contenders on one database: one leads; the other's tries fail
    /// until the leader gives the lease up, then it leads.
    #[tokio::test]
    async fn one_contender_leads_until_it_lets_go() {
        let database = TestDatabase::postgres().await;
        let (first, second) = (lease_on(&database).await, lease_on(&database).await);
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
        let (first, second) = (lease_on(&database).await, lease_on(&database).await);
        let poll = Duration::from_millis(20);
        let leader = first.acquire(poll).await;
        let pid = leader.backend_pid().expect("on PostgreSQL");
        let pool = first.pool().expect("a PostgreSQL lease");
        let pooled = crate::store::store_on(Database::Postgres(pool.clone()));
        let old_store = leader_store(&leader, &pooled);
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
        let lease = lease_on(&database).await;
        assert!(matches!(lease.try_acquire().await, Ok(Some(Held::Sole))));
        assert!(matches!(lease.try_acquire().await, Ok(Some(Held::Sole))));
        database.remove().await;
    }
}
