//! Several replicas of a part, found through `CHATAI_<PART>_ADDRS` (issue
//! 13, items 3 and 4): two gateways and two chat replicas, each its own
//! process, on PostgreSQL and a Redis of the test's own. A chat replica
//! killed while clients on both gateways send loses nothing acknowledged; a
//! user on one gateway and an operator on the other go through a whole
//! handoff; a user's sixth connection, on the other gateway, closes the
//! oldest (4004).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, WsClient, connect_at, free_addr};
use chatai_kit::identity::Role;
use chatai_testkit::TestDatabase;
use chatai_tokens::TokenKeys;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const JWT_SECRET: &str = "addressing-test-secret-of-32-bytes-or-more";
const INTERNAL_TOKEN: &str = "addressing-internal-token";

/// How long a freshly started process may take to become healthy.
const START: Duration = Duration::from_secs(30);

/// A `redis-server` of the test's own.
struct Redis {
    port: u16,
    _child: Child,
}

impl Redis {
    async fn start() -> Redis {
        let port = free_addr().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it) starts");
        let deadline = tokio::time::Instant::now() + START;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "Redis listens");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis {
            port,
            _child: child,
        }
    }
}

/// Two gateways and two chat replicas, one handoff, presence and
/// notification: every part a process of its own, named (`gateway-1`,
/// `chat-2`…), configured only by the environment.
struct Cluster {
    env: Vec<(&'static str, String)>,
    gateways: [SocketAddr; 2],
    chats: [SocketAddr; 2],
    logs: tempfile::TempDir,
    children: HashMap<&'static str, Child>,
    keys: TokenKeys,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(database_url: &str, redis: &Redis) -> Cluster {
        let chats = [free_addr(), free_addr()];
        let env = vec![
            ("CHATAI_DATABASE_URL", database_url.to_owned()),
            ("CHATAI_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
            ("CHATAI_JWT_SECRET", JWT_SECRET.to_owned()),
            (
                "CHATAI_REDIS_URL",
                format!("redis://127.0.0.1:{}", redis.port),
            ),
            ("CHATAI_REDIS_PREFIX", "addressing".to_owned()),
            // Where every part finds the chat replicas.
            ("CHATAI_CHAT_ADDRS", format!("{},{}", chats[0], chats[1])),
            ("CHATAI_HANDOFF_ADDR", free_addr().to_string()),
            ("CHATAI_PRESENCE_ADDR", free_addr().to_string()),
            ("CHATAI_NOTIFICATION_ADDR", free_addr().to_string()),
            ("CHATAI_PRESENCE_GRACE_SECS", "1".to_owned()),
            (
                "RUST_LOG",
                std::env::var("CHATAI_TEST_PROCESS_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ];
        let mut cluster = Cluster {
            env,
            gateways: [free_addr(), free_addr()],
            chats,
            logs: tempfile::tempdir().expect("a folder for the logs"),
            children: HashMap::new(),
            keys: TokenKeys::new(JWT_SECRET.as_bytes()),
            http: reqwest::Client::new(),
        };
        for part in ["presence", "handoff", "notification"] {
            cluster.start_part(part, part, &[]);
        }
        for (n, name) in ["chat-1", "chat-2"].into_iter().enumerate() {
            let listen = cluster.chats[n].to_string();
            cluster.start_part(name, "chat", &[("CHATAI_CHAT_ADDR", listen)]);
        }
        for (n, name) in ["gateway-1", "gateway-2"].into_iter().enumerate() {
            let listen = cluster.gateways[n].to_string();
            cluster.start_part(
                name,
                "gateway",
                &[
                    ("CHATAI_GATEWAY_ADDR", listen),
                    ("CHATAI_GATEWAY_ID", name.to_owned()),
                ],
            );
        }
        for gateway in 0..2 {
            cluster.wait_healthy(gateway).await;
        }
        cluster
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    /// Starts `chatai {part}` as `name`, with the cluster's environment and
    /// `own` on top (none of the test machine's `CHATAI_*` leak in).
    fn start_part(&mut self, name: &'static str, part: &str, own: &[(&str, String)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatai"));
        for (variable, _) in std::env::vars() {
            if variable.starts_with("CHATAI_") || variable.starts_with("OTEL_") {
                command.env_remove(variable);
            }
        }
        let child = command
            .arg(part)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(own.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the chatai binary starts");
        self.children.insert(name, child);
    }

    /// Every part's log, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in self.children.keys() {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            all.push_str(&format!("--- {name}\n{text}"));
        }
        all
    }

    /// SIGKILL.
    async fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).expect("a running part");
        child.kill().await.expect("the part is killed");
    }

    async fn wait_healthy(&self, gateway: usize) {
        let url = format!("http://{}/api/websocket/health", self.gateways[gateway]);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().as_u16() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway {gateway} becomes healthy\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects `id` in `role` to gateway `gateway` (0 or 1).
    async fn connect(&self, gateway: usize, id: i64, role: Role) -> WsClient {
        let token = self
            .keys
            .mint(id, role, None, Duration::from_secs(600))
            .expect("a token");
        connect_at(self.gateways[gateway], &token, id, role, "")
            .await
            .0
    }
}

impl Drop for Cluster {
    /// A failed test shows what every process logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
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
    let redis = Redis::start().await;
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
    let redis = Redis::start().await;
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
    let redis = Redis::start().await;
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
