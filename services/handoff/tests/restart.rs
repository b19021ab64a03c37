//! A restart of the handoff service on the same database loses nothing.

mod common;

use chatai_kit::events::Recipient;
use chatai_proto::v1 as pb;
use common::{App, Database, FakePresence, Observer, config, info, operator, recipients};

/// Stopped and started again on the same SQLite file, the service still
/// has the queued handoffs in their order and the assigned one with its
/// operator (whose load presence is told again), and serves on: completing
/// the assigned one gives the operator the head of the queue.
#[tokio::test]
async fn a_restart_keeps_queued_and_assigned_handoffs() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    let database = Database::new();
    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;
    assert_eq!(
        client
            .request(1, pb::Priority::Low)
            .await
            .expect("ok")
            .operator_id,
        1
    );
    client.request(2, pb::Priority::Normal).await.expect("ok");
    client.request(3, pb::Priority::Urgent).await.expect("ok");
    assert_eq!(client.waiting().await, vec![3, 2]);
    app.stop().await;

    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;
    let mut events = Observer::attach(&client, &recipients(&[1], 1..=3)).await;
    let listing = client.list_as(&operator(1)).await.expect("operators list");
    let assigned: Vec<(i64, i64)> = listing
        .assigned
        .iter()
        .map(|r| (r.dialog_id, r.operator_id))
        .collect();
    assert_eq!(assigned, vec![(1, 1)]);
    assert_eq!(listing.assigned[0].operator_name, "Ann");
    let queued: Vec<(i64, u32)> = listing
        .queued
        .iter()
        .map(|r| (r.dialog_id, r.position))
        .collect();
    assert_eq!(queued, vec![(3, 1), (2, 2)]);
    presence.wait_load(1, 1).await;

    client
        .complete(&operator(1), 1, "done")
        .await
        .expect("the holder completes after the restart");
    let completed = events
        .expect(&Recipient::User(101), "handoff_completed")
        .await;
    assert_eq!(completed["operator_id"], 1);
    assert_eq!(events.assigned(3).await, 1);
    assert_eq!(events.position(2).await, 1);
    assert_eq!(client.active(3).await.expect("active").operator_id, 1);
    app.stop().await;
}

/// Issue 9, item 8: an "offline" that presence sent before the listing the
/// service reads after attaching, but that reaches it after that listing,
/// is stale: applied, it would take back a dialog from an operator the
/// listing says is online, and a take-back cannot be undone. The service
/// drops every change at or below the listing's version.
#[tokio::test]
async fn a_change_older_than_the_snapshot_is_dropped() {
    let presence = FakePresence::start().await;
    presence.set(1, "Ann", true, "available").await;
    let database = Database::new();
    let app = App::start(&database, config(), &presence).await;
    let client = app.client().await;
    let held = client.request(1, pb::Priority::Normal).await.expect("ok");
    assert_eq!(held.operator_id, 1);
    app.stop().await;

    presence.stale_before_listing(info(1, "Ann", false, "available", 1));
    let app = App::start(&database, config(), &presence).await;
    presence.sync().await;
    let client = app.client().await;
    let active = client.active(1).await.expect("still active");
    assert_eq!(
        (active.operator_id, active.assigned_at_ms),
        (1, held.assigned_at_ms),
        "the stale offline took nothing back (no new assignment): {active:?}"
    );
    app.stop().await;
}
