//! The chat path end to end: a user connects, talks to the FAQ assistant over
//! the WebSocket, and the result is visible over gRPC (history, balance); and
//! who may touch which dialog, over both.

use crate::common::{
    ASSISTANT_NAME, FAQ_QUESTION, TestApp, TestOptions, WAIT, as_caller, assert_timestamp,
    spawn_app,
};
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

/// The first frame after connecting is `connected` with every field
/// docs/protocol.md names, and no `recovered` when the client did not resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_frame_carries_every_protocol_field() {
    let app = spawn_app(TestOptions::default()).await;
    let (client, connected) = app.connect_user(456).await;
    assert!(
        connected["connection_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{connected}"
    );
    assert_eq!(connected["user_id"], 456, "{connected}");
    assert_eq!(connected["role"], "user", "{connected}");
    assert!(
        connected["cursor"].as_str().is_some_and(|c| !c.is_empty()),
        "{connected}"
    );
    assert_eq!(connected["heartbeat_interval"], 25, "{connected}");
    assert_timestamp(&connected);
    assert!(connected.get("recovered").is_none(), "{connected}");
    client.close().await;
    app.stop().await;
}

/// The whole chat path on SQLite: connect, a message without `dialog_id`
/// gets `ack` then `ai_response`, a second message in the same dialog too,
/// the history over gRPC holds all four messages in order, and the balance
/// went down by the price of the tokens used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_path_on_sqlite() {
    let app = spawn_app(TestOptions::default()).await;
    chat_path(&app).await;
    app.stop().await;
}

/// The same chat path on PostgreSQL (a fresh database, dropped afterwards;
/// fails when the server is unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_path_on_postgres() {
    let app = spawn_app(TestOptions::default().postgres()).await;
    assert!(app.database_url.starts_with("postgres://"));
    chat_path(&app).await;
    app.stop().await;
}

async fn chat_path(app: &TestApp) {
    let user = 456;
    let (mut client, _) = app.connect_user(user).await;

    let (ack, answer) = client.chat_and_answer("m1", None, FAQ_QUESTION).await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog id");
    assert_ai_response(&answer, dialog_id);
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|text| text.contains("Forgot password")),
        "the FAQ answer about passwords: {answer}"
    );

    let (second_ack, second_answer) = client
        .chat_and_answer(
            "m2",
            Some(dialog_id),
            "And how do I change my email address?",
        )
        .await;
    assert_eq!(second_ack["dialog_id"], dialog_id, "{second_ack}");
    assert!(
        second_ack["message_id"].as_i64() > ack["message_id"].as_i64(),
        "{second_ack}"
    );
    assert_ai_response(&second_answer, dialog_id);
    assert_ne!(answer["event_id"], second_answer["event_id"]);
    assert_ne!(answer["cursor"], second_answer["cursor"]);

    let history = app
        .history_as(user, Role::User, dialog_id)
        .await
        .expect("GetHistory as the owner");
    assert_eq!(history.dialog_id, dialog_id);
    assert_eq!(history.user_id, user);
    let seen: Vec<(i32, i64, &str)> = history
        .messages
        .iter()
        .map(|m| (m.sender, m.message_id, m.text.as_str()))
        .collect();
    let expected = vec![
        (
            pb::Sender::User as i32,
            id(&ack["message_id"]),
            FAQ_QUESTION,
        ),
        (
            pb::Sender::Assistant as i32,
            id(&answer["message_id"]),
            text(&answer["message"]),
        ),
        (
            pb::Sender::User as i32,
            id(&second_ack["message_id"]),
            "And how do I change my email address?",
        ),
        (
            pb::Sender::Assistant as i32,
            id(&second_answer["message_id"]),
            text(&second_answer["message"]),
        ),
    ];
    assert_eq!(seen, expected);
    assert!(history.messages[0].sender_id == user);
    assert_eq!(
        history.messages[1].tokens_used,
        answer["tokens_used"].as_u64().expect("tokens") as u32
    );

    // The charge follows the delivery of the answer, so wait for it.
    let tokens = answer["tokens_used"].as_u64().expect("tokens")
        + second_answer["tokens_used"].as_u64().expect("tokens");
    let expected_micros =
        micros(app.starting_balance) - (micros(app.price_per_1k_tokens) * tokens as i64) / 1000;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let balance = micros(app.balance_of(user).await);
        if balance == expected_micros {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "balance {balance} µ, expected {expected_micros} µ after {tokens} tokens"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(expected_micros < micros(app.starting_balance));

    client.assert_quiet_and_open("end").await;
    client.close().await;
}

