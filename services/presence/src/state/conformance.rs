//! The one conformance suite of [`StateStore`]: every case runs on the
//! memory store and on the Redis store (the server at
//! `CHATAI_TEST_REDIS_URL`, under a key prefix of the test's own, removed
//! after it). Also [`TestRedis`], which the replica tests share.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::config::EventLogConfig;
use chatai_kit::events::redis::RedisLog;
use chatai_kit::events::{Delivery, Event, EventLog};
use chatai_kit::redis_keys::{Namespace, PresenceKey};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::memory::MemoryState;
use super::redis::RedisState;
use super::*;

/// How long a wait may take before the test fails: a bound on a hang, not a
/// timing assertion.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix of the test's own on the test Redis, whose keys are removed
/// when the test ends (also when it fails).
pub(crate) struct TestRedis {
    pub url: String,
    pub prefix: String,
    shutdown: CancellationToken,
}

impl TestRedis {
    pub fn new() -> Self {
        TestRedis {
            url: redis_url(),
            prefix: format!("test-presence-{}", uuid::Uuid::new_v4().simple()),
            shutdown: CancellationToken::new(),
        }
    }

    /// A Redis store on the prefix (one per replica).
    pub async fn state(&self) -> Arc<RedisState> {
        Arc::new(
            RedisState::connect(&self.url, &self.prefix)
                .await
                .expect("Redis at CHATAI_TEST_REDIS_URL"),
        )
    }

    /// Presence's event log on the prefix, relaying its live channel until
    /// the test ends (one per replica).
    pub async fn log(&self) -> Arc<RedisLog> {
        let (log, relay) = RedisLog::connect(
            &self.url,
            &self.prefix,
            "presence",
            &EventLogConfig::default(),
            self.shutdown.clone(),
        )
        .await
        .expect("Redis at CHATAI_TEST_REDIS_URL");
        tokio::spawn(relay);
        Arc::new(log)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let Ok(client) = ::redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let names = Namespace::new(&self.prefix, "unused");
        let mut delete = ::redis::cmd("DEL");
        delete.arg(names.deployment_key());
        for kind in [
            PresenceKey::Operators,
            PresenceKey::Gateways,
            PresenceKey::Revisions,
            PresenceKey::Timers,
            PresenceKey::Version,
        ] {
            delete.arg(names.presence_key(kind));
        }
        let _: Result<i64, _> = delete.query(&mut connection);
    }
}

/// A store under test, and how to read what it announced.
struct Subject {
    name: &'static str,
    store: Arc<dyn StateStore>,
    /// For the Redis store, which publishes: the relayed live channel.
    live: Option<broadcast::Receiver<Delivery>>,
    _redis: Option<TestRedis>,
}

impl Subject {
    async fn all() -> Vec<Subject> {
        let redis = TestRedis::new();
        let log = redis.log().await;
        let live = log.live();
        let store = redis.state().await;
        vec![
            Subject {
                name: "memory",
                store: Arc::new(MemoryState::default()),
                live: None,
                _redis: None,
            },
            Subject {
                name: "redis",
                store,
                live: Some(live),
                _redis: Some(redis),
            },
        ]
    }

    /// The events a commit announced: those it returned to deliver, and
    /// (Redis) the ones it published, read up to `marker` — an event the
    /// test announced after it, so nothing is left to come.
    async fn announced(&mut self, committed: Committed, marker: Option<&str>) -> Vec<String> {
        let mut ids: Vec<String> = match committed {
            Committed::Applied { unpublished } => {
                unpublished.iter().map(|event| event.id.clone()).collect()
            }
            Committed::Conflict => Vec::new(),
        };
        if let (Some(live), Some(marker)) = (self.live.as_mut(), marker) {
            loop {
                let delivery = tokio::time::timeout(WAIT, live.recv())
                    .await
                    .expect("the marker arrives")
                    .expect("the relay runs");
                if delivery.event.id == marker {
                    break;
                }
                ids.push(delivery.event.id.clone());
            }
        }
        ids
    }

    /// Commits an event of its own and returns its id (or, for a store that
    /// does not publish, `None`: nothing to wait for).
    async fn marker(&self) -> Option<String> {
        let event = event();
        let id = event.id.clone();
        let read = self.store.operators(&[]).await.expect("reads");
        let committed = self
            .store
            .commit(Commit {
                clock: Some((read.clock, read.clock + 1)),
                events: vec![event],
                ..Commit::default()
            })
            .await
            .expect("commits");
        assert!(matches!(committed, Committed::Applied { .. }));
        self.live.is_some().then_some(id)
    }
}

