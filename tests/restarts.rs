//! The whole system restarted on the same database, the way an operator of
//! the all-in-one restarts it: what was decided before the restart stands
//! after it. An operator holding a dialog keeps it through the restart when
//! they come back within the grace period, and a status they chose is the
//! one they come back with (docs/architecture.md, "Restarts and outages").

use std::time::Duration;

use crate::common::{TestApp, TestOptions, WAIT, WsClient, as_caller, spawn_app};
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_proto::v1::handoff_client::HandoffClient;
use chatai_proto::v1::presence_client::PresenceClient;
use serde_json::{Value, json};

/// A user's dialog with one message, answered by the assistant.
async fn dialog(app: &TestApp, user: i64) -> (WsClient, i64) {
    let (mut client, _) = app.connect_user(user).await;
    let (ack, _) = client.chat_and_answer("hello", None, "hello").await;
    (client, ack["dialog_id"].as_i64().expect("a dialog"))
}

/// The dialog's active handoff, read over gRPC as a service.
async fn active_handoff(app: &TestApp, dialog_id: i64) -> Option<pb::HandoffRecord> {
    let mut client = HandoffClient::connect(format!("http://{}", app.services.handoff))
        .await
        .expect("connecting to the handoff service");
    client
        .get_active_handoff(as_caller(
            0,
            Role::Service,
            pb::GetActiveHandoffRequest { dialog_id },
        ))
        .await
        .expect("GetActiveHandoff as a service")
        .into_inner()
        .handoff
}

/// Waits until presence lists `operator_id`; returns what it says.
async fn listed_operator(app: &TestApp, operator_id: i64) -> pb::OperatorInfo {
    let mut client = PresenceClient::connect(format!("http://{}", app.services.presence))
        .await
        .expect("connecting to the presence service");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listing = client
            .list_operators(as_caller(0, Role::Service, pb::ListOperatorsRequest {}))
            .await
            .expect("ListOperators as a service")
            .into_inner();
        if let Some(info) = listing
            .operators
            .into_iter()
            .find(|info| info.operator_id == operator_id)
        {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never heard of operator {operator_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads frames until one of type `kind`; returns every frame read.
async fn frames_until(client: &mut WsClient, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = frame["type"] == kind;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Issue 9, item 1: an operator holds a dialog and has replied; the system
/// restarts. Presence, which knows nobody yet, must not call them offline:
/// they are online through the grace period, the dialog stays theirs (same
/// assignment), and when they come back the user's messages reach them with
/// nothing taken back.
#[tokio::test]
async fn a_restart_keeps_every_assignment() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut user, dialog_id) = dialog(&app, 2101).await;
    let (mut operator, _) = app.connect_as(2151, Role::Operator, "").await;
    let asked = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person, please"}))
        .await;
    assert_eq!(asked["type"], "ack", "{asked}");
    let assigned = user.next_of("operator_assigned").await;
    assert_eq!(assigned["operator_id"], 2151, "{assigned}");
    operator.next_of("operator_assigned").await;
    let replied = operator
        .request(
            json!({"type": "chat_message", "id": "r1", "dialog_id": dialog_id, "message": "Here."}),
        )
        .await;
    assert_eq!(replied["type"], "ack", "{replied}");
    user.next_of("operator_message").await;
    let before = active_handoff(&app, dialog_id)
        .await
        .expect("an active handoff");
    drop(user);
    drop(operator);

    let app = app.restart().await;
    let info = listed_operator(&app, 2151).await;
    assert!(
        info.online,
        "unknown after a restart is not offline: {info:?}"
    );
    assert_eq!(info.active_handoffs, 1, "{info:?}");
    let after = active_handoff(&app, dialog_id)
        .await
        .expect("still an active handoff");
    assert_eq!(after.state, pb::HandoffState::Assigned as i32, "{after:?}");
    assert_eq!(after.operator_id, 2151);
    assert_eq!(
        after.assigned_at_ms, before.assigned_at_ms,
        "the same assignment, not a new one"
    );

    let (mut operator, _) = app.connect_as(2151, Role::Operator, "").await;
    let (mut user, _) = app.connect_user(2101).await;
    let sent = user
        .request(json!({"type": "chat_message", "id": "m2", "dialog_id": dialog_id, "message": "Still there?"}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let frames = frames_until(&mut operator, "chat_message").await;
    assert_eq!(
        frames.last().expect("the message")["message"],
        "Still there?"
    );
    assert!(
        frames.iter().all(|f| f["type"] != "handoff_completed"),
        "nothing was taken back: {frames:?}"
    );
    let info = listed_operator(&app, 2151).await;
    assert!(info.online && info.connections == 1, "{info:?}");
    app.stop().await;
}

/// Issue 9, item 4: an operator who chose `away` is away after a restart,
/// not available — a dialog waiting for an operator stays queued — until
/// they choose `available` again.
#[tokio::test]
async fn a_chosen_status_survives_a_restart() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut operator, _) = app.connect_as(2152, Role::Operator, "").await;
    let away = operator
        .request(json!({"type": "set_status", "id": "s1", "status": "away"}))
        .await;
    assert_eq!(away["type"], "ack", "{away}");
    assert_eq!(away["chosen_status"], "away", "{away}");
    drop(operator);

    let app = app.restart().await;
    let (mut user, dialog_id) = dialog(&app, 2102).await;
    let asked = user
        .request(json!({"type": "handoff_request", "id": "h1", "dialog_id": dialog_id, "reason": "a person, please"}))
        .await;
    assert_eq!(asked["type"], "ack", "{asked}");
    user.next_of("handoff_queued").await;

    let (mut operator, _) = app.connect_as(2152, Role::Operator, "").await;
    let info = listed_operator(&app, 2152).await;
    assert_eq!(
        info.chosen_status,
        pb::OperatorStatus::Away as i32,
        "{info:?}"
    );
    assert_eq!(info.status, pb::OperatorStatus::Away as i32, "{info:?}");
    let waiting = active_handoff(&app, dialog_id)
        .await
        .expect("an active handoff");
    assert_eq!(
        waiting.state,
        pb::HandoffState::Queued as i32,
        "not given to an operator who chose away: {waiting:?}"
    );
    // Choosing available again makes the waiting dialog theirs.
    operator
        .send_json(&json!({"type": "set_status", "id": "s2", "status": "available"}))
        .await;
    let frames = frames_until(&mut operator, "operator_assigned").await;
    let assigned = frames.last().expect("the assignment");
    assert_eq!(assigned["dialog_id"], dialog_id, "{assigned}");
    app.stop().await;
}
