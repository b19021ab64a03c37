//! What operators of the system watch: every part's Prometheus metrics,
//! the Grafana dashboard and the alert rules (`deploy/`).
//!
//! - The dashboard's and the alerts' queries name only metrics the system
//!   declares (each crate's `metrics::NAMES`), and a running system's
//!   scrapes hold nothing undeclared.
//! - `promtool check rules` accepts the alerts (scripts/test installs
//!   Debian's `prometheus` package for it).
//! - Every part in a process of its own (one recorder each, so the numbers
//!   are this test's alone): a chat message, a handoff and a client too
//!   slow to read move the counters and histograms by what was done, read
//!   from the gateway's `/metrics` and each service's `CHATAI_METRICS_ADDR`.
//! - In one process, the gateway's `/metrics` holds every part's series,
//!   told apart by the `service` label.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_testkit::TestDatabase;
use serde_json::{Value, json};

use crate::common::deployment::{Deployment, internal_call};
use crate::common::{FAQ_QUESTION, RawWs, TestOptions, WAIT, free_addr, spawn_app};

/// Every metric the system declares, one list per crate.
fn declared() -> BTreeSet<&'static str> {
    [
        chatai_kit::metrics::NAMES,
        chatai_gateway::metrics::NAMES,
        chatai_chat::metrics::NAMES,
        chatai_handoff::metrics::NAMES,
        chatai_presence::metrics::NAMES,
    ]
    .concat()
    .into_iter()
    .collect()
}

/// The metric family a series name belongs to: a histogram's `_bucket`,
/// `_sum` and `_count` series are its family's.
fn family(series: &str) -> String {
    let declared = declared();
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix)
            && declared.contains(base)
        {
            return base.to_owned();
        }
    }
    series.to_owned()
}

/// Every `chatai_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("chatai_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(family(&tail[..end]));
        rest = &tail[end..];
    }
    names
}

fn deploy_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&deploy_file("grafana/dashboards/chatai.json"))
        .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    queries
}

/// The dashboard and the alerts query only metrics the system declares,
/// and the dashboard shows what the issue asks for: connections, message
/// rates, latencies, the queue and operators, errors.
#[test]
fn the_dashboard_and_the_alerts_query_only_declared_metrics() {
    let declared = declared();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let used = metric_names(&queries.join("\n"));
    for name in &used {
        assert!(
            declared.contains(name.as_str()),
            "the dashboard queries {name}, which no part exports"
        );
    }
    for wanted in [
        "chatai_gateway_connections",
        "chatai_gateway_frames_in_total",
        "chatai_gateway_delivery_lag_seconds",
        "chatai_grpc_server_request_duration_seconds",
        "chatai_handoff_queue_length",
        "chatai_presence_operators",
        "chatai_gateway_errors_total",
        "chatai_gateway_slow_disconnects_total",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    let alerts = metric_names(&deploy_file("prometheus/alerts.yml"));
    assert!(alerts.len() >= 4, "{alerts:?}");
    for name in &alerts {
        assert!(
            declared.contains(name.as_str()),
            "an alert queries {name}, which no part exports"
        );
    }
    // Prometheus scrapes every part.
    let prometheus = deploy_file("prometheus/prometheus.yml");
    for part in ["gateway", "chat", "handoff", "presence", "notification"] {
        assert!(
            prometheus.contains(&format!("job_name: chatai-{part}")),
            "prometheus.yml does not scrape the {part}"
        );
    }
}

/// `promtool check rules` accepts the alert rules.
#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let output = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs (scripts/test installs Debian's `prometheus` package)");
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("5 rules found"), "{said}");
}

