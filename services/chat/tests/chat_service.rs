//! The chat service's domain rules, through its public API, on an in-memory
//! SQLite store and the memory event log: who may post and read, the
//! assistant's answer as an event, charging, and the balance alert.

use std::sync::Arc;
use std::time::Duration;

use chatai_assistant::{Answer, Assistant, AssistantError, KnowledgeBase, Turn};
use chatai_chat::store::{self, ChatStore, Money};
use chatai_chat::{ChatError, ChatService, Policy};
use chatai_kit::config::EventLogConfig;
use chatai_kit::events::memory::MemoryLog;
use chatai_kit::events::{Delivery, EventLog, Recipient};
use chatai_kit::identity::{Caller, Role};
use tokio::sync::broadcast;
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
}

async fn fixture(assistant: Arc<dyn Assistant>, policy: Policy) -> Fixture {
    let store = store::connect("sqlite::memory:").await.expect("in-memory SQLite opens");
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
    let live = log.live();
    let tasks = TaskTracker::new();
    let service = ChatService::new(store.clone(), assistant, log, policy, tasks.clone());
    Fixture {
        service,
        store,
        live,
        tasks,
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
    let mut f = fixture(Arc::new(KnowledgeBase::bundled("Helper")), policy(10.0, 1.0, 5.0)).await;
    let ann = caller(456, Role::User);
    let sent = f
        .service
        .send_message(&ann, None, "How do I reset my password?", None)
        .await
        .expect("the message is accepted");
    assert!(sent.created);
    let delivery = next_for(&mut f.live, &Recipient::User(456)).await;
    assert_eq!(delivery.event.kind, "ai_response");
    assert!(delivery.position > 0, "ai_response is durable");
    let answer = body(&delivery);
    assert_eq!(answer["dialog_id"], sent.dialog_id);
    assert_eq!(answer["assistant_name"], "Helper");
    let tokens = answer["tokens_used"].as_u64().expect("tokens_used is a number");
    assert!(tokens > 0);
    f.tasks.close();
    f.tasks.wait().await;
    let (_, history) = f
        .service
        .history(&ann, sent.dialog_id, None, 50)
        .await
        .expect("the owner reads the dialog");
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].text, answer["message"].as_str().expect("message is text"));
    let balance = f.store.balance(456).await.expect("balance reads").expect("user exists");
    assert_eq!(balance, Money(Money::from_units(10.0).0 - (tokens as i64 * 1_000_000 / 1000)));
}

/// Nobody but the owner (or an admin reading) touches a dialog; unknown
/// dialogs and empty or long messages are refused.
#[tokio::test]
async fn dialogs_are_private() {
    let f = fixture(Arc::new(KnowledgeBase::bundled("Helper")), policy(10.0, 0.0, 5.0)).await;
    let ann = caller(1, Role::User);
    let bob = caller(2, Role::User);
    let sent = f.service.send_message(&ann, None, "hello", None).await.expect("accepted");
    assert!(matches!(
        f.service.send_message(&bob, Some(sent.dialog_id), "mine now", None).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.history(&bob, sent.dialog_id, None, 10).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.typing(&bob, sent.dialog_id, true).await,
        Err(ChatError::NotParticipant(_))
    ));
    assert!(matches!(
        f.service.send_message(&caller(3, Role::Operator), Some(sent.dialog_id), "hi", None).await,
        Err(ChatError::Forbidden)
    ));
    assert!(f.service.history(&caller(9, Role::Admin), sent.dialog_id, None, 10).await.is_ok());
    assert!(matches!(
        f.service.send_message(&ann, Some(999_999), "hello", None).await,
        Err(ChatError::DialogNotFound(999_999))
    ));
    assert!(matches!(
        f.service.send_message(&ann, None, "   ", None).await,
        Err(ChatError::EmptyMessage)
    ));
    assert!(matches!(
        f.service.send_message(&ann, None, &"x".repeat(101), None).await,
        Err(ChatError::MessageTooLong { max: 100 })
    ));
    assert!(matches!(f.service.balance(&bob, 1).await, Err(ChatError::Forbidden)));
}

/// The same idempotency key stores one message and asks the assistant once.
#[tokio::test]
async fn retried_message_is_stored_once() {
    let f = fixture(Arc::new(KnowledgeBase::bundled("Helper")), policy(10.0, 0.0, 5.0)).await;
    let ann = caller(1, Role::User);
    let first = f.service.send_message(&ann, None, "hello", Some("k1")).await.expect("accepted");
    let again = f
        .service
        .send_message(&ann, Some(first.dialog_id), "hello", Some("k1"))
        .await
        .expect("accepted");
    assert_eq!(first.message_id, again.message_id);
    assert!(!again.created);
    f.tasks.close();
    f.tasks.wait().await;
    let (_, history) = f.service.history(&ann, first.dialog_id, None, 50).await.expect("readable");
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
    let first = f.service.send_message(&ann, None, "one", None).await.expect("accepted");
    let mut alerts = 0;
    let mut answers = 0;
    for n in 0..5 {
        if n > 0 {
            f.service
                .send_message(&ann, Some(first.dialog_id), &format!("message {n}"), None)
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
    let sent = f.service.send_message(&ann, None, "hello?", None).await.expect("accepted");
    let delivery = next_for(&mut f.live, &Recipient::User(5)).await;
    assert_eq!(delivery.event.kind, "error");
    let error = body(&delivery);
    assert_eq!(error["code"], "assistant_unavailable");
    assert_eq!(error["message_id"], sent.message_id);
    let (_, history) = f.service.history(&ann, sent.dialog_id, None, 10).await.expect("readable");
    assert_eq!(history.len(), 1);
}

/// Typing goes to the dialog's room, live only, marked with its origin.
#[tokio::test]
async fn typing_is_relayed_to_the_room() {
    let mut f = fixture(Arc::new(KnowledgeBase::bundled("Helper")), policy(10.0, 0.0, 5.0)).await;
    let ann = caller(3, Role::User);
    let sent = f.service.send_message(&ann, None, "hello", None).await.expect("accepted");
    f.service.typing(&ann, sent.dialog_id, true).await.expect("relayed");
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
