//! The chat service's domain rules, through its public API, on an in-memory
//! SQLite store and the memory event log: who may post and read, the
//! assistant's answer as an event, charging, and the balance alert.

use std::sync::Arc;
use std::time::Duration;

use chatai_assistant::{Answer, Assistant, AssistantError, KnowledgeBase, Turn};
use chatai_chat::handoffs::{
    HandoffError, HandoffRecord, Handoffs, Holder, Holding, NoHandoffs, Priority,
};
use chatai_chat::store::{self, ChatStore, Money, Sender};
use chatai_chat::{ChatError, ChatService, DialogState, Policy};
use chatai_kit::config::EventLogConfig;
use chatai_kit::events::memory::MemoryLog;
use chatai_kit::events::{Delivery, EventLog, Recipient};
use chatai_kit::holders::{HeldBy, HolderNote, NotedFor};
use chatai_kit::identity::{Caller, Role};
use std::sync::Mutex;
use tokio::sync::broadcast;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

fn caller(id: i64, role: Role) -> Caller {
    Caller {
        id,
        role,
        name: None,
        connection_id: Some("g:1".into()),
    }
}

fn policy(starting: f64, price_per_1k: f64, threshold: f64) -> Policy {
    Policy {
        starting_balance: Money::from_units(starting),
        price_per_1k_tokens: Money::from_units(price_per_1k),
        balance_threshold: Money::from_units(threshold),
        max_message_chars: 100,
        assistant_context: 20,
    }
}

struct Fixture {
    service: ChatService,
    store: Arc<dyn ChatStore>,
    live: broadcast::Receiver<Delivery>,
    tasks: TaskTracker,
    /// Stops the reply reporter when the test ends.
    _reporter: DropGuard,
}

async fn fixture(assistant: Arc<dyn Assistant>, policy: Policy) -> Fixture {
    fixture_with(assistant, policy, Arc::new(NoHandoffs)).await
}

async fn fixture_with(
    assistant: Arc<dyn Assistant>,
    policy: Policy,
    handoffs: Arc<dyn Handoffs>,
) -> Fixture {
    let store = store::connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite opens");
    fixture_on(store, assistant, policy, handoffs)
}

fn fixture_on(
    store: Arc<dyn ChatStore>,
    assistant: Arc<dyn Assistant>,
    policy: Policy,
    handoffs: Arc<dyn Handoffs>,
) -> Fixture {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
    let live = log.live();
    let tasks = TaskTracker::new();
    let service = ChatService::new(
        store.clone(),
        assistant,
        log,
        handoffs,
        policy,
        tasks.clone(),
    );
    let reporter = CancellationToken::new();
    tokio::spawn(service.report_replies(reporter.clone()));
    Fixture {
        service,
        store,
        live,
        tasks,
        _reporter: reporter.drop_guard(),
    }
}

/// The next delivery for `recipient`, skipping others.
async fn next_for(live: &mut broadcast::Receiver<Delivery>, recipient: &Recipient) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let delivery = live.recv().await.expect("the live fan-out stays open");
            if &delivery.recipient == recipient {
                return delivery;
            }
        }
    })
    .await
    .expect("a delivery arrives")
}

fn body(delivery: &Delivery) -> serde_json::Value {
    serde_json::from_slice(&delivery.event.body).expect("event bodies are JSON")
}

/// A message starts a dialog; the assistant's answer is stored and delivered
/// as a durable `ai_response` to the user, and the tokens are charged.
#[tokio::test]
async fn answer_is_stored_delivered_and_charged() {
    let mut f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 1.0, 5.0),
    )
    .await;
    let ann = caller(456, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "How do I reset my password?", None, 0)
        .await
        .expect("the message is accepted");
    assert!(sent.created);
    let delivery = next_for(&mut f.live, &Recipient::User(456)).await;
    assert_eq!(delivery.event.kind, "ai_response");
    assert!(delivery.position > 0, "ai_response is durable");
    let answer = body(&delivery);
    assert_eq!(answer["dialog_id"], sent.dialog_id);
    assert_eq!(answer["assistant_name"], "Helper");
    let tokens = answer["tokens_used"]
        .as_u64()
        .expect("tokens_used is a number");
    assert!(tokens > 0);
    f.tasks.close();
    f.tasks.wait().await;
    let history = f
        .service
        .history(&ann, sent.dialog_id, None, 50)
        .await
        .expect("the owner reads the dialog")
        .messages;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[1].text,
        answer["message"].as_str().expect("message is text")
    );
    let balance = f
        .store
        .balance(456)
        .await
        .expect("balance reads")
        .expect("user exists");
    assert_eq!(
        balance,
        Money(Money::from_units(10.0).0 - (tokens as i64 * 1_000_000 / 1000))
    );
}

