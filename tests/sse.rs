//! The SSE transport (`GET /sse`, `POST /api/frames`) and the browser-facing
//! HTTP routes around it (`POST /api/alerts`, `GET /api/dev/token`, CORS):
//! the same events as the WebSocket, with `id:` = cursor, resume with
//! `Last-Event-ID` losing nothing, the same per-user limit and close
//! reasons as events.

use std::collections::BTreeSet;
use std::time::Duration;

use chatai_kit::identity::Role;
use serde_json::{Value, json};

use crate::common::sse::{SseClient, open_raw, post, post_frame};
use crate::common::{FAQ_QUESTION, TestOptions, spawn_app};

fn text<'a>(frame: &'a Value, field: &str) -> &'a str {
    frame[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string in {frame}"))
}

/// A stream starts with the WebSocket's `connected` (with `connection_id`,
/// its cursor as `id:`); a `chat_message` posted on its own is acked in the
/// HTTP response and the assistant's answer arrives on the stream, its
/// `id:` the cursor it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_connected_and_the_answer_to_a_posted_message() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(1, Role::User);
    let (mut stream, connected) = SseClient::connect(&app, &token, None).await;
    assert_eq!(connected.frame["user_id"], 1);
    assert_eq!(connected.frame["role"], "user");
    assert!(!text(&connected.frame, "connection_id").is_empty());
    assert_eq!(
        connected.id.as_deref(),
        Some(text(&connected.frame, "cursor"))
    );
    assert!(connected.frame.get("recovered").is_none());

    let (status, ack) = post_frame(
        &app,
        &token,
        &json!({"type":"chat_message","id":"m1","message":FAQ_QUESTION}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "m1");
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog id");

    let answer = stream.next_of("ai_response").await;
    assert_eq!(answer.frame["dialog_id"], dialog_id);
    assert_eq!(answer.id.as_deref(), Some(text(&answer.frame, "cursor")));
    app.stop().await;
}