/// One scrape of a `/metrics`: every sample with its labels.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    families: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some(name) = rest.split_whitespace().next() {
                    scrape.families.insert(name.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                .collect();
            scrape.samples.push((name.to_owned(), labels, value));
        }
        scrape
    }

    /// The sum of `name`'s samples whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// How many observations a histogram holds.
    fn count(&self, histogram: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(&format!("{histogram}_count"), labels)
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> Scrape {
    let response = http.get(url).send().await.expect("/metrics answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Scrape::parse(&response.text().await.expect("a body"))
}

/// Every part's `/metrics` URL.
struct Parts {
    urls: BTreeMap<&'static str, String>,
    http: reqwest::Client,
}

impl Parts {
    async fn scrape(&self, part: &str) -> Scrape {
        scrape(&self.http, &self.urls[part]).await
    }

    async fn scrape_all(&self) -> BTreeMap<&'static str, Scrape> {
        let mut all = BTreeMap::new();
        for part in self.urls.keys() {
            all.insert(*part, self.scrape(part).await);
        }
        all
    }

    /// Scrapes `part` until `done` holds (a liveness bound, not a timing:
    /// reports and counts reach the metrics in the background).
    async fn until(&self, part: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let scrape = self.scrape(part).await;
            if done(&scrape) {
                return scrape;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{part}: {what}; last scrape: {scrape:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How many more client frames of `kind` the gateway counted.
fn frames_in_moved(before: &Scrape, after: &Scrape, kind: &str) -> f64 {
    moved(
        before,
        after,
        "chatai_gateway_frames_in_total",
        &[("type", kind)],
    )
}

/// How much a series moved between two scrapes.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

const GATEWAY: (&str, &str) = ("service", "gateway");

/// Every part in its own process, each serving its metrics: a chat message,
/// a handoff and a client too slow to read move the counters and
/// histograms of the parts involved by what was done; every family scraped
/// is declared, every series has a `service` label, and every metric the
/// dashboard shows is there (but for the failure-only ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_exports_metrics_that_move_with_what_was_done() {
    let database = TestDatabase::postgres().await;
    let mut deployment = Deployment::new(database.url(), None);
    // A small outbound queue, and no idle cut: only a full queue cuts the
    // client that does not read.
    deployment.set_env("CHATAI_OUTBOUND_QUEUE", "4".to_owned());
    deployment.set_env("CHATAI_IDLE_TIMEOUT_SECS", "3600".to_owned());
    let mut urls = BTreeMap::new();
    for part in ["presence", "handoff", "chat", "notification"] {
        let addr = free_addr();
        deployment.start_as(part, part, &[("CHATAI_METRICS_ADDR", addr.to_string())]);
        urls.insert(part, format!("http://{addr}/metrics"));
    }
    deployment.start("gateway");
    urls.insert("gateway", format!("http://{}/metrics", deployment.gateway));
    deployment.wait_healthy().await;
    let parts = Parts {
        urls,
        http: reqwest::Client::new(),
    };
    let before = parts.scrape_all().await;

    // A chat message and the assistant's answer.
    let mut user = deployment.connect(2101, Role::User).await;
    let (ack, answer) = user.chat_and_answer("m1", None, FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    let tokens = answer["tokens_used"].as_f64().expect("tokens_used");
    // A frame of a type nobody knows: an `error` frame, the socket stays.
    user.send_text(r#"{"type":"no_such_frame","id":"x1"}"#)
        .await;
    let error = user.next_of("error").await;
    assert_eq!(error["code"], "unknown_type", "{error}");
    let gateway = parts.scrape("gateway").await;
    let chat = parts.scrape("chat").await;
    let (g0, c0) = (&before["gateway"], &before["chat"]);
    assert_eq!(
        moved(
            g0,
            &gateway,
            "chatai_gateway_errors_total",
            &[("code", "unknown_type")]
        ),
        1.0
    );
    assert_eq!(frames_in_moved(g0, &gateway, "invalid"), 1.0);
    assert_eq!(frames_in_moved(g0, &gateway, "chat_message"), 1.0);
    let out = |kind| {
        moved(
            g0,
            &gateway,
            "chatai_gateway_frames_out_total",
            &[("type", kind)],
        )
    };
    assert_eq!(out("connected"), 1.0);
    assert_eq!(out("ack"), 1.0);
    assert_eq!(out("error"), 1.0);
    assert_eq!(out("ai_response"), 1.0);
    // A frame posted over HTTP without a stream counts as a frame in too.
    let token = deployment
        .keys()
        .mint(2101, Role::User, None, Duration::from_secs(600))
        .expect("a token");
    let posted: Value = parts
        .http
        .post(format!("http://{}/api/frames", deployment.gateway))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"type":"no_such_frame","id":"h1"}"#)
        .send()
        .await
        .expect("the frame is posted")
        .json()
        .await
        .expect("an error frame");
    assert_eq!(posted["code"], "unknown_type", "{posted}");
    let gateway = parts.scrape("gateway").await;
    assert_eq!(frames_in_moved(g0, &gateway, "invalid"), 2.0);
    let send_message = [("method", "chatai.v1.Chat/SendMessage"), ("code", "OK")];
    assert_eq!(
        moved(
            g0,
            &gateway,
            "chatai_grpc_client_requests_total",
            &[GATEWAY, send_message[0], send_message[1]]
        ),
        1.0,
        "the gateway called SendMessage once"
    );
    assert_eq!(
        moved(
            c0,
            &chat,
            "chatai_grpc_server_requests_total",
            &[("service", "chat"), send_message[0], send_message[1]]
        ),
        1.0,
        "chat answered SendMessage once"
    );
    assert_eq!(
        chat.count(
            "chatai_grpc_server_request_duration_seconds",
            &[send_message[0]]
        ) - c0.count(
            "chatai_grpc_server_request_duration_seconds",
            &[send_message[0]]
        ),
        1.0
    );
    let assistant = "chatai_chat_assistant_duration_seconds";
    assert_eq!(
        chat.count(assistant, &[("outcome", "ok")]) - c0.count(assistant, &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        moved(c0, &chat, "chatai_chat_assistant_tokens_total", &[]),
        tokens
    );
    assert!(
        moved(
            c0,
            &chat,
            "chatai_event_log_appends_total",
            &[("service", "chat")]
        ) >= 1.0
    );
    // The message and the answer were written, in one or more batches.
    let batches = "chatai_chat_commit_batch_size";
    assert!(chat.count(batches, &[]) - c0.count(batches, &[]) >= 1.0);
    assert!(moved(c0, &chat, &format!("{batches}_sum"), &[]) >= 2.0);
    let statements = "chatai_db_statement_duration_seconds";
    let commits = [("service", "chat"), ("statement", "commit_batch")];
    assert!(chat.count(statements, &commits) - c0.count(statements, &commits) >= 1.0);
    let lag = "chatai_gateway_delivery_lag_seconds";
    assert!(gateway.count(lag, &[GATEWAY]) - g0.count(lag, &[GATEWAY]) >= 1.0);
    assert_eq!(
        gateway.sum("chatai_gateway_connections", &[("role", "user")]),
        1.0
    );

    // A handoff: queued, assigned to the operator, completed.
    let mut operator = deployment.connect(2151, Role::Operator).await;
    parts
        .until("presence", "one operator available", |s| {
            s.sum("chatai_presence_operators", &[("status", "available")]) == 1.0
        })
        .await;
    let reply = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    user.next_of("operator_assigned").await;
    operator.next_of("operator_assigned").await;
    let done = operator
        .request(json!({"type": "complete_handoff", "id": "c1", "dialog_id": dialog_id, "resolution": "answered"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    user.next_of("handoff_completed").await;
    let h0 = &before["handoff"];
    let handoff = parts
        .until("handoff", "the queue is empty again", |s| {
            s.sum("chatai_handoff_queue_length", &[]) == 0.0
                && s.sum("chatai_handoff_assigned", &[]) == 0.0
        })
        .await;
    let waits = "chatai_handoff_queue_wait_seconds";
    assert_eq!(handoff.count(waits, &[]) - h0.count(waits, &[]), 1.0);
    let handling = "chatai_handoff_handling_seconds";
    assert_eq!(handoff.count(handling, &[]) - h0.count(handling, &[]), 1.0);
    assert_eq!(
        moved(
            h0,
            &handoff,
            "chatai_grpc_server_requests_total",
            &[
                ("service", "handoff"),
                ("method", "chatai.v1.Handoff/CompleteHandoff"),
                ("code", "OK")
            ]
        ),
        1.0
    );
    // The queue's transitions, each one statement on the leader's connection.
    for (statement, times) in [("create", 1.0), ("assign", 1.0), ("complete", 1.0)] {
        let labels = [("service", "handoff"), ("statement", statement)];
        assert_eq!(
            handoff.count(statements, &labels) - h0.count(statements, &labels),
            times,
            "{statement}"
        );
    }
    let gateway = parts.scrape("gateway").await;
    assert_eq!(frames_in_moved(g0, &gateway, "handoff_request"), 1.0);
    assert_eq!(frames_in_moved(g0, &gateway, "complete_handoff"), 1.0);
    assert_eq!(
        gateway.sum("chatai_gateway_connections", &[("role", "operator")]),
        1.0
    );
    parts
        .until(
            "presence",
            "the gateway reported the operator's connection",
            |s| {
                moved(
                    &before["presence"],
                    s,
                    "chatai_grpc_server_requests_total",
                    &[
                        ("method", "chatai.v1.Presence/ConnectionOpened"),
                        ("code", "OK"),
                    ],
                ) >= 1.0
            },
        )
        .await;
    parts
        .until(
            "notification",
            "the gateway reported its connections, and they were stored",
            |s| {
                let records = [
                    ("service", "notification"),
                    ("statement", "record_connections"),
                ];
                moved(
                    &before["notification"],
                    s,
                    "chatai_grpc_server_requests_total",
                    &[("service", "notification"), ("code", "OK")],
                ) >= 1.0
                    && s.count(statements, &records)
                        - before["notification"].count(statements, &records)
                        >= 1.0
            },
        )
        .await;

    // A client too slow to read: cut with 4002, counted once.
    slow_client_is_cut(&deployment, &parts).await;
    let gateway = parts.scrape("gateway").await;
    assert_eq!(
        moved(
            g0,
            &gateway,
            "chatai_gateway_slow_disconnects_total",
            &[GATEWAY]
        ),
        1.0
    );
    assert_eq!(
        moved(
            g0,
            &gateway,
            "chatai_gateway_closes_total",
            &[("code", "4002")]
        ),
        1.0
    );
    let depth = "chatai_gateway_outbound_queue_depth";
    assert!(gateway.count(depth, &[]) > g0.count(depth, &[]));

    // Every family is declared and labelled with its part; everything the
    // dashboard shows is exported (failure-only metrics aside).
    let after = parts.scrape_all().await;
    let declared = declared();
    let mut exported = BTreeSet::new();
    for (part, scrape) in &after {
        for family in scrape.families.iter().filter(|f| f.starts_with("chatai_")) {
            assert!(
                declared.contains(family.as_str()),
                "the {part} exports {family}, which no crate declares"
            );
            exported.insert(family.clone());
        }
        for (name, labels, _) in scrape.samples.iter().filter(|s| s.0.starts_with("chatai_")) {
            let service = labels.get("service").map(String::as_str);
            let expected = if *part == "gateway" && !name.starts_with("chatai_gateway_") {
                // The gateway's gRPC client series.
                Some("gateway")
            } else {
                Some(*part)
            };
            assert_eq!(service, expected, "{part}: {name}{labels:?}");
        }
    }
    let failure_only = [
        "chatai_redis_errors_total",
        "chatai_redis_reconnects_total",
        "chatai_event_log_errors_total",
        "chatai_event_log_cursor_expired_total",
    ];
    for name in metric_names(&dashboard_queries().join("\n")) {
        assert!(
            exported.contains(&name) || failure_only.contains(&name.as_str()),
            "the dashboard shows {name}, which no part exported after the traffic"
        );
    }
}

/// Connects user 2102 with a tiny receive buffer, never reads, and has the
/// assistant answer it until the gateway cuts the connection.
async fn slow_client_is_cut(deployment: &Deployment, parts: &Parts) {
    let token = deployment
        .keys()
        .mint(2102, Role::User, None, Duration::from_secs(600))
        .expect("a token");
    let mut slow = RawWs::connect_with_receive_buffer(
        deployment.gateway,
        &format!("/ws/2102?token={token}"),
        4096,
    )
    .await;
    let connected = slow.recv_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let chat_addr = deployment
        .env("CHATAI_CHAT_ADDR")
        .expect("the chat address");
    let chat = ChatClient::connect(format!("http://{chat_addr}"))
        .await
        .expect("connecting to the chat service");
    let cut = |s: &Scrape| s.sum("chatai_gateway_slow_disconnects_total", &[GATEWAY]) >= 1.0;
    // A liveness bound, not a timing.
    let deadline = tokio::time::Instant::now() + WAIT * 12;
    while !cut(&parts.scrape("gateway").await) {
        let questions = (0..50).map(|_| {
            let mut chat = chat.clone();
            async move {
                let user = Caller {
                    id: 2102,
                    role: Role::User,
                    name: None,
                    connection_id: None,
                };
                let request = internal_call(
                    &user,
                    pb::SendMessageRequest {
                        text: FAQ_QUESTION.into(),
                        ..Default::default()
                    },
                );
                chat.send_message(request)
                    .await
                    .expect("SendMessage as the user");
            }
        });
        futures::future::join_all(questions).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow connection was never cut\n{}",
            deployment.logs()
        );
    }
    drop(slow);
}

/// In one process every part records into one recorder: the gateway's
/// `/metrics` holds the services' series too, each under its own
/// `service` label.
#[tokio::test]
async fn one_process_serves_every_part_under_its_service_label() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut user, _) = app.connect_user(2201).await;
    user.chat_and_answer("m1", None, FAQ_QUESTION).await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    let scrape = Scrape::parse(&body);
    let served = |service| {
        scrape.sum(
            "chatai_grpc_server_requests_total",
            &[
                ("service", service),
                ("method", "chatai.v1.Chat/SendMessage"),
            ],
        )
    };
    assert!(served("chat") >= 1.0, "{body}");
    assert_eq!(served("gateway"), 0.0, "the gateway serves no gRPC");
    assert!(
        scrape.sum(
            "chatai_grpc_client_requests_total",
            &[
                ("service", "gateway"),
                ("method", "chatai.v1.Chat/SendMessage")
            ]
        ) >= 1.0
    );
    for service in ["chat", "handoff", "presence", "notification"] {
        assert!(
            scrape.sum("chatai_grpc_server_requests_total", &[("service", service)]) >= 1.0,
            "nothing served by the {service} in {body}"
        );
    }
    app.stop().await;
}
