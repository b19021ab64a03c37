//! Durable delivery end to end: nothing addressed to a user is lost across
//! offline periods, dropped connections, a gateway going away and a service
//! restart — on the embedded memory logs and on Redis.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, TestApp, TestOptions, WAIT, WsClient, as_caller, connect_at, spawn_app};
use chatai_kit::config::{Part, ServiceAddrs, ServiceCommon};
use chatai_kit::events::redis::RedisLog;
use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::identity::Role;
use chatai_kit::redis_keys::LogKey;
use chatai_proto::v1 as pb;
use chatai_proto::v1::notification_client::NotificationClient;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Redis for the tests (`scripts/test` starts it).
fn redis_url() -> String {
    std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Options with the event logs on Redis, under a prefix of this test's own.
fn on_redis(mut options: TestOptions) -> TestOptions {
    options.common.redis_url = Some(redis_url());
    options.common.redis_prefix = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    options
}

/// Sends `count` notifications `{"n": i}` of type `notice` to user `user_id`
/// through the notification service, as an internal caller.
async fn notify(app: &TestApp, user_id: i64, numbers: std::ops::Range<i64>) {
    let mut client = NotificationClient::connect(format!("http://{}", app.services.notification))
        .await
        .expect("connecting to the notification service");
    for n in numbers {
        let request = pb::NotifyRequest {
            recipient: Some((&Recipient::User(user_id)).into()),
            r#type: "notice".into(),
            body_json: json!({ "n": n }).to_string(),
        };
        client
            .notify(as_caller(0, Role::Service, request))
            .await
            .expect("the notification is accepted");
    }
}

/// Reads `count` `notice` frames and returns their numbers and the frames.
async fn notices(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(count);
    while frames.len() < count {
        let frame = client.recv_type("notice").await;
        assert!(
            frame["cursor"].is_string(),
            "durable frames carry a cursor: {frame}"
        );
        assert!(frame["event_id"].is_string());
        frames.push(frame);
    }
    frames
}

fn numbers(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f["n"].as_i64().unwrap_or(-1))
        .collect()
}

/// A user offline while ten events arrive gets all ten, in order, when they
/// connect again without a cursor (the offline queue).
async fn offline_user_gets_everything_in_order(app: TestApp) {
    let (client, _) = app.connect_user(501).await;
    client.close().await;
    app.wait_for_connection_count(0).await;
    notify(&app, 501, 0..10).await;
    let (status, health) = app.health().await;
    assert_eq!(status, 200, "{health}");
    assert!(
        health["queue_size"].as_u64().is_some_and(|size| size >= 10),
        "the ten waiting events count in queue_size, read from the logs: {health}"
    );
    let (mut client, connected) = app.connect_user(501).await;
    assert!(
        connected.get("recovered").is_none(),
        "no cursor asked for: {connected}"
    );
    assert_eq!(
        numbers(&notices(&mut client, 10).await),
        (0..10).collect::<Vec<_>>()
    );
    client.expect_nothing_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// (memory) The offline queue delivers every event in order.
#[tokio::test]
async fn offline_queue_on_memory() {
    offline_user_gets_everything_in_order(spawn_app(TestOptions::default()).await).await;
}

/// (Redis) The offline queue delivers every event in order.
#[tokio::test]
async fn offline_queue_on_redis() {
    offline_user_gets_everything_in_order(spawn_app(on_redis(TestOptions::default())).await).await;
}

/// A client that drops mid-stream and resumes with the cursor of the last
/// frame it processed gets the rest: no gap, no duplicate, `recovered: true`.
async fn resume_has_no_gap_and_no_duplicate(app: TestApp) {
    let (mut client, _) = app.connect_user(502).await;
    notify(&app, 502, 0..6).await;
    let first = notices(&mut client, 3).await;
    let cursor = first[2]["cursor"].as_str().expect("a cursor").to_owned();
    client.close().await;
    notify(&app, 502, 6..9).await;
    let (mut client, connected) = app
        .connect_as(502, Role::User, &format!("cursor={cursor}"))
        .await;
    assert_eq!(connected["recovered"], true, "{connected}");
    assert_eq!(
        numbers(&notices(&mut client, 6).await),
        (3..9).collect::<Vec<_>>()
    );
    client.expect_nothing_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// A burst longer than the gateway's write batch reaches a connected client
/// whole: every event, in order, once, each with a cursor of its own.
#[tokio::test]
async fn a_burst_arrives_whole_in_order() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut client, _) = app.connect_user(509).await;
    notify(&app, 509, 0..50).await;
    let frames = notices(&mut client, 50).await;
    assert_eq!(numbers(&frames), (0..50).collect::<Vec<_>>());
    let cursors: std::collections::HashSet<&str> =
        frames.iter().filter_map(|f| f["cursor"].as_str()).collect();
    assert_eq!(cursors.len(), 50, "every frame has its own cursor");
    client.expect_nothing_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// (memory) Resuming from a cursor: no gap, no duplicate.
#[tokio::test]
async fn resume_on_memory() {
    resume_has_no_gap_and_no_duplicate(spawn_app(TestOptions::default()).await).await;
}

/// (Redis) Resuming from a cursor: no gap, no duplicate.
#[tokio::test]
async fn resume_on_redis() {
    resume_has_no_gap_and_no_duplicate(spawn_app(on_redis(TestOptions::default())).await).await;
}

/// A cursor whose events were trimmed from the log: `recovered: false`, an
/// `error` `cursor_expired`, then live delivery goes on.
#[tokio::test]
async fn expired_cursor_is_reported_and_live_delivery_goes_on() {
    let mut options = TestOptions::default();
    options.common.events.max_per_recipient = 2;
    let app = spawn_app(options).await;
    let (mut client, _) = app.connect_user(503).await;
    notify(&app, 503, 0..1).await;
    let cursor = notices(&mut client, 1).await[0]["cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    client.close().await;
    notify(&app, 503, 1..6).await; // keeps only 4 and 5: 1..=3 are gone
    let (mut client, connected) = app
        .connect_as(503, Role::User, &format!("cursor={cursor}"))
        .await;
    assert_eq!(connected["recovered"], false, "{connected}");
    let error = client.recv_type("error").await;
    assert_eq!(error["code"], "cursor_expired");
    notify(&app, 503, 6..7).await;
    assert_eq!(
        numbers(&notices(&mut client, 1).await),
        vec![6],
        "live delivery goes on"
    );
    app.stop().await;
}

/// A `system_alert` reaches every connected client: users, operators, admins.
#[tokio::test]
async fn system_alert_reaches_everyone() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut user, _) = app.connect_user(504).await;
    let (mut operator, _) = app.connect_as(505, Role::Operator, "").await;
    let (mut admin, _) = app.connect_as(506, Role::Admin, "").await;
    let mut client = NotificationClient::connect(format!("http://{}", app.services.notification))
        .await
        .expect("connecting to the notification service");
    let alert = pb::SystemAlertRequest {
        severity: "warning".into(),
        message: "Scheduled maintenance in 30 minutes".into(),
        affected_services: vec!["ai_chat".into(), "document_upload".into()],
    };
    client
        .system_alert(as_caller(506, Role::Admin, alert))
        .await
        .expect("admins may alert");
    for client in [&mut user, &mut operator, &mut admin] {
        let frame = client.next_of("system_alert").await;
        assert_eq!(frame["severity"], "warning");
        assert_eq!(frame["message"], "Scheduled maintenance in 30 minutes");
        assert_eq!(
            frame["affected_services"],
            json!(["ai_chat", "document_upload"])
        );
    }
    app.stop().await;
}