/// Nobody but the owner (or an admin reading) touches a dialog; unknown
/// dialogs and empty or long messages are refused.
#[tokio::test]
async fn dialogs_are_private() {
    let f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
    )
    .await;
    let ann = caller(1, Role::User);
    let bob = caller(2, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("accepted");
    assert!(matches!(
        f.service
            .send_message(&bob, Some(sent.dialog_id), "mine now", None, 0)
            .await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.history(&bob, sent.dialog_id, None, 10).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.typing(&bob, sent.dialog_id, true, 0).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service
            .send_message(
                &caller(3, Role::Operator),
                Some(sent.dialog_id),
                "hi",
                None,
                0
            )
            .await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(
        f.service
            .history(&caller(9, Role::Admin), sent.dialog_id, None, 10)
            .await
            .is_ok()
    );
    assert!(matches!(
        f.service
            .send_message(&ann, Some(999_999), "hello", None, 0)
            .await,
        Err(ChatError::DialogNotFound(999_999))
    ));
    assert!(matches!(
        f.service.send_message(&ann, None, "   ", None, 0).await,
        Err(ChatError::EmptyMessage)
    ));
    assert!(matches!(
        f.service
            .send_message(&ann, None, &"x".repeat(101), None, 0)
            .await,
        Err(ChatError::MessageTooLong { max: 100 })
    ));
    assert!(matches!(
        f.service.balance(&bob, 1).await,
        Err(ChatError::Forbidden)
    ));
}

/// The same idempotency key stores one message and asks the assistant once.
#[tokio::test]
async fn retried_message_is_stored_once() {
    let f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
    )
    .await;
    let ann = caller(1, Role::User);
    let first = f
        .service
        .send_message(&ann, None, "hello", Some("k1"), 0)
        .await
        .expect("accepted");
    let again = f
        .service
        .send_message(&ann, Some(first.dialog_id), "hello", Some("k1"), 0)
        .await
        .expect("accepted");
    assert_eq!(first.message_id, again.message_id);
    assert!(!again.created);
    f.tasks.close();
    f.tasks.wait().await;
    let history = f
        .service
        .history(&ann, first.dialog_id, None, 50)
        .await
        .expect("readable")
        .messages;
    assert_eq!(history.len(), 2, "one user message and one answer");
}

/// An assistant that always spends a fixed number of tokens.
struct Spender(u32);

#[async_trait::async_trait]
impl Assistant for Spender {
    fn name(&self) -> &str {
        "Spender"
    }

    async fn answer(&self, _: &[Turn]) -> Result<Answer, AssistantError> {
        Ok(Answer {
            text: "ok".into(),
            tokens_used: self.0,
            needs_human: None,
        })
    }
}

/// Crossing the threshold sends exactly one `balance_alert`; further
/// charges below it send none.
#[tokio::test]
async fn balance_alert_fires_once_per_crossing() {
    // 10.00 to start, 2.00 per answer: 8, 6, 4 (crossing 5.00), 2, 0.
    let mut f = fixture(Arc::new(Spender(1000)), policy(10.0, 2.0, 5.0)).await;
    let ann = caller(7, Role::User);
    let first = f
        .service
        .send_message(&ann, None, "one", None, 0)
        .await
        .expect("accepted");
    let mut alerts = 0;
    let mut answers = 0;
    for n in 0..5 {
        if n > 0 {
            f.service
                .send_message(
                    &ann,
                    Some(first.dialog_id),
                    &format!("message {n}"),
                    None,
                    0,
                )
                .await
                .expect("accepted");
        }
        // Wait for this message's answer (and any alert before it) to be out.
        loop {
            let delivery = next_for(&mut f.live, &Recipient::User(7)).await;
            match delivery.event.kind.as_str() {
                "balance_alert" => {
                    alerts += 1;
                    let alert = body(&delivery);
                    assert_eq!(alert["threshold"], 5.0);
                    assert_eq!(alert["current_balance"], 4.0);
                }
                "ai_response" => {
                    answers += 1;
                    break;
                }
                other => panic!("unexpected event {other}"),
            }
        }
        f.tasks.close();
        f.tasks.wait().await;
        f.tasks.reopen();
    }
    // The alert of the third charge may come after its ai_response.
    f.tasks.close();
    f.tasks.wait().await;
    while let Ok(delivery) = f.live.try_recv() {
        if delivery.event.kind == "balance_alert" {
            alerts += 1;
        }
    }
    assert_eq!(answers, 5);
    assert_eq!(alerts, 1);
}

/// An assistant that always fails.
struct Broken;

#[async_trait::async_trait]
impl Assistant for Broken {
    fn name(&self) -> &str {
        "Broken"
    }

    async fn answer(&self, _: &[Turn]) -> Result<Answer, AssistantError> {
        Err(AssistantError::EmptyAnswer)
    }
}

/// When the assistant fails, the accepted message stays stored and the user
/// gets a durable `error` event naming it.
#[tokio::test]
async fn assistant_failure_is_reported_to_the_user() {
    let mut f = fixture(Arc::new(Broken), policy(10.0, 1.0, 5.0)).await;
    let ann = caller(5, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "hello?", None, 0)
        .await
        .expect("accepted");
    let delivery = next_for(&mut f.live, &Recipient::User(5)).await;
    assert_eq!(delivery.event.kind, "error");
    let error = body(&delivery);
    assert_eq!(error["code"], "assistant_unavailable");
    assert_eq!(error["message_id"], sent.message_id);
    let history = f
        .service
        .history(&ann, sent.dialog_id, None, 10)
        .await
        .expect("readable")
        .messages;
    assert_eq!(history.len(), 1);
}

/// Typing goes to the dialog's room, live only, marked with its origin.
#[tokio::test]
async fn typing_is_relayed_to_the_room() {
    let mut f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
    )
    .await;
    let ann = caller(3, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("accepted");
    f.service
        .typing(&ann, sent.dialog_id, true, 0)
        .await
        .expect("relayed");
    let room = Recipient::dialog_room(sent.dialog_id);
    let delivery = loop {
        let delivery = next_for(&mut f.live, &room).await;
        if delivery.event.kind == "typing" {
            break delivery;
        }
    };
    assert_eq!(delivery.position, 0);
    assert_eq!(delivery.event.origin_connection.as_deref(), Some("g:1"));
    assert_eq!(body(&delivery)["is_typing"], true);
}

/// A handoff service in memory: who holds which dialog, and what was asked.
#[derive(Default)]
struct FakeHandoffs {
    holders: Mutex<std::collections::HashMap<i64, Holder>>,
    requests: Mutex<Vec<(i64, i64, String)>>,
    replies: Mutex<Vec<(i64, i64)>>,
    /// How often the service asked who holds a dialog.
    asked: std::sync::atomic::AtomicUsize,
    /// The holder version its answers are as of (tests that use the view
    /// set it past the notes the view applied, as the real service is).
    version: std::sync::atomic::AtomicU64,
    /// `operator_replied` fails this many more times (unreachable) first.
    replies_failing: std::sync::atomic::AtomicUsize,
    /// `operator_replied` never answers.
    replies_hang: std::sync::atomic::AtomicBool,
    /// How many `operator_replied` calls it accepted.
    replies_accepted: watch::Sender<usize>,
}

#[async_trait::async_trait]
impl Handoffs for FakeHandoffs {
    async fn holding(&self, dialog_id: i64) -> Result<Holding, HandoffError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let holder = self
            .holders
            .lock()
            .expect("not poisoned")
            .get(&dialog_id)
            .cloned();
        Ok(Holding {
            holder,
            version: self.version.load(std::sync::atomic::Ordering::SeqCst),
        })
    }

    async fn request(
        &self,
        dialog_id: i64,
        user_id: i64,
        reason: &str,
        _: Priority,
    ) -> Result<HandoffRecord, HandoffError> {
        self.requests
            .lock()
            .expect("not poisoned")
            .push((dialog_id, user_id, reason.to_owned()));
        self.holders
            .lock()
            .expect("not poisoned")
            .insert(dialog_id, Holder::Queued);
        Ok(HandoffRecord {
            dialog_id,
            user_id,
            position: Some(1),
            ..Default::default()
        })
    }

    async fn operator_replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError> {
        use std::sync::atomic::Ordering;
        if self.replies_hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let fail = self
            .replies_failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(HandoffError::Unavailable {
                cause: "connection refused".into(),
            });
        }
        self.replies
            .lock()
            .expect("not poisoned")
            .push((dialog_id, operator_id));
        self.replies_accepted.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// While an operator holds a dialog, the user's messages go to that operator
/// (durable `chat_message`) and the assistant stays quiet; the operator's
/// replies reach the user as `operator_message` and stop the no-reply timer.
#[tokio::test]
async fn a_held_dialog_is_between_user_and_operator() {
    let handoffs = Arc::new(FakeHandoffs::default());
    let mut f = fixture_with(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
        handoffs.clone(),
    )
    .await;
    let ann = caller(1, Role::User);
    let first = f
        .service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("accepted");
    let _ = next_for(&mut f.live, &Recipient::User(1)).await; // the assistant's answer
    handoffs.holders.lock().expect("not poisoned").insert(
        first.dialog_id,
        Holder::Operator {
            id: 77,
            name: "Olga".into(),
        },
    );
    f.service
        .send_message(&ann, Some(first.dialog_id), "are you human?", None, 0)
        .await
        .expect("accepted");
    let to_operator = next_for(&mut f.live, &Recipient::Operator(77)).await;
    assert_eq!(to_operator.event.kind, "chat_message");
    assert!(to_operator.position > 0, "the operator's copy is durable");
    assert_eq!(body(&to_operator)["message"], "are you human?");
    assert_eq!(body(&to_operator)["user_id"], 1);

    let olga = Caller {
        id: 77,
        role: Role::Operator,
        name: Some("Olga".into()),
        connection_id: None,
    };
    f.service
        .send_message(&olga, Some(first.dialog_id), "yes, I am", None, 0)
        .await
        .expect("the holder may reply");
    let to_user = next_for(&mut f.live, &Recipient::User(1)).await;
    assert_eq!(
        to_user.event.kind, "operator_message",
        "no ai_response while held"
    );
    assert_eq!(body(&to_user)["operator_name"], "Olga");
    assert_eq!(body(&to_user)["operator_id"], 77);
    replies_accepted(&handoffs, 1).await;
    assert_eq!(
        handoffs.replies.lock().expect("not poisoned").as_slice(),
        &[(first.dialog_id, 77)]
    );
    f.tasks.close();
    f.tasks.wait().await;
    let history = f
        .service
        .history(&olga, first.dialog_id, None, 10)
        .await
        .expect("the holder reads")
        .messages;
    assert_eq!(history.len(), 4, "hello, answer, question, reply");

    let other = Caller {
        id: 78,
        role: Role::Operator,
        name: None,
        connection_id: None,
    };
    assert!(matches!(
        f.service
            .send_message(&other, Some(first.dialog_id), "me too", None, 0)
            .await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.history(&other, first.dialog_id, None, 10).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service
            .send_message(&olga, None, "new dialog?", None, 0)
            .await,
        Err(ChatError::DialogRequired)
    ));
}

/// Typing crosses to the other side, live only: the user's to the holding
/// operator, the operator's to the user.
#[tokio::test]
async fn typing_crosses_to_the_other_side() {
    let handoffs = Arc::new(FakeHandoffs::default());
    let mut f = fixture_with(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
        handoffs.clone(),
    )
    .await;
    let ann = caller(1, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("accepted");
    handoffs.holders.lock().expect("not poisoned").insert(
        sent.dialog_id,
        Holder::Operator {
            id: 5,
            name: String::new(),
        },
    );
    f.service
        .typing(&ann, sent.dialog_id, true, 0)
        .await
        .expect("relayed");
    let to_operator = loop {
        let d = next_for(&mut f.live, &Recipient::Operator(5)).await;
        if d.event.kind == "typing" {
            break d;
        }
    };
    assert_eq!(to_operator.position, 0, "typing is never stored");
    assert_eq!(body(&to_operator)["user_id"], 1);
    let operator = caller(5, Role::Operator);
    f.service
        .typing(&operator, sent.dialog_id, false, 0)
        .await
        .expect("relayed");
    let to_user = loop {
        let d = next_for(&mut f.live, &Recipient::User(1)).await;
        if d.event.kind == "typing" {
            break d;
        }
    };
    assert_eq!(body(&to_user)["operator_id"], 5);
    assert_eq!(body(&to_user)["is_typing"], false);
}

/// A queued handoff keeps the assistant quiet; asking for a person through
/// the assistant requests a handoff; only the owner may request one.
#[tokio::test]
async fn handoff_requests_and_the_quiet_assistant() {
    let handoffs = Arc::new(FakeHandoffs::default());
    let mut f = fixture_with(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
        handoffs.clone(),
    )
    .await;
    let ann = caller(1, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "I want to talk to a human please", None, 0)
        .await
        .expect("accepted");
    let answer = next_for(&mut f.live, &Recipient::User(1)).await;
    assert_eq!(body(&answer)["needs_human"], "requested");
    f.tasks.close();
    f.tasks.wait().await;
    f.tasks.reopen();
    assert_eq!(
        handoffs.requests.lock().expect("not poisoned").len(),
        1,
        "the assistant's signal asked for an operator"
    );
    // Now queued: the assistant stays quiet.
    f.service
        .send_message(&ann, Some(sent.dialog_id), "hello?", None, 0)
        .await
        .expect("accepted");
    f.tasks.close();
    f.tasks.wait().await;
    while let Ok(delivery) = f.live.try_recv() {
        assert!(
            !(delivery.recipient == Recipient::User(1) && delivery.event.kind == "ai_response"),
            "the assistant answered a dialog waiting for an operator"
        );
    }
    let bob = caller(2, Role::User);
    assert!(matches!(
        f.service
            .request_handoff(&bob, sent.dialog_id, "mine", Priority::High)
            .await,
        Err(ChatError::NotParticipant(_))
    ));
    f.service
        .request_handoff(&ann, sent.dialog_id, "still need help", Priority::High)
        .await
        .expect("the owner may ask");
    assert_eq!(handoffs.requests.lock().expect("not poisoned").len(), 2);
}

// ---------------------------------------------------------------------------
// The holder view and its races (see `chatai_chat::holders`)
// ---------------------------------------------------------------------------

fn olga() -> Holder {
    Holder::Operator {
        id: 77,
        name: "Olga".into(),
    }
}

fn olga_held(version: u64, recipient: NotedFor, position: u64) -> HolderNote {
    HolderNote {
        dialog_id: 1,
        user_id: 1,
        holder: HeldBy::Operator {
            operator_id: 77,
            operator_name: "Olga".into(),
        },
        version,
        recipient,
        position,
    }
}

/// A dialog of user 1 (id 1), answered once by the assistant, with the
/// handoff service in memory and the view attached and told nothing.
async fn held_dialog() -> (Fixture, Arc<FakeHandoffs>) {
    let handoffs = Arc::new(FakeHandoffs::default());
    let mut f = fixture_with(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
        handoffs.clone(),
    )
    .await;
    let sent = f
        .service
        .send_message(&caller(1, Role::User), None, "hello", None, 0)
        .await
        .expect("accepted");
    assert_eq!(sent.dialog_id, 1);
    let _ = next_for(&mut f.live, &Recipient::User(1)).await;
    f.service.holder_view().reset(Vec::new(), 1);
    (f, handoffs)
}

fn asked(handoffs: &FakeHandoffs) -> usize {
    handoffs.asked.load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether the assistant answered anything after `message_id`.
async fn assistant_answered_after(f: &Fixture, message_id: i64) -> bool {
    f.tasks.close();
    f.tasks.wait().await;
    f.tasks.reopen();
    let history = f.store.history(1, None, 50).await.expect("readable");
    history
        .iter()
        .any(|m| m.id > message_id && m.sender == Sender::Assistant)
}

/// Race 1: the user has seen `operator_assigned` (position 5 of its handoff
/// log) before the note reached the chat service. Its message reaches the
/// operator and never the assistant: the view does not cover position 5, so
/// the service asks the handoff service.
#[tokio::test]
async fn a_user_who_has_seen_the_assignment_reaches_the_operator_before_the_note() {
    let (mut f, handoffs) = held_dialog().await;
    handoffs
        .holders
        .lock()
        .expect("not poisoned")
        .insert(1, olga());
    handoffs
        .version
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let sent = f
        .service
        .send_message(&caller(1, Role::User), Some(1), "are you human?", None, 5)
        .await
        .expect("accepted");
    let to_operator = next_for(&mut f.live, &Recipient::Operator(77)).await;
    assert_eq!(to_operator.event.kind, "chat_message");
    assert_eq!(body(&to_operator)["message"], "are you human?");
    assert_eq!(asked(&handoffs), 1);
    assert!(!assistant_answered_after(&f, sent.message_id).await);

    // Once the note for position 5 has come, the view answers alone.
    f.service
        .holder_view()
        .apply(olga_held(2, NotedFor::User(1), 5));
    f.service
        .send_message(&caller(1, Role::User), Some(1), "still there?", None, 5)
        .await
        .expect("accepted");
    let to_operator = next_for(&mut f.live, &Recipient::Operator(77)).await;
    assert_eq!(body(&to_operator)["message"], "still there?");
    assert_eq!(
        asked(&handoffs),
        1,
        "no second question to the handoff service"
    );
}

/// Race 2: the view still says Olga holds the dialog, but the user has seen
/// `handoff_completed` (position 6) and the operator too (position 3 of
/// theirs). The user's message goes to the assistant, never to Olga; Olga
/// can no longer write into the dialog.
#[tokio::test]
async fn after_the_completion_is_seen_the_former_holder_is_never_reached() {
    let (mut f, handoffs) = held_dialog().await;
    let view = f.service.holder_view();
    view.apply(olga_held(2, NotedFor::User(1), 5));
    view.apply(olga_held(2, NotedFor::Operator(77), 2));
    // Completed at the handoff service; the notes are still on their way.
    handoffs.holders.lock().expect("not poisoned").clear();
    handoffs
        .version
        .store(3, std::sync::atomic::Ordering::SeqCst);

    let sent = f
        .service
        .send_message(&caller(1, Role::User), Some(1), "thanks, bye", None, 6)
        .await
        .expect("accepted");
    let to_user = next_for(&mut f.live, &Recipient::User(1)).await;
    assert_eq!(to_user.event.kind, "ai_response", "the assistant answers");
    assert!(assistant_answered_after(&f, sent.message_id).await);
    let olga_got: Vec<Delivery> = std::iter::from_fn(|| f.live.try_recv().ok())
        .filter(|d| d.recipient == Recipient::Operator(77))
        .collect();
    assert!(olga_got.is_empty(), "{olga_got:?}");

    let olga = Caller {
        id: 77,
        role: Role::Operator,
        name: Some("Olga".into()),
        connection_id: None,
    };
    assert!(matches!(
        f.service
            .send_message(&olga, Some(1), "one more thing", None, 3)
            .await,
        Err(ChatError::NotParticipant(1))
    ));

    // A caller whose position the view covers is answered by the view, and
    // nobody is asked: it learnt the completion from the user's question.
    let before = asked(&handoffs);
    assert!(matches!(
        f.service
            .send_message(&olga, Some(1), "sent before I saw it", None, 2)
            .await,
        Err(ChatError::NotParticipant(1))
    ));
    assert_eq!(asked(&handoffs), before);
}

/// The real store, with a hook run when a user's message is about to be
/// stored: what happens between the holder check and the store.
struct HookedStore {
    inner: Arc<dyn ChatStore>,
    before_user_message: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl HookedStore {
    /// Runs the hook (once) when a user's message is about to be stored.
    fn run_hook(&self, sender: Sender) {
        if sender == Sender::User {
            let hook = self
                .before_user_message
                .lock()
                .expect("not poisoned")
                .take();
            if let Some(hook) = hook {
                hook();
            }
        }
    }
}

#[async_trait::async_trait]
impl ChatStore for HookedStore {
    async fn ensure_user(
        &self,
        user_id: i64,
        name: Option<&str>,
        starting_balance: Money,
    ) -> Result<(), store::StoreError> {
        self.inner
            .ensure_user(user_id, name, starting_balance)
            .await
    }

    async fn user(&self, user_id: i64) -> Result<Option<store::User>, store::StoreError> {
        self.inner.user(user_id).await
    }

    async fn create_dialog(&self, user_id: i64) -> Result<store::Dialog, store::StoreError> {
        self.inner.create_dialog(user_id).await
    }

    async fn dialog(&self, dialog_id: i64) -> Result<Option<store::Dialog>, store::StoreError> {
        self.inner.dialog(dialog_id).await
    }

    async fn append_message(
        &self,
        message: store::NewMessage<'_>,
    ) -> Result<(store::Message, bool), store::StoreError> {
        self.run_hook(message.sender);
        self.inner.append_message(message).await
    }

    async fn append_funded_message(
        &self,
        message: store::NewMessage<'_>,
        payer: i64,
    ) -> Result<(store::Message, bool), store::StoreError> {
        self.run_hook(message.sender);
        self.inner.append_funded_message(message, payer).await
    }

    async fn append_answer(
        &self,
        answer: store::NewMessage<'_>,
        charge: Option<(i64, Money)>,
    ) -> Result<(store::Message, Option<store::Charge>), store::StoreError> {
        self.inner.append_answer(answer, charge).await
    }

    async fn history(
        &self,
        dialog_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<store::Message>, store::StoreError> {
        self.inner.history(dialog_id, before, limit).await
    }

    async fn list_dialogs(
        &self,
        user_id: Option<i64>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<store::Dialog>, store::StoreError> {
        self.inner.list_dialogs(user_id, before, limit).await
    }

    async fn charge(
        &self,
        user_id: i64,
        amount: Money,
    ) -> Result<store::Charge, store::StoreError> {
        self.inner.charge(user_id, amount).await
    }

    async fn balance(&self, user_id: i64) -> Result<Option<Money>, store::StoreError> {
        self.inner.balance(user_id).await
    }

    async fn ping(&self) -> Result<(), store::StoreError> {
        self.inner.ping().await
    }
}

/// `held_dialog`, on a store whose hook the test sets, with Olga holding
/// the dialog in the view as of version 2 (the user has seen it, position 5).
async fn olga_holds_on_a_hooked_store() -> (Fixture, Arc<HookedStore>) {
    let store = Arc::new(HookedStore {
        inner: store::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite opens"),
        before_user_message: Mutex::new(None),
    });
    let mut f = fixture_on(
        store.clone(),
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 5.0),
        Arc::new(FakeHandoffs::default()),
    );
    let sent = f
        .service
        .send_message(&caller(1, Role::User), None, "hello", None, 0)
        .await
        .expect("accepted");
    assert_eq!(sent.dialog_id, 1);
    let _ = next_for(&mut f.live, &Recipient::User(1)).await;
    let view = f.service.holder_view();
    view.reset(Vec::new(), 1);
    view.apply(olga_held(2, NotedFor::User(1), 5));
    view.apply(olga_held(2, NotedFor::Operator(77), 2));
    (f, store)
}

/// Every delivery so far for `recipient` (the memory log publishes before
/// `deliver` returns).
fn delivered_to(f: &mut Fixture, recipient: &Recipient) -> Vec<Delivery> {
    std::iter::from_fn(|| f.live.try_recv().ok())
        .filter(|d| &d.recipient == recipient)
        .collect()
}

/// Race 3: the view says Olga holds the dialog when the user's message is
/// checked; before it is stored the handoff service reassigns the dialog to
/// Bob and the view applies that note. The message is routed by the holder
/// as of after the store: Bob gets it durably, Olga — already told the
/// dialog is no longer hers — never does.
#[tokio::test]
async fn a_message_stored_after_a_reassignment_reaches_the_new_holder_only() {
    let (mut f, store) = olga_holds_on_a_hooked_store().await;
    let view = f.service.holder_view();
    *store.before_user_message.lock().expect("not poisoned") = Some(Box::new(move || {
        view.apply(HolderNote {
            holder: HeldBy::Operator {
                operator_id: 78,
                operator_name: "Bob".into(),
            },
            ..olga_held(3, NotedFor::Operator(77), 3)
        });
    }));
    let _ = delivered_to(&mut f, &Recipient::Operator(77));
    f.service
        .send_message(&caller(1, Role::User), Some(1), "are you there?", None, 5)
        .await
        .expect("accepted");
    let to_bob = next_for(&mut f.live, &Recipient::Operator(78)).await;
    assert_eq!(to_bob.event.kind, "chat_message");
    assert!(to_bob.position > 0, "Bob's copy is durable");
    assert_eq!(body(&to_bob)["message"], "are you there?");
    let olga_got = delivered_to(&mut f, &Recipient::Operator(77));
    assert!(olga_got.is_empty(), "{olga_got:?}");
}

/// Race 3, taken back to the assistant: the dialog goes back to the
/// assistant between the check and the store. The assistant answers the
/// message and the former holder does not get it.
#[tokio::test]
async fn a_message_stored_after_a_take_back_goes_to_the_assistant() {
    let (mut f, store) = olga_holds_on_a_hooked_store().await;
    let view = f.service.holder_view();
    *store.before_user_message.lock().expect("not poisoned") = Some(Box::new(move || {
        view.apply(HolderNote {
            holder: HeldBy::Assistant,
            ..olga_held(3, NotedFor::Operator(77), 3)
        });
    }));
    let _ = delivered_to(&mut f, &Recipient::Operator(77));
    let sent = f
        .service
        .send_message(&caller(1, Role::User), Some(1), "anyone?", None, 5)
        .await
        .expect("accepted");
    let olga_got = delivered_to(&mut f, &Recipient::Operator(77));
    assert!(olga_got.is_empty(), "{olga_got:?}");
    assert!(
        assistant_answered_after(&f, sent.message_id).await,
        "the assistant answers a dialog it holds again"
    );
}

/// Waits until the handoff service accepted `n` reply reports.
async fn replies_accepted(handoffs: &FakeHandoffs, n: usize) {
    let mut accepted = handoffs.replies_accepted.subscribe();
    tokio::time::timeout(Duration::from_secs(10), accepted.wait_for(|k| *k >= n))
        .await
        .expect("the reply is reported")
        .expect("the fake lives");
}

fn olga_operator() -> Caller {
    Caller {
        id: 77,
        role: Role::Operator,
        name: Some("Olga".into()),
        connection_id: None,
    }
}

/// `held_dialog`, with Olga holding the dialog in the view (as of version
/// 2; she has seen it at position 2 of her log).
async fn olga_holds() -> (Fixture, Arc<FakeHandoffs>) {
    let (f, handoffs) = held_dialog().await;
    let view = f.service.holder_view();
    view.apply(olga_held(2, NotedFor::User(1), 5));
    view.apply(olga_held(2, NotedFor::Operator(77), 2));
    (f, handoffs)
}

/// Race 4: telling the handoff service that Olga replied fails (it cannot
/// be reached just then). The report is sent again until it is accepted —
/// so the no-reply timer stops — and once accepted, her later replies are
/// not reported again.
#[tokio::test]
async fn a_reply_report_that_failed_is_sent_again() {
    let (mut f, handoffs) = olga_holds().await;
    handoffs
        .replies_failing
        .store(2, std::sync::atomic::Ordering::SeqCst);
    f.service
        .send_message(&olga_operator(), Some(1), "hello, I am Olga", None, 2)
        .await
        .expect("the holder may reply");
    let to_user = next_for(&mut f.live, &Recipient::User(1)).await;
    assert_eq!(to_user.event.kind, "operator_message");
    replies_accepted(&handoffs, 1).await;
    assert_eq!(
        handoffs.replies.lock().expect("not poisoned").as_slice(),
        &[(1, 77)]
    );
    assert!(
        !f.service.holder_view().reply_to_record(1, 77),
        "accepted: her next replies are not reported again"
    );
}

/// The operator's ack does not wait for the handoff service: with
/// `operator_replied` never answering, the reply is still stored,
/// acknowledged and delivered.
#[tokio::test]
async fn an_operators_ack_does_not_wait_for_the_handoff_service() {
    let (mut f, handoffs) = olga_holds().await;
    handoffs
        .replies_hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        f.service
            .send_message(&olga_operator(), Some(1), "one moment", None, 2),
    )
    .await
    .expect("the ack does not wait for the handoff service")
    .expect("the holder may reply");
    assert!(sent.created);
    let to_user = next_for(&mut f.live, &Recipient::User(1)).await;
    assert_eq!(body(&to_user)["message"], "one moment");
}

/// A used-up balance refuses what the assistant would answer before storing
/// it (no dialog opened either); a free assistant never refuses; a top-up
/// (admins and services only, a positive amount) lets the user talk again.
#[tokio::test]
async fn used_up_balance_refuses_until_topped_up() {
    let f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(0.0, 1.0, 0.0),
    )
    .await;
    let ann = caller(456, Role::User);
    assert!(matches!(
        f.service.send_message(&ann, None, "hello", None, 0).await,
        Err(ChatError::InsufficientBalance)
    ));
    assert!(
        f.store
            .list_dialogs(Some(456), None, 10)
            .await
            .expect("readable")
            .is_empty(),
        "nothing stored"
    );
    assert!(matches!(
        f.service.top_up(&ann, 456, Money::from_units(1.0)).await,
        Err(ChatError::Forbidden)
    ));
    let admin = caller(9, Role::Admin);
    for (user, amount) in [(456, 0.0), (456, -1.0), (0, 1.0)] {
        assert!(matches!(
            f.service
                .top_up(&admin, user, Money::from_units(amount))
                .await,
            Err(ChatError::InvalidTopUp)
        ));
    }
    let balance = f
        .service
        .top_up(&admin, 456, Money::from_units(1.5))
        .await
        .expect("an admin tops up");
    assert_eq!(balance, Money::from_units(1.5));
    let topped = f
        .service
        .top_up(&Caller::service(), 456, Money::from_units(0.5))
        .await
        .expect("a service tops up");
    assert_eq!(topped, Money::from_units(2.0));
    f.service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("accepted after the top-up");

    let free = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(0.0, 0.0, 0.0),
    )
    .await;
    free.service
        .send_message(&ann, None, "hello", None, 0)
        .await
        .expect("a free assistant answers whatever the balance");
}

/// A message resent after its answer used the balance up gets its first
/// `ack` again (the balance is read after the key was looked up); a new
/// message is refused.
#[tokio::test]
async fn a_resent_message_is_acked_after_its_answer_used_the_balance_up() {
    // 2.00 to start, 2.00 per answer: the first answer uses it all.
    let mut f = fixture(Arc::new(Spender(1000)), policy(2.0, 2.0, 0.0)).await;
    let ann = caller(8, Role::User);
    let first = f
        .service
        .send_message(&ann, None, "one", Some("m1"), 0)
        .await
        .expect("accepted");
    loop {
        let delivery = next_for(&mut f.live, &Recipient::User(8)).await;
        if delivery.event.kind == "ai_response" {
            break;
        }
    }
    f.tasks.close();
    f.tasks.wait().await;
    assert_eq!(
        f.store.balance(8).await.expect("readable"),
        Some(Money::ZERO)
    );
    let again = f
        .service
        .send_message(&ann, None, "one", Some("m1"), 0)
        .await
        .expect("the resent message is acked");
    assert_eq!(again.message_id, first.message_id);
    assert!(!again.created);
    assert!(matches!(
        f.service
            .send_message(&ann, Some(first.dialog_id), "two", Some("m2"), 0)
            .await,
        Err(ChatError::InsufficientBalance)
    ));
}

/// History pages say whether older messages exist; list_dialogs gives a
/// user their own dialogs, newest first, an admin everyone's, each with who
/// answers it.
#[tokio::test]
async fn history_and_dialog_pages() {
    let f = fixture(
        Arc::new(KnowledgeBase::bundled("Helper")),
        policy(10.0, 0.0, 0.0),
    )
    .await;
    let ann = caller(456, Role::User);
    let first = f
        .service
        .send_message(&ann, None, "one", None, 0)
        .await
        .expect("accepted");
    for text in ["two", "three"] {
        f.service
            .send_message(&ann, Some(first.dialog_id), text, None, 0)
            .await
            .expect("accepted");
    }
    f.tasks.close();
    f.tasks.wait().await;
    // Three questions, three answers.
    let page = f
        .service
        .history(&ann, first.dialog_id, None, 4)
        .await
        .expect("readable");
    assert_eq!(page.messages.len(), 4);
    assert!(page.has_more);
    let rest = f
        .service
        .history(&ann, first.dialog_id, Some(page.messages[0].id), 4)
        .await
        .expect("readable");
    assert_eq!(rest.messages.len(), 2);
    assert!(!rest.has_more);
    let all = f
        .service
        .history(&ann, first.dialog_id, None, 6)
        .await
        .expect("readable");
    assert_eq!(all.messages.len(), 6);
    assert!(!all.has_more, "exactly the page: nothing older");

    let bob = caller(7, Role::User);
    let second = f
        .service
        .send_message(&bob, None, "bob's", None, 0)
        .await
        .expect("accepted");
    let own = f
        .service
        .list_dialogs(&ann, None, 50)
        .await
        .expect("listed");
    assert_eq!(
        own.dialogs.iter().map(|d| d.dialog.id).collect::<Vec<_>>(),
        [first.dialog_id]
    );
    assert_eq!(own.dialogs[0].state, DialogState::Assistant);
    let every = f
        .service
        .list_dialogs(&caller(9, Role::Admin), None, 1)
        .await
        .expect("listed");
    assert_eq!(
        every
            .dialogs
            .iter()
            .map(|d| d.dialog.id)
            .collect::<Vec<_>>(),
        [second.dialog_id]
    );
    assert!(every.has_more);
}
