//! Several replicas of every part, found through `CHATAI_<PART>_ADDRS`
//! (issue 13): two gateways and two replicas of each service (chat,
//! handoff, presence, notification), each its own process, on PostgreSQL
//! and a Redis of the test's own. A chat replica killed while clients on
//! both gateways send loses nothing acknowledged; a user on one gateway and
//! an operator on the other go through a whole handoff with two replicas of
//! everything; a user's sixth connection, on the other gateway, closes the
//! oldest (4004).

use std::net::SocketAddr;

use crate::common::deployment::{Deployment, Redis};
use crate::common::{self, WsClient, free_addr};
use chatai_kit::identity::Role;
use chatai_testkit::TestDatabase;
use serde_json::{Value, json};

/// Each service, run twice: its part, the replicas' names, the variable it
/// listens on and the one the others find both replicas by.
const SERVICES: [(&str, [&str; 2], &str, &str); 4] = [
    (
        "chat",
        ["chat-1", "chat-2"],
        "CHATAI_CHAT_ADDR",
        "CHATAI_CHAT_ADDRS",
    ),
    (
        "handoff",
        ["handoff-1", "handoff-2"],
        "CHATAI_HANDOFF_ADDR",
        "CHATAI_HANDOFF_ADDRS",
    ),
    (
        "presence",
        ["presence-1", "presence-2"],
        "CHATAI_PRESENCE_ADDR",
        "CHATAI_PRESENCE_ADDRS",
    ),
    (
        "notification",
        ["notification-1", "notification-2"],
        "CHATAI_NOTIFICATION_ADDR",
        "CHATAI_NOTIFICATION_ADDRS",
    ),
];

/// Two gateways and two replicas of every service, every part a process of
/// its own, named (`gateway-1`, `chat-2`…), each finding the others through
/// `CHATAI_<PART>_ADDRS`.
struct Cluster {
    deployment: Deployment,
    gateways: [SocketAddr; 2],
}

impl Cluster {
    async fn start(database_url: &str, redis: &Redis) -> Cluster {
        let mut deployment = Deployment::new(database_url, Some(redis.port));
        let listens = SERVICES.map(|_| [free_addr(), free_addr()]);
        for ((_, _, _, addrs), replicas) in SERVICES.iter().zip(&listens) {
            deployment.set_env(addrs, format!("{},{}", replicas[0], replicas[1]));
        }
        for ((part, names, addr, _), replicas) in SERVICES.iter().zip(&listens) {
            for (name, listen) in names.iter().zip(replicas) {
                deployment.start_as(name, part, &[(*addr, listen.to_string())]);
            }
        }
        let gateways = [free_addr(), free_addr()];
        for (n, name) in ["gateway-1", "gateway-2"].into_iter().enumerate() {
            deployment.start_as(
                name,
                "gateway",
                &[
                    ("CHATAI_GATEWAY_ADDR", gateways[n].to_string()),
                    ("CHATAI_GATEWAY_ID", name.to_owned()),
                ],
            );
        }
        for gateway in gateways {
            deployment
                .wait_for_health_of(gateway, "a gateway becomes healthy", |status, _| {
                    status == 200
                })
                .await;
        }
        Cluster {
            deployment,
            gateways,
        }
    }

    /// SIGKILL.
    async fn kill(&mut self, name: &str) {
        self.deployment.kill(name).await;
    }

    /// Connects `id` in `role` to gateway `gateway` (0 or 1).
    async fn connect(&self, gateway: usize, id: i64, role: Role) -> WsClient {
        self.deployment
            .connect_to(self.gateways[gateway], id, role, "")
            .await
            .0
    }
}

/// Sends `chat_message` `reference` and returns its reply (`ack` or
/// `error`), skipping everything else.
async fn send(client: &mut WsClient, reference: &str, dialog_id: i64, text: &str) -> Value {
    client
        .request(json!({"type": "chat_message", "id": reference, "dialog_id": dialog_id, "message": text}))
        .await
}

/// The ids of the messages of `dialog_id`'s history (its latest 100).
async fn stored(client: &mut WsClient, dialog_id: i64) -> Vec<i64> {
    let page = client
        .request(
            json!({"type": "get_history", "id": "history", "dialog_id": dialog_id, "limit": 100}),
        )
        .await;
    assert_eq!(page["type"], "ack", "{page}");
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .filter_map(|m| m["message_id"].as_i64())
        .collect()
}

/// One client's side of the kill test: sends `count` messages into its
/// dialog one after the other (each waits for its reply), tells `progress`
/// after each, and returns the acknowledged message ids.
async fn keep_sending(
    mut client: WsClient,
    who: &'static str,
    dialog_id: i64,
    count: usize,
    progress: tokio::sync::mpsc::Sender<()>,
) -> (WsClient, Vec<i64>) {
    let mut acked = Vec::new();
    for n in 0..count {
        let reference = format!("{who}-{n}");
        // A question the assistant answers (one it cannot would queue the
        // dialog for an operator, and nobody would answer after that).
        let reply = send(&mut client, &reference, dialog_id, common::FAQ_QUESTION).await;
        match reply["type"].as_str() {
            Some("ack") => acked.push(reply["message_id"].as_i64().expect("a message id")),
            // Refused (the call found no replica in time): not
            // acknowledged, so not promised.
            _ => assert_eq!(reply["code"], "service_unavailable", "{reply}"),
        }
        let _ = progress.send(()).await;
    }
    (client, acked)
}