/// A gateway that shuts down closes its clients with 1001; a client that
/// resumes with its cursor on another gateway gets everything that arrived
/// in between, once.
#[tokio::test]
async fn resume_on_another_gateway_after_shutdown() {
    let app = spawn_app(TestOptions::default()).await;
    let first = app.start_gateway("gw-a").await;
    let (mut client, _) =
        connect_at(first.addr, &app.token(507, Role::User), 507, Role::User, "").await;
    notify(&app, 507, 0..2).await;
    let seen = notices(&mut client, 2).await;
    let cursor = seen[1]["cursor"].as_str().expect("a cursor").to_owned();
    first.stop.cancel();
    client.expect_close(1001, "Server shutting down").await;
    first.task.await.expect("the first gateway stops cleanly");
    notify(&app, 507, 2..5).await;
    let (mut client, connected) = app
        .connect_as(507, Role::User, &format!("cursor={cursor}"))
        .await;
    assert_eq!(connected["recovered"], true, "{connected}");
    assert_eq!(numbers(&notices(&mut client, 3).await), vec![2, 3, 4]);
    client.expect_nothing_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// With Redis, the chat service restarts while a client stays connected: the
/// gateway re-attaches by itself, an event appended to the user's log while
/// the service was away (by another replica) reaches the client, and the
/// chat round trip works again — nothing lost, nothing repeated.
#[tokio::test]
async fn chat_service_restart_loses_nothing() {
    chat_service_restart(false).await;
}

/// As above, but Redis lost the user's log while the service was away, and a
/// new one began with the event: the client is told `cursor_expired` (what
/// the old log held after its cursor is gone), and still gets the event of
/// the new log, which the gateway reads from its start.
#[tokio::test]
async fn a_log_lost_and_begun_again_is_reported_and_read_whole() {
    chat_service_restart(true).await;
}

async fn chat_service_restart(lose_the_log: bool) {
    let options = on_redis(TestOptions::default());
    let prefix = options.common.redis_prefix.clone();
    let folder = tempfile::tempdir().expect("a temporary folder");
    let database_url = format!("sqlite://{}", folder.path().join("chat.db").display());
    let common = ServiceCommon {
        database_url: database_url.clone(),
        ..options.common.clone()
    };
    // Each part on its own listener and stop token, so chat can restart alone.
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (chat_l, handoff_l, presence_l, notification_l, gateway_l) = (
        bind().await,
        bind().await,
        bind().await,
        bind().await,
        bind().await,
    );
    let addrs = ServiceAddrs::listening(
        chat_l.local_addr().expect("address").into(),
        handoff_l.local_addr().expect("address").into(),
        presence_l.local_addr().expect("address").into(),
        notification_l.local_addr().expect("address").into(),
    );
    let others = CancellationToken::new();
    let handoff = options.handoff.clone();
    let notification = options.notification.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        chatai_handoff::run(
            handoff_l,
            handoff,
            addrs.target(Part::Presence),
            Some(addrs.target(Part::Chat)),
            common.clone(),
            others.clone(),
        )
        .map_ok(),
    );
    tasks.spawn(
        chatai_presence::run(
            presence_l,
            options.presence.clone(),
            common.clone(),
            others.clone(),
        )
        .map_ok(),
    );
    tasks.spawn(
        chatai_notification::run(notification_l, notification, common.clone(), others.clone())
            .map_ok(),
    );
    let secret = "restart-secret-of-32-bytes-or-more".to_owned();
    let gateway_addr = gateway_l.local_addr().expect("address");
    let gateway = chatai_gateway::GatewayConfig {
        listen: gateway_addr,
        jwt_secret: Some(secret.clone()),
        ..chatai_gateway::GatewayConfig::default()
    };
    tasks.spawn(
        chatai_gateway::run(
            gateway_l,
            gateway,
            addrs.clone(),
            Default::default(),
            others.clone(),
        )
        .map_ok(),
    );
    let chat_stop = CancellationToken::new();
    let chat = tokio::spawn(chatai_chat::run(
        chat_l,
        options.chat.clone(),
        addrs.target(Part::Handoff),
        common.clone(),
        chat_stop.clone(),
    ));
    let health = format!("http://{gateway_addr}/api/websocket/health");
    wait_healthy(&health).await;

    let keys = chatai_tokens::TokenKeys::new(secret.as_bytes());
    let token = keys
        .mint(508, Role::User, None, Duration::from_secs(600))
        .expect("a token");
    let (mut client, _) = connect_at(gateway_addr, &token, 508, Role::User, "").await;
    let (_, answer) = client
        .chat_and_answer("m1", None, common::FAQ_QUESTION)
        .await;
    let dialog_id = answer["dialog_id"].as_i64().expect("a dialog");

    chat_stop.cancel();
    chat.await.expect("chat joins").expect("chat stops cleanly");
    // While it is away, another chat replica appends an event for the user.
    let (log, relay) = RedisLog::connect(
        &redis_url(),
        &prefix,
        "chat",
        &common.events,
        CancellationToken::new(),
    )
    .await
    .expect("Redis");
    let relay = tokio::spawn(relay);
    if lose_the_log {
        let client = redis::Client::open(redis_url()).expect("a Redis URL");
        let mut redis = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis");
        let keys: Vec<String> = [LogKey::Seq, LogKey::Base, LogKey::Log, LogKey::Seen]
            .into_iter()
            .map(|kind| log.names().log_key("chat", kind, &Recipient::User(508)))
            .collect();
        let removed: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .expect("DEL");
        assert!(removed >= 3, "the user's log was there: {removed} keys");
    }
    let event = Event::new("notice", &json!({ "n": 42 })).expect("an event");
    log.deliver(Recipient::User(508), Arc::new(event))
        .await
        .expect("appended");
    relay.abort();

    let chat_l = addrs.chat.bind().await.expect("the chat port again");
    let chat_stop = CancellationToken::new();
    let chat = tokio::spawn(chatai_chat::run(
        chat_l,
        options.chat.clone(),
        addrs.target(Part::Handoff),
        common.clone(),
        chat_stop.clone(),
    ));
    let mut before = Vec::new();
    let missed = loop {
        let frame = client.recv().await;
        if frame["type"] == "notice" {
            break frame;
        }
        before.push(frame);
    };
    assert_eq!(
        missed["n"], 42,
        "the event appended while the service was away arrives"
    );
    let told = before
        .iter()
        .any(|f| f["type"] == "error" && f["code"] == "cursor_expired");
    assert_eq!(
        told, lose_the_log,
        "cursor_expired iff the log was lost: {before:?}"
    );
    let (_, again) = client
        .chat_and_answer("m2", Some(dialog_id), common::FAQ_QUESTION)
        .await;
    assert_eq!(again["dialog_id"], dialog_id);
    client.expect_nothing_for(Duration::from_millis(300)).await;

    chat_stop.cancel();
    others.cancel();
    chat.await.expect("chat joins").expect("chat stops cleanly");
    while let Some(part) = tasks.join_next().await {
        part.expect("a part joins");
    }
}

async fn wait_healthy(url: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not healthy in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Turns a part's result into `()` for the join set, failing on an error.
trait MapOk {
    fn map_ok(self) -> impl Future<Output = ()> + Send + 'static;
}

impl<F, E> MapOk for F
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug + 'static,
{
    async fn map_ok(self) {
        self.await.expect("the part runs");
    }
}
