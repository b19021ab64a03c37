//! The operator's workspace end to end (issue 11), through the real
//! gateway: the snapshots an operator gets right after `connected`, kept
//! current by versioned live events; transferring a dialog to a named
//! operator or back to the queue, and the former holder leaving its room;
//! claiming a queued dialog out of order; a user cancelling while queued.

use crate::common::{self, TestApp, TestOptions, WsClient, spawn_app};
use chatai_kit::identity::Role;
use serde_json::{Value, json};

/// Operators who take one handoff each.
fn options() -> TestOptions {
    let mut options = TestOptions::default();
    options.presence.max_handoffs = 1;
    options.handoff.max_handoffs = 1;
    options
}

/// The next frame of type `kind` for `dialog_id`.
async fn next_for(client: &mut WsClient, kind: &str, dialog_id: i64) -> Value {
    loop {
        let frame = client.next_of(kind).await;
        if frame["dialog_id"] == dialog_id {
            return frame;
        }
    }
}

/// A user's dialog with one message, answered by the assistant.
async fn dialog(app: &TestApp, user: i64) -> (WsClient, i64) {
    let (mut client, _) = app.connect_user(user).await;
    let (ack, _) = client.chat_and_answer("hello", None, "hello").await;
    (client, ack["dialog_id"].as_i64().expect("a dialog"))
}