fn assert_ai_response(answer: &Value, dialog_id: i64) {
    assert_eq!(answer["type"], "ai_response", "{answer}");
    assert_eq!(answer["dialog_id"], dialog_id, "{answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    assert_eq!(answer["assistant_name"], ASSISTANT_NAME, "{answer}");
    assert!(
        answer["tokens_used"].as_u64().is_some_and(|t| t > 0),
        "{answer}"
    );
    assert!(
        answer["event_id"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    assert!(
        answer["cursor"].as_str().is_some_and(|c| !c.is_empty()),
        "{answer}"
    );
    assert_timestamp(answer);
}

fn id(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{value} is not an id"))
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"))
}

fn micros(units: f64) -> i64 {
    (units * 1_000_000.0).round() as i64
}

/// Another user's `chat_message` into someone's dialog gets `error`
/// `forbidden` (with the `ref`), stores nothing, and leaves both connections
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_dialog_is_answered_as_missing() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut owner, _) = app.connect_user(1).await;
    let (mut intruder, _) = app.connect_user(2).await;
    let (ack, _) = owner.chat_and_answer("mine", None, FAQ_QUESTION).await;
    let dialog_id = id(&ack["dialog_id"]);

    intruder
        .send_json(&json!({
            "type": "chat_message",
            "id": "theirs",
            "dialog_id": dialog_id,
            "message": "let me in",
        }))
        .await;
    let error = intruder.recv_type("error").await;
    assert_eq!(error["code"], "dialog_not_found", "{error}");
    assert_eq!(error["ref"], "theirs", "{error}");
    // Word for word what a dialog that does not exist gets: nobody can
    // count others' dialogs.
    let missing = dialog_id + 1000;
    let absent = intruder
        .request(json!({
            "type": "chat_message",
            "id": "absent",
            "dialog_id": missing,
            "message": "anyone?",
        }))
        .await;
    assert_eq!(absent["code"], error["code"], "{absent}");
    assert_eq!(
        absent["message"]
            .as_str()
            .map(|m| m.replace(&missing.to_string(), "N")),
        error["message"]
            .as_str()
            .map(|m| m.replace(&dialog_id.to_string(), "N")),
    );

    let history = app
        .history_as(1, Role::User, dialog_id)
        .await
        .expect("GetHistory as the owner");
    assert_eq!(history.messages.len(), 2, "{:?}", history.messages);
    assert!(history.messages.iter().all(|m| m.text != "let me in"));

    intruder.assert_quiet_and_open("still-open").await;
    owner.assert_quiet_and_open("owner-open").await;
    intruder.close().await;
    owner.close().await;
    app.stop().await;
}

/// Over gRPC another user may neither read (`GetHistory`) nor post into
/// (`SendMessage`) a dialog — NOT_FOUND, as for a missing one — nor read
/// someone's balance: PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_other_users() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut owner, _) = app.connect_user(1).await;
    let (ack, _) = owner.chat_and_answer("mine", None, FAQ_QUESTION).await;
    let dialog_id = id(&ack["dialog_id"]);

    let read = app.history_as(2, Role::User, dialog_id).await;
    assert_eq!(read.err().map(|s| s.code()), Some(Code::NotFound));

    let mut chat = app.chat_client().await;
    let post = chat
        .send_message(as_caller(
            2,
            Role::User,
            pb::SendMessageRequest {
                dialog_id: Some(dialog_id),
                text: "let me in".into(),
                idempotency_key: String::new(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(post.err().map(|s| s.code()), Some(Code::NotFound));

    let balance = chat
        .get_balance(as_caller(
            2,
            Role::User,
            pb::GetBalanceRequest { user_id: 1 },
        ))
        .await;
    assert_eq!(
        balance.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );

    let history = app
        .history_as(1, Role::User, dialog_id)
        .await
        .expect("GetHistory as the owner");
    assert_eq!(history.messages.len(), 2);
    owner.close().await;
    app.stop().await;
}

/// A dialog that does not exist: `error` `dialog_not_found` over the
/// WebSocket (connection stays open), NOT_FOUND over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dialog_is_dialog_not_found() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut client, _) = app.connect_user(1).await;
    client
        .send_json(&json!({
            "type": "chat_message",
            "id": "nowhere",
            "dialog_id": 987_654_321,
            "message": "hello?",
        }))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["code"], "dialog_not_found", "{error}");
    assert_eq!(error["ref"], "nowhere", "{error}");
    client.assert_quiet_and_open("open").await;

    let read = app.history_as(1, Role::User, 987_654_321).await;
    assert_eq!(read.err().map(|s| s.code()), Some(Code::NotFound));
    client.close().await;
    app.stop().await;
}

/// An admin reads any user's dialog history over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_any_history_over_grpc() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut owner, _) = app.connect_user(1).await;
    let (ack, answer) = owner.chat_and_answer("mine", None, FAQ_QUESTION).await;
    let dialog_id = id(&ack["dialog_id"]);

    let history = app
        .history_as(900, Role::Admin, dialog_id)
        .await
        .expect("GetHistory as an admin");
    assert_eq!(history.user_id, 1);
    let ids: Vec<i64> = history.messages.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, vec![id(&ack["message_id"]), id(&answer["message_id"])]);
    owner.close().await;
    app.stop().await;
}

/// A client that resends a `chat_message` after a lost `ack` — the same
/// frame: same `id`, dialog and text — gets the original `ack` and no second
/// message (nor a second answer); a reused `id` with another text is a new
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_frame_gets_the_original_ack() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut client, _) = app.connect_user(31).await;
    let (first, _) = client.chat_and_answer("r1", None, FAQ_QUESTION).await;
    let dialog_id = first["dialog_id"].as_i64().expect("dialog_id");

    let again = client.chat("r1", None, FAQ_QUESTION).await;
    assert_eq!(again["dialog_id"], first["dialog_id"], "{again}");
    assert_eq!(again["message_id"], first["message_id"], "{again}");
    client.assert_quiet_and_open("no second answer").await;
    assert_eq!(app.wait_for_history(31, dialog_id, 2).await.len(), 2);

    let other = client
        .chat("r1", Some(dialog_id), "How much does ChatAI cost?")
        .await;
    assert_ne!(other["message_id"], first["message_id"], "{other}");
    let answer = client.recv_type("ai_response").await;
    assert_eq!(answer["dialog_id"], dialog_id, "{answer}");
    assert_eq!(app.wait_for_history(31, dialog_id, 4).await.len(), 4);
    client.close().await;
    app.stop().await;
}
