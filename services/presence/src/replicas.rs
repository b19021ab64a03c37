//! Two presence replicas on one Redis, in one test: each its own actor, its
//! own Redis store and its own event log (whose relay passes on everything
//! published on presence's channel, as every replica's `EventStream` does),
//! sharing the database of chosen statuses. What one is told, the other
//! answers; a change both make at once, or a timer both fire, is announced
//! once; a restarted replica forgets nothing.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::{Delivery, EventLog};
use chatai_kit::supervisor::Supervisor;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::actor::PresenceHandle;
use crate::config::PresenceConfig;
use crate::model::{ChosenStatus, Connection, Status};
use crate::state::conformance::{TestRedis, WAIT};
use crate::store::StatusStore;
use crate::store::memory::MemoryStatusStore;

const MAX: u32 = 3;

struct Replica {
    handle: PresenceHandle,
    supervisor: Supervisor,
}

impl Replica {
    async fn start(redis: &TestRedis, database: &Arc<MemoryStatusStore>, grace_secs: u64) -> Self {
        let supervisor = Supervisor::new(CancellationToken::new());
        let config = PresenceConfig {
            grace_period_secs: grace_secs,
            max_handoffs: MAX,
        };
        let stored = database.chosen_statuses().await.expect("reads");
        let handle = PresenceHandle::spawn(
            &config,
            redis.log().await,
            redis.state().await,
            database.clone(),
            stored,
            &supervisor,
        );
        Replica { handle, supervisor }
    }

    async fn stop(self) {
        self.supervisor.shutdown().cancel();
        self.supervisor.wait().await.expect("stops cleanly");
    }
}

fn conn(operator_id: i64, connection_id: &str) -> Connection {
    Connection {
        operator_id,
        connection_id: connection_id.to_owned(),
        name: format!("Op {operator_id}"),
    }
}

/// `operator_status_change`s as every replica relays them.
struct Announcements {
    live: broadcast::Receiver<Delivery>,
}

impl Announcements {
    async fn new(redis: &TestRedis) -> Self {
        Announcements {
            live: redis.log().await.live(),
        }
    }

    async fn next(&mut self) -> serde_json::Value {
        let delivery = tokio::time::timeout(WAIT, self.live.recv())
            .await
            .expect("an announcement in time")
            .expect("the relay runs");
        serde_json::from_slice(&delivery.event.body).expect("a JSON body")
    }

    /// Everything announced until a change of `marker_operator` (made by
    /// the test after the changes it counts: announcements come in commit
    /// order, so nothing of those is left to come after it).
    async fn until(&mut self, marker_operator: i64) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let change = self.next().await;
            if change["operator_id"] == marker_operator {
                return seen;
            }
            seen.push(change);
        }
    }
}

/// Reports made to one replica are what the other lists, at the same
/// version; a connection opened on one and closed on the other is gone.
#[tokio::test]
async fn what_one_replica_is_told_the_other_answers() {
    let redis = TestRedis::new();
    let database = Arc::new(MemoryStatusStore::default());
    let a = Replica::start(&redis, &database, 30).await;
    let b = Replica::start(&redis, &database, 30).await;

    a.handle
        .connection_opened("gw1".into(), conn(7, "c1"), None)
        .await
        .expect("answers");
    a.handle
        .connection_opened("gw1".into(), conn(8, "c2"), None)
        .await
        .expect("answers");
    b.handle.set_load(8, MAX).await.expect("answers");
    b.handle
        .set_status(7, ChosenStatus::Away, None)
        .await
        .expect("answers");
    b.handle
        .connection_opened("gw2".into(), conn(8, "c3"), None)
        .await
        .expect("answers");
    b.handle
        .connection_closed("gw1".into(), "c2".into(), None)
        .await
        .expect("answers");

    let from_a = a.handle.list().await.expect("lists");
    let from_b = b.handle.list().await.expect("lists");
    assert_eq!(from_a, from_b);
    let statuses: Vec<_> = from_a
        .operators
        .iter()
        .map(|op| (op.operator_id, op.status, op.connections))
        .collect();
    assert_eq!(statuses, vec![(7, Status::Away, 1), (8, Status::Busy, 1)]);
    assert!(
        from_a
            .operators
            .iter()
            .all(|op| op.version <= from_a.version)
    );
    let seven = a.handle.get(7).await.expect("answers").expect("known");
    assert_eq!(seven.chosen_status, ChosenStatus::Away);
    a.stop().await;
    b.stop().await;
}

