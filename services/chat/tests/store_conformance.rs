//! The conformance suite of [`ChatStore`]: every case is written once and run
//! against each backend, as `sqlite::<case>` (a fresh file in a temporary
//! folder) and `postgres::<case>` (a fresh database on the server at
//! `CHATAI_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
//! dropped afterwards). The PostgreSQL tests fail, never skip, when the server
//! is unreachable.
//!
//! A new case is an `async fn` taking the store (or, to open it itself, the
//! URL) and returning `Result<(), StoreError>`, listed in `on_both_databases!` below.

use std::sync::Arc;

use chatai_chat::store::{self, ChatStore, Message, Money, NewMessage, Sender, StoreError};
use tokio::task::JoinSet;

type CaseResult = Result<(), StoreError>;

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// A new user gets the starting balance once; later calls only update the name
/// (and only when one is given), never the balance.
async fn ensure_user_creates_once_and_updates_name(store: Arc<dyn ChatStore>) -> CaseResult {
    store
        .ensure_user(1, Some("Ann"), Money::from_units(10.0))
        .await?;
    let created = store.user(1).await?.expect("user 1 exists");
    assert_eq!(created.id, 1);
    assert_eq!(created.name.as_deref(), Some("Ann"));
    assert_eq!(created.balance, Money::from_units(10.0));
    assert!(created.created_at_ms > 0);

    store.charge(1, Money::from_units(1.0)).await?;
    store.ensure_user(1, None, Money::from_units(99.0)).await?;
    let unchanged = store.user(1).await?.expect("user 1 exists");
    assert_eq!(unchanged.name.as_deref(), Some("Ann"));
    assert_eq!(unchanged.balance, Money::from_units(9.0));

    store
        .ensure_user(1, Some("Bob"), Money::from_units(99.0))
        .await?;
    let renamed = store.user(1).await?.expect("user 1 exists");
    assert_eq!(renamed.name.as_deref(), Some("Bob"));
    assert_eq!(renamed.balance, Money::from_units(9.0));
    assert_eq!(renamed.created_at_ms, created.created_at_ms);

    store.ensure_user(2, None, Money::ZERO).await?;
    let nameless = store.user(2).await?.expect("user 2 exists");
    assert_eq!(nameless.name, None);
    assert_eq!(store.balance(2).await?, Some(Money::ZERO));
    assert_eq!(store.user(3).await?, None);
    Ok(())
}

/// Ten concurrent `ensure_user` calls for one new id all succeed and leave
/// one user holding one starting balance.
async fn concurrent_ensure_user_creates_one_user(store: Arc<dyn ChatStore>) -> CaseResult {
    let mut tasks = JoinSet::new();
    for i in 0..10 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let name = format!("name {i}");
            store
                .ensure_user(42, Some(&name), Money::from_units(5.0))
                .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("ensure_user task panicked")?;
    }
    let user = store.user(42).await?.expect("user 42 exists");
    assert_eq!(user.balance, Money::from_units(5.0));
    assert!(user.name.is_some_and(|name| name.starts_with("name ")));
    Ok(())
}

/// Dialogs get distinct ids and read back as created; an unknown id reads as
/// `None`; a dialog for an unknown user is `NotFound { what: "user" }`.
async fn dialogs_are_created_and_read_back(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(7, None, Money::ZERO).await?;
    let first = store.create_dialog(7).await?;
    let second = store.create_dialog(7).await?;
    assert_ne!(first.id, second.id);
    assert_eq!(first.user_id, 7);
    assert!(first.created_at_ms > 0);
    assert_eq!(first.updated_at_ms, first.created_at_ms);

    assert_eq!(store.dialog(first.id).await?, Some(first.clone()));
    assert_eq!(store.dialog(second.id).await?, Some(second.clone()));
    assert_eq!(store.dialog(first.id.max(second.id) + 1000).await?, None);

    match store.create_dialog(8).await {
        Err(StoreError::NotFound {
            what: "user",
            id: 8,
        }) => {}
        other => panic!("expected NotFound for user 8, got {other:?}"),
    }
    Ok(())
}

