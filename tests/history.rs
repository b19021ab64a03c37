//! The operator's workspace, the reading side (issue 11): a dialog's history
//! and the list of dialogs, over the WebSocket (`get_history`,
//! `list_dialogs`), HTTP (`GET /api/dialogs…` with a Bearer token) and gRPC,
//! with paging and the reader rules; read receipts (`mark_read` → `read`);
//! and a used-up balance (`insufficient_balance`, then a top-up).

use serde_json::{Value, json};

use crate::common::{FAQ_QUESTION, TestApp, TestOptions, WAIT, WsClient, as_caller, spawn_app};
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use tonic::Code;

/// The next frame of type `kind` for `dialog_id`.
async fn next_for(client: &mut WsClient, kind: &str, dialog_id: i64) -> Value {
    loop {
        let frame = client.next_of(kind).await;
        if frame["dialog_id"] == dialog_id {
            return frame;
        }
    }
}

/// `GET path` with `token` as `Authorization: Bearer` (none: no header):
/// status and JSON body.
async fn http_get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(app.http_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the gateway answers HTTP");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// `POST /api/users/{user_id}/balance/top-up` with `body`.
async fn http_top_up(
    app: &TestApp,
    user_id: i64,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(app.http_url(&format!("/api/users/{user_id}/balance/top-up")))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the gateway answers HTTP");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// `get_history` over the WebSocket: the whole reply (`ack` or `error`).
async fn ws_history(
    client: &mut WsClient,
    dialog_id: i64,
    before: Option<i64>,
    limit: Option<u32>,
) -> Value {
    let mut frame = json!({"type": "get_history", "id": "gh", "dialog_id": dialog_id});
    if let Some(before) = before {
        frame["before_id"] = before.into();
    }
    if let Some(limit) = limit {
        frame["limit"] = limit.into();
    }
    client.request(frame).await
}

fn message_ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| m["message_id"].as_i64().expect("a message_id"))
        .collect()
}

fn dialog_ids(page: &Value) -> Vec<i64> {
    page["dialogs"]
        .as_array()
        .unwrap_or_else(|| panic!("no dialogs in {page}"))
        .iter()
        .map(|d| d["dialog_id"].as_i64().expect("a dialog_id"))
        .collect()
}

/// A user's dialog with `rounds` questions, each answered: 2 × `rounds`
/// messages. Returns the client, the dialog and every message id, oldest first.
async fn dialog_with(app: &TestApp, user: i64, rounds: usize) -> (WsClient, i64, Vec<i64>) {
    let (mut client, _) = app.connect_user(user).await;
    let mut dialog_id = None;
    let mut ids = Vec::new();
    for round in 0..rounds {
        let (ack, answer) = client
            .chat_and_answer(&format!("m{round}"), dialog_id, FAQ_QUESTION)
            .await;
        dialog_id = ack["dialog_id"].as_i64();
        ids.push(ack["message_id"].as_i64().expect("a message id"));
        ids.push(answer["message_id"].as_i64().expect("an answer id"));
    }
    (client, dialog_id.expect("a dialog"), ids)
}

// --- History paging --------------------------------------------------------