/// Both replicas handle reports for one operator at the same moment —
/// twenty connections opened through each, and the same status chosen on
/// both: none of the opens is lost, and each change of the operator's
/// status is announced once.
#[tokio::test]
async fn changes_made_on_both_replicas_at_once_are_kept_and_announced_once() {
    let redis = TestRedis::new();
    let database = Arc::new(MemoryStatusStore::default());
    let a = Replica::start(&redis, &database, 30).await;
    let b = Replica::start(&redis, &database, 30).await;
    let mut announced = Announcements::new(&redis).await;

    let opens = (0..20).flat_map(|n| {
        [
            a.handle
                .connection_opened("gw1".into(), conn(7, &format!("a{n}")), None),
            b.handle
                .connection_opened("gw2".into(), conn(7, &format!("b{n}")), None),
        ]
    });
    for opened in futures::future::join_all(opens).await {
        opened.expect("answers");
    }
    let (on_a, on_b) = tokio::join!(
        a.handle.set_status(7, ChosenStatus::Away, None),
        b.handle.set_status(7, ChosenStatus::Away, None),
    );
    on_a.expect("answers");
    on_b.expect("answers");
    b.handle
        .set_status(99, ChosenStatus::Busy, None)
        .await
        .expect("answers");

    let changes = announced.until(99).await;
    let statuses: Vec<_> = changes
        .iter()
        .map(|change| change["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, vec!["available", "away"], "{changes:?}");
    assert!(
        changes[0]["version"].as_u64() < changes[1]["version"].as_u64(),
        "{changes:?}"
    );
    let seven = b.handle.get(7).await.expect("answers").expect("known");
    assert_eq!(seven.connections, 40, "no open was lost");
    a.stop().await;
    b.stop().await;
}

/// A gateway lease and a grace period end while both replicas run their
/// timers (and both are then told to fire them again): each operator goes
/// offline once, announced once.
#[tokio::test]
async fn an_ended_lease_or_grace_period_is_handled_once() {
    let redis = TestRedis::new();
    let database = Arc::new(MemoryStatusStore::default());
    let a = Replica::start(&redis, &database, 1).await;
    let b = Replica::start(&redis, &database, 1).await;
    let mut announced = Announcements::new(&redis).await;

    a.handle
        .refresh(
            "gw1".into(),
            vec![conn(7, "c1")],
            Duration::from_secs(1),
            None,
        )
        .await
        .expect("answers");
    b.handle
        .connection_opened("gw2".into(), conn(8, "c2"), None)
        .await
        .expect("answers");
    a.handle
        .connection_closed("gw2".into(), "c2".into(), None)
        .await
        .expect("answers");
    let mut online = [announced.next().await, announced.next().await];
    online.sort_by_key(|change| change["operator_id"].as_i64());
    assert_eq!(online[0]["online"], true);
    assert_eq!(online[1]["online"], true);

    // The lease ends (then 7's grace), 8's grace ends: the replicas' own
    // timers take both offline.
    let mut offline = [announced.next().await, announced.next().await];
    offline.sort_by_key(|change| change["operator_id"].as_i64());
    assert_eq!(offline[0]["operator_id"], 7);
    assert_eq!(offline[1]["operator_id"], 8);
    assert!(offline.iter().all(|change| change["status"] == "offline"));

    let (fired_a, fired_b) = tokio::join!(a.handle.fire_timers(), b.handle.fire_timers());
    fired_a.expect("answers");
    fired_b.expect("answers");
    a.handle
        .set_status(99, ChosenStatus::Busy, None)
        .await
        .expect("answers");
    let again = announced.until(99).await;
    assert!(again.is_empty(), "announced twice: {again:?}");
    a.stop().await;
    b.stop().await;
}

/// A replica stopped and started again (a restart, a new process) finds
/// every operator as it was: connections, chosen statuses, loads and the
/// version, and the change it makes next is newer.
#[tokio::test]
async fn a_restarted_replica_keeps_every_status() {
    let redis = TestRedis::new();
    let database = Arc::new(MemoryStatusStore::default());
    let a = Replica::start(&redis, &database, 30).await;
    let b = Replica::start(&redis, &database, 30).await;
    a.handle
        .connection_opened("gw1".into(), conn(7, "c1"), None)
        .await
        .expect("answers");
    a.handle
        .set_status(7, ChosenStatus::Away, None)
        .await
        .expect("answers");
    a.handle
        .connection_opened("gw1".into(), conn(8, "c2"), None)
        .await
        .expect("answers");
    a.handle.set_load(8, 1).await.expect("answers");
    let before = a.handle.list().await.expect("lists");
    a.stop().await;

    assert_eq!(b.handle.list().await.expect("lists"), before);
    let restarted = Replica::start(&redis, &database, 30).await;
    let after = restarted.handle.list().await.expect("lists");
    assert_eq!(after, before);
    let view = restarted.handle.set_load(8, 2).await.expect("answers");
    assert!(view.version > before.version);
    assert_eq!(view.connections, 1);
    assert_eq!(
        database.rows.lock().expect("not poisoned").get(&7),
        Some(&ChosenStatus::Away)
    );
    restarted.stop().await;
    b.stop().await;
}

/// Nothing of another deployment's presence is visible: two prefixes on one
/// Redis are two states.
#[tokio::test]
async fn deployments_do_not_share_presence() {
    let ours = TestRedis::new();
    let theirs = TestRedis::new();
    let database = Arc::new(MemoryStatusStore::default());
    let a = Replica::start(&ours, &database, 30).await;
    let other = Replica::start(&theirs, &Arc::new(MemoryStatusStore::default()), 30).await;
    a.handle
        .connection_opened("gw1".into(), conn(7, "c1"), None)
        .await
        .expect("answers");
    assert!(
        other
            .handle
            .list()
            .await
            .expect("lists")
            .operators
            .is_empty()
    );
    a.stop().await;
    other.stop().await;
}
