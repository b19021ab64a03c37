//! The queue and the assignment, through the real service on port 0 with a
//! fake presence: capacity, priority then FIFO, fewest load then longest
//! idle, the position updates, completion, and the refusals.

mod common;

use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use common::{App, Database, FakePresence, Observer, config, operator, recipients, service, user};
use tonic::Code;

/// Two operators at one handoff each: requests beyond that queue, are
/// served urgent first and FIFO inside a priority as seats free up; every
/// user is told their position whenever it changes; completions reach the
/// user and the operator; presence is told each load.
#[tokio::test]
async fn requests_queue_at_capacity_and_are_served_by_priority_then_fifo() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    presence.set(2, "Bob", true, "available").await;
    let database = Database::new();
    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;
    let mut events = Observer::attach(&client, &recipients(&[1, 2], 1..=6)).await;
    let everyone = Recipient::Role(Role::Operator);

    let first = client
        .request(1, pb::Priority::Unspecified)
        .await
        .expect("accepted");
    assert_eq!(first.state(), pb::HandoffState::Assigned);
    assert_eq!(
        first.priority(),
        pb::Priority::Normal,
        "unspecified is normal"
    );
    assert_eq!(first.operator_id, 1);
    let mut announced = events.expect(&everyone, "handoff_request").await;
    // The queue version it is as of (checked in the actor's tests).
    assert!(announced["version"].as_u64().is_some_and(|v| v > 0));
    if let Some(fields) = announced.as_object_mut() {
        fields.remove("version");
    }
    assert_eq!(
        announced,
        serde_json::json!({"handoff_id": first.handoff_id, "dialog_id": 1, "user_id": 101,
                           "reason": "dialog 1 needs a human", "priority": "normal"})
    );
    assert_eq!(events.position(1).await, 1);
    let assigned = events
        .expect(&Recipient::User(101), "operator_assigned")
        .await;
    assert_eq!(assigned["operator_id"], 1);
    assert_eq!(assigned["operator_name"], "Ann");
    assert_eq!(assigned["user_id"], 101);
    assert_eq!(assigned["priority"], "normal");
    assert_eq!(assigned["reason"], "dialog 1 needs a human");
    assert!(assigned["estimated_wait_time"].is_u64());
    let to_operator = events
        .expect(&Recipient::Operator(1), "operator_assigned")
        .await;
    assert_eq!(to_operator, assigned);
    presence.wait_load(1, 1).await;

    let second = client
        .request(2, pb::Priority::Low)
        .await
        .expect("accepted");
    assert_eq!(second.operator_id, 2, "op 1 is at capacity");
    assert_eq!(events.position(2).await, 1);
    assert_eq!(events.assigned(2).await, 2);

    // Both at capacity: these queue.
    let queued = [
        (3, pb::Priority::Low, 1),
        (4, pb::Priority::Normal, 1),
        (5, pb::Priority::Urgent, 1),
        (6, pb::Priority::Urgent, 2),
    ];
    for (dialog, priority, position) in queued {
        let record = client.request(dialog, priority).await.expect("accepted");
        assert_eq!(record.state(), pb::HandoffState::Queued);
        assert_eq!(record.operator_id, 0);
        assert_eq!(record.position, position, "dialog {dialog}");
        assert!(record.estimated_wait_seconds > 0);
    }
    assert_eq!(client.waiting().await, vec![5, 6, 4, 3]);
    // Each user heard of every change of their position.
    for (dialog, told) in [
        (3, vec![1, 2, 3, 4]),
        (4, vec![1, 2, 3]),
        (5, vec![1]),
        (6, vec![2]),
    ] {
        for position in told {
            assert_eq!(events.position(dialog).await, position, "dialog {dialog}");
        }
    }
    let listing = client.list_as(&operator(1)).await.expect("operators list");
    let positions: Vec<u32> = listing.queued.iter().map(|r| r.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    let assigned: Vec<i64> = listing.assigned.iter().map(|r| r.dialog_id).collect();
    assert_eq!(assigned, vec![1, 2]);

    // Completing frees the seat; the head of the queue takes it.
    let done = client
        .complete(&operator(1), 1, "password reset")
        .await
        .expect("the holder completes");
    assert_eq!(
        done.handoff.expect("the record").state(),
        pb::HandoffState::Completed
    );
    for to in [Recipient::User(101), Recipient::Operator(1)] {
        let completed = events.expect(&to, "handoff_completed").await;
        assert_eq!(completed["dialog_id"], 1);
        assert_eq!(completed["operator_id"], 1);
        assert_eq!(completed["resolution"], "password reset");
        assert!(completed["duration"].is_u64());
    }
    assert_eq!(events.assigned(5).await, 1);
    assert_eq!(events.position(6).await, 1);
    assert_eq!(events.position(4).await, 2);
    assert_eq!(events.position(3).await, 3);

    let mut served = vec![5];
    for (holder, dialog) in [(2, 2), (1, 5), (2, 6)] {
        client
            .complete(&operator(holder), dialog, "")
            .await
            .expect("the holder completes");
        let next = client.list_as(&service()).await.expect("listed").assigned;
        let taken = next
            .iter()
            .find(|r| r.operator_id == holder)
            .expect("the freed operator got the next");
        served.push(taken.dialog_id);
    }
    assert_eq!(served, vec![5, 6, 4, 3]);
    assert!(client.waiting().await.is_empty());
    presence.wait_load(1, 1).await;
    presence.wait_load(2, 1).await;
    app.stop().await;
}

