//! Bad input (docs/protocol.md, "Error codes" and "Close codes"): each kind of bad frame gets the
//! `error` or the close the contract names. In every case another client
//! connected at the same time keeps working, and the message the offender
//! had sent (and had acknowledged) before the bad frame stays in the history.

use crate::common::{FAQ_QUESTION, RawWs, TestApp, TestOptions, WsClient, spawn_app};
use chatai_kit::identity::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The offender (user 1), a bystander (user 2) on the same gateway, and the
/// message the offender had acknowledged before misbehaving.
struct Scene {
    app: TestApp,
    offender: WsClient,
    bystander: WsClient,
    accepted: Accepted,
}

/// A message that was acknowledged: its dialog and id.
struct Accepted {
    dialog_id: i64,
    message_id: i64,
}

impl Accepted {
    fn from_ack(ack: &Value) -> Self {
        Accepted {
            dialog_id: ack["dialog_id"].as_i64().expect("a dialog id"),
            message_id: ack["message_id"].as_i64().expect("a message id"),
        }
    }
}

async fn scene(options: TestOptions) -> Scene {
    let app = spawn_app(options).await;
    let (mut offender, _) = app.connect_user(1).await;
    let (bystander, _) = app.connect_user(2).await;
    let (ack, _) = offender.chat_and_answer("before", None, FAQ_QUESTION).await;
    Scene {
        app,
        offender,
        bystander,
        accepted: Accepted::from_ack(&ack),
    }
}

/// The bystander still gets its messages acknowledged, and the accepted
/// message is in the offender's history; then the app stops cleanly.
async fn nothing_else_is_harmed(app: TestApp, mut bystander: WsClient, accepted: Accepted) {
    bystander
        .chat_and_answer("bystander", None, "How do I change my password?")
        .await;
    let history = app
        .history_as(1, Role::User, accepted.dialog_id)
        .await
        .expect("GetHistory as the offender");
    assert!(
        history
            .messages
            .iter()
            .any(|m| m.message_id == accepted.message_id && m.text == FAQ_QUESTION),
        "the acknowledged message is kept: {:?}",
        history.messages
    );
    bystander.close().await;
    app.stop().await;
}

/// Sends `text`, expects `error` with `code` (and `ref` when given), then
/// proves the offender's connection still works and nothing else is harmed.
async fn bad_frame_gets_error(text: &str, code: &str, reference: Option<&str>) {
    let Scene {
        app,
        mut offender,
        bystander,
        accepted,
    } = scene(TestOptions::default()).await;
    offender.send_text(text).await;
    let error = offender.recv_type("error").await;
    assert_eq!(error["code"], code, "{text} → {error}");
    assert!(error["message"].is_string(), "{error}");
    match reference {
        Some(reference) => assert_eq!(error["ref"], reference, "{text} → {error}"),
        None => assert!(error.get("ref").is_none(), "{text} → {error}"),
    }
    offender.assert_quiet_and_open("still-open").await;
    offender.close().await;
    nothing_else_is_harmed(app, bystander, accepted).await;
}

/// A frame that is not JSON: `error` `invalid_json`; the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_json_is_invalid_json() {
    bad_frame_gets_error("this is not json {", "invalid_json", None).await;
}

/// A JSON array instead of an object: `error` `invalid_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_is_invalid_frame() {
    bad_frame_gets_error(r#"[{"type":"heartbeat"}]"#, "invalid_frame", None).await;
}

/// An object without `type`: `error` `missing_type`, with the `id` as `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_type_is_missing_type() {
    bad_frame_gets_error(r#"{"id":"t1","message":"hi"}"#, "missing_type", Some("t1")).await;
}

/// A `type` no client may send: `error` `unknown_type`, with the `id` as `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_is_unknown_type() {
    bad_frame_gets_error(
        r#"{"type":"launch_rockets","id":"t2"}"#,
        "unknown_type",
        Some("t2"),
    )
    .await;
}

/// A `chat_message` without `message`: `error` `missing_field`, with the `id` as `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_field_is_missing_field() {
    bad_frame_gets_error(
        r#"{"type":"chat_message","id":"t3"}"#,
        "missing_field",
        Some("t3"),
    )
    .await;
}

/// A field of the wrong JSON type (a number as `message`, a word as
/// `dialog_id`): `error` `invalid_field`, with the `id` as `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_field_type_is_invalid_field() {
    bad_frame_gets_error(
        r#"{"type":"chat_message","id":"t4","message":42}"#,
        "invalid_field",
        Some("t4"),
    )
    .await;
    bad_frame_gets_error(
        r#"{"type":"chat_message","id":"t5","message":"hi","dialog_id":"abc"}"#,
        "invalid_field",
        Some("t5"),
    )
    .await;
}

/// An `id` that is not a string: `error` `invalid_id`, without a `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_string_id_is_invalid_id() {
    bad_frame_gets_error(r#"{"type":"heartbeat","id":5}"#, "invalid_id", None).await;
}