fn event() -> Arc<Event> {
    Arc::new(
        Event::new("operator_status_change", &serde_json::json!({"test": true})).expect("an event"),
    )
}

fn operator(chosen: ChosenStatus, connections: u32) -> OperatorRecord {
    OperatorRecord {
        connections,
        online: connections > 0,
        ..OperatorRecord::new(chosen, 1_000)
    }
}

fn gateway(connections: &[(&str, i64)], lease_until: Option<i64>) -> GatewayRecord {
    GatewayRecord {
        connections: connections
            .iter()
            .map(|(id, operator)| ((*id).to_owned(), *operator))
            .collect(),
        lease_until,
        incarnation: 3,
        last_report: [("c1".to_owned(), 9)].into(),
    }
}

async fn applied(store: &dyn StateStore, commit: Commit) -> Vec<Arc<Event>> {
    match store.commit(commit).await.expect("commits") {
        Committed::Applied { unpublished } => unpublished,
        Committed::Conflict => panic!("an unexpected conflict"),
    }
}

/// Records nobody wrote read as absent at revision 0; a commit that read
/// them so creates them, and they read back whole at revision 1, with the
/// clock the commit set; the next write makes revision 2.
#[tokio::test]
async fn commits_create_and_update_records_with_revisions() {
    for subject in Subject::all().await {
        let store = subject.store.as_ref();
        let name = subject.name;
        assert_eq!(
            store.gateway("gw1").await.expect("reads"),
            Versioned::absent()
        );
        let read = store.operators(&[7, 8]).await.expect("reads");
        assert_eq!(read.clock, 0, "{name}");
        assert!(
            read.operators
                .values()
                .all(|read| *read == Versioned::absent())
        );

        let seven = operator(ChosenStatus::Away, 1);
        let gw = gateway(&[("c1", 7)], Some(5_000));
        applied(
            store,
            Commit {
                read_gateways: vec![("gw1".into(), 0)],
                read_operators: vec![(7, 0), (8, 0)],
                clock: Some((0, 41)),
                gateways: vec![("gw1".into(), Some(gw.clone()))],
                operators: vec![(7, seven.clone())],
                ..Commit::default()
            },
        )
        .await;
        assert_eq!(
            store.gateway("gw1").await.expect("reads"),
            Versioned {
                revision: 1,
                record: Some(gw)
            },
            "{name}"
        );
        let read = store.operators(&[7, 8]).await.expect("reads");
        assert_eq!(read.clock, 41, "{name}");
        assert_eq!(
            read.operators[&7],
            Versioned {
                revision: 1,
                record: Some(seven.clone())
            },
            "{name}"
        );
        assert_eq!(read.operators[&8], Versioned::absent(), "{name}");

        let busy = operator(ChosenStatus::Busy, 2);
        applied(
            store,
            Commit {
                read_operators: vec![(7, 1)],
                operators: vec![(7, busy.clone())],
                ..Commit::default()
            },
        )
        .await;
        let read = store.operators(&[7]).await.expect("reads");
        assert_eq!(read.operators[&7].revision, 2, "{name}");
        assert_eq!(
            store.operator(7).await.expect("reads"),
            Some(busy),
            "{name}"
        );
        assert_eq!(store.operator(8).await.expect("reads"), None, "{name}");
    }
}

