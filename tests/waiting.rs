//! What a user waiting for an operator is told: an honest wait estimate
//! (issue 11, item 8) — position × the average handling time ÷ the seats of
//! online operators who chose available — and no number at all while
//! nobody who could serve the queue is online.

use crate::common::{TestApp, TestOptions, WsClient, spawn_app};
use chatai_kit::identity::Role;
use serde_json::{Value, json};

/// One seat per operator; the default handling time (300 s) until any
/// handoff completes.
fn options() -> TestOptions {
    let mut options = TestOptions::default();
    options.presence.max_handoffs = 1;
    options.handoff.max_handoffs = 1;
    options
}

/// User `user`'s new dialog, and their `handoff_request`'s ack.
async fn ask(app: &TestApp, user: i64) -> (WsClient, Value) {
    let (mut client, _) = app.connect_user(user).await;
    let (ack, _) = client.chat_and_answer("hello", None, "hello").await;
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    let asked = client
        .request(json!({"type": "handoff_request", "id": "h", "dialog_id": dialog_id}))
        .await;
    assert_eq!(asked["type"], "ack", "{asked}");
    (client, asked)
}

/// 0 operators: `null`; 1 operator (full): 300 s; 3 operators (all full):
/// 100 s for the first in line.
#[tokio::test]
async fn the_wait_estimate_counts_every_seat_and_admits_when_there_is_none() {
    let app = spawn_app(options()).await;
    let (mut first, alone) = ask(&app, 2301).await;
    assert_eq!(alone["position"], 1, "{alone}");
    assert!(alone["estimated_wait_time"].is_null(), "{alone}");
    assert_eq!(alone["operators_online"], 0, "{alone}");

    let (mut olga, _) = app.connect_as(2351, Role::Operator, "").await;
    first.next_of("operator_assigned").await;
    olga.next_of("operator_assigned").await;
    let (_second, one) = ask(&app, 2302).await;
    assert_eq!(
        (
            &one["position"],
            &one["estimated_wait_time"],
            &one["operators_online"]
        ),
        (&json!(1), &json!(300), &json!(1)),
        "{one}"
    );

    let (_oscar, _) = app.connect_as(2352, Role::Operator, "").await;
    let (_oleg, _) = app.connect_as(2353, Role::Operator, "").await;
    let (mut third, _) = ask(&app, 2303).await;
    // The second and third users take the two new seats (the third may be
    // told it waits for a moment before); then all three are full.
    third.next_of("operator_assigned").await;
    let (_fourth, three) = ask(&app, 2304).await;
    assert_eq!(
        (
            &three["position"],
            &three["estimated_wait_time"],
            &three["operators_online"]
        ),
        (&json!(1), &json!(100), &json!(3)),
        "{three}"
    );
    app.stop().await;
}
