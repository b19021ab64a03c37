//! Issue 13: any part may run twice. Every part in a process of its own (as
//! `processes.rs` does), on PostgreSQL and a Redis of the test's own:
//! - two handoff replicas on one database: one leads (an advisory lock), the
//!   other stands by and answers the queue's calls `UNAVAILABLE`; 50
//!   requests against 10 operators are each assigned exactly once, also
//!   when the leader is SIGKILLed mid-queue and the standby takes over;
//! - a gateway drained with SIGTERM: health says `503 draining`, clients are
//!   closed 1001, the process exits, and a client resumes on another
//!   gateway with nothing lost.
//!
//! The handoff calls are made directly over gRPC, as an internal caller
//! with the internal token, trying the replicas in turn and moving on from
//! one that answers `UNAVAILABLE` or is gone (what a gateway's balancing
//! does); the gateway and chat are pointed at the replica that survives.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::deployment::{Deployment, Redis, START, internal_call};
use crate::common::{WsClient, free_addr};
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_client::HandoffClient;
use chatai_proto::v1::notification_client::NotificationClient;
use chatai_testkit::TestDatabase;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The handoff service's name on gRPC health.
const HANDOFF: &str = "chatai.v1.Handoff";

/// A lazy channel to `addr`.
fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("an address")
        .connect_lazy()
}

/// A request as an internal service, with the internal token.
fn internal<T>(message: T) -> tonic::Request<T> {
    internal_call(&Caller::service(), message)
}