/// Two chat replicas behind `CHATAI_CHAT_ADDRS`, clients on both gateways
/// sending without pause, and one replica SIGKILLed meanwhile: every
/// message that was acknowledged is stored, the calls after the kill are
/// answered by the other replica, and the assistant's answers still reach
/// the clients (their gateways' event streams moved to the live replica).
#[tokio::test]
async fn a_chat_replica_killed_while_clients_send_loses_nothing_acknowledged() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let mut cluster = Cluster::start(database.url(), &redis).await;

    let mut first = cluster.connect(0, 2301, Role::User).await;
    let mut second = cluster.connect(1, 2302, Role::User).await;
    let (ack, _) = first
        .chat_and_answer("open", None, common::FAQ_QUESTION)
        .await;
    let first_dialog = ack["dialog_id"].as_i64().expect("a dialog");
    let (ack, _) = second
        .chat_and_answer("open", None, common::FAQ_QUESTION)
        .await;
    let second_dialog = ack["dialog_id"].as_i64().expect("a dialog");

    const EACH: usize = 40;
    let (progress, mut sent) = tokio::sync::mpsc::channel(2 * EACH);
    let first_task = tokio::spawn(keep_sending(
        first,
        "first",
        first_dialog,
        EACH,
        progress.clone(),
    ));
    let second_task = tokio::spawn(keep_sending(
        second,
        "second",
        second_dialog,
        EACH,
        progress,
    ));
    // A quarter of the way in, with both clients mid-stream, one replica
    // goes without a goodbye.
    for _ in 0..EACH / 2 {
        sent.recv().await.expect("the clients are sending");
    }
    cluster.kill("chat-1").await;
    let (mut first, first_acked) = first_task.await.expect("the first client");
    let (mut second, second_acked) = second_task.await.expect("the second client");

    // Everything acknowledged is stored.
    for (client, dialog, acked) in [
        (&mut first, first_dialog, &first_acked),
        (&mut second, second_dialog, &second_acked),
    ] {
        let stored = stored(client, dialog).await;
        let lost: Vec<&i64> = acked.iter().filter(|id| !stored.contains(id)).collect();
        assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    }

    // Events still flow to both gateways: a new message's answer arrives.
    for (client, dialog) in [(&mut first, first_dialog), (&mut second, second_dialog)] {
        let reply = send(client, "after", dialog, common::FAQ_QUESTION).await;
        assert_eq!(reply["type"], "ack", "{reply}");
        let answer = client.next_of("ai_response").await;
        assert_eq!(answer["dialog_id"], dialog, "{answer}");
    }
    database.remove().await;
}

/// A user on one gateway and an operator on the other, through a whole
/// handoff: assigned, messages both ways, completed.
#[tokio::test]
async fn a_handoff_across_two_gateways() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let cluster = Cluster::start(database.url(), &redis).await;

    let mut operator = cluster.connect(1, 2351, Role::Operator).await;
    let mut user = cluster.connect(0, 2311, Role::User).await;
    let (ack, _) = user.chat_and_answer("m1", None, common::FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    let reply = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person, please"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let assigned = user.next_of("operator_assigned").await;
    assert_eq!(assigned["operator_id"], 2351, "{assigned}");
    let assigned = operator.next_of("operator_assigned").await;
    assert_eq!(assigned["dialog_id"], dialog_id, "{assigned}");

    let sent = send(&mut user, "m2", dialog_id, "are you there?").await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let question = operator.next_of("chat_message").await;
    assert_eq!(question["message"], "are you there?", "{question}");
    let sent = send(&mut operator, "r1", dialog_id, "I am.").await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let answer = user.next_of("operator_message").await;
    assert_eq!(answer["message"], "I am.", "{answer}");

    let done = operator
        .request(json!({"type": "complete_handoff", "id": "c1", "dialog_id": dialog_id, "resolution": "answered"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    user.next_of("handoff_completed").await;
    operator.next_of("handoff_completed").await;
    database.remove().await;
}

/// The limit of 5 connections per user holds over both gateways: five on
/// the first, then a sixth on the second closes the oldest (4004), and a
/// seventh the next oldest; the newest stay open.
#[tokio::test]
async fn a_sixth_connection_on_another_gateway_closes_the_oldest() {
    let database = TestDatabase::postgres().await;
    let redis = Redis::start(free_addr().port()).await;
    let cluster = Cluster::start(database.url(), &redis).await;

    let mut on_first = Vec::new();
    for _ in 0..5 {
        on_first.push(cluster.connect(0, 2321, Role::User).await);
    }
    let mut sixth = cluster.connect(1, 2321, Role::User).await;
    on_first[0].expect_close(4004, "Too many connections").await;
    let mut seventh = cluster.connect(1, 2321, Role::User).await;
    on_first[1].expect_close(4004, "Too many connections").await;
    // The newest of them all still answer.
    sixth.assert_quiet_and_open("six").await;
    seventh.assert_quiet_and_open("seven").await;
    on_first[4].assert_quiet_and_open("five").await;
    database.remove().await;
}