/// A commit decided on a record that has moved since — or on a clock that
/// has — applies nothing and announces nothing; one decided on what is
/// still there applies.
#[tokio::test]
async fn a_commit_on_moved_records_conflicts_and_changes_nothing() {
    for mut subject in Subject::all().await {
        let name = subject.name;
        let store = subject.store.clone();
        applied(
            store.as_ref(),
            Commit {
                read_gateways: vec![("gw1".into(), 0)],
                read_operators: vec![(7, 0)],
                clock: Some((0, 10)),
                gateways: vec![("gw1".into(), Some(gateway(&[("c1", 7)], None)))],
                operators: vec![(7, operator(ChosenStatus::Available, 1))],
                ..Commit::default()
            },
        )
        .await;
        let stale = [
            Commit {
                read_operators: vec![(7, 0)],
                operators: vec![(7, operator(ChosenStatus::Away, 0))],
                events: vec![event()],
                ..Commit::default()
            },
            Commit {
                read_gateways: vec![("gw1".into(), 0)],
                gateways: vec![("gw1".into(), None)],
                events: vec![event()],
                ..Commit::default()
            },
            Commit {
                read_operators: vec![(7, 1)],
                clock: Some((9, 11)),
                operators: vec![(7, operator(ChosenStatus::Away, 0))],
                timers: vec![(Timer::Grace(7), Some(1))],
                events: vec![event()],
                ..Commit::default()
            },
        ];
        for commit in stale {
            let committed = store.commit(commit).await.expect("answers");
            assert!(matches!(committed, Committed::Conflict), "{name}");
            let marker = subject.marker().await;
            assert!(
                subject
                    .announced(committed, marker.as_deref())
                    .await
                    .is_empty(),
                "{name}: a conflict announces nothing"
            );
        }
        let read = store.operators(&[7]).await.expect("reads");
        assert_eq!(
            read.operators[&7].record,
            Some(operator(ChosenStatus::Available, 1))
        );
        assert_eq!(
            store.gateway("gw1").await.expect("reads").revision,
            1,
            "{name}"
        );
        assert_eq!(store.next_due().await.expect("reads"), None, "{name}");

        let announced = event();
        let committed = store
            .commit(Commit {
                read_operators: vec![(7, 1)],
                clock: Some((read.clock, read.clock + 1)),
                operators: vec![(7, operator(ChosenStatus::Away, 1))],
                events: vec![announced.clone()],
                ..Commit::default()
            })
            .await
            .expect("commits");
        assert!(matches!(committed, Committed::Applied { .. }), "{name}");
        let marker = subject.marker().await;
        assert_eq!(
            subject.announced(committed, marker.as_deref()).await,
            vec![announced.id.clone()],
            "{name}: announced once"
        );
    }
}

/// Timers: due when their end has come, earliest first, at most the limit;
/// moved by setting them again, gone when cleared.
#[tokio::test]
async fn timers_come_due_in_order() {
    for subject in Subject::all().await {
        let name = subject.name;
        let store = subject.store.as_ref();
        assert_eq!(store.next_due().await.expect("reads"), None);
        applied(
            store,
            Commit {
                timers: vec![
                    (Timer::Grace(7), Some(3_000)),
                    (Timer::Lease("gw1".into()), Some(1_000)),
                    (Timer::Grace(8), Some(2_000)),
                ],
                ..Commit::default()
            },
        )
        .await;
        assert_eq!(
            store.next_due().await.expect("reads"),
            Some(1_000),
            "{name}"
        );
        assert!(
            store.due(999, 10).await.expect("reads").is_empty(),
            "{name}"
        );
        assert_eq!(
            store.due(2_000, 10).await.expect("reads"),
            vec![Timer::Lease("gw1".into()), Timer::Grace(8)],
            "{name}"
        );
        assert_eq!(
            store.due(5_000, 1).await.expect("reads"),
            vec![Timer::Lease("gw1".into())],
            "{name}"
        );
        applied(
            store,
            Commit {
                timers: vec![
                    (Timer::Lease("gw1".into()), Some(4_000)),
                    (Timer::Grace(8), None),
                ],
                ..Commit::default()
            },
        )
        .await;
        assert_eq!(
            store.due(5_000, 10).await.expect("reads"),
            vec![Timer::Grace(7), Timer::Lease("gw1".into())],
            "{name}"
        );
        assert_eq!(
            store.next_due().await.expect("reads"),
            Some(3_000),
            "{name}"
        );
    }
}

/// A listing holds every operator by id, with the clock as of the same
/// moment; a deleted gateway reads absent again.
#[tokio::test]
async fn listing_and_deleting() {
    for subject in Subject::all().await {
        let name = subject.name;
        let store = subject.store.as_ref();
        let (empty, clock) = store.list().await.expect("lists");
        assert!(empty.is_empty() && clock == 0, "{name}");
        applied(
            store,
            Commit {
                read_operators: vec![(12, 0), (3, 0)],
                clock: Some((0, 77)),
                operators: vec![
                    (12, operator(ChosenStatus::Busy, 0)),
                    (3, operator(ChosenStatus::Away, 2)),
                ],
                gateways: vec![("gw1".into(), Some(gateway(&[], Some(9))))],
                ..Commit::default()
            },
        )
        .await;
        let (listed, clock) = store.list().await.expect("lists");
        assert_eq!(clock, 77, "{name}");
        assert_eq!(
            listed,
            vec![
                (3, operator(ChosenStatus::Away, 2)),
                (12, operator(ChosenStatus::Busy, 0))
            ],
            "{name}"
        );
        applied(
            store,
            Commit {
                read_gateways: vec![("gw1".into(), 1)],
                gateways: vec![("gw1".into(), None)],
                ..Commit::default()
            },
        )
        .await;
        assert_eq!(
            store.gateway("gw1").await.expect("reads"),
            Versioned::absent(),
            "{name}"
        );
        store.ping().await.expect("answers");
    }
}
