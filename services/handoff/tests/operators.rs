//! Following presence: operators going offline give their handoffs back,
//! away operators are never given one, and new operators take the queue.

mod common;

use chatai_kit::events::Recipient;
use chatai_proto::v1 as pb;
use common::{App, Database, FakePresence, Observer, config, operator, recipients};

/// When an operator goes offline their handoff goes back to the front of
/// its priority (ahead of a request made later, of the same priority), they
/// get `handoff_completed`, the user `handoff_queued`, and the next operator
/// to become available gets it.
#[tokio::test]
async fn an_offline_operators_handoffs_go_back_to_the_front_and_are_reassigned() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    presence.set(2, "Bob", true, "available").await;
    let database = Database::new();
    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;
    let mut events = Observer::attach(&client, &recipients(&[1, 3], 1..=3)).await;

    assert_eq!(
        client
            .request(1, pb::Priority::Normal)
            .await
            .expect("ok")
            .operator_id,
        1
    );
    assert_eq!(
        client
            .request(2, pb::Priority::Normal)
            .await
            .expect("ok")
            .operator_id,
        2
    );
    let waiting = client.request(3, pb::Priority::Normal).await.expect("ok");
    assert_eq!(waiting.position, 1);
    assert_eq!(events.position(1).await, 1);
    assert_eq!(events.assigned(1).await, 1);
    assert_eq!(events.position(3).await, 1);

    presence.set(1, "Ann", false, "available").await;
    let back = events
        .expect(&Recipient::Operator(1), "operator_assigned")
        .await;
    assert_eq!(back["dialog_id"], 1);
    let back = events
        .expect(&Recipient::Operator(1), "handoff_completed")
        .await;
    assert_eq!(back["resolution"], "reassigned: operator offline");
    assert_eq!(events.position(1).await, 1, "back at the front");
    assert_eq!(events.position(3).await, 2);
    assert_eq!(client.waiting().await, vec![1, 3]);
    presence.wait_load(1, 0).await;

    presence.set(3, "Cid", true, "available").await;
    assert_eq!(events.assigned(1).await, 3);
    let to_cid = events
        .expect(&Recipient::Operator(3), "operator_assigned")
        .await;
    assert_eq!(to_cid["dialog_id"], 1);
    assert_eq!(to_cid["operator_name"], "Cid");
    assert_eq!(events.position(3).await, 1);
    assert_eq!(client.waiting().await, vec![3]);
    app.stop().await;
}

/// Away (and busy) operators are never given a handoff, even with the
/// lowest id and no load; the same operator gets one once available, and
/// none after going away again.
#[tokio::test]
async fn away_operators_are_never_assigned() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "away").await;
    presence.set(2, "Bob", true, "available").await;
    presence.set(3, "Cid", true, "busy").await;
    let database = Database::new();
    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;

    let first = client.request(1, pb::Priority::Urgent).await.expect("ok");
    assert_eq!(
        first.operator_id, 2,
        "away op 1 and busy op 3 are passed over"
    );
    let second = client.request(2, pb::Priority::Urgent).await.expect("ok");
    assert_eq!(second.state(), pb::HandoffState::Queued);

    presence.set(1, "Ann", true, "available").await;
    presence.sync().await;
    let held = client.active(2).await.expect("active");
    assert_eq!(held.operator_id, 1);

    presence.set(1, "Ann", true, "away").await;
    presence.sync().await;
    client
        .complete(&operator(1), 2, "done")
        .await
        .expect("an away operator still completes");
    let third = client.request(3, pb::Priority::Urgent).await.expect("ok");
    assert_eq!(third.state(), pb::HandoffState::Queued, "op 1 is away");
    assert_eq!(client.waiting().await, vec![3]);
    app.stop().await;
}