/// With room for two each, the next handoff goes to the operator with the
/// fewest; on a tie to the one idle the longest.
#[tokio::test]
async fn the_operator_with_the_fewest_handoffs_then_the_longest_idle_gets_the_next() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    presence.set(2, "Bob", true, "available").await;
    let database = Database::new();
    let app = App::start(
        &database,
        chatai_handoff::HandoffConfig {
            max_handoffs: 2,
            ..config()
        },
        &presence,
    )
    .await;
    let client = app.client().await;
    let holder = |record: pb::HandoffRecord| record.operator_id;

    let a = client.request(1, pb::Priority::Normal).await.expect("ok");
    assert_eq!(holder(a), 1, "fresh operators tie: the lowest id");
    let b = client.request(2, pb::Priority::Normal).await.expect("ok");
    assert_eq!(holder(b), 2, "the fewest handoffs");
    let c = client.request(3, pb::Priority::Normal).await.expect("ok");
    assert_eq!(holder(c), 1, "one each: op 1 has been idle longer");
    // Op 1 finishes one, so op 1 was active last; both hold one.
    client
        .complete(&operator(1), 3, "ok")
        .await
        .expect("completed");
    let d = client.request(4, pb::Priority::Normal).await.expect("ok");
    assert_eq!(holder(d), 2, "one each: op 2 has been idle longer");
    let e = client.request(5, pb::Priority::Normal).await.expect("ok");
    assert_eq!(holder(e), 1, "op 1 holds one, op 2 two");
    app.stop().await;
}

/// A second request for a dialog that has one is ALREADY_EXISTS; a request
/// beyond the queue's capacity is RESOURCE_EXHAUSTED with a message for
/// people; users cannot call the service directly.
#[tokio::test]
async fn duplicates_and_a_full_queue_are_refused() {
    let presence = FakePresence::start().await;
    let database = Database::new();
    let app = App::start(
        &database,
        chatai_handoff::HandoffConfig {
            max_queue_len: 2,
            ..config()
        },
        &presence,
    )
    .await;
    let client = app.client().await;

    client.request(1, pb::Priority::Normal).await.expect("ok");
    let duplicate = client
        .request(1, pb::Priority::Urgent)
        .await
        .expect_err("one handoff per dialog");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_eq!(error_code(&duplicate), Some("handoff_exists"));

    client.request(2, pb::Priority::Normal).await.expect("ok");
    let full = client
        .request(3, pb::Priority::Urgent)
        .await
        .expect_err("the queue is full");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&full), Some("queue_full"));
    assert!(full.message().contains("try again"), "{}", full.message());

    let by_user = client
        .request_as(&user(103), 3, pb::Priority::Normal)
        .await
        .expect_err("users go through the chat service");
    assert_eq!(by_user.code(), Code::PermissionDenied);
    assert_eq!(error_code(&by_user), Some("forbidden"));

    let active = client.active(1).await.expect("dialog 1 waits");
    assert_eq!(active.state(), pb::HandoffState::Queued);
    assert_eq!(active.position, 1);
    assert!(client.active(9).await.is_none());

    let not_found = client
        .complete(&service(), 9, "x")
        .await
        .expect_err("nothing to complete");
    assert_eq!(not_found.code(), Code::NotFound);
    assert_eq!(error_code(&not_found), Some("handoff_not_found"));
    let not_holder = client
        .complete(&operator(5), 1, "x")
        .await
        .expect_err("only the holder");
    assert_eq!(not_holder.code(), Code::PermissionDenied);
    assert_eq!(error_code(&not_holder), Some("forbidden"));
    app.stop().await;
}