/// 120 messages read back in pages of 50, 50 and 20, oldest first inside
/// each page, with `has_more` true until the oldest page: over the
/// WebSocket, the same pages over HTTP, and over gRPC; a limit above 100
/// reads 100; every message carries sender, sender_id, message, timestamp.
async fn history_paging(app: TestApp) {
    let user = 4101;
    let (mut ann, dialog_id, ids) = dialog_with(&app, user, 60).await;
    assert_eq!(ids.len(), 120);
    let token = app.token(user, Role::User);

    let first = ws_history(&mut ann, dialog_id, None, None).await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["dialog_id"], dialog_id, "{first}");
    assert_eq!(
        message_ids(&first),
        ids[70..],
        "the newest 50, oldest first"
    );
    assert_eq!(first["has_more"], true, "{first}");
    let question = &first["messages"][0];
    assert_eq!(question["sender"], "user", "{question}");
    assert_eq!(question["sender_id"], user, "{question}");
    assert_eq!(question["message"], FAQ_QUESTION, "{question}");
    assert!(
        question["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{question}"
    );
    let answer = &first["messages"][1];
    assert_eq!(answer["sender"], "assistant", "{answer}");
    assert!(answer["sender_id"].is_null(), "{answer}");

    let second = ws_history(&mut ann, dialog_id, Some(ids[70]), Some(50)).await;
    assert_eq!(message_ids(&second), ids[20..70]);
    assert_eq!(second["has_more"], true, "{second}");
    let last = ws_history(&mut ann, dialog_id, Some(ids[20]), Some(50)).await;
    assert_eq!(message_ids(&last), ids[..20]);
    assert_eq!(last["has_more"], false, "{last}");
    // Exactly at the boundary: the 20 oldest asked for by 20 have nothing older.
    let exact = ws_history(&mut ann, dialog_id, Some(ids[20]), Some(20)).await;
    assert_eq!(message_ids(&exact), ids[..20]);
    assert_eq!(exact["has_more"], false, "{exact}");
    let one_short = ws_history(&mut ann, dialog_id, Some(ids[20]), Some(19)).await;
    assert_eq!(message_ids(&one_short), ids[1..20]);
    assert_eq!(one_short["has_more"], true, "{one_short}");
    let clamped = ws_history(&mut ann, dialog_id, None, Some(500)).await;
    assert_eq!(message_ids(&clamped), ids[20..], "at most 100");
    assert_eq!(clamped["has_more"], true, "{clamped}");

    // HTTP: the same pages.
    let (status, page) = http_get(
        &app,
        &format!("/api/dialogs/{dialog_id}/messages"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], first["messages"]);
    assert_eq!(page["has_more"], true);
    let path = format!(
        "/api/dialogs/{dialog_id}/messages?before_id={}&limit=50",
        ids[20]
    );
    let (status, page) = http_get(&app, &path, Some(&token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], last["messages"]);
    assert_eq!(page["has_more"], false);
    let path = format!("/api/dialogs/{dialog_id}/messages?limit=0");
    let (status, page) = http_get(&app, &path, Some(&token)).await;
    assert_eq!(
        (status, page["error"].as_str()),
        (400, Some("invalid_field")),
        "{page}"
    );

    // gRPC: 0 is the default page, 200 reads 100.
    let mut chat = app.chat_client().await;
    for (limit, expected) in [(0, 50), (200, 100)] {
        let page = chat
            .get_history(as_caller(
                user,
                Role::User,
                pb::GetHistoryRequest {
                    dialog_id,
                    before_message_id: 0,
                    limit,
                },
            ))
            .await
            .expect("GetHistory as the owner")
            .into_inner();
        assert_eq!(page.messages.len(), expected, "limit {limit}");
        assert!(page.has_more, "limit {limit}");
    }
    ann.close().await;
    app.stop().await;
}

/// 60 questions in a row: a rate limit that lets them through.
fn paging_options() -> TestOptions {
    TestOptions::default().rate_limit(1000, 1000, 20)
}

/// History paging on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_across_120_messages_on_sqlite() {
    history_paging(spawn_app(paging_options()).await).await;
}

/// History paging on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_across_120_messages_on_postgres() {
    history_paging(spawn_app(paging_options().postgres()).await).await;
}

// --- Who may read -----------------------------------------------------------

