//! One user cannot lock everyone else out of human support (issue 10,
//! finding 6): a client's handoff priority is at most `normal` unless its
//! token raises it (`chatai_max_priority`), and one user may have only a few
//! handoffs waiting at once.

use crate::common::{TestApp, TestOptions, WsClient, connect_at, spawn_app, unix_now};
use chatai_kit::identity::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A user's dialog with one message, answered by the assistant.
async fn dialog_of(client: &mut WsClient, reference: &str) -> i64 {
    let (ack, _) = client.chat_and_answer(reference, None, "hello").await;
    ack["dialog_id"].as_i64().expect("a dialog")
}

async fn ask(client: &mut WsClient, dialog_id: i64, priority: &str) -> Value {
    client
        .request(json!({"type": "handoff_request", "id": format!("h{dialog_id}"), "dialog_id": dialog_id, "priority": priority}))
        .await
}

/// A user token whose issuer lets it ask for up to `max_priority`.
fn token_allowing(app: &TestApp, user_id: i64, max_priority: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({
            "sub": user_id.to_string(),
            "role": "user",
            "exp": unix_now() + 600,
            "chatai_max_priority": max_priority,
        }),
        &EncodingKey::from_secret(app.jwt_secret.as_bytes()),
    )
    .expect("signing")
}

/// An `urgent` asked for by an ordinary token is given as `normal` (the ack
/// says so) and waits behind a real `urgent` asked for later by a client
/// whose token allows it.
#[tokio::test]
async fn a_clients_priority_is_at_most_normal_unless_its_token_allows_more() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut plain, _) = app.connect_user(2201).await;
    let plain_dialog = dialog_of(&mut plain, "p1").await;
    let allowed = token_allowing(&app, 2202, "urgent");
    let (mut vip, _) = connect_at(app.gateway_addr, &allowed, 2202, Role::User, "").await;
    let vip_dialog = dialog_of(&mut vip, "v1").await;

    let first = ask(&mut plain, plain_dialog, "urgent").await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["priority"], "normal", "{first}");
    assert_eq!(first["position"], 1, "{first}");
    let second = ask(&mut vip, vip_dialog, "urgent").await;
    assert_eq!(second["type"], "ack", "{second}");
    assert_eq!(second["priority"], "urgent", "{second}");
    assert_eq!(
        second["position"], 1,
        "the allowed urgent goes first: {second}"
    );
    let moved = plain.next_of("handoff_queued").await;
    let moved = if moved["position"] == 1 {
        plain.next_of("handoff_queued").await
    } else {
        moved
    };
    assert_eq!(moved["position"], 2, "{moved}");

    // Asking for less than allowed is given as asked.
    let (mut modest, _) = app.connect_user(2203).await;
    let modest_dialog = dialog_of(&mut modest, "m1").await;
    let low = ask(&mut modest, modest_dialog, "low").await;
    assert_eq!(low["priority"], "low", "{low}");
    app.stop().await;
}

/// Past the per-user cap (3 by default) a user's further requests are
/// refused with `too_many_handoffs`, while another user is still served.
#[tokio::test]
async fn one_user_cannot_fill_the_queue() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut greedy, _) = app.connect_user(2211).await;
    let mut dialogs = Vec::new();
    for n in 0..4 {
        dialogs.push(dialog_of(&mut greedy, &format!("g{n}")).await);
    }
    for dialog_id in &dialogs[..3] {
        let asked = ask(&mut greedy, *dialog_id, "normal").await;
        assert_eq!(asked["type"], "ack", "{asked}");
    }
    let refused = ask(&mut greedy, dialogs[3], "normal").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "too_many_handoffs", "{refused}");

    let (mut other, _) = app.connect_user(2212).await;
    let other_dialog = dialog_of(&mut other, "o1").await;
    let served = ask(&mut other, other_dialog, "normal").await;
    assert_eq!(served["type"], "ack", "{served}");
    assert_eq!(served["position"], 4, "{served}");
    app.stop().await;
}