/// A frame naming the stream's `connection_id` acts for that stream: an
/// admin's stream joins a dialog's room and gets its live copies. Without
/// it a room frame gets `stream_required`; naming someone else's stream or
/// none that is live, `stream_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_naming_the_stream_joins_a_room_for_it() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.token(1, Role::User);
    let admin = app.token(9, Role::Admin);
    let (status, ack) = post_frame(
        &app,
        &user,
        &json!({"type":"chat_message","message":"hello"}),
    )
    .await;
    assert_eq!((status, &ack["type"]), (200, &json!("ack")), "{ack}");
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog id");
    let room = format!("dialog:{dialog_id}");

    let (mut stream, connected) = SseClient::connect(&app, &admin, None).await;
    let connection_id = text(&connected.frame, "connection_id").to_owned();

    let (status, refused) = post_frame(
        &app,
        &admin,
        &json!({"type":"join_room","id":"j0","room_id":room}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(refused["code"], "stream_required", "{refused}");
    assert_eq!(refused["ref"], "j0");
    let (_, refused) = post_frame(
        &app,
        &user,
        &json!({"type":"join_room","id":"j1","room_id":room,"connection_id":connection_id}),
    )
    .await;
    assert_eq!(refused["code"], "stream_not_found", "{refused}");
    let (_, refused) = post_frame(
        &app,
        &admin,
        &json!({"type":"join_room","room_id":room,"connection_id":"nobody:1"}),
    )
    .await;
    assert_eq!(refused["code"], "stream_not_found", "{refused}");

    let (status, joined) = post_frame(
        &app,
        &admin,
        &json!({"type":"join_room","id":"j2","room_id":room,"connection_id":connection_id}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(joined["type"], "ack", "{joined}");
    assert_eq!(joined["ref"], "j2");
    assert_eq!(joined["room_id"], room.as_str());

    let (_, ack) = post_frame(
        &app,
        &user,
        &json!({"type":"chat_message","dialog_id":dialog_id,"message":FAQ_QUESTION}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let copy = stream.next_of("ai_response").await;
    assert_eq!(copy.frame["dialog_id"], dialog_id);
    assert!(copy.id.is_none(), "a room copy is live: no id");
    app.stop().await;
}

/// A stream dropped mid-conversation and opened again with `Last-Event-ID`
/// gets `recovered: true` and every durable event it missed, once, in
/// order; nothing it had already seen comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_last_event_id_losing_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(1, Role::User);
    let ask =
        |reference: String| json!({"type":"chat_message","id":reference,"message":FAQ_QUESTION});
    let (mut stream, _) = SseClient::connect(&app, &token, None).await;
    let mut seen = BTreeSet::new();
    let mut last_id = None;
    for n in 0..2 {
        let (_, ack) = post_frame(&app, &token, &ask(format!("before{n}"))).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let answer = stream.next_of("ai_response").await;
        assert!(seen.insert(answer.frame["event_id"].to_string()));
        last_id = answer.id;
    }
    let last_id = last_id.expect("durable events carry an id");
    drop(stream);

    let mut missed = Vec::new();
    for n in 0..3 {
        let (_, ack) = post_frame(&app, &token, &ask(format!("while{n}"))).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        missed.push(ack["dialog_id"].as_i64().expect("a dialog id"));
    }

    let (mut stream, connected) = SseClient::connect(&app, &token, Some(&last_id)).await;
    assert_eq!(connected.frame["recovered"], true, "{:?}", connected);
    let mut replayed = Vec::new();
    while replayed.len() < missed.len() {
        let event = stream.next().await;
        if let Some(id) = &event.id {
            assert_eq!(Some(id.as_str()), event.frame["cursor"].as_str());
        }
        if event.frame["type"] == "ai_response" {
            assert!(
                seen.insert(event.frame["event_id"].to_string()),
                "an event came twice: {:?}",
                event
            );
            replayed.push(event.frame["dialog_id"].as_i64().expect("a dialog id"));
        }
    }
    assert_eq!(replayed, missed, "every missed answer, in order");
    // And live delivery goes on, with nothing else replayed before it.
    let (_, ack) = post_frame(&app, &token, &ask("after".to_owned())).await;
    let next = stream.next_of("ai_response").await;
    assert_eq!(next.frame["dialog_id"], ack["dialog_id"]);
    assert!(seen.insert(next.frame["event_id"].to_string()));
    app.stop().await;
}

/// A cursor that cannot be resumed from (unreadable, or from another run)
/// gives `recovered: false`, then `cursor_expired`, then live events — by
/// `Last-Event-ID` and by `?cursor=` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_gives_cursor_expired() {
    let earlier = spawn_app(TestOptions::default()).await;
    let token = earlier.token(1, Role::User);
    let (mut stream, _) = SseClient::connect(&earlier, &token, None).await;
    post_frame(
        &earlier,
        &token,
        &json!({"type":"chat_message","message":FAQ_QUESTION}),
    )
    .await;
    let old = stream
        .next_of("ai_response")
        .await
        .id
        .expect("an id on a durable event");
    drop(stream);
    earlier.stop().await;

    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(1, Role::User);
    let (mut stream, connected) = SseClient::connect(&app, &token, Some(&old)).await;
    assert_eq!(connected.frame["recovered"], false, "{:?}", connected);
    let error = stream.next().await;
    assert_eq!(error.frame["code"], "cursor_expired", "{:?}", error);
    post_frame(
        &app,
        &token,
        &json!({"type":"chat_message","message":FAQ_QUESTION}),
    )
    .await;
    stream.next_of("ai_response").await;

    let mut stream = SseClient::open(&app, Some(&token), "?cursor=not-a-cursor", None).await;
    let connected = stream.next().await;
    assert_eq!(connected.frame["recovered"], false, "{:?}", connected);
    assert_eq!(stream.next().await.frame["code"], "cursor_expired");
    app.stop().await;
}

/// SSE streams and WebSockets count against one per-user limit: a third
/// connection replaces the oldest, which is told why (4004) — a WebSocket
/// by its close frame, a stream by its last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_websockets_share_the_per_user_limit() {
    let mut options = TestOptions::default();
    options.gateway.max_connections_per_user = 2;
    let app = spawn_app(options).await;
    let token = app.token(1, Role::User);
    let (mut stream, _) = SseClient::connect(&app, &token, None).await;
    let (mut socket, _) = app.connect_user(1).await;
    let (mut newer, _) = SseClient::connect(&app, &token, None).await;
    let closed = stream.expect_closed(4004).await;
    assert_eq!(closed["reason"], "Too many connections");
    let (_third, _) = app.connect_user(1).await;
    socket.expect_close(4004, "Too many connections").await;
    let (_fourth, _) = app.connect_user(1).await;
    newer.expect_closed(4004).await;
    app.stop().await;
}

/// A token that runs out ends the stream with the WebSocket's 4001, as a
/// last `closed` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_stream_with_4001() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token_with_ttl(1, Role::User, Duration::from_secs(2));
    let (mut stream, _) = SseClient::connect(&app, &token, None).await;
    let closed = stream.expect_closed(4001).await;
    assert_eq!(closed["reason"], "Token expired");
    app.stop().await;
}

/// Without a valid token: 401 with an `error` frame, on the stream and on
/// `POST /api/frames`; a body that is not JSON: 400 `invalid_json`; a frame
/// of unknown type: 200 with the parser's `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorised_and_malformed_requests_get_error_frames() {
    let app = spawn_app(TestOptions::default()).await;
    for (token, query) in [(None, ""), (Some("not-a-token"), ""), (None, "?token=bad")] {
        let response = open_raw(&app, token, query, None, None).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(body["type"], "error");
        assert_eq!(body["code"], "invalid_token");
    }
    // `?token=` works for EventSource, which cannot set headers.
    let token = app.token(1, Role::User);
    let mut stream = SseClient::open(&app, None, &format!("?token={token}"), None).await;
    assert_eq!(stream.next().await.frame["type"], "connected");

    let frame = r#"{"type":"heartbeat"}"#;
    let (status, body) = post(&app, "/api/frames", None, frame).await;
    assert_eq!((status, &body["code"]), (401, &json!("invalid_token")));
    let (status, body) = post(&app, "/api/frames", Some("nope"), frame).await;
    assert_eq!((status, &body["code"]), (401, &json!("invalid_token")));
    let (status, body) = post(&app, "/api/frames", Some(&token), "{not json").await;
    assert_eq!((status, &body["code"]), (400, &json!("invalid_json")));
    let (status, body) = post(
        &app,
        "/api/frames",
        Some(&token),
        r#"{"type":"nope","id":"u"}"#,
    )
    .await;
    assert_eq!((status, &body["code"]), (200, &json!("unknown_type")));
    assert_eq!(body["ref"], "u");
    let (status, body) = post(
        &app,
        "/api/frames",
        Some(&token),
        r#"{"type":"heartbeat","id":"h"}"#,
    )
    .await;
    assert_eq!((status, &body["type"]), (200, &json!("heartbeat_ack")));
    assert_eq!(body["ref"], "h");
    app.stop().await;
}

