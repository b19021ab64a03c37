//! The system as it is deployed: every part in a process of its own (the
//! `chatai` binary's subcommands), configured only through the environment,
//! on PostgreSQL and a Redis of the test's own, with an internal token
//! between the services, two of them addressed by name. Drives a user and
//! an operator through the gateway, then breaks things the way production
//! does: a service killed and restarted, Redis killed and restarted, the
//! gateway stopped with SIGTERM. Also: a restarted service on the embedded
//! memory logs, and the traces the five processes export to an OTLP
//! collector (what Jaeger would show).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, WAIT, WsClient, connect_at, free_addr};
use chatai_kit::identity::Role;
use chatai_testkit::TestDatabase;
use chatai_tokens::TokenKeys;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub(crate) const JWT_SECRET: &str = "processes-test-secret-of-32-bytes-or-more";
pub(crate) const INTERNAL_TOKEN: &str = "processes-internal-token";

/// How long a freshly started process may take to become healthy (it
/// connects to PostgreSQL and Redis and applies migrations first).
const START: Duration = Duration::from_secs(30);

/// A `redis-server` of the test's own, so the test can kill it.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it) starts");
        wait_for_port(port).await;
        Redis { port, child }
    }

    async fn kill(&mut self) {
        self.child.kill().await.expect("Redis is killed");
    }
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The five processes, their shared environment and their logs (also used
/// by `tests/metrics.rs`).
pub(crate) struct Deployment {
    env: Vec<(&'static str, String)>,
    pub(crate) gateway: SocketAddr,
    logs: tempfile::TempDir,
    children: HashMap<&'static str, Child>,
    keys: TokenKeys,
    http: reqwest::Client,
}

impl Deployment {
    /// The environment of a deployment on `database_url`, with the event
    /// logs in the Redis on `redis_port`, or in each service's memory.
    pub(crate) fn new(database_url: &str, redis_port: Option<u16>) -> Deployment {
        let gateway = free_addr();
        let mut env = vec![
            ("CHATAI_DATABASE_URL", database_url.to_owned()),
            ("CHATAI_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
            ("CHATAI_JWT_SECRET", JWT_SECRET.to_owned()),
            ("CHATAI_GATEWAY_ADDR", gateway.to_string()),
            // By name, as in a container network: each service resolves its
            // own name to listen on, the others to connect.
            (
                "CHATAI_CHAT_ADDR",
                format!("localhost:{}", free_addr().port()),
            ),
            (
                "CHATAI_HANDOFF_ADDR",
                format!("localhost:{}", free_addr().port()),
            ),
            ("CHATAI_PRESENCE_ADDR", free_addr().to_string()),
            ("CHATAI_NOTIFICATION_ADDR", free_addr().to_string()),
            ("CHATAI_PRESENCE_GRACE_SECS", "1".to_owned()),
            // `CHATAI_TEST_PROCESS_LOG=debug` to see more when one fails.
            (
                "RUST_LOG",
                std::env::var("CHATAI_TEST_PROCESS_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ];
        if let Some(port) = redis_port {
            env.push(("CHATAI_REDIS_URL", format!("redis://127.0.0.1:{port}")));
            env.push(("CHATAI_REDIS_PREFIX", "processes".to_owned()));
        }
        Deployment {
            env,
            gateway,
            logs: tempfile::tempdir().expect("a folder for the logs"),
            children: HashMap::new(),
            keys: TokenKeys::new(JWT_SECRET.as_bytes()),
            http: reqwest::Client::new(),
        }
    }

    fn log_path(&self, part: &str) -> PathBuf {
        self.logs.path().join(format!("{part}.log"))
    }

    /// The value of `name` in the deployment's environment.
    pub(crate) fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(existing, _)| *existing == name)
            .map(|(_, value)| value.as_str())
    }

    /// What signs the deployment's client tokens.
    pub(crate) fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Adds a variable to every part started from now on.
    pub(crate) fn set_env(&mut self, name: &'static str, value: String) {
        self.env.retain(|(existing, _)| *existing != name);
        self.env.push((name, value));
    }

    /// Starts `chatai {part}` with the deployment's environment only (none
    /// of the test machine's `CHATAI_*` settings leak in).
    pub(crate) fn start(&mut self, part: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(part))
            .expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatai"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CHATAI_") || name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg(part)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the chatai binary starts");
        self.children.insert(part, child);
    }

    /// Every part's log, for a failure message.
    pub(crate) fn logs(&self) -> String {
        let mut all = String::new();
        for part in self.children.keys() {
            let text = std::fs::read_to_string(self.log_path(part)).unwrap_or_default();
            all.push_str(&format!("--- {part}\n{text}"));
        }
        all
    }

    /// SIGKILL: the part gets no chance to say goodbye.
    async fn kill(&mut self, part: &str) {
        let mut child = self.children.remove(part).expect("a running part");
        child.kill().await.expect("the part is killed");
    }

    /// SIGTERM, then waits for the process; it must exit 0 in time.
    async fn terminate(&mut self, part: &str) {
        let mut child = self.children.remove(part).expect("a running part");
        let pid = child.id().expect("a live process");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to the {part}");
        let status = tokio::time::timeout(WAIT * 2, child.wait())
            .await
            .unwrap_or_else(|_| panic!("the {part} stops after SIGTERM"))
            .expect("its exit status");
        assert!(
            status.success(),
            "the {part} exits cleanly on SIGTERM: {status}\n{}",
            self.logs()
        );
    }

    /// The health endpoint's status and body, or `None` while the gateway
    /// does not answer.
    async fn health(&self) -> Option<(u16, Value)> {
        let url = format!("http://{}/api/websocket/health", self.gateway);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Polls health until `wanted` says yes; fails with every log otherwise.
    async fn wait_for_health(&self, what: &str, wanted: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + START;
        let mut last = None;
        loop {
            if let Some((status, body)) = self.health().await {
                if wanted(status, &body) {
                    return body;
                }
                last = Some((status, body));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: last health {last:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn wait_healthy(&self) {
        self.wait_for_health("the deployment becomes healthy", |status, _| status == 200)
            .await;
    }

    pub(crate) async fn connect(&self, id: i64, role: Role) -> WsClient {
        let token = self
            .keys
            .mint(id, role, None, Duration::from_secs(600))
            .expect("a token");
        connect_at(self.gateway, &token, id, role, "").await.0
    }
}

impl Drop for Deployment {
    /// A failed test shows what every process logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Reads frames until one satisfies `last`; returns them all.
async fn until(client: &mut WsClient, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = last(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Every part in its own process: the chat path and a whole handoff across
/// five processes, then a killed service, a killed Redis and a SIGTERM.
#[tokio::test]
async fn every_part_in_its_own_process() {
    let database = TestDatabase::postgres().await;
    let database_url = database.url().to_owned();
    let mut redis = Redis::start(free_addr().port()).await;
    let mut deployment = Deployment::new(&database_url, Some(redis.port));
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;

    // The chat path: gateway → chat service → PostgreSQL, the answer back
    // over the chat service's event stream.
    let mut user = deployment.connect(1901, Role::User).await;
    let (ack, answer) = user.chat_and_answer("m1", None, common::FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    assert_eq!(answer["assistant_name"], common::ASSISTANT_NAME);

    // A handoff: presence, handoff and chat services talk to each other.
    let mut operator = deployment.connect(1951, Role::Operator).await;
    let reply = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person, please"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let assigned = user.next_of("operator_assigned").await;
    assert_eq!(assigned["operator_id"], 1951, "{assigned}");
    operator.next_of("operator_assigned").await;
    user.chat("m2", Some(dialog_id), "are you there?").await;
    let question = operator.next_of("chat_message").await;
    assert_eq!(question["message"], "are you there?");
    let sent = operator
        .request(
            json!({"type": "chat_message", "id": "r1", "dialog_id": dialog_id, "message": "I am."}),
        )
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let reply = user.next_of("operator_message").await;
    assert_eq!(reply["message"], "I am.");
    let done = operator
        .request(json!({"type": "complete_handoff", "id": "c1", "dialog_id": dialog_id, "resolution": "answered"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    user.next_of("handoff_completed").await;

    // A service killed outright: health names it, and when it is back the
    // gateway re-attaches by itself and the connected user chats again.
    deployment.kill("chat").await;
    let down = deployment
        .wait_for_health("health reports the chat service down", |status, body| {
            status == 503 && body["error"].as_str().is_some_and(|e| e.contains("chat"))
        })
        .await;
    assert_eq!(down["status"], "unhealthy", "{down}");
    deployment.start("chat");
    deployment.wait_healthy().await;
    let (_, again) = user
        .chat_and_answer("m3", Some(dialog_id), common::FAQ_QUESTION)
        .await;
    assert_eq!(again["dialog_id"], dialog_id);

    // Redis killed: every service that keeps its logs there stops serving,
    // and health says so; a new Redis and the services carry on.
    redis.kill().await;
    let down = deployment
        .wait_for_health("health reports Redis down", |status, body| {
            status == 503
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Redis is unreachable"))
        })
        .await;
    assert_eq!(down["status"], "unhealthy", "{down}");
    let mut redis = Redis::start(redis.port).await;
    deployment.wait_healthy().await;
    // Redis kept nothing on disk: events not yet delivered may have gone
    // with it, and the connected user is told so rather than left guessing.
    let expired = user.next_of("error").await;
    assert_eq!(expired["code"], "cursor_expired", "{expired}");
    let sent = user
        .request(json!({"type": "chat_message", "id": "m4", "dialog_id": dialog_id, "message": common::FAQ_QUESTION}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let after_redis = user.next_of("ai_response").await;
    assert_eq!(after_redis["dialog_id"], dialog_id);

    // SIGTERM: the gateway closes its clients with 1001 and exits 0; so do
    // the services.
    deployment.terminate("gateway").await;
    user.expect_close(1001, "Server shutting down").await;
    operator.expect_close(1001, "Server shutting down").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    redis.kill().await;
    database.remove().await;
}

/// The embedded default's event logs live in each service's memory: a
/// service that restarts has lost them. A connected client is told
/// (`cursor_expired`), and what the restarted service sends it afterwards
/// still arrives, whether it was logged before or after the gateway
/// re-attached.
#[tokio::test]
async fn a_restarted_service_on_memory_logs_tells_and_goes_on() {
    let database = TestDatabase::postgres().await;
    let database_url = database.url().to_owned();
    let mut deployment = Deployment::new(&database_url, None);
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let mut user = deployment.connect(1902, Role::User).await;
    let (ack, _) = user.chat_and_answer("m1", None, common::FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");

    deployment.kill("chat").await;
    deployment
        .wait_for_health("health reports the chat service down", |status, _| {
            status == 503
        })
        .await;
    deployment.start("chat");
    deployment.wait_healthy().await;
    user.send_json(&json!({"type": "chat_message", "id": "m2", "dialog_id": dialog_id, "message": common::FAQ_QUESTION}))
        .await;
    let frames = until(&mut user, |frame| frame["type"] == "ai_response").await;
    let expired = frames
        .iter()
        .position(|f| f["type"] == "error" && f["code"] == "cursor_expired");
    let acked = frames
        .iter()
        .any(|f| f["type"] == "ack" && f["ref"] == "m2");
    assert!(
        expired.is_some(),
        "the client is told its chat events were lost: {frames:?}"
    );
    assert!(acked, "the message is acknowledged: {frames:?}");
    let answer = frames.last().expect("the answer");
    assert_eq!(answer["dialog_id"], dialog_id);
    assert!(answer["cursor"].is_string(), "{answer}");

    deployment.terminate("gateway").await;
    user.expect_close(1001, "Server shutting down").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    database.remove().await;
}

/// Issue 9, item 3: presence is down while the operator holding a dialog
/// leaves (nobody can tell it), then comes back knowing nobody. The handoff
/// service must not keep the dialog with the vanished operator forever:
/// presence is told again what they hold, gives them the grace period, and
/// when it ends without them the dialog goes back to the queue — the user is
/// told, and the next operator gets it.
#[tokio::test]
async fn an_operator_who_left_while_presence_was_down_loses_their_dialogs() {
    let database = TestDatabase::postgres().await;
    let database_url = database.url().to_owned();
    let mut deployment = Deployment::new(&database_url, None);
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let mut user = deployment.connect(1905, Role::User).await;
    let (ack, _) = user.chat_and_answer("m1", None, common::FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    let mut operator = deployment.connect(1955, Role::Operator).await;
    let asked = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person, please"}))
        .await;
    assert_eq!(asked["type"], "ack", "{asked}");
    assert_eq!(user.next_of("operator_assigned").await["operator_id"], 1955);
    operator.next_of("operator_assigned").await;
    let replied = operator
        .request(
            json!({"type": "chat_message", "id": "r1", "dialog_id": dialog_id, "message": "Here."}),
        )
        .await;
    assert_eq!(replied["type"], "ack", "{replied}");
    user.next_of("operator_message").await;

    deployment.kill("presence").await;
    deployment
        .wait_for_health("health reports presence down", |status, _| status == 503)
        .await;
    operator.close().await;
    deployment.start("presence");
    deployment.wait_healthy().await;

    // Taken back: the user is told their place in the queue again.
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !remaining.is_zero(),
            "the dialog stayed with the vanished operator\n{}",
            deployment.logs()
        );
        let frame = user.recv_json(remaining).await;
        if frame["type"] == "handoff_queued" && frame["dialog_id"] == dialog_id {
            break;
        }
    }
    let mut next = deployment.connect(1956, Role::Operator).await;
    let assigned = next.next_of("operator_assigned").await;
    assert_eq!(assigned["dialog_id"], dialog_id, "{assigned}");

    deployment.terminate("gateway").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    database.remove().await;
}

/// Durability across a SIGKILL: one connection streams 300 distinct chat
/// messages without waiting for answers; partway through, the chat service
/// is killed outright and started again while the stream goes on. Every
/// message whose `ack` the client got must be in PostgreSQL afterwards —
/// under the acked `message_id`, with its text — and no text may be stored
/// twice (the gateway retries an unreachable chat service with one
/// idempotency key per frame). An ack sent before the commit would leave an
/// acked message missing when the kill lands in between, and fail the test.
#[tokio::test]
async fn acked_messages_survive_a_killed_chat_service_exactly_once() {
    use futures::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    const MESSAGES: usize = 300;
    const KILL_AFTER_ACKS: usize = 100;
    let database = TestDatabase::postgres().await;
    let database_url = database.url().to_owned();
    let redis = Redis::start(free_addr().port()).await;
    let mut deployment = Deployment::new(&database_url, Some(redis.port));
    // One connection sends far faster than the default 20 frames/s.
    deployment.set_env("CHATAI_RATE_LIMIT_PER_SEC", "100000".to_owned());
    deployment.set_env("CHATAI_RATE_LIMIT_BURST", "100000".to_owned());
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let user_id = 1904;
    let mut user = deployment.connect(user_id, Role::User).await;
    let opened = user.chat("open", None, "a dialog for the stream").await;
    let dialog_id = opened["dialog_id"].as_i64().expect("a dialog");
    let text_of = |n: usize| format!("durable message {n}");

    // The reader keeps every reply to the stream's frames (`ack` or
    // `error`, by `ref`), until each frame has one.
    let (mut sink, mut stream) = user.stream.split();
    let acks = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let acks = acks.clone();
        async move {
            let mut replies: HashMap<String, Value> = HashMap::new();
            while replies.len() < MESSAGES {
                let next = tokio::time::timeout(START * 2, stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("replies stopped after {}", replies.len()));
                let text = match next {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(close))) => panic!("closed: {close:?}"),
                    Some(Ok(_)) => continue,
                    other => panic!("the connection ended: {other:?}"),
                };
                let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                let is_reply = frame["type"] == "ack" || frame["type"] == "error";
                let Some(reference) = frame["ref"].as_str().filter(|r| r.starts_with('k')) else {
                    continue;
                };
                if is_reply {
                    if frame["type"] == "ack" {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    let earlier = replies.insert(reference.to_owned(), frame.clone());
                    assert!(earlier.is_none(), "two replies to {reference}: {frame}");
                }
            }
            replies
        }
    });

    // The writer: a steady stream, never waiting for a reply.
    let writer = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let frame = json!({"type": "chat_message", "id": format!("k{n}"), "dialog_id": dialog_id, "message": format!("durable message {n}")});
            sink.send(Message::text(frame.to_string()))
                .await
                .expect("the gateway keeps the connection open");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sink
    });
    // Partway: SIGKILL while messages are in flight, then a new process.
    let deadline = tokio::time::Instant::now() + START;
    while acks.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{KILL_AFTER_ACKS} acks before the kill"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    deployment.kill("chat").await;
    let acked_before_kill = acks.load(Ordering::Relaxed);
    deployment.start("chat");
    let _sink = writer.await.expect("the writer finishes");
    let replies = reader.await.expect("every frame is answered");
    deployment.wait_healthy().await;

    let acked: HashMap<i64, String> = (0..MESSAGES)
        .filter_map(|n| {
            let reply = &replies[&format!("k{n}")];
            (reply["type"] == "ack").then(|| {
                let id = reply["message_id"]
                    .as_i64()
                    .expect("an ack names its message");
                assert_eq!(reply["dialog_id"], dialog_id, "{reply}");
                (id, text_of(n))
            })
        })
        .collect();
    let refused: Vec<&Value> = replies.values().filter(|r| r["type"] == "error").collect();
    assert!(
        acked.len() > acked_before_kill,
        "messages are acked again after the restart ({} acked, {acked_before_kill} before the kill; refused: {refused:?})",
        acked.len()
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .expect("the test database");
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, body FROM messages WHERE dialog_id = $1 AND sender = 'user' AND sender_id = $2",
    )
    .bind(dialog_id)
    .bind(user_id)
    .fetch_all(&pool)
    .await
    .expect("the dialog's messages");
    pool.close().await;
    let stored: HashMap<i64, &str> = rows.iter().map(|(id, body)| (*id, body.as_str())).collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (_, body) in &rows {
        *copies.entry(body.as_str()).or_default() += 1;
    }
    // Acked ⊆ stored, under the acked id and with its text.
    let missing: Vec<(&i64, &String)> = acked
        .iter()
        .filter(|(id, text)| stored.get(*id) != Some(&text.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "acked but not stored: {missing:?} ({} acked, {} stored)",
        acked.len(),
        rows.len()
    );
    // Once each: no frame's retry stored a second row.
    let twice: Vec<(&&str, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");

    for part in ["gateway", "chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    drop(redis);
    database.remove().await;
}

/// An OTLP trace collector, as Jaeger runs one: keeps every span it is sent,
/// with the `service.name` of the process that sent it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, otlp::Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self
            .spans
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?;
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref())
                .and_then(|value| match &value.value {
                    Some(any_value::Value::StringValue(name)) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a free port; returns its address.
    async fn start(&self) -> SocketAddr {
        let addr = free_addr();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(addr),
        );
        wait_for_port(addr.port()).await;
        addr
    }

    /// The spans received so far, each with its process's `service.name`.
    fn spans(&self) -> Vec<(String, otlp::Span)> {
        self.spans
            .lock()
            .map(|spans| spans.clone())
            .unwrap_or_default()
    }
}

/// The value of a span's string attribute `key`.
fn attribute<'a>(span: &'a otlp::Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value| match &value.value {
            Some(any_value::Value::StringValue(text)) => Some(text.as_str()),
            _ => None,
        })
}

/// What an operator sees in Jaeger: one client frame is one trace, from the
/// gateway's span for the frame, through the chat service's call and the
/// assistant's answer, to the gateway delivering that answer — four
/// processes' spans under one trace id, the frame's span its root.
#[tokio::test]
async fn one_client_frame_is_one_trace_across_processes() {
    let collector = Collector::default();
    let otlp_addr = collector.start().await;
    let database = TestDatabase::postgres().await;
    let mut deployment = Deployment::new(database.url(), None);
    deployment.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"));
    deployment.set_env("RUST_LOG", "info".to_owned());
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let mut user = deployment.connect(1903, Role::User).await;
    user.chat_and_answer("traced", None, common::FAQ_QUESTION)
        .await;
    // Stopping flushes every process's buffered spans to the collector.
    deployment.terminate("gateway").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }

    let spans = collector.spans();
    let frame = spans
        .iter()
        .find(|(service, span)| {
            service == "chatai-gateway"
                && span.name == "frame"
                && attribute(span, "id") == Some("traced")
        })
        .map(|(_, span)| span.clone())
        .unwrap_or_else(|| panic!("the gateway's span for the frame: {spans:#?}"));
    assert!(
        frame.parent_span_id.is_empty(),
        "the frame's span is a root"
    );
    let in_trace: Vec<(&str, &str, Option<&str>)> = spans
        .iter()
        .filter(|(_, span)| span.trace_id == frame.trace_id)
        .map(|(service, span)| {
            (
                service.as_str(),
                span.name.as_str(),
                attribute(span, "path").or(attribute(span, "kind")),
            )
        })
        .collect();
    for (service, name, detail) in [
        ("chatai-chat", "grpc", Some("/chatai.v1.Chat/SendMessage")),
        ("chatai-chat", "assistant_answer", None),
        ("chatai-gateway", "deliver", Some("ai_response")),
    ] {
        assert!(
            in_trace
                .iter()
                .any(|(s, n, d)| *s == service && *n == name && (detail.is_none() || *d == detail)),
            "{service} {name} {detail:?} is in the frame's trace: {in_trace:#?}"
        );
    }
    database.remove().await;
}