/// Asks for an operator; returns the `ack`.
async fn ask_for_operator(client: &mut WsClient, dialog_id: i64) -> Value {
    let reply = client
        .request(json!({"type": "handoff_request", "id": format!("h{dialog_id}"), "dialog_id": dialog_id, "reason": "need a person"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    reply
}

/// Sets the operator's chosen status and waits for its `ack`.
async fn choose(operator: &mut WsClient, status: &str) {
    let reply = operator
        .request(json!({"type": "set_status", "id": format!("s-{status}"), "status": status}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

/// Sends a request frame and returns its reply (`ack` or `error`).
async fn ask(client: &mut WsClient, frame: Value) -> Value {
    client.request(frame).await
}

fn version(frame: &Value) -> u64 {
    frame["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("a version: {frame}"))
}

/// An operator who connects after three handoffs are queued gets, right
/// after `connected`, the queue (in order, with positions and waits) and
/// every operator, each with a version; the live events that follow carry
/// higher versions.
#[tokio::test]
async fn an_operator_connecting_late_gets_the_queue_and_the_operators() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(1801, Role::Operator, "").await;
    choose(&mut olga, "away").await;
    // Oscar chooses away too (kept while he is gone), so the queue stays
    // as it is when he comes back.
    let (mut oscar, _) = app.connect_as(1802, Role::Operator, "").await;
    choose(&mut oscar, "away").await;
    oscar.close().await;
    let mut dialogs = Vec::new();
    let mut users = Vec::new();
    for user in [1811, 1812, 1813] {
        let (mut client, dialog_id) = dialog(&app, user).await;
        ask_for_operator(&mut client, dialog_id).await;
        next_for(&mut client, "handoff_queued", dialog_id).await;
        dialogs.push(dialog_id);
        users.push(client);
    }

    let (mut oscar, _) = app.connect_as(1802, Role::Operator, "").await;
    let queue = oscar.recv_type("queue_snapshot").await;
    let waiting = queue["handoffs"].as_array().expect("handoffs");
    let seen: Vec<(i64, i64, u64)> = waiting
        .iter()
        .map(|h| {
            (
                h["dialog_id"].as_i64().unwrap_or_default(),
                h["user_id"].as_i64().unwrap_or_default(),
                h["position"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (dialogs[0], 1811, 1),
            (dialogs[1], 1812, 2),
            (dialogs[2], 1813, 3)
        ],
        "{queue}"
    );
    for handoff in waiting {
        assert_eq!(handoff["reason"], "need a person", "{handoff}");
        assert_eq!(handoff["priority"], "normal", "{handoff}");
        assert!(handoff["handoff_id"].as_i64().is_some_and(|id| id > 0));
        assert!(handoff["waiting_secs"].is_u64(), "{handoff}");
    }
    let queue_version = version(&queue);
    let operators = oscar.recv_type("operators_snapshot").await;
    let listed = operators["operators"].as_array().expect("operators");
    let of = |id: i64| {
        listed
            .iter()
            .find(|op| op["operator_id"] == id)
            .unwrap_or_else(|| panic!("operator {id} in {operators}"))
            .clone()
    };
    let olga_listed = of(1801);
    assert_eq!(olga_listed["status"], "away", "{olga_listed}");
    assert_eq!(olga_listed["chosen_status"], "away", "{olga_listed}");
    assert_eq!(olga_listed["online"], true, "{olga_listed}");
    assert_eq!(olga_listed["active_handoffs"], 0, "{olga_listed}");
    assert_eq!(olga_listed["max_handoffs"], 1, "{olga_listed}");
    assert_eq!(of(1802)["online"], true);
    assert_eq!(of(1802)["chosen_status"], "away");
    let operators_version = version(&operators);

    // Oscar is available: the head of the queue leaves it for him.
    choose(&mut oscar, "available").await;
    let left = next_for(&mut oscar, "handoff_dequeued", dialogs[0]).await;
    assert_eq!(left["reason"], "assigned", "{left}");
    assert!(version(&left) > queue_version, "{left} after {queue}");
    next_for(&mut oscar, "operator_assigned", dialogs[0]).await;
    // A later change of Olga's comes with a version above the snapshot's.
    choose(&mut olga, "busy").await;
    let change = loop {
        let change = oscar.next_of("operator_status_change").await;
        if change["operator_id"] == 1801 && change["chosen_status"] == "busy" {
            break change;
        }
    };
    assert!(version(&change) > operators_version, "{change}");
    // Users get no snapshots.
    let (mut late_user, _) = app.connect_user(1814).await;
    late_user.assert_quiet_and_open("no snapshots").await;
    drop(users);
    app.stop().await;
}

/// A transfer to a named operator: refused to one who is not online; then
/// the former holder gets `handoff_completed` (`transferred`) and leaves
/// the room it had joined (`room_left`, `transferred`) and receives nothing
/// of the dialog after; the new one gets `operator_assigned` with
/// `transferred_from`, the user `operator_assigned` again.
#[tokio::test]
async fn a_transfer_to_a_named_operator_closes_the_room_behind_it() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(2801, Role::Operator, "").await;
    let (mut oscar, _) = app.connect_as(2802, Role::Operator, "").await;
    // Away: Oscar gets nothing by himself, but may be handed a dialog.
    choose(&mut oscar, "away").await;
    let (mut ann, dialog_id) = dialog(&app, 2811).await;
    ask_for_operator(&mut ann, dialog_id).await;
    let assigned = next_for(&mut ann, "operator_assigned", dialog_id).await;
    assert_eq!(assigned["operator_id"], 2801, "{assigned}");
    next_for(&mut olga, "operator_assigned", dialog_id).await;
    let room = format!("dialog:{dialog_id}");
    let joined = ask(
        &mut olga,
        json!({"type": "join_room", "id": "j", "room_id": room}),
    )
    .await;
    assert_eq!(joined["type"], "ack", "{joined}");

    let refused = ask(
        &mut olga,
        json!({"type": "transfer_handoff", "id": "t0", "dialog_id": dialog_id, "to_operator_id": 2899}),
    )
    .await;
    assert_eq!(refused["code"], "operator_unavailable", "{refused}");
    let not_held = ask(
        &mut oscar,
        json!({"type": "transfer_handoff", "id": "t1", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(not_held["type"], "error", "{not_held}");
    let by_user = ask(
        &mut ann,
        json!({"type": "transfer_handoff", "id": "t2", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(by_user["code"], "forbidden", "{by_user}");

    let moved = ask(
        &mut olga,
        json!({"type": "transfer_handoff", "id": "t3", "dialog_id": dialog_id, "to_operator_id": 2802, "reason": "billing"}),
    )
    .await;
    assert_eq!(moved["type"], "ack", "{moved}");
    assert_eq!(moved["operator_id"], 2802, "{moved}");
    let completed = next_for(&mut olga, "handoff_completed", dialog_id).await;
    assert_eq!(completed["resolution"], "transferred", "{completed}");
    assert_eq!(completed["outcome"], "transferred", "{completed}");
    let left = olga.recv().await;
    assert_eq!(left["type"], "room_left", "right after {completed}: {left}");
    assert_eq!(left["room_id"], room, "{left}");
    assert_eq!(left["reason"], "transferred", "{left}");
    let taken = next_for(&mut oscar, "operator_assigned", dialog_id).await;
    assert_eq!(taken["transferred_from"], 2801, "{taken}");
    assert_eq!(taken["transfer_reason"], "billing", "{taken}");
    let again = next_for(&mut ann, "operator_assigned", dialog_id).await;
    assert_eq!(again["operator_id"], 2802, "{again}");
    assert_eq!(again["transferred_from"], 2801, "{again}");

    // The user's next message reaches the new holder, never the former one.
    ann.chat("after", Some(dialog_id), "still there?").await;
    let message = next_for(&mut oscar, "chat_message", dialog_id).await;
    assert_eq!(message["message"], "still there?", "{message}");
    let reply = ask(
        &mut oscar,
        json!({"type": "chat_message", "id": "r", "dialog_id": dialog_id, "message": "Oscar here"}),
    )
    .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    next_for(&mut ann, "operator_message", dialog_id).await;
    let before = olga.heartbeat("after the transfer").await;
    let copies: Vec<&Value> = before
        .iter()
        .filter(|f| f["dialog_id"] == dialog_id)
        .collect();
    assert!(copies.is_empty(), "the former holder got {copies:?}");
    let write = ask(
        &mut olga,
        json!({"type": "chat_message", "id": "w", "dialog_id": dialog_id, "message": "me again"}),
    )
    .await;
    assert_eq!(write["code"], "dialog_not_found", "{write}");
    let rejoin = ask(
        &mut olga,
        json!({"type": "join_room", "id": "j2", "room_id": room}),
    )
    .await;
    assert_eq!(rejoin["code"], "dialog_not_found", "{rejoin}");
    app.stop().await;
}

/// A transfer without a target puts the dialog back at the front of the
/// queue (the user is told position 1, ahead of one who waited longer); an
/// operator under the cap claims a queued dialog out of order whatever
/// status they chose, and one at the cap is refused.
#[tokio::test]
async fn a_transfer_to_the_queue_and_claims() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(3801, Role::Operator, "").await;
    let (mut oscar, _) = app.connect_as(3802, Role::Operator, "").await;
    choose(&mut oscar, "away").await;
    let (mut ann, ann_dialog) = dialog(&app, 3811).await;
    ask_for_operator(&mut ann, ann_dialog).await;
    next_for(&mut olga, "operator_assigned", ann_dialog).await;
    let (mut bob, bob_dialog) = dialog(&app, 3812).await;
    ask_for_operator(&mut bob, bob_dialog).await;
    let bob_queued = next_for(&mut bob, "handoff_queued", bob_dialog).await;
    assert_eq!(bob_queued["position"], 1, "{bob_queued}");
    // Olga steps away first, so the queue does not hand it straight back.
    choose(&mut olga, "away").await;

    let back = ask(
        &mut olga,
        json!({"type": "transfer_handoff", "id": "t", "dialog_id": ann_dialog}),
    )
    .await;
    assert_eq!(back["type"], "ack", "{back}");
    assert_eq!(
        (&back["operator_id"], &back["position"]),
        (&json!(0), &json!(1)),
        "{back}"
    );
    let completed = next_for(&mut olga, "handoff_completed", ann_dialog).await;
    assert_eq!(completed["outcome"], "transferred", "{completed}");
    let ann_queued = next_for(&mut ann, "handoff_queued", ann_dialog).await;
    assert_eq!(ann_queued["position"], 1, "{ann_queued}");
    let bob_moved = next_for(&mut bob, "handoff_queued", bob_dialog).await;
    assert_eq!(bob_moved["position"], 2, "{bob_moved}");

    // Oscar, away, claims Bob's dialog out of order.
    let claimed = ask(
        &mut oscar,
        json!({"type": "claim_handoff", "id": "c1", "dialog_id": bob_dialog}),
    )
    .await;
    assert_eq!(claimed["type"], "ack", "{claimed}");
    assert_eq!(claimed["operator_id"], 3802, "{claimed}");
    let bob_assigned = next_for(&mut bob, "operator_assigned", bob_dialog).await;
    assert_eq!(bob_assigned["operator_id"], 3802, "{bob_assigned}");
    // At the cap now.
    let full = ask(
        &mut oscar,
        json!({"type": "claim_handoff", "id": "c2", "dialog_id": ann_dialog}),
    )
    .await;
    assert_eq!(full["code"], "operator_unavailable", "{full}");
    let held = ask(
        &mut olga,
        json!({"type": "claim_handoff", "id": "c3", "dialog_id": bob_dialog}),
    )
    .await;
    assert_eq!(held["code"], "handoff_not_queued", "{held}");
    let by_user = ask(
        &mut ann,
        json!({"type": "claim_handoff", "id": "c4", "dialog_id": ann_dialog}),
    )
    .await;
    assert_eq!(by_user["code"], "forbidden", "{by_user}");
    // Olga, away and free again, takes Ann's back herself.
    let mine = ask(
        &mut olga,
        json!({"type": "claim_handoff", "id": "c5", "dialog_id": ann_dialog}),
    )
    .await;
    assert_eq!(mine["operator_id"], 3801, "{mine}");
    let ann_assigned = next_for(&mut ann, "operator_assigned", ann_dialog).await;
    assert_eq!(ann_assigned["operator_id"], 3801, "{ann_assigned}");
    app.stop().await;
}

/// The owner cancels while queued: operators see it leave the queue
/// (`handoff_dequeued`, `cancelled`), the user gets `handoff_completed`
/// (`cancelled`), and the assistant answers again. Nobody else may cancel,
/// and a dialog without a waiting handoff cannot be cancelled.
#[tokio::test]
async fn a_user_cancels_while_queued() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(4801, Role::Operator, "").await;
    choose(&mut olga, "away").await;
    let (mut ann, dialog_id) = dialog(&app, 4811).await;
    ask_for_operator(&mut ann, dialog_id).await;
    next_for(&mut ann, "handoff_queued", dialog_id).await;
    let (mut bob, _) = app.connect_user(4812).await;
    let other = ask(
        &mut bob,
        json!({"type": "cancel_handoff", "id": "x", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(other["code"], "handoff_not_found", "{other}");
    let by_operator = ask(
        &mut olga,
        json!({"type": "cancel_handoff", "id": "y", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(by_operator["code"], "forbidden", "{by_operator}");

    let cancelled = ask(
        &mut ann,
        json!({"type": "cancel_handoff", "id": "z", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(cancelled["type"], "ack", "{cancelled}");
    let completed = next_for(&mut ann, "handoff_completed", dialog_id).await;
    assert_eq!(completed["outcome"], "cancelled", "{completed}");
    let left = next_for(&mut olga, "handoff_dequeued", dialog_id).await;
    assert_eq!(left["reason"], "cancelled", "{left}");
    ann.chat("back", Some(dialog_id), common::FAQ_QUESTION)
        .await;
    let answer = next_for(&mut ann, "ai_response", dialog_id).await;
    assert!(answer["message"].is_string(), "{answer}");
    let again = ask(
        &mut ann,
        json!({"type": "cancel_handoff", "id": "z2", "dialog_id": dialog_id}),
    )
    .await;
    assert_eq!(again["code"], "handoff_not_found", "{again}");
    app.stop().await;
}

/// An admin's connection gets, right after `connected`, every analytics
/// metric's current value; operators and users do not.
#[tokio::test]
async fn an_admin_gets_the_analytics_snapshot() {
    let app = spawn_app(options()).await;
    let (mut admin, _) = app.connect_as(5801, Role::Admin, "").await;
    let snapshot = admin.recv_type("analytics_snapshot").await;
    let metrics = snapshot["metrics"].as_object().expect("metrics by name");
    for name in [
        "active_connections",
        "active_users",
        "online_operators",
        "messages_per_minute",
    ] {
        assert!(
            metrics.get(name).is_some_and(Value::is_number),
            "{name} in {snapshot}"
        );
    }
    let (mut olga, _) = app.connect_as(5802, Role::Operator, "").await;
    let first = olga.recv().await;
    assert_eq!(first["type"], "queue_snapshot", "{first}");
    let second = olga.recv().await;
    assert_eq!(second["type"], "operators_snapshot", "{second}");
    let before = olga.heartbeat("no analytics").await;
    assert!(
        before.iter().all(|f| f["type"] != "analytics_snapshot"),
        "{before:?}"
    );
    app.stop().await;
}

/// The operator who gets a dialog gets its last messages with it (issue 11,
/// item 2): `operator_assigned.transcript`, oldest first in the history
/// shape, including what the user wrote while waiting; the user's own
/// `operator_assigned` carries none.
#[tokio::test]
async fn the_assigned_operator_gets_the_transcript() {
    let app = spawn_app(options()).await;
    let (mut user, dialog_id) = dialog(&app, 2601).await;
    ask_for_operator(&mut user, dialog_id).await;
    user.next_of("handoff_queued").await;
    for (n, text) in ["Is anyone there?", "My order 42 never came."]
        .into_iter()
        .enumerate()
    {
        let sent = user
            .request(json!({"type": "chat_message", "id": format!("w{n}"), "dialog_id": dialog_id, "message": text}))
            .await;
        assert_eq!(sent["type"], "ack", "{sent}");
    }
    let (mut operator, _) = app.connect_as(2651, Role::Operator, "").await;
    let assigned = next_for(&mut operator, "operator_assigned", dialog_id).await;
    let transcript = assigned["transcript"]
        .as_array()
        .unwrap_or_else(|| panic!("a transcript: {assigned}"));
    let said: Vec<(&str, &str)> = transcript
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap_or_default(),
                m["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(said.len(), 4, "{assigned}");
    assert_eq!(said[0], ("user", "hello"));
    assert_eq!(said[1].0, "assistant");
    assert_eq!(
        &said[2..],
        &[
            ("user", "Is anyone there?"),
            ("user", "My order 42 never came.")
        ]
    );
    assert_eq!(transcript[0]["sender_id"], 2601);
    assert!(transcript[1]["sender_id"].is_null());
    assert!(transcript.iter().all(|m| m["timestamp"].is_string()));
    let to_user = next_for(&mut user, "operator_assigned", dialog_id).await;
    assert!(to_user.get("transcript").is_none(), "{to_user}");
    app.stop().await;
}