/// Messages round-trip every field; history is oldest first, `before` pages
/// backwards, `limit` keeps the newest, other dialogs stay out, and each
/// append bumps the dialog's `updated_at`.
async fn history_is_oldest_first_with_paging_and_limit(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let other = store.create_dialog(1).await?;

    let mut sent = Vec::new();
    for (i, sender) in [
        Sender::User,
        Sender::Assistant,
        Sender::User,
        Sender::Operator,
        Sender::User,
    ]
    .into_iter()
    .enumerate()
    {
        let sender_id = match sender {
            Sender::User => Some(1),
            Sender::Assistant => None,
            Sender::Operator => Some(500),
        };
        let text = format!("message {i}: привет 👋");
        let (message, created) = store
            .append_message(NewMessage {
                tokens_used: 10 * i as u32,
                sender_id,
                ..new_message(dialog.id, sender, &text)
            })
            .await?;
        assert!(created);
        assert_eq!(message.dialog_id, dialog.id);
        assert_eq!(message.sender, sender);
        assert_eq!(message.sender_id, sender_id);
        assert_eq!(message.text, text);
        assert_eq!(message.tokens_used, 10 * i as u32);
        sent.push(message);
        store
            .append_message(new_message(other.id, Sender::User, "elsewhere"))
            .await?;
    }
    let ids = |messages: &[Message]| messages.iter().map(|m| m.id).collect::<Vec<_>>();
    let sent_ids = ids(&sent);
    assert!(sent_ids.windows(2).all(|pair| pair[0] < pair[1]));

    assert_eq!(store.history(dialog.id, None, 100).await?, sent);
    assert_eq!(
        ids(&store.history(dialog.id, None, 2).await?),
        sent_ids[3..]
    );
    assert_eq!(
        ids(&store.history(dialog.id, Some(sent_ids[3]), 2).await?),
        sent_ids[1..3]
    );
    assert_eq!(
        ids(&store.history(dialog.id, Some(sent_ids[1]), 10).await?),
        sent_ids[..1]
    );
    assert!(
        store
            .history(dialog.id, Some(sent_ids[0]), 10)
            .await?
            .is_empty()
    );
    assert!(store.history(dialog.id, None, 0).await?.is_empty());
    assert!(store.history(other.id + 1000, None, 10).await?.is_empty());

    let bumped = store.dialog(dialog.id).await?.expect("dialog exists");
    assert!(bumped.updated_at_ms >= sent[4].created_at_ms);
    assert!(bumped.updated_at_ms >= dialog.updated_at_ms);
    Ok(())
}

/// A repeated idempotency key from the same sender and sender id (also a
/// missing one) returns the earlier message and `false`, inserting nothing;
/// the same key from another sender or sender id, or no key, inserts.
async fn idempotency_key_returns_the_earlier_message(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let keyed = |sender, sender_id, text| NewMessage {
        sender_id,
        idempotency_key: Some("key-1"),
        ..new_message(dialog.id, sender, text)
    };

    let (first, created) = store
        .append_message(keyed(Sender::User, Some(1), "first"))
        .await?;
    assert!(created);
    let (again, created) = store
        .append_message(keyed(Sender::User, Some(1), "retry"))
        .await?;
    assert!(!created);
    assert_eq!(again, first);

    let (by_operator, created) = store
        .append_message(keyed(Sender::Operator, Some(1), "operator"))
        .await?;
    assert!(created);
    let (by_other_user, created) = store
        .append_message(keyed(Sender::User, Some(2), "other user"))
        .await?;
    assert!(created);

    let (by_assistant, created) = store
        .append_message(keyed(Sender::Assistant, None, "assistant"))
        .await?;
    assert!(created);
    let (assistant_again, created) = store
        .append_message(keyed(Sender::Assistant, None, "assistant retry"))
        .await?;
    assert!(!created);
    assert_eq!(assistant_again, by_assistant);

    for _ in 0..2 {
        let (_, created) = store
            .append_message(new_message(dialog.id, Sender::User, "no key"))
            .await?;
        assert!(created);
    }

    let history = store.history(dialog.id, None, 100).await?;
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "first",
            "operator",
            "other user",
            "assistant",
            "no key",
            "no key"
        ]
    );
    assert_eq!(history[1], by_operator);
    assert_eq!(history[2], by_other_user);
    Ok(())
}

/// Ten concurrent appends with one idempotency key insert exactly one
/// message, and every call gets that message back.
async fn concurrent_appends_with_one_key_insert_once(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let mut tasks = JoinSet::new();
    for i in 0..10 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let text = format!("attempt {i}");
            store
                .append_message(NewMessage {
                    sender_id: Some(1),
                    idempotency_key: Some("same-key"),
                    ..new_message(dialog.id, Sender::User, &text)
                })
                .await
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("append task panicked")?);
    }
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    let history = store.history(dialog.id, None, 100).await?;
    assert_eq!(history.len(), 1);
    assert!(results.iter().all(|(message, _)| *message == history[0]));
    Ok(())
}

