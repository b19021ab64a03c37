//! The two timers, through the real service with short configured timeouts:
//! an operator who never replies loses the handoff, and a request waiting
//! too long goes back to the assistant. Waits are bounded; no duration is
//! asserted.

mod common;

use chatai_kit::events::Recipient;
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use common::{App, Database, FakePresence, Observer, config, recipients};
use tonic::Code;

/// An assigned operator who does not reply within the reply timeout loses
/// the handoff: they get `handoff_completed` ("reassigned: no reply"), the
/// user is queued again and the other operator gets it; the new holder's
/// reply (`OperatorReplied`) is accepted, a reply from the old one is not.
#[tokio::test]
async fn an_operator_who_does_not_reply_loses_the_handoff_to_another() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    presence.set(2, "Bob", true, "available").await;
    let database = Database::new();
    let app = App::start(
        &database,
        chatai_handoff::HandoffConfig {
            reply_timeout_secs: 2,
            ..config()
        },
        &presence,
    )
    .await;
    let client = app.client().await;
    let mut events = Observer::attach(&client, &recipients(&[1, 2], [1])).await;

    let record = client.request(1, pb::Priority::High).await.expect("ok");
    assert_eq!(record.operator_id, 1);
    assert_eq!(events.position(1).await, 1);
    assert_eq!(events.assigned(1).await, 1);

    let taken = events
        .expect(&Recipient::Operator(1), "operator_assigned")
        .await;
    assert_eq!(taken["dialog_id"], 1);
    let back = events
        .expect(&Recipient::Operator(1), "handoff_completed")
        .await;
    assert_eq!(back["dialog_id"], 1);
    assert_eq!(back["operator_id"], 1);
    assert_eq!(back["resolution"], "reassigned: no reply");
    assert_eq!(events.position(1).await, 1, "queued again, at the front");
    assert_eq!(events.assigned(1).await, 2);
    let to_bob = events
        .expect(&Recipient::Operator(2), "operator_assigned")
        .await;
    assert_eq!(to_bob["dialog_id"], 1);

    client
        .replied(1, 2)
        .await
        .expect("the holder's reply counts");
    let stale = client
        .replied(1, 1)
        .await
        .expect_err("op 1 no longer holds it");
    assert_eq!(stale.code(), Code::PermissionDenied);
    assert_eq!(error_code(&stale), Some("forbidden"));
    let active = client.active(1).await.expect("still active");
    assert_eq!(active.operator_id, 2);
    app.stop().await;
}

/// A request that waits longer than the maximum queue time goes back to the
/// assistant: the user gets `handoff_completed` with operator 0 and
/// `returned_to_assistant`; the dialog has no handoff and may ask again.
#[tokio::test]
async fn a_request_waiting_too_long_goes_back_to_the_assistant() {
    let presence = FakePresence::start().await;
    let database = Database::new();
    let app = App::start(
        &database,
        chatai_handoff::HandoffConfig {
            max_queue_secs: 1,
            ..config()
        },
        &presence,
    )
    .await;
    let client = app.client().await;
    let mut events = Observer::attach(&client, &recipients(&[], [1])).await;

    let record = client.request(1, pb::Priority::Normal).await.expect("ok");
    assert_eq!(record.state(), pb::HandoffState::Queued);
    assert_eq!(events.position(1).await, 1);
    let returned = events
        .expect(&Recipient::User(101), "handoff_completed")
        .await;
    assert_eq!(
        returned,
        serde_json::json!({"handoff_id": record.handoff_id, "dialog_id": 1, "operator_id": 0,
                           "resolution": "returned_to_assistant", "duration": 0,
                           "outcome": "returned_to_assistant"})
    );
    assert!(client.active(1).await.is_none());
    assert!(client.waiting().await.is_empty());
    let again = client.request(1, pb::Priority::Normal).await.expect("ok");
    assert_ne!(again.handoff_id, record.handoff_id);
    app.stop().await;
}