/// A user's dialog handed to operator `operator` (connected): returns the
/// user's client, the operator's, and the dialog.
async fn held_dialog(app: &TestApp, user: i64, operator: i64) -> (WsClient, WsClient, i64) {
    let (mut olga, _) = app.connect_as(operator, Role::Operator, "").await;
    let (mut ann, dialog_id, _) = dialog_with(app, user, 1).await;
    let reply = ann
        .request(json!({"type": "handoff_request", "id": "h", "dialog_id": dialog_id, "reason": "a person"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    next_for(&mut olga, "operator_assigned", dialog_id).await;
    next_for(&mut ann, "operator_assigned", dialog_id).await;
    (ann, olga, dialog_id)
}

/// The owner, the operator holding the dialog and an admin read it; another
/// user, an operator who does not hold it and — once the handoff is
/// completed — the former holder are refused exactly as for a dialog that
/// does not exist: `dialog_not_found` on the WebSocket, 404 over HTTP.
/// Without a valid token HTTP says 401.
async fn reader_rules(app: TestApp) {
    let (ann_id, bob_id, olga_id, oscar_id, admin_id) = (4201, 4202, 4203, 4204, 4205);
    let (mut ann, mut olga, dialog_id) = held_dialog(&app, ann_id, olga_id).await;
    let (mut bob, _) = app.connect_user(bob_id).await;
    let (mut oscar, _) = app.connect_as(oscar_id, Role::Operator, "").await;
    let (mut admin, _) = app.connect_as(admin_id, Role::Admin, "").await;
    let missing = dialog_id + 1000;
    let path = |id: i64| format!("/api/dialogs/{id}/messages");

    for (client, who) in [
        (&mut ann, "owner"),
        (&mut olga, "holder"),
        (&mut admin, "admin"),
    ] {
        let page = ws_history(client, dialog_id, None, None).await;
        assert_eq!(page["type"], "ack", "{who}: {page}");
        assert_eq!(
            page["messages"].as_array().map(Vec::len),
            Some(2),
            "{who}: {page}"
        );
    }
    for (id, role) in [
        (ann_id, Role::User),
        (olga_id, Role::Operator),
        (admin_id, Role::Admin),
    ] {
        let (status, page) = http_get(&app, &path(dialog_id), Some(&app.token(id, role))).await;
        assert_eq!(status, 200, "{id}: {page}");
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(2), "{page}");
    }

    // Refused like a dialog that does not exist.
    let absent = ws_history(&mut bob, missing, None, None).await;
    assert_eq!(absent["code"], "dialog_not_found", "{absent}");
    let absent_words = |text: &Value| text.as_str().map(|t| t.replace(&missing.to_string(), "N"));
    let refused_words = |text: &Value| {
        text.as_str()
            .map(|t| t.replace(&dialog_id.to_string(), "N"))
    };
    for client in [&mut bob, &mut oscar] {
        let refused = ws_history(client, dialog_id, None, None).await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "dialog_not_found", "{refused}");
        assert_eq!(
            refused_words(&refused["message"]),
            absent_words(&absent["message"])
        );
    }
    let (status, absent) =
        http_get(&app, &path(missing), Some(&app.token(bob_id, Role::User))).await;
    assert_eq!(status, 404, "{absent}");
    for (id, role) in [(bob_id, Role::User), (oscar_id, Role::Operator)] {
        let (status, refused) = http_get(&app, &path(dialog_id), Some(&app.token(id, role))).await;
        assert_eq!(status, 404, "{refused}");
        assert_eq!(refused["error"], "dialog_not_found", "{refused}");
        assert_eq!(
            refused_words(&refused["message"]),
            absent_words(&absent["message"])
        );
    }
    let (status, _) = http_get(&app, &path(dialog_id), None).await;
    assert_eq!(status, 401);
    let (status, _) = http_get(&app, &path(dialog_id), Some("not-a-token")).await;
    assert_eq!(status, 401);
    let (status, _) = http_get(&app, "/api/dialogs", None).await;
    assert_eq!(status, 401);

    // The former holder.
    let done = olga
        .request(json!({"type": "complete_handoff", "id": "c", "dialog_id": dialog_id, "resolution": "done"}))
        .await;
    assert_eq!(done["type"], "ack", "{done}");
    let refused = ws_history(&mut olga, dialog_id, None, None).await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let (status, refused) = http_get(
        &app,
        &path(dialog_id),
        Some(&app.token(olga_id, Role::Operator)),
    )
    .await;
    assert_eq!(status, 404, "{refused}");
    // The owner still reads it.
    let page = ws_history(&mut ann, dialog_id, None, None).await;
    assert_eq!(page["type"], "ack", "{page}");
    app.stop().await;
}

/// Reader rules on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_rules_on_sqlite() {
    reader_rules(spawn_app(TestOptions::default()).await).await;
}