/// With `CHATAI_ALLOWED_ORIGINS`, a preflight from a listed origin is
/// allowed (with `Authorization` and `Content-Type`), one from another
/// origin is not, and that origin's requests get 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_allowed_origins() {
    let mut options = TestOptions::default();
    options.gateway.allowed_origins = "https://shop.example".parse().expect("origins");
    let app = spawn_app(options).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, app.http_url("/api/frames"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await.expect("an answer");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    let headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );

    let refused = preflight("https://evil.example").await.expect("an answer");
    assert_eq!(header(&refused, "access-control-allow-origin"), None);

    let token = app.token(1, Role::User);
    let foreign = open_raw(&app, Some(&token), "", None, Some("https://evil.example")).await;
    assert_eq!(foreign.status(), 403);
    let listed = open_raw(&app, Some(&token), "", None, Some("https://shop.example")).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(
        header(&listed, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    app.stop().await;
}

/// `POST /api/alerts` by an admin reaches every connected client, on a
/// WebSocket or a stream, as `system_alert`; a user gets 403 and an
/// `error` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_send_alerts_to_everyone() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut socket, _) = app.connect_user(1).await;
    let (mut stream, _) = SseClient::connect(&app, &app.token(2, Role::User), None).await;
    let body =
        r#"{"message":"Maintenance at 22:00","severity":"warning","affected_services":["chat"]}"#;

    let (status, refused) = post(&app, "/api/alerts", Some(&app.token(1, Role::User)), body).await;
    assert_eq!(status, 403);
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    let (status, refused) = post(&app, "/api/alerts", None, body).await;
    assert_eq!((status, &refused["code"]), (401, &json!("invalid_token")));
    let admin = app.token(9, Role::Admin);
    let (status, refused) = post(&app, "/api/alerts", Some(&admin), r#"{"severity":"info"}"#).await;
    assert_eq!((status, &refused["code"]), (400, &json!("invalid_field")));
    let (status, refused) = post(
        &app,
        "/api/alerts",
        Some(&admin),
        r#"{"message":"x","severity":"apocalyptic"}"#,
    )
    .await;
    assert_eq!(status, 400, "{refused}");

    let (status, sent) = post(&app, "/api/alerts", Some(&admin), body).await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["status"], "sent");
    for alert in [
        socket.next_of("system_alert").await,
        stream.next_of("system_alert").await.frame,
    ] {
        assert_eq!(alert["message"], "Maintenance at 22:00");
        assert_eq!(alert["severity"], "warning");
        assert_eq!(alert["affected_services"], json!(["chat"]));
    }
    app.stop().await;
}

/// `GET /api/dev/token` mints a working token while the gateway runs on
/// the development secret, and is 404 with a secret of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_token_endpoint_is_on_only_with_the_development_secret() {
    let app = spawn_app(TestOptions::default()).await;
    let (status, _) = app.http_get("/api/dev/token?sub=42&role=user").await;
    assert_eq!(status, 404);
    app.stop().await;

    let mut options = TestOptions::default();
    options.gateway.jwt_secret = None;
    let app = spawn_app(options).await;
    let (status, body) = app
        .http_get("/api/dev/token?sub=42&role=operator&name=Ann")
        .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(body["expires_at"].as_u64().is_some(), "{body}");
    let (mut stream, connected) = SseClient::connect(&app, text(&body, "token"), None).await;
    assert_eq!(connected.frame["role"], "operator");
    assert_eq!(connected.frame["user_id"], 42);
    assert_eq!(
        stream.next_of("queue_snapshot").await.frame["type"],
        "queue_snapshot"
    );
    let (status, _) = app.http_get("/api/dev/token?sub=0&role=user").await;
    assert_eq!(status, 400);
    let (status, _) = app.http_get("/api/dev/token?sub=1&role=service").await;
    assert_eq!(status, 400);
    app.stop().await;
}