/// Twenty concurrent charges all apply exactly (each sees a distinct before,
/// `before - after` is its amount), a balance may go negative, and an unknown
/// user is `NotFound { what: "user" }` with no balance.
async fn concurrent_charges_all_apply(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::from_units(100.0)).await?;
    let amount = Money::from_units(0.5);
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.charge(1, amount).await });
    }
    let mut befores = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let charge = joined.expect("charge task panicked")?;
        assert_eq!(charge.before - charge.after, amount);
        befores.push(charge.before);
    }
    befores.sort();
    befores.dedup();
    assert_eq!(befores.len(), 20, "every charge saw its own balance");
    assert_eq!(store.balance(1).await?, Some(Money::from_units(90.0)));

    let overdrawn = store.charge(1, Money::from_units(100.0)).await?;
    assert_eq!(overdrawn.before, Money::from_units(90.0));
    assert_eq!(overdrawn.after, Money::from_units(-10.0));
    assert_eq!(store.balance(1).await?, Some(Money::from_units(-10.0)));

    match store.charge(999, amount).await {
        Err(StoreError::NotFound {
            what: "user",
            id: 999,
        }) => {}
        other => panic!("expected NotFound for user 999, got {other:?}"),
    }
    assert_eq!(store.balance(999).await?, None);
    Ok(())
}

/// The foreign key holds: a message into an unknown dialog is
/// `NotFound { what: "dialog" }` and nothing is stored.
async fn message_into_unknown_dialog_is_not_found(store: Arc<dyn ChatStore>) -> CaseResult {
    match store
        .append_message(new_message(12345, Sender::User, "lost"))
        .await
    {
        Err(StoreError::NotFound {
            what: "dialog",
            id: 12345,
        }) => {}
        other => panic!("expected NotFound for dialog 12345, got {other:?}"),
    }
    assert!(store.history(12345, None, 10).await?.is_empty());
    Ok(())
}

/// A token count above the 32-bit column is refused before any write.
async fn token_count_above_the_column_is_refused(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let too_many = u32::MAX;
    match store
        .append_message(NewMessage {
            tokens_used: too_many,
            ..new_message(dialog.id, Sender::Assistant, "long")
        })
        .await
    {
        Err(StoreError::TokensOutOfRange(n)) if n == too_many => {}
        other => panic!("expected TokensOutOfRange, got {other:?}"),
    }
    assert!(store.history(dialog.id, None, 10).await?.is_empty());
    Ok(())
}

/// The health check answers on a live store.
async fn ping_answers(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ping().await
}

/// Connecting twice to one database (as every restart does) re-runs the
/// migrations harmlessly and keeps the data.
async fn migrations_apply_twice(url: String) -> CaseResult {
    let first = store::connect(&url).await?;
    first.ensure_user(1, Some("Ann"), Money(123)).await?;
    let dialog = first.create_dialog(1).await?;
    drop(first);

    let second = store::connect(&url).await?;
    assert_eq!(second.balance(1).await?, Some(Money(123)));
    assert_eq!(second.dialog(dialog.id).await?, Some(dialog));
    second.ping().await
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A plain message from `sender` without sender id, tokens or key.
fn new_message(dialog_id: i64, sender: Sender, text: &str) -> NewMessage<'_> {
    NewMessage {
        dialog_id,
        sender,
        sender_id: None,
        text,
        tokens_used: 0,
        idempotency_key: None,
    }
}

/// Opens the store at `url` through the public entry point, migrations included.
async fn open(url: &str) -> Arc<dyn ChatStore> {
    match store::connect(url).await {
        Ok(store) => store,
        Err(err) => panic!("cannot open the store: {err}"),
    }
}

chatai_testkit::on_both_databases! {
    open: open,
    stores: [
        ensure_user_creates_once_and_updates_name,
        concurrent_ensure_user_creates_one_user,
        dialogs_are_created_and_read_back,
        history_is_oldest_first_with_paging_and_limit,
        idempotency_key_returns_the_earlier_message,
        concurrent_appends_with_one_key_insert_once,
        concurrent_charges_all_apply,
        message_into_unknown_dialog_is_not_found,
        token_count_above_the_column_is_refused,
        ping_answers,
    ],
    urls: [
        migrations_apply_twice,
    ],
}