/// Reader rules on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_rules_on_postgres() {
    reader_rules(spawn_app(TestOptions::default().postgres()).await).await;
}

// --- Listing dialogs ---------------------------------------------------------

/// `list_dialogs` until `check` accepts the page (the chat service learns
/// of handoffs from the handoff service's notes, a moment after the
/// clients do); the accepted page.
async fn list_until(client: &mut WsClient, frame: Value, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = client.request(frame.clone()).await;
        assert_eq!(page["type"], "ack", "{page}");
        if check(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A user lists their own dialogs, newest first, in pages (`has_more`,
/// `before_id`), the same over HTTP; another user's are not among them; an
/// admin lists everyone's; an operator lists the dialogs they hold. Each
/// dialog says who answers it: `assistant`, `queued`, `operator` (with
/// `operator_id`).
async fn listing(app: TestApp) {
    let (ann_id, bob_id, olga_id, admin_id) = (4301, 4302, 4303, 4304);
    let (mut ann, _) = app.connect_user(ann_id).await;
    let mut own = Vec::new();
    for round in 0..5 {
        let (ack, _) = ann
            .chat_and_answer(&format!("d{round}"), None, "hello")
            .await;
        own.push(ack["dialog_id"].as_i64().expect("a dialog"));
    }
    own.reverse();
    let (bob_client, bob_dialog, _) = dialog_with(&app, bob_id, 1).await;

    let list = |before: Option<i64>, limit: u32| {
        let mut frame = json!({"type": "list_dialogs", "id": "l", "limit": limit});
        if let Some(before) = before {
            frame["before_id"] = before.into();
        }
        frame
    };
    let first = ann.request(list(None, 2)).await;
    assert_eq!(dialog_ids(&first), own[..2], "{first}");
    assert_eq!(first["has_more"], true, "{first}");
    let dialog = &first["dialogs"][0];
    assert_eq!(dialog["state"], "assistant", "{dialog}");
    assert_eq!(dialog["user_id"], ann_id, "{dialog}");
    assert!(dialog.get("operator_id").is_none(), "{dialog}");
    assert!(
        dialog["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{dialog}"
    );
    assert!(
        dialog["last_message_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{dialog}"
    );
    let second = ann.request(list(Some(own[1]), 2)).await;
    assert_eq!(dialog_ids(&second), own[2..4]);
    assert_eq!(second["has_more"], true, "{second}");
    let last = ann.request(list(Some(own[3]), 2)).await;
    assert_eq!(dialog_ids(&last), own[4..]);
    assert_eq!(last["has_more"], false, "{last}");
    let all = ann
        .request(json!({"type": "list_dialogs", "id": "all"}))
        .await;
    assert_eq!(dialog_ids(&all), own, "bob's dialog is not ann's");

    let token = app.token(ann_id, Role::User);
    let (status, page) = http_get(&app, "/api/dialogs?limit=2", Some(&token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["dialogs"], first["dialogs"]);
    let (status, page) = http_get(
        &app,
        &format!("/api/dialogs?before_id={}&limit=2", own[3]),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(dialog_ids(&page), own[4..]);
    assert_eq!(page["has_more"], false);

    let (mut admin, _) = app.connect_as(admin_id, Role::Admin, "").await;
    let everyone = admin
        .request(json!({"type": "list_dialogs", "id": "a"}))
        .await;
    let mut expected = own.clone();
    expected.insert(0, bob_dialog);
    assert_eq!(dialog_ids(&everyone), expected, "{everyone}");

    // Queued while no operator is online; then held by the one who connects.
    let newest = own[0];
    let reply = ann
        .request(json!({"type": "handoff_request", "id": "h", "dialog_id": newest}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    list_until(&mut ann, list(None, 1), |page| {
        page["dialogs"][0]["state"] == "queued"
    })
    .await;
    let (mut olga, _) = app.connect_as(olga_id, Role::Operator, "").await;
    next_for(&mut olga, "operator_assigned", newest).await;
    let held = list_until(&mut ann, list(None, 1), |page| {
        page["dialogs"][0]["state"] == "operator"
    })
    .await;
    assert_eq!(held["dialogs"][0]["operator_id"], olga_id, "{held}");
    let olgas = list_until(&mut olga, list(None, 100), |page| {
        dialog_ids(page) == [newest]
    })
    .await;
    assert_eq!(olgas["dialogs"][0]["state"], "operator", "{olgas}");
    assert_eq!(olgas["has_more"], false, "{olgas}");
    let (status, page) = http_get(
        &app,
        "/api/dialogs",
        Some(&app.token(olga_id, Role::Operator)),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(dialog_ids(&page), [newest]);
    bob_client.close().await;
    app.stop().await;
}

/// Listing on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_dialogs_pages_on_sqlite() {
    listing(spawn_app(TestOptions::default()).await).await;
}

/// Listing on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_dialogs_pages_on_postgres() {
    listing(spawn_app(TestOptions::default().postgres()).await).await;
}

// --- Read receipts --------------------------------------------------------------

/// The user's `mark_read` reaches the holding operator as `read` (`reader`
/// `user`), the operator's reaches the user (`reader` `operator`); someone
/// else's mark is refused as `dialog_not_found`, a message of another
/// dialog as `invalid_field`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_reaches_the_other_side() {
    let app = spawn_app(TestOptions::default()).await;
    let (ann_id, olga_id) = (4401, 4402);
    let (mut ann, mut olga, dialog_id) = held_dialog(&app, ann_id, olga_id).await;
    let reply = olga
        .request(json!({"type": "chat_message", "id": "o", "dialog_id": dialog_id, "message": "Hi, Olga here"}))
        .await;
    let reply_id = reply["message_id"]
        .as_i64()
        .expect("the operator's message id");
    next_for(&mut ann, "operator_message", dialog_id).await;

    let ack = ann
        .request(json!({"type": "mark_read", "id": "r1", "dialog_id": dialog_id, "message_id": reply_id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let read = next_for(&mut olga, "read", dialog_id).await;
    assert_eq!(read["message_id"], reply_id, "{read}");
    assert_eq!(read["reader"], "user", "{read}");
    assert_eq!(read["reader_id"], ann_id, "{read}");

    let ack = olga
        .request(json!({"type": "mark_read", "id": "r2", "dialog_id": dialog_id, "message_id": reply_id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let read = next_for(&mut ann, "read", dialog_id).await;
    assert_eq!(read["reader"], "operator", "{read}");
    assert_eq!(read["reader_id"], olga_id, "{read}");

    let (mut bob, bob_dialog, bob_ids) = dialog_with(&app, 4403, 1).await;
    let refused = bob
        .request(json!({"type": "mark_read", "id": "r3", "dialog_id": dialog_id, "message_id": reply_id}))
        .await;
    assert_eq!(refused["code"], "dialog_not_found", "{refused}");
    let elsewhere = ann
        .request(json!({"type": "mark_read", "id": "r4", "dialog_id": dialog_id, "message_id": bob_ids[0]}))
        .await;
    assert_eq!(elsewhere["code"], "invalid_field", "{elsewhere}");
    let own = bob
        .request(json!({"type": "mark_read", "id": "r5", "dialog_id": bob_dialog, "message_id": bob_ids[1]}))
        .await;
    assert_eq!(
        own["type"], "ack",
        "with the assistant: nobody to tell, still acked: {own}"
    );
    app.stop().await;
}

// --- Balance -----------------------------------------------------------------------

/// Balance used up: a message for the assistant gets `insufficient_balance`
/// and is not stored; a human can still be asked for; only an admin may top
/// up over HTTP (401 without a token, 403 for a user), and gRPC `TopUp`
/// refuses users; after the top-up the assistant answers again.
async fn balance(mut options: TestOptions) {
    // One answer costs more than this.
    options.chat.starting_balance = 0.000_001;
    let app = spawn_app(options).await;
    let user = 4501;
    let (mut ann, dialog_id, ids) = dialog_with(&app, user, 1).await;
    assert!(app.balance_of(user).await <= 0.0);

    let refused = ann
        .request(json!({"type": "chat_message", "id": "broke", "dialog_id": dialog_id, "message": "hello?"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "insufficient_balance", "{refused}");
    let fresh = ann
        .request(json!({"type": "chat_message", "id": "broke2", "message": "new dialog?"}))
        .await;
    assert_eq!(fresh["code"], "insufficient_balance", "{fresh}");
    let page = ws_history(&mut ann, dialog_id, None, None).await;
    assert_eq!(message_ids(&page), ids, "nothing refused was stored");
    let all = ann
        .request(json!({"type": "list_dialogs", "id": "l"}))
        .await;
    assert_eq!(dialog_ids(&all), [dialog_id], "no dialog opened");

    // A human can still be asked for, and hears the user whatever the balance.
    let asked = ann
        .request(json!({"type": "handoff_request", "id": "h", "dialog_id": dialog_id}))
        .await;
    assert_eq!(asked["type"], "ack", "{asked}");
    let queued = ann
        .request(json!({"type": "chat_message", "id": "q", "dialog_id": dialog_id, "message": "waiting"}))
        .await;
    assert_eq!(queued["type"], "ack", "{queued}");

    let (status, _) = http_top_up(&app, user, None, json!({"amount": 5})).await;
    assert_eq!(status, 401);
    let (status, body) = http_top_up(
        &app,
        user,
        Some(&app.token(user, Role::User)),
        json!({"amount": 5}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let admin = app.token(4599, Role::Admin);
    let (status, body) = http_top_up(&app, user, Some(&admin), json!({"amount": -1})).await;
    assert_eq!(status, 400, "{body}");
    let mut chat = app.chat_client().await;
    let denied = chat
        .top_up(as_caller(
            user,
            Role::User,
            pb::TopUpRequest {
                user_id: user,
                amount: 5.0,
            },
        ))
        .await
        .expect_err("a user may not top up");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let before = app.balance_of(user).await;
    let (status, body) = http_top_up(&app, user, Some(&admin), json!({"amount": 5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], user, "{body}");
    let after = body["balance"].as_f64().expect("the new balance");
    assert!((after - (before + 5.0)).abs() < 1e-6, "{before} → {after}");
    let by_service = chat
        .top_up(as_caller(
            0,
            Role::Service,
            pb::TopUpRequest {
                user_id: user,
                amount: 1.0,
            },
        ))
        .await
        .expect("a service tops up")
        .into_inner();
    assert!(
        (by_service.balance - (after + 1.0)).abs() < 1e-6,
        "{by_service:?}"
    );

    // The assistant answers again (a new dialog: the old one waits for a person).
    let (ack, answer) = ann.chat_and_answer("again", None, FAQ_QUESTION).await;
    assert_eq!(answer["dialog_id"], ack["dialog_id"], "{answer}");
    app.stop().await;
}

/// Balance on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_balance_then_top_up_on_sqlite() {
    balance(TestOptions::default()).await;
}

/// Balance on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_balance_then_top_up_on_postgres() {
    balance(TestOptions::default().postgres()).await;
}
