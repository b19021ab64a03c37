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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::deployment::{Deployment, Redis, START, until, wait_for_port};
use crate::common::{self, free_addr};
use chatai_kit::identity::Role;
use chatai_testkit::TestDatabase;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use serde_json::{Value, json};

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

/// The spans of the trace `trace_id`, each with its process and parent.
fn in_trace<'a>(
    spans: &'a [(String, otlp::Span)],
    trace_id: &[u8],
) -> Vec<&'a (String, otlp::Span)> {
    spans
        .iter()
        .filter(|(_, span)| span.trace_id == trace_id)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What an operator sees in Jaeger: one client frame is one trace, from the
/// gateway's span for the frame, through the chat service's call and the
/// assistant's answer, to the gateway delivering that answer — four
/// processes' spans under one trace id, the frame's span its root, each
/// part's spans named after it; the database write inside `send_message`,
/// and the group-committed batch that carried it linked to it. And nothing
/// else: the periodic background work of the same seconds (gateway reports
/// and lease refreshes, connection records, analytics pushes, trims, the
/// presence actor) exports no trace. And the JSON log lines of a request
/// carry the trace id the collector received.
#[tokio::test]
async fn one_client_frame_is_one_trace_across_processes() {
    let collector = Collector::default();
    let otlp_addr = collector.start().await;
    let database = TestDatabase::postgres().await;
    let mut deployment = Deployment::new(database.url(), None);
    deployment.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"));
    // The chat service's debug lines include the refusal logged below.
    deployment.set_env("RUST_LOG", "info,chatai_chat=debug".to_owned());
    deployment.set_env("CHATAI_LOG_JSON", "true".to_owned());
    // Analytics pushes (and with them their store reads) every second.
    deployment.set_env("CHATAI_ANALYTICS_INTERVAL_SECS", "1".to_owned());
    for part in ["presence", "handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let window_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let mut user = deployment.connect(1903, Role::User).await;
    let (ack, _) = user
        .chat_and_answer("traced", None, common::FAQ_QUESTION)
        .await;
    // Someone else writing into that dialog: refused, with a debug line in
    // the chat service's log, inside the frame's trace.
    let mut other = deployment.connect(1904, Role::User).await;
    let refused = other
        .request(json!({
            "type": "chat_message",
            "id": "foreign",
            "dialog_id": ack["dialog_id"],
            "message": "hello",
        }))
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    // Long enough for every periodic task to run at least once: gateway
    // reports and lease refreshes (5 s), connection records (1 s),
    // analytics pushes (1 s here). Waiting, not timing anything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Stopping flushes every process's buffered spans to the collector.
    deployment.terminate("gateway").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }

    let spans = collector.spans();
    let frame_span = |id: &str| {
        spans
            .iter()
            .find(|(service, span)| {
                service == "chatai-gateway"
                    && span.name == "gateway.frame"
                    && attribute(span, "id") == Some(id)
            })
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| panic!("the gateway's span for the frame {id}: {spans:#?}"))
    };
    let frame = frame_span("traced");
    assert!(
        frame.parent_span_id.is_empty(),
        "the frame's span is a root"
    );
    let trace = in_trace(&spans, &frame.trace_id);
    let summary: Vec<(&str, &str, Option<&str>)> = trace
        .iter()
        .map(|(service, span)| {
            (
                service.as_str(),
                span.name.as_str(),
                attribute(span, "path").or(attribute(span, "kind")),
            )
        })
        .collect();
    for (service, name, detail) in [
        (
            "chatai-chat",
            "chat.SendMessage",
            Some("/chatai.v1.Chat/SendMessage"),
        ),
        ("chatai-chat", "assistant_answer", None),
        ("chatai-gateway", "gateway.deliver", Some("ai_response")),
    ] {
        assert!(
            summary
                .iter()
                .any(|(s, n, d)| *s == service && *n == name && (detail.is_none() || *d == detail)),
            "{service} {name} {detail:?} is in the frame's trace: {summary:#?}"
        );
    }
    // Each part's entry spans say which part they are.
    for (service, span) in &trace {
        if let Some(part) = attribute(span, "chatai.part") {
            assert_eq!(format!("chatai-{part}"), *service, "{}", span.name);
        }
    }

    // The database write is a child of `send_message`; the batch that
    // committed it is a root of its own, linked to it.
    let by_id = |id: &[u8]| trace.iter().find(|(_, span)| span.span_id == id);
    let write = trace
        .iter()
        .map(|(_, span)| span)
        .find(|span| {
            span.name == "db.write"
                && by_id(&span.parent_span_id)
                    .is_some_and(|(_, parent)| parent.name == "send_message")
        })
        .unwrap_or_else(|| panic!("a db.write under send_message: {summary:#?}"));
    let batch = spans
        .iter()
        .find(|(service, span)| {
            service == "chatai-chat"
                && span.name == "db.batch"
                && span
                    .links
                    .iter()
                    .any(|link| link.trace_id == write.trace_id && link.span_id == write.span_id)
        })
        .map(|(_, span)| span)
        .unwrap_or_else(|| panic!("a db.batch linked to the db.write: {spans:#?}"));
    assert!(batch.parent_span_id.is_empty(), "the batch is a root");

    // In the window, every trace is a client's: a frame, its connection, or
    // a batch of the database writes they caused — judged by the root of
    // each trace any span of the window belongs to (a long-lived root that
    // began earlier counts too).
    let foreign = frame_span("foreign");
    let client_root = |service: &str, name: &str| {
        matches!(
            (service, name),
            ("chatai-gateway", "gateway.frame" | "client" | "connection")
                | ("chatai-chat", "db.batch")
        )
    };
    let mut traces: Vec<&[u8]> = spans
        .iter()
        .filter(|(_, span)| span.start_time_unix_nano >= window_start)
        .map(|(_, span)| span.trace_id.as_slice())
        .collect();
    traces.sort();
    traces.dedup();
    let background: Vec<(&str, &str)> = traces
        .iter()
        .map(|trace_id| {
            spans
                .iter()
                .find(|(_, span)| span.trace_id == *trace_id && span.parent_span_id.is_empty())
                .map(|(service, span)| (service.as_str(), span.name.as_str()))
                .unwrap_or(("no root exported", "?"))
        })
        .filter(|(service, name)| !client_root(service, name))
        .collect();
    assert!(
        background.is_empty(),
        "only clients' traces in the window ({} in all), not {background:#?}",
        traces.len()
    );

    // A log line of the refused request carries the trace id the collector
    // received (and the span id of a span of that trace).
    let chat_log =
        std::fs::read_to_string(deployment.log_path("chat")).expect("the chat service's log");
    let foreign_trace = hex(&foreign.trace_id);
    let line: Value = chat_log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "refused: someone else's dialog")
        .unwrap_or_else(|| panic!("the refusal is logged as JSON: {chat_log}"));
    assert_eq!(line["trace_id"], foreign_trace.as_str(), "{line}");
    let span_id = line["span_id"].as_str().expect("a span id");
    assert!(
        in_trace(&spans, &foreign.trace_id)
            .iter()
            .any(|(_, span)| hex(&span.span_id) == span_id),
        "the line's span is one the collector received: {line}"
    );
    database.remove().await;
}