/// What gRPC health says of `service` at `addr` (`None`: no answer).
async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel(addr));
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), client.check(request))
        .await
        .ok()?
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// Waits until `service`'s health at `addr` is `wanted`.
async fn wait_for_health(
    deployment: &Deployment,
    addr: SocketAddr,
    service: &str,
    wanted: ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let now = health(addr, service).await;
        if now == Some(wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} at {addr} is {now:?}, not {wanted:?}\n{}",
            deployment.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The two handoff replicas' addresses.
struct Replicas {
    a: SocketAddr,
    b: SocketAddr,
}

/// A deployment with two handoff replicas: `handoff-a` starts first and
/// leads; `handoff-b` stands by. Chat and the gateway are pointed at b (the
/// one that survives in these tests). Presence, chat, notification and the
/// gateway run once each.
async fn two_handoff_replicas(database: &TestDatabase, redis: &Redis) -> (Deployment, Replicas) {
    let mut deployment = Deployment::new(database.url(), Some(redis.port));
    let replicas = Replicas {
        a: free_addr(),
        b: free_addr(),
    };
    deployment.set_env("CHATAI_HANDOFF_ADDR", replicas.b.to_string());
    deployment.set_env("CHATAI_HANDOFF_LEASE_POLL_MS", "200".to_owned());
    deployment.start_as(
        "handoff-a",
        "handoff",
        &[("CHATAI_HANDOFF_ADDR", replicas.a.to_string())],
    );
    wait_for_health(&deployment, replicas.a, HANDOFF, ServingStatus::Serving).await;
    deployment.start_as("handoff-b", "handoff", &[]);
    wait_for_health(&deployment, replicas.b, "", ServingStatus::Serving).await;
    for part in ["presence", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    (deployment, replicas)
}

/// Asks for a handoff of dialog `dialog_id` (its user: `user_of`), trying
/// the replicas in turn until one accepts: moving on from a standby
/// (`UNAVAILABLE`) or a replica that is gone. `ALREADY_EXISTS` after a try
/// whose answer was lost means the first try was stored: accepted too.
async fn request_handoff(replicas: &[SocketAddr], dialog_id: i64) {
    let deadline = tokio::time::Instant::now() + START;
    let mut tries = 0usize;
    loop {
        let addr = replicas[tries % replicas.len()];
        tries += 1;
        let mut client = HandoffClient::new(channel(addr));
        let request = internal(pb::RequestHandoffRequest {
            dialog_id,
            user_id: user_of(dialog_id),
            reason: "a person, please".to_owned(),
            priority: pb::Priority::Normal as i32,
        });
        match tokio::time::timeout(Duration::from_secs(5), client.request_handoff(request)).await {
            Ok(Ok(_)) => return,
            Ok(Err(status)) if status.code() == Code::AlreadyExists && tries > 1 => return,
            Ok(Err(status)) => assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
                "dialog {dialog_id}: {status:?}"
            ),
            Err(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica accepted dialog {dialog_id}"
        );
        if tries.is_multiple_of(replicas.len()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn user_of(dialog_id: i64) -> i64 {
    7000 + dialog_id
}

/// Connects operator `id` and forwards each `operator_assigned` it gets, as
/// (operator, dialog), until the test ends.
async fn operator(
    deployment: &Deployment,
    id: i64,
    assigned: mpsc::Sender<(i64, i64)>,
) -> tokio::task::JoinHandle<()> {
    let mut client: WsClient = deployment.connect(id, Role::Operator).await;
    tokio::spawn(async move {
        loop {
            let frame = client.recv_json(Duration::from_secs(3600)).await;
            if frame["type"] == "operator_assigned" {
                let dialog = frame["dialog_id"].as_i64().expect("a dialog");
                if assigned.send((id, dialog)).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Collects `n` assignments (every copy counts).
async fn assignments(
    deployment: &Deployment,
    received: &mut mpsc::Receiver<(i64, i64)>,
    counts: &mut BTreeMap<i64, Vec<i64>>,
    n: usize,
) {
    for got in 0..n {
        let next = tokio::time::timeout(START, received.recv()).await;
        let Ok(Some((operator, dialog))) = next else {
            panic!(
                "{got} of {n} assignments arrived: {counts:?}\n{}",
                deployment.logs()
            );
        };
        counts.entry(dialog).or_default().push(operator);
    }
}

/// The stored handoffs: (dialog, state, operator) of every row.
async fn stored(database: &TestDatabase) -> Vec<(i64, String, Option<i64>)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database.url())
        .await
        .expect("the test database");
    let rows =
        sqlx::query_as("SELECT dialog_id, state, operator_id FROM handoffs ORDER BY dialog_id")
            .fetch_all(&pool)
            .await
            .expect("the handoffs");
    pool.close().await;
    rows
}

/// Every dialog of `dialogs` got exactly one `operator_assigned`, is one
/// row, assigned to that operator, and no operator holds more than 5.
async fn assert_each_assigned_once(
    database: &TestDatabase,
    dialogs: std::ops::RangeInclusive<i64>,
    counts: &BTreeMap<i64, Vec<i64>>,
) {
    let twice: Vec<_> = counts.iter().filter(|(_, ops)| ops.len() != 1).collect();
    assert!(twice.is_empty(), "assigned more than once: {twice:?}");
    let rows = stored(database).await;
    assert_eq!(
        rows.len(),
        dialogs.clone().count(),
        "one row per dialog: {rows:?}"
    );
    let mut loads: HashMap<i64, usize> = HashMap::new();
    for (dialog, state, operator) in &rows {
        assert!(dialogs.contains(dialog), "{rows:?}");
        assert_eq!(state, "assigned", "dialog {dialog}: {rows:?}");
        let told = counts.get(dialog).map(|ops| ops[0]);
        assert_eq!(
            *operator, told,
            "dialog {dialog}'s stored operator is the one told"
        );
        *loads.entry(operator.unwrap_or_default()).or_default() += 1;
    }
    assert!(loads.values().all(|load| *load <= 5), "{loads:?}");
}

/// A standby answers the leader's calls with a clean `UNAVAILABLE` and
/// reports `chatai.v1.Handoff` NOT_SERVING (its process SERVING); 50
/// requests sent to both replicas against 10 operators (cap 5 each) are
/// each assigned exactly once: one `operator_assigned` per dialog, one row
/// per dialog in the table, stored with the operator who was told.
#[tokio::test]
async fn two_handoff_replicas_assign_each_dialog_once() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let (mut deployment, replicas) = two_handoff_replicas(&database, &redis).await;

    assert_eq!(
        health(replicas.b, HANDOFF).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(health(replicas.b, "").await, Some(ServingStatus::Serving));
    for call in 0..2 {
        let mut standby = HandoffClient::new(channel(replicas.b));
        let refused = match call {
            0 => standby
                .request_handoff(internal(pb::RequestHandoffRequest {
                    dialog_id: 999,
                    user_id: 1,
                    reason: String::new(),
                    priority: 0,
                }))
                .await
                .map(|_| ()),
            _ => standby
                .list_queue(internal(pb::ListQueueRequest {}))
                .await
                .map(|_| ()),
        }
        .expect_err("a standby does not serve the queue");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("not the leader"), "{refused:?}");
    }

    let (assigned_tx, mut assigned) = mpsc::channel(1024);
    let mut readers = Vec::new();
    for id in 2001..=2010 {
        readers.push(operator(&deployment, id, assigned_tx.clone()).await);
    }
    let both = [replicas.b, replicas.a];
    let requests: Vec<_> = (1..=50)
        .map(|dialog| tokio::spawn(async move { request_handoff(&both, dialog).await }))
        .collect();
    for request in requests {
        request.await.expect("the request task");
    }
    let mut counts = BTreeMap::new();
    assignments(&deployment, &mut assigned, &mut counts, 50).await;
    assert_each_assigned_once(&database, 1..=50, &counts).await;
    // Nothing more was assigned meanwhile: the leader's queue agrees.
    let listing = HandoffClient::new(channel(replicas.a))
        .list_queue(internal(pb::ListQueueRequest {}))
        .await
        .expect("the leader lists")
        .into_inner();
    assert_eq!((listing.queued.len(), listing.assigned.len()), (0, 50));
    assert!(assigned.try_recv().is_err(), "no second assignment");

    for reader in readers {
        reader.abort();
    }
    for part in [
        "gateway",
        "chat",
        "handoff-a",
        "handoff-b",
        "presence",
        "notification",
    ] {
        deployment.terminate(part).await;
    }
    drop(redis);
    database.remove().await;
}

/// The leader SIGKILLed mid-queue (25 assigned, 15 waiting): the standby
/// takes the lease (its health turns SERVING), loads the queue from the
/// table, accepts the requests that came during the takeover, and gives
/// every waiting dialog to the operators who come later — each dialog once,
/// none lost: 50 `operator_assigned` for 50 dialogs, 50 assigned rows.
#[tokio::test]
async fn a_killed_leader_hands_the_queue_over() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let (mut deployment, replicas) = two_handoff_replicas(&database, &redis).await;
    let both = [replicas.a, replicas.b];

    let (assigned_tx, mut assigned) = mpsc::channel(1024);
    let mut readers = Vec::new();
    for id in 2101..=2105 {
        readers.push(operator(&deployment, id, assigned_tx.clone()).await);
    }
    for dialog in 1..=40 {
        request_handoff(&both, dialog).await;
    }
    let mut counts = BTreeMap::new();
    assignments(&deployment, &mut assigned, &mut counts, 25).await;
    let listing = HandoffClient::new(channel(replicas.a))
        .list_queue(internal(pb::ListQueueRequest {}))
        .await
        .expect("the leader lists")
        .into_inner();
    assert_eq!((listing.queued.len(), listing.assigned.len()), (15, 25));

    deployment.kill("handoff-a").await;
    // Asked while nobody leads: accepted once the standby has taken over.
    let during: Vec<_> = (41..=50)
        .map(|dialog| tokio::spawn(async move { request_handoff(&both, dialog).await }))
        .collect();
    wait_for_health(&deployment, replicas.b, HANDOFF, ServingStatus::Serving).await;
    for request in during {
        request.await.expect("the request task");
    }
    let listing = HandoffClient::new(channel(replicas.b))
        .list_queue(internal(pb::ListQueueRequest {}))
        .await
        .expect("the new leader lists")
        .into_inner();
    assert_eq!((listing.queued.len(), listing.assigned.len()), (25, 25));

    for id in 2106..=2110 {
        readers.push(operator(&deployment, id, assigned_tx.clone()).await);
    }
    assignments(&deployment, &mut assigned, &mut counts, 25).await;
    assert_each_assigned_once(&database, 1..=50, &counts).await;
    assert!(assigned.try_recv().is_err(), "no second assignment");

    for reader in readers {
        reader.abort();
    }
    for part in ["gateway", "chat", "handoff-b", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    drop(redis);
    database.remove().await;
}

/// A gateway drained under a connected client: on SIGTERM its health says
/// `503` `draining` (while the client is still connected: the drain delay),
/// then the client is closed 1001 and the process exits 0 within its
/// shutdown bound. An event for the user while it is away is not lost: the
/// client resumes on the other gateway with its cursor and gets it.
#[tokio::test]
async fn a_drained_gateway_hands_its_clients_to_another() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let mut deployment = Deployment::new(database.url(), Some(redis.port));
    for part in ["presence", "handoff", "chat", "notification"] {
        deployment.start(part);
    }
    let second = free_addr();
    deployment.start_as(
        "gateway-2",
        "gateway",
        &[("CHATAI_GATEWAY_ADDR", second.to_string())],
    );
    deployment.start_as(
        "gateway",
        "gateway",
        &[
            ("CHATAI_DRAIN_DELAY_SECS", "3".to_owned()),
            ("CHATAI_SHUTDOWN_TIMEOUT_SECS", "20".to_owned()),
        ],
    );
    deployment.wait_healthy().await;
    deployment
        .wait_for_health_of(second, "the second gateway is healthy", |status, _| {
            status == 200
        })
        .await;

    let mut user = deployment.connect(1981, Role::User).await;
    let (_, answer) = user
        .chat_and_answer("d1", None, crate::common::FAQ_QUESTION)
        .await;
    let cursor = answer["cursor"].as_str().expect("a cursor").to_owned();

    deployment.send_sigterm("gateway").await;
    let draining = deployment
        .wait_for_health("the gateway says it is draining", |status, body| {
            status == 503 && body["status"] == "draining"
        })
        .await;
    assert_eq!(draining["active_connections"], 1, "{draining}");
    user.expect_close(1001, "Server shutting down").await;
    let exited = deployment.wait_exit("gateway", START).await;
    assert!(exited.success(), "the gateway exits cleanly: {exited}");

    // While the user is away: a durable event for them.
    let notify_addr: SocketAddr = deployment
        .env("CHATAI_NOTIFICATION_ADDR")
        .expect("the notification address")
        .parse()
        .expect("an address");
    NotificationClient::new(channel(notify_addr))
        .notify(internal(pb::NotifyRequest {
            recipient: Some(pb::Recipient {
                kind: Some(pb::recipient::Kind::User(1981)),
            }),
            r#type: "account_notice".to_owned(),
            body_json: json!({"message": "while you were away"}).to_string(),
        }))
        .await
        .expect("notified");

    let (mut resumed, connected) = deployment
        .connect_to(second, 1981, Role::User, &format!("cursor={cursor}"))
        .await;
    assert_eq!(connected["recovered"], true, "{connected}");
    let missed: Value = resumed.next_of("account_notice").await;
    assert_eq!(missed["message"], "while you were away", "{missed}");

    for part in ["gateway-2", "chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    drop(redis);
    database.remove().await;
}