/// A binary frame: close 1003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_closes_1003() {
    let Scene {
        app,
        mut offender,
        bystander,
        accepted,
    } = scene(TestOptions::default()).await;
    offender
        .send(Message::Binary(vec![0x7b, 0x7d].into()))
        .await;
    let before = offender
        .expect_close(1003, "Binary frames are not supported")
        .await;
    assert!(before.is_empty(), "{before:?}");
    nothing_else_is_harmed(app, bystander, accepted).await;
}

/// A text frame that is not UTF-8 (written by hand, as tungstenite refuses
/// to): close 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_1007() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(1, Role::User);
    let mut offender: RawWs = app.raw_connect("/ws/1", &token).await;
    let connected = offender.recv_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let (bystander, _) = app.connect_user(2).await;

    offender
        .send_json(&json!({ "type": "chat_message", "id": "before", "message": FAQ_QUESTION }))
        .await;
    let ack = offender.recv_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "before", "{ack}");
    let answer = offender.recv_json().await;
    assert_eq!(answer["type"], "ai_response", "{answer}");

    offender.send_text_bytes(&[0xC3, 0x28]).await;
    offender.expect_close(1007, "Invalid UTF-8").await;
    nothing_else_is_harmed(app, bystander, Accepted::from_ack(&ack)).await;
}

/// Frames breaking the WebSocket protocol, each on a connection of its own
/// — a continuation frame with nothing to continue, an unmasked client
/// frame, a reserved opcode — are answered with close 1002 `Protocol error`
/// (not a dropped TCP connection); others are not harmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_1002() {
    let Scene {
        app,
        offender,
        bystander,
        accepted,
    } = scene(TestOptions::default()).await;
    offender.close().await;
    let token = app.token(1, Role::User);
    let unmasked_text = [0x81, 0x02, b'{', b'}'];
    let reserved_opcode = crate::common::frame::encode(0x3, b"{}");
    let continuation = crate::common::frame::encode(0x0, b"{}");
    for bytes in [&continuation[..], &unmasked_text, &reserved_opcode] {
        let mut raw: RawWs = app.raw_connect("/ws/1", &token).await;
        let connected = raw.recv_json().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        raw.write_raw(bytes).await;
        raw.expect_close(1002, "Protocol error").await;
    }
    nothing_else_is_harmed(app, bystander, accepted).await;
}

/// A frame over the configured limit (1 KiB here): close 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_1009() {
    let Scene {
        app,
        mut offender,
        bystander,
        accepted,
    } = scene(TestOptions::default().max_frame_bytes(1024)).await;
    let big = json!({ "type": "chat_message", "message": "x".repeat(2048) });
    offender.send_json(&big).await;
    let before = offender.expect_close(1009, "Frame too large").await;
    assert!(before.is_empty(), "{before:?}");
    nothing_else_is_harmed(app, bystander, accepted).await;
}

/// A frame just under the limit is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_under_the_limit_is_accepted() {
    let app = spawn_app(TestOptions::default().max_frame_bytes(1024)).await;
    let (mut client, _) = app.connect_user(1).await;
    let padding = " ".repeat(1024 - 100);
    let frame = format!(r#"{{"type":"heartbeat","id":"big",{padding}"pad":true}}"#);
    assert!(frame.len() <= 1024);
    client.send_text(&frame).await;
    let ack = client.recv_type("heartbeat_ack").await;
    assert_eq!(ack["ref"], "big");
    client.close().await;
    app.stop().await;
}

/// Flooding past the rate limit: `error` `rate_limited` (with the frame's
/// `id` as `ref`) for refused frames, then close 1008 when it keeps on; every
/// message acknowledged during the flood is in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_gets_rate_limited_then_closed_1008() {
    let Scene {
        app,
        mut offender,
        bystander,
        accepted,
    } = scene(TestOptions::default().rate_limit(1, 5, 3)).await;
    for i in 0..40 {
        let frame = json!({
            "type": "chat_message",
            "id": format!("f{i}"),
            "dialog_id": accepted.dialog_id,
            "message": format!("flood {i}"),
        });
        // The server may close before the last ones are written.
        if !offender.try_send_text(&frame.to_string()).await {
            break;
        }
    }
    let before = offender.expect_close(1008, "Rate limit exceeded").await;
    let mut limited = 0;
    let mut acked = Vec::new();
    for frame in &before {
        match frame["type"].as_str() {
            Some("ack") => acked.push(frame["message_id"].as_i64().expect("a message id")),
            // Events the flood caused (answers, and handoffs for the
            // questions the assistant cannot answer).
            _ if frame.get("event_id").is_some() => {}
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                assert!(
                    frame["ref"].as_str().is_some_and(|r| r.starts_with('f')),
                    "{frame}"
                );
                limited += 1;
            }
            _ => panic!("unexpected frame before the close: {frame}"),
        }
    }
    assert!(
        limited > 0,
        "no rate_limited error before the close: {before:?}"
    );
    let history = app
        .history_as(1, Role::User, accepted.dialog_id)
        .await
        .expect("GetHistory as the offender");
    for id in &acked {
        assert!(
            history.messages.iter().any(|m| m.message_id == *id),
            "acknowledged message {id} is missing from {:?}",
            history.messages
        );
    }
    nothing_else_is_harmed(app, bystander, accepted).await;
}
