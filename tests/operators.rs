//! Operators end to end, through the real gateway: presence across tabs,
//! the handoff queue by priority and load, messages and typing both ways,
//! completion, offline operators' handoffs going to someone else, and the
//! rooms and dialogs nobody else may enter.

use std::time::Duration;

use crate::common::{self, TestApp, TestOptions, WsClient, connect_at, spawn_app};
use chatai_kit::identity::Role;
use serde_json::{Value, json};

/// Two operators who take one handoff each, a short presence grace.
fn options() -> TestOptions {
    let mut options = TestOptions::default();
    options.presence.grace_period_secs = 1;
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

async fn ask_for_operator(client: &mut WsClient, dialog_id: i64, priority: &str) -> Value {
    let reply = client
        .request(json!({"type": "handoff_request", "id": format!("h{dialog_id}"), "dialog_id": dialog_id, "reason": "need a person", "priority": priority}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    reply
}

/// The whole life of handoffs with two operators and three users: requests
/// queue when both operators are at capacity and are served by priority;
/// messages and typing flow both ways; completion frees the seat for the
/// next in line and gives the dialog back to the assistant.
async fn handoff_life(app: TestApp) {
    let (mut olga, _) = app.connect_as(701, Role::Operator, "").await;
    let (mut oscar, _) = app.connect_as(702, Role::Operator, "").await;
    let (mut ann, ann_dialog) = dialog(&app, 711).await;
    let (mut bob, bob_dialog) = dialog(&app, 712).await;
    let (mut cid, cid_dialog) = dialog(&app, 713).await;

    // Ann first: to one operator; Bob: to the other; both are now full.
    ask_for_operator(&mut ann, ann_dialog, "normal").await;
    let ann_assigned = next_for(&mut ann, "operator_assigned", ann_dialog).await;
    ask_for_operator(&mut bob, bob_dialog, "low").await;
    let bob_assigned = next_for(&mut bob, "operator_assigned", bob_dialog).await;
    assert_ne!(
        ann_assigned["operator_id"], bob_assigned["operator_id"],
        "the less loaded operator is chosen"
    );
    // Cid must wait, and is told where he stands.
    ask_for_operator(&mut cid, cid_dialog, "urgent").await;
    let queued = next_for(&mut cid, "handoff_queued", cid_dialog).await;
    assert_eq!(queued["position"], 1);
    assert!(
        queued["estimated_wait_time"]
            .as_u64()
            .is_some_and(|s| s > 0),
        "{queued}"
    );

    let (ann_operator, ann_operator_id) = if ann_assigned["operator_id"] == 701 {
        (&mut olga, 701)
    } else {
        (&mut oscar, 702)
    };
    next_for(ann_operator, "operator_assigned", ann_dialog).await;
    // User → operator: the assistant stays quiet, the operator gets it.
    let ack = ann.chat("q1", Some(ann_dialog), "are you a person?").await;
    assert_eq!(ack["dialog_id"], ann_dialog);
    let question = next_for(ann_operator, "chat_message", ann_dialog).await;
    assert_eq!(question["message"], "are you a person?");
    assert_eq!(question["user_id"], 711);
    // Typing both ways.
    ann.send_json(&json!({"type": "typing", "dialog_id": ann_dialog, "is_typing": true}))
        .await;
    let typing = next_for(ann_operator, "typing", ann_dialog).await;
    assert_eq!(typing["user_id"], 711);
    ann_operator
        .send_json(&json!({"type": "typing", "dialog_id": ann_dialog, "is_typing": true}))
        .await;
    let typing = next_for(&mut ann, "typing", ann_dialog).await;
    assert_eq!(typing["operator_id"], ann_operator_id);
    // Operator → user.
    let reply = ann_operator
        .request(json!({"type": "chat_message", "id": "r1", "dialog_id": ann_dialog, "message": "Yes, I am here."}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let answer = next_for(&mut ann, "operator_message", ann_dialog).await;
    assert_eq!(answer["message"], "Yes, I am here.");
    assert_eq!(answer["operator_id"], ann_operator_id);
    // Completion: both are told, and the seat goes to Cid at once.
    let done = ann_operator
        .request(json!({"type": "complete_handoff", "id": "c1", "dialog_id": ann_dialog, "resolution": "answered"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    let completed = next_for(&mut ann, "handoff_completed", ann_dialog).await;
    assert_eq!(completed["resolution"], "answered");
    let cid_assigned = next_for(&mut cid, "operator_assigned", cid_dialog).await;
    assert_eq!(cid_assigned["operator_id"], ann_operator_id);
    // The assistant has Ann's dialog again.
    let (_, again) = ann
        .chat_and_answer("q2", Some(ann_dialog), common::FAQ_QUESTION)
        .await;
    assert_eq!(again["assistant_name"], common::ASSISTANT_NAME);
    // Nobody else's dialog: another operator may not write into it.
    let (other, _) = if ann_operator_id == 701 {
        (&mut oscar, 702)
    } else {
        (&mut olga, 701)
    };
    let refused = other
        .request(json!({"type": "chat_message", "id": "x1", "dialog_id": cid_dialog, "message": "mine?"}))
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let duplicate = bob
        .request(json!({"type": "handoff_request", "id": "dup", "dialog_id": bob_dialog}))
        .await;
    assert_eq!(duplicate["code"], "handoff_exists", "{duplicate}");
    app.stop().await;
}

/// (SQLite) The life of handoffs with two operators and three users.
#[tokio::test]
async fn handoff_life_on_sqlite() {
    handoff_life(spawn_app(options()).await).await;
}

/// (PostgreSQL) The life of handoffs with two operators and three users.
#[tokio::test]
async fn handoff_life_on_postgres() {
    handoff_life(spawn_app(options().postgres()).await).await;
}

/// An operator with two tabs who closes one stays online; closing both
/// takes them offline after the grace period, and their handoff goes to the
/// other operator, the user being told.
#[tokio::test]
async fn operator_offline_after_last_tab_and_grace() {
    let app = spawn_app(options()).await;
    let (mut watcher, _) = app.connect_as(722, Role::Operator, "").await;
    let (tab1, _) = app.connect_as(721, Role::Operator, "").await;
    let (tab2, _) = app.connect_as(721, Role::Operator, "").await;
    // Make 722 busy with its own choice, so 721 gets the handoff.
    let busy = watcher
        .request(json!({"type": "set_status", "id": "s1", "status": "busy"}))
        .await;
    assert_eq!(busy["type"], "ack", "{busy}");
    let (mut ann, dialog_id) = dialog(&app, 731).await;
    ask_for_operator(&mut ann, dialog_id, "high").await;
    let assigned = next_for(&mut ann, "operator_assigned", dialog_id).await;
    assert_eq!(assigned["operator_id"], 721);
    tab1.close().await;
    // Still online: a later change of 722 arrives with no offline of 721 before it.
    let available = watcher
        .request(json!({"type": "set_status", "id": "s2", "status": "available"}))
        .await;
    assert_eq!(available["type"], "ack", "{available}");
    loop {
        let change = watcher.next_of("operator_status_change").await;
        assert!(
            !(change["operator_id"] == 721 && change["status"] == "offline"),
            "one tab closed: still online"
        );
        if change["operator_id"] == 722 && change["status"] == "available" {
            break;
        }
    }
    tab2.close().await;
    loop {
        let change = watcher.next_of("operator_status_change").await;
        if change["operator_id"] == 721 && change["status"] == "offline" {
            break;
        }
    }
    let requeued = next_for(&mut ann, "handoff_queued", dialog_id).await;
    assert_eq!(requeued["position"], 1);
    let reassigned = next_for(&mut ann, "operator_assigned", dialog_id).await;
    assert_eq!(reassigned["operator_id"], 722);
    app.stop().await;
}

/// Asking the assistant for a person is enough: its "needs a human" signal
/// becomes a handoff request, announced to the online operator and assigned.
#[tokio::test]
async fn the_assistants_signal_brings_an_operator() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(761, Role::Operator, "").await;
    let (mut ann, _) = app.connect_user(771).await;
    let ack = ann
        .request(json!({"type": "chat_message", "id": "p1", "message": "I want to talk to a human please"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let dialog_id = ack["dialog_id"].as_i64().expect("a dialog");
    // The answer and the handoff's events come from two services: no order
    // between them is promised.
    let (mut answer, mut assigned) = (None, None);
    while answer.is_none() || assigned.is_none() {
        let frame = ann.recv().await;
        match frame["type"].as_str() {
            Some("ai_response") => answer = Some(frame),
            Some("operator_assigned") => assigned = Some(frame),
            _ => {}
        }
    }
    let (answer, assigned) = (answer.unwrap_or_default(), assigned.unwrap_or_default());
    assert_eq!(answer["needs_human"], "requested", "{answer}");
    assert_eq!(assigned["operator_id"], 761, "{assigned}");
    assert_eq!(assigned["dialog_id"], dialog_id, "{assigned}");
    let announced = next_for(&mut olga, "handoff_request", dialog_id).await;
    assert_eq!(announced["user_id"], 771, "{announced}");
    next_for(&mut olga, "operator_assigned", dialog_id).await;
    app.stop().await;
}

/// An operator who chose `away` stays away at full capacity and is never
/// given a handoff.
#[tokio::test]
async fn away_is_never_overridden() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(741, Role::Operator, "").await;
    let away = olga
        .request(json!({"type": "set_status", "id": "a", "status": "away"}))
        .await;
    assert_eq!(away["status"], "away", "{away}");
    let (mut ann, dialog_id) = dialog(&app, 751).await;
    ask_for_operator(&mut ann, dialog_id, "urgent").await;
    let queued = next_for(&mut ann, "handoff_queued", dialog_id).await;
    assert_eq!(queued["position"], 1);
    ann.expect_nothing_for(Duration::from_millis(500)).await;
    let back = olga
        .request(json!({"type": "set_status", "id": "b", "status": "available"}))
        .await;
    assert_eq!(back["type"], "ack", "{back}");
    let assigned = next_for(&mut ann, "operator_assigned", dialog_id).await;
    assert_eq!(assigned["operator_id"], 741);
    // At capacity now: busy, automatically; choosing away again wins.
    let change = loop {
        let change = olga.next_of("operator_status_change").await;
        if change["operator_id"] == 741 && change["active_handoffs"] == 1 {
            break change;
        }
    };
    assert_eq!(change["status"], "busy");
    let away = olga
        .request(json!({"type": "set_status", "id": "c", "status": "away"}))
        .await;
    assert_eq!(
        away["status"], "away",
        "away is not overridden by the capacity rule: {away}"
    );
    app.stop().await;
}

/// Rooms and dialogs are private: a user may not join another user's dialog
/// room, post into it, or ask for an operator for it (`dialog_not_found`, as
/// for a missing dialog); the owner may join.
#[tokio::test]
async fn rooms_and_dialogs_are_private() {
    let app = spawn_app(options()).await;
    let (mut ann, dialog_id) = dialog(&app, 761).await;
    let (mut bob, _) = app.connect_user(762).await;
    let room = format!("dialog:{dialog_id}");
    let refused = bob
        .request(json!({"type": "join_room", "id": "j", "room_id": room}))
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let refused = bob
        .request(json!({"type": "join_room", "id": "k", "room_id": "lobby"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = bob
        .request(
            json!({"type": "chat_message", "id": "p", "dialog_id": dialog_id, "message": "hi"}),
        )
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let refused = bob
        .request(json!({"type": "handoff_request", "id": "h", "dialog_id": dialog_id}))
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let joined = ann
        .request(json!({"type": "join_room", "id": "j", "room_id": room}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    // A second connection of Ann's in the room gets copies of what the first sends.
    let (mut ann2, _) = app.connect_user(761).await;
    let joined = ann2
        .request(json!({"type": "join_room", "id": "j2", "room_id": room}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    ann.chat("m", Some(dialog_id), "copy me").await;
    let copy = next_for(&mut ann2, "chat_message", dialog_id).await;
    assert_eq!(copy["message"], "copy me");
    let left = ann2
        .request(json!({"type": "leave_room", "id": "l", "room_id": room}))
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    app.stop().await;
}

/// Operator `operator_id`, connected with `name` in their token, takes user
/// `user_id`'s handoff and replies `reply`: the `operator_assigned` and the
/// `operator_message` the user gets.
async fn named_operator_replies(
    app: &TestApp,
    operator_id: i64,
    name: &str,
    user_id: i64,
    reply: &str,
) -> (Value, Value) {
    let token = app
        .keys
        .mint(
            operator_id,
            Role::Operator,
            Some(name),
            Duration::from_secs(3600),
        )
        .expect("minting a token");
    let (mut operator, _) =
        connect_at(app.gateway_addr, &token, operator_id, Role::Operator, "").await;
    let (mut user, dialog_id) = dialog(app, user_id).await;
    ask_for_operator(&mut user, dialog_id, "normal").await;
    let assigned = next_for(&mut user, "operator_assigned", dialog_id).await;
    assert_eq!(assigned["operator_id"], operator_id, "{assigned}");
    next_for(&mut operator, "operator_assigned", dialog_id).await;
    let sent = operator
        .request(
            json!({"type": "chat_message", "id": "r1", "dialog_id": dialog_id, "message": reply}),
        )
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let message = next_for(&mut user, "operator_message", dialog_id).await;
    assert_eq!(message["message"], reply, "{message}");
    (assigned, message)
}

/// An operator's name outside ASCII reaches the user whole, in
/// `operator_assigned` and in each `operator_message` (it travels between
/// the parts as binary gRPC metadata).
#[tokio::test]
async fn a_non_ascii_operator_name_is_kept() {
    let app = spawn_app(options()).await;
    let (assigned, message) =
        named_operator_replies(&app, 9201, "Ольга", 9211, "Здравствуйте!").await;
    assert_eq!(assigned["operator_name"], "Ольга", "{assigned}");
    assert_eq!(message["operator_name"], "Ольга", "{message}");
    app.stop().await;
}

/// A token's `name` longer than the limit is cut (at a character boundary)
/// before it travels: the operator connects, is leased and assigned like any
/// other, and the user sees the cut name (presence refuses a longer one, and
/// an operator refused there would leave the gateway's lease).
#[tokio::test]
async fn a_long_operator_name_is_cut_not_refused() {
    let app = spawn_app(options()).await;
    let long_name = "Ж".repeat(200); // 400 bytes
    let (assigned, message) = named_operator_replies(&app, 9301, &long_name, 9311, "Hello").await;
    let cut = "Ж".repeat(128); // 256 bytes
    assert_eq!(assigned["operator_name"], cut.as_str(), "{assigned}");
    assert_eq!(message["operator_name"], cut.as_str(), "{message}");
    app.stop().await;
}

/// A connection gets one copy of each thing that happened, even when it is
/// both a member of the dialog's room and the event's recipient: the owner's
/// second tab in the room gets each `operator_message` once, the operator in
/// the room each of the user's messages once. (Each side sends two messages;
/// a duplicate of the first would arrive before the second.)
#[tokio::test]
async fn a_room_member_who_is_the_recipient_gets_one_copy() {
    let app = spawn_app(options()).await;
    let (mut olga, _) = app.connect_as(9401, Role::Operator, "").await;
    let (mut ann, dialog_id) = dialog(&app, 9411).await;
    ask_for_operator(&mut ann, dialog_id, "normal").await;
    next_for(&mut ann, "operator_assigned", dialog_id).await;
    next_for(&mut olga, "operator_assigned", dialog_id).await;
    let room = format!("dialog:{dialog_id}");
    let (mut ann2, _) = app.connect_user(9411).await;
    for (client, id) in [(&mut ann2, "j1"), (&mut olga, "j2")] {
        let joined = client
            .request(json!({"type": "join_room", "id": id, "room_id": room}))
            .await;
        assert_eq!(joined["type"], "ack", "{joined}");
    }

    for (n, text) in ["first", "second"].into_iter().enumerate() {
        let reply = olga
            .request(json!({"type": "chat_message", "id": format!("o{n}"), "dialog_id": dialog_id, "message": text}))
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    for text in ["first", "second"] {
        let message = next_for(&mut ann2, "operator_message", dialog_id).await;
        assert_eq!(message["message"], text, "{message}");
    }

    for text in ["one", "two"] {
        let ack = ann
            .request(json!({"type": "chat_message", "id": text, "dialog_id": dialog_id, "message": text}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for text in ["one", "two"] {
        let message = next_for(&mut olga, "chat_message", dialog_id).await;
        assert_eq!(message["message"], text, "{message}");
    }
    app.stop().await;
}

/// Joins `room` (any spelling) and returns the `ack`.
async fn join(client: &mut WsClient, room: &str) -> Value {
    let joined = client
        .request(json!({"type": "join_room", "id": format!("join {room}"), "room_id": room}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    joined
}

/// Reads `operator`'s frames up to its `handoff_completed` for `dialog_id`,
/// which the `room_left` must follow at once; returns both.
async fn room_left_after_completion(operator: &mut WsClient, dialog_id: i64) -> (Value, Value) {
    let completed = next_for(operator, "handoff_completed", dialog_id).await;
    let left = operator.recv().await;
    assert_eq!(left["type"], "room_left", "right after {completed}: {left}");
    assert_eq!(left["room_id"], format!("dialog:{dialog_id}"), "{left}");
    assert!(
        left.get("event_id").is_none(),
        "room_left is not durable: {left}"
    );
    common::assert_timestamp(&left);
    (completed, left)
}

/// Asserts `operator` has been given nothing of dialog `dialog_id` from the
/// room: its heartbeat is answered after whatever was already queued for it,
/// so call this once the gateway has passed on the copies in question.
async fn assert_no_room_copies(operator: &mut WsClient, dialog_id: i64) {
    let before = operator.heartbeat("after the hold").await;
    let copies: Vec<&Value> = before
        .iter()
        .filter(|f| {
            f["dialog_id"] == dialog_id
                && ["chat_message", "ai_response", "operator_message", "typing"]
                    .contains(&f["type"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(copies.is_empty(), "copies after the hold ended: {copies:?}");
}

/// An operator whose handoff is completed is taken out of the dialog's room
/// (`room_left`, reason `handoff_completed`, right after its
/// `handoff_completed`) on every gateway, and gets none of the user's later
/// messages. (The user's message is copied to the room before its `ack`, and
/// the answer a tab of the user's on the same gateway then gets comes later
/// on that gateway's stream from chat: by then the gateway has queued the
/// copy to every member, and the operator's heartbeat is answered after it.)
#[tokio::test]
async fn a_completed_handoff_takes_the_operator_out_of_the_room() {
    let app = spawn_app(options()).await;
    let other = app.start_gateway("gw-b").await;
    let (mut olga, _) = app.connect_as(9501, Role::Operator, "").await;
    let token = app.token(9501, Role::Operator);
    let (mut olga_b, _) = connect_at(other.addr, &token, 9501, Role::Operator, "").await;
    let (mut ann, dialog_id) = dialog(&app, 9511).await;
    let token = app.token(9511, Role::User);
    let (mut ann_b, _) = connect_at(other.addr, &token, 9511, Role::User, "").await;
    ask_for_operator(&mut ann, dialog_id, "normal").await;
    next_for(&mut ann, "operator_assigned", dialog_id).await;
    for tab in [&mut olga, &mut olga_b] {
        next_for(tab, "operator_assigned", dialog_id).await;
        join(tab, &format!("dialog:{dialog_id}")).await;
    }

    let done = olga
        .request(json!({"type": "complete_handoff", "id": "c", "dialog_id": dialog_id, "resolution": "done"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    for tab in [&mut olga, &mut olga_b] {
        let (completed, left) = room_left_after_completion(tab, dialog_id).await;
        assert_eq!(completed["outcome"], "completed", "{completed}");
        assert_eq!(left["reason"], "handoff_completed", "{left}");
    }

    next_for(&mut ann, "handoff_completed", dialog_id).await;
    let (ack, _) = ann
        .chat_and_answer("later", Some(dialog_id), common::FAQ_QUESTION)
        .await;
    assert_no_room_copies(&mut olga, dialog_id).await;
    let asked = ack["message_id"].as_i64().unwrap_or_default();
    loop {
        let answer = next_for(&mut ann_b, "ai_response", dialog_id).await;
        if answer["message_id"].as_i64().is_some_and(|id| id > asked) {
            break;
        }
    }
    assert_no_room_copies(&mut olga_b, dialog_id).await;
    other.stop.cancel();
    other.task.await.expect("the second gateway stops cleanly");
    app.stop().await;
}

/// An operator who does not reply in time loses the handoff to another and
/// is taken out of the dialog's room (`room_left`, reason `reassigned`): the
/// user's later messages and the new operator's replies reach the new
/// operator and the user, not the former holder.
#[tokio::test]
async fn a_handoff_taken_back_takes_the_operator_out_of_the_room() {
    let mut options = options();
    // Long enough for the holder to join the room first, short for a test.
    options.handoff.reply_timeout_secs = 3;
    let app = spawn_app(options).await;
    let mut operators = [
        (9601, app.connect_as(9601, Role::Operator, "").await.0),
        (9602, app.connect_as(9602, Role::Operator, "").await.0),
    ];
    let (mut ann, dialog_id) = dialog(&app, 9611).await;
    ask_for_operator(&mut ann, dialog_id, "normal").await;
    let first = next_for(&mut ann, "operator_assigned", dialog_id).await;
    // Whichever operator got it first keeps silent and loses it to the other.
    if first["operator_id"] != operators[0].0 {
        operators.swap(0, 1);
    }
    let [(_, silent), (second_id, second)] = &mut operators;
    next_for(silent, "operator_assigned", dialog_id).await;
    join(silent, &format!("dialog:{dialog_id}")).await;

    let (completed, left) = room_left_after_completion(silent, dialog_id).await;
    assert_eq!(
        completed["resolution"], "reassigned: no reply",
        "{completed}"
    );
    assert_eq!(completed["outcome"], "reassigned", "{completed}");
    assert_eq!(left["reason"], "reassigned", "{left}");

    let reassigned = loop {
        let assigned = next_for(&mut ann, "operator_assigned", dialog_id).await;
        if assigned["operator_id"] != first["operator_id"] {
            break assigned;
        }
    };
    assert_eq!(reassigned["operator_id"], *second_id, "{reassigned}");
    next_for(second, "operator_assigned", dialog_id).await;
    ann.chat("later", Some(dialog_id), "still there?").await;
    let question = next_for(second, "chat_message", dialog_id).await;
    assert_eq!(question["message"], "still there?", "{question}");
    let reply = second
        .request(
            json!({"type": "chat_message", "id": "r", "dialog_id": dialog_id, "message": "I am"}),
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    // The reply was published after the user's message was copied to the room.
    next_for(&mut ann, "operator_message", dialog_id).await;
    assert_no_room_copies(silent, dialog_id).await;
    app.stop().await;
}

/// `leave_room` takes every spelling `join_room` does: a tab that joined
/// `dialog:{id}` and left `dialog:0{id}` gets no more copies. (The other
/// tab's message is copied to the room before the assistant's answer, which
/// both tabs get.)
#[tokio::test]
async fn leave_room_takes_every_spelling_join_room_does() {
    let app = spawn_app(options()).await;
    let (mut ann, dialog_id) = dialog(&app, 9711).await;
    let (mut tab, _) = app.connect_user(9711).await;
    let canonical = format!("dialog:{dialog_id}");
    let joined = join(&mut tab, &format!("dialog:00{dialog_id}")).await;
    assert_eq!(joined["room_id"], canonical.as_str(), "{joined}");
    let left = tab
        .request(
            json!({"type": "leave_room", "id": "l", "room_id": format!("dialog:0{dialog_id}")}),
        )
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    assert_eq!(left["room_id"], canonical.as_str(), "{left}");

    let ack = ann.chat("m", Some(dialog_id), common::FAQ_QUESTION).await;
    let asked = ack["message_id"].as_i64().unwrap_or_default();
    loop {
        let frame = tab.recv().await;
        assert_ne!(
            frame["type"], "chat_message",
            "a copy after leaving: {frame}"
        );
        if frame["type"] == "ai_response"
            && frame["message_id"].as_i64().is_some_and(|id| id > asked)
        {
            break;
        }
    }
    app.stop().await;
}
