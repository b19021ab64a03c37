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

use std::collections::{HashMap, HashSet};

use chatai_chat::store::{
    self, ChatStore, DialogRef, Message, Money, NewMessage, Sender, StoreError,
};
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

/// Dialog listing: newest first, `before` pages backwards, `limit` bounds
/// the page, a user sees only their own and `None` lists everyone's.
async fn dialogs_are_listed_newest_first_with_paging(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(21, None, Money::ZERO).await?;
    store.ensure_user(22, None, Money::ZERO).await?;
    let mut own = Vec::new();
    let mut every = Vec::new();
    for i in 0..5 {
        let mine = store.create_dialog(21).await?;
        own.push(mine.id);
        every.push(mine.id);
        if i % 2 == 0 {
            every.push(store.create_dialog(22).await?.id);
        }
    }
    own.reverse();
    every.reverse();
    let ids = |dialogs: Vec<store::Dialog>| dialogs.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_dialogs(Some(21), None, 10).await?), own);
    assert_eq!(ids(store.list_dialogs(Some(21), None, 2).await?), own[..2]);
    assert_eq!(
        ids(store.list_dialogs(Some(21), Some(own[1]), 2).await?),
        own[2..4]
    );
    assert_eq!(
        ids(store.list_dialogs(Some(21), Some(own[4]), 2).await?),
        Vec::<i64>::new()
    );
    assert_eq!(ids(store.list_dialogs(None, None, 100).await?), every);
    assert_eq!(
        ids(store.list_dialogs(None, Some(every[2]), 3).await?),
        every[3..6]
    );
    assert!(store.list_dialogs(Some(23), None, 10).await?.is_empty());
    let listed = store.list_dialogs(Some(21), None, 1).await?;
    assert_eq!(listed.first(), store.dialog(own[0]).await?.as_ref());
    Ok(())
}

/// A negative charge is a top-up: it adds, atomically, and says the new balance.
async fn a_negative_charge_tops_up(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(31, None, Money::ZERO).await?;
    let topped = store.charge(31, -Money::from_units(2.5)).await?;
    assert_eq!(topped.before, Money::ZERO);
    assert_eq!(topped.after, Money::from_units(2.5));
    assert_eq!(store.balance(31).await?, Some(Money::from_units(2.5)));
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

/// 300 concurrent appends (five users, two dialogs each, every tenth
/// message opening a new dialog, some with keys) are all stored with
/// distinct ids, and each call's message is what `history` reads back.
async fn many_concurrent_appends_are_all_stored(store: Arc<dyn ChatStore>) -> CaseResult {
    let mut dialogs = Vec::new();
    for user in 1..=5 {
        store.ensure_user(user, None, Money::ZERO).await?;
        dialogs.push((user, store.create_dialog(user).await?.id));
        dialogs.push((user, store.create_dialog(user).await?.id));
    }
    let mut tasks = JoinSet::new();
    for i in 0..300usize {
        let store = Arc::clone(&store);
        let (user, dialog_id) = dialogs[i % dialogs.len()];
        tasks.spawn(async move {
            let text = format!("message {i}");
            let key = format!("key-{i}");
            let dialog = if i % 10 == 0 {
                DialogRef::New { user_id: user }
            } else {
                DialogRef::Existing(dialog_id)
            };
            let sent = store
                .append_message(NewMessage {
                    dialog,
                    sender: Sender::User,
                    sender_id: Some(user),
                    text: &text,
                    tokens_used: i as u32,
                    idempotency_key: (i % 3 == 0).then_some(key.as_str()),
                })
                .await;
            (i, user, dialog, sent)
        });
    }
    let mut sent = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, user, dialog, result) = joined.expect("append task panicked");
        let (message, created) = result?;
        assert!(created, "message {i}");
        assert_eq!(message.text, format!("message {i}"));
        assert_eq!(message.tokens_used, i as u32);
        assert_eq!(message.sender_id, Some(user));
        match dialog {
            DialogRef::Existing(id) => assert_eq!(message.dialog_id, id),
            DialogRef::New { user_id } => {
                let opened = store.dialog(message.dialog_id).await?.expect("new dialog");
                assert_eq!(opened.user_id, user_id);
                assert!(dialogs.iter().all(|(_, id)| *id != message.dialog_id));
            }
        }
        sent.push(message);
    }
    let ids: HashSet<i64> = sent.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 300, "distinct ids");
    let new_dialogs: HashSet<i64> = sent
        .iter()
        .map(|m| m.dialog_id)
        .filter(|id| dialogs.iter().all(|(_, d)| d != id))
        .collect();
    assert_eq!(new_dialogs.len(), 30, "one new dialog per first message");

    let mut stored: HashMap<i64, Message> = HashMap::new();
    let dialog_ids: HashSet<i64> = sent.iter().map(|m| m.dialog_id).collect();
    for dialog_id in dialog_ids {
        let history = store.history(dialog_id, None, 1000).await?;
        assert!(history.windows(2).all(|pair| pair[0].id < pair[1].id));
        for message in history {
            stored.insert(message.id, message);
        }
    }
    assert_eq!(stored.len(), 300);
    for message in &sent {
        assert_eq!(stored.get(&message.id), Some(message));
    }
    Ok(())
}

/// Among concurrent requests (batched together as they wait), one naming an
/// unknown dialog and one opening a dialog for an unknown user fail alone,
/// with their own errors; the others are stored.
async fn a_bad_request_fails_alone(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let mut tasks = JoinSet::new();
    for i in 0..40i64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let text = format!("message {i}");
            let target = match i {
                13 => DialogRef::Existing(dialog.id + 1000),
                27 => DialogRef::New { user_id: 404 },
                _ => DialogRef::Existing(dialog.id),
            };
            let result = store
                .append_message(NewMessage {
                    dialog: target,
                    ..new_message(0, Sender::User, &text)
                })
                .await;
            (i, result)
        });
    }
    let mut stored = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("append task panicked") {
            (13, Err(StoreError::NotFound { what: "dialog", id })) => {
                assert_eq!(id, dialog.id + 1000);
            }
            (
                27,
                Err(StoreError::NotFound {
                    what: "user",
                    id: 404,
                }),
            ) => {}
            (i, Ok((message, true))) if i != 13 && i != 27 => {
                assert_eq!(message.text, format!("message {i}"));
                stored += 1;
            }
            (i, other) => panic!("request {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(stored, 38);
    assert_eq!(store.history(dialog.id, None, 100).await?.len(), 38);
    Ok(())
}

/// The same key twice among concurrent requests, and again later: the first
/// is stored, every other call gets it with `created = false`; a first
/// message's retries open no dialog of their own.
async fn duplicate_keys_return_the_first(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::ZERO).await?;
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let text = format!("attempt {i}");
            store
                .append_message(NewMessage {
                    dialog: DialogRef::New { user_id: 1 },
                    sender_id: Some(1),
                    idempotency_key: Some("first-message"),
                    ..new_message(0, Sender::User, &text)
                })
                .await
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("append task panicked")?);
    }
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    let first = results
        .iter()
        .find(|(_, created)| *created)
        .map(|(message, _)| message.clone())
        .expect("one was created");
    assert!(results.iter().all(|(message, _)| *message == first));
    assert_eq!(
        store.history(first.dialog_id, None, 10).await?,
        vec![first.clone()]
    );
    for other in (first.dialog_id - 8..first.dialog_id + 8).filter(|id| *id != first.dialog_id) {
        assert_eq!(store.dialog(other).await?, None, "dialog {other}");
    }

    let (again, created) = store
        .append_message(NewMessage {
            dialog: DialogRef::Existing(first.dialog_id),
            sender_id: Some(1),
            idempotency_key: Some("first-message"),
            ..new_message(0, Sender::User, "later retry")
        })
        .await?;
    assert!(!created);
    assert_eq!(again, first);
    Ok(())
}

/// `append_answer` stores the answer and its charge together: several
/// concurrent answers for one user each see their own before/after, chained
/// in some order from the starting balance; a zero charge is none; a retried
/// key charges nothing; an unknown charged user stores nothing.
async fn answer_and_charge_are_stored_together(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(1, None, Money::from_units(100.0)).await?;
    let dialog = store.create_dialog(1).await?;
    let dialog_id = dialog.id;
    fn answer(dialog_id: i64, text: &str) -> NewMessage<'_> {
        NewMessage {
            tokens_used: 7,
            ..new_message(dialog_id, Sender::Assistant, text)
        }
    }
    let mut tasks = JoinSet::new();
    for units in 1..=6i64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let text = format!("answer {units}");
            let charge = Money::from_units(units as f64);
            let result = store
                .append_answer(answer(dialog_id, &text), Some((1, charge)))
                .await;
            (charge, text, result)
        });
    }
    let mut charges = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (amount, text, result) = joined.expect("answer task panicked");
        let (message, charge) = result?;
        assert_eq!(message.text, text);
        assert_eq!(message.sender, Sender::Assistant);
        assert_eq!(message.tokens_used, 7);
        let charge = charge.expect("charged");
        assert_eq!(charge.before - charge.after, amount);
        charges.push(charge);
    }
    charges.sort_by_key(|charge| std::cmp::Reverse(charge.before));
    assert_eq!(charges[0].before, Money::from_units(100.0));
    assert!(
        charges
            .windows(2)
            .all(|pair| pair[0].after == pair[1].before)
    );
    assert_eq!(charges[5].after, Money::from_units(79.0));
    assert_eq!(store.balance(1).await?, Some(Money::from_units(79.0)));

    let (free, charge) = store
        .append_answer(answer(dialog_id, "free"), Some((1, Money::ZERO)))
        .await?;
    assert_eq!(charge, None);
    let (_, charge) = store
        .append_answer(answer(dialog_id, "uncharged"), None)
        .await?;
    assert_eq!(charge, None);

    let keyed = NewMessage {
        idempotency_key: Some("answer:1"),
        ..answer(dialog_id, "keyed")
    };
    let (first, charge) = store
        .append_answer(keyed, Some((1, Money::from_units(1.0))))
        .await?;
    assert!(charge.is_some());
    let (again, charge) = store
        .append_answer(keyed, Some((1, Money::from_units(1.0))))
        .await?;
    assert_eq!((again, charge), (first, None));
    assert_eq!(store.balance(1).await?, Some(Money::from_units(78.0)));

    match store
        .append_answer(
            answer(dialog_id, "nobody pays"),
            Some((999, Money::from_units(1.0))),
        )
        .await
    {
        Err(StoreError::NotFound {
            what: "user",
            id: 999,
        }) => {}
        other => panic!("expected NotFound for user 999, got {other:?}"),
    }
    let history = store.history(dialog.id, None, 100).await?;
    assert_eq!(history.len(), 9);
    assert!(history.iter().all(|m| m.text != "nobody pays"));
    assert!(history.contains(&free));
    Ok(())
}

/// `append_funded_message` stores a new message only while the payer's
/// balance is above zero: concurrent messages (one batch, a key repeated)
/// are stored while it is; once it is used up they are refused and nothing
/// is stored, but a retry of a stored message still gets that message; a
/// top-up lets messages in again; an unknown payer is `NotFound`.
async fn funded_messages_need_a_balance(store: Arc<dyn ChatStore>) -> CaseResult {
    store.ensure_user(5, None, Money::from_units(1.0)).await?;
    let dialog_id = store.create_dialog(5).await?.id;
    let from_user = |text, key| NewMessage {
        sender_id: Some(5),
        idempotency_key: key,
        ..new_message(dialog_id, Sender::User, text)
    };
    let mut tasks = JoinSet::new();
    for (text, key) in [("one", Some("k1")), ("two", None), ("one", Some("k1"))] {
        let store = Arc::clone(&store);
        let message = NewMessage {
            sender_id: Some(5),
            idempotency_key: key,
            ..new_message(dialog_id, Sender::User, text)
        };
        tasks.spawn(async move { store.append_funded_message(message, 5).await });
    }
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        let (_, new) = joined.expect("append task panicked")?;
        created += usize::from(new);
    }
    assert_eq!(created, 2, "the repeated key is stored once");

    store.charge(5, Money::from_units(1.0)).await?;
    match store
        .append_funded_message(from_user("broke", Some("k2")), 5)
        .await
    {
        Err(StoreError::InsufficientBalance) => {}
        other => panic!("expected InsufficientBalance, got {other:?}"),
    }
    let (retried, new) = store
        .append_funded_message(from_user("one", Some("k1")), 5)
        .await?;
    assert!(!new, "a stored message is returned whatever the balance");
    assert_eq!(retried.text, "one");
    let history = store.history(dialog_id, None, 100).await?;
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|m| m.text != "broke"));

    store.charge(5, -Money::from_units(0.5)).await?;
    let (stored, new) = store
        .append_funded_message(from_user("broke", Some("k2")), 5)
        .await?;
    assert!(new);
    assert_eq!(stored.text, "broke");
    match store
        .append_funded_message(from_user("nobody", None), 998)
        .await
    {
        Err(StoreError::NotFound {
            what: "user",
            id: 998,
        }) => {}
        other => panic!("expected NotFound for user 998, got {other:?}"),
    }
    Ok(())
}

/// A key used more than 24 hours ago is free again: the new message is
/// stored with it (the old one loses it), and retries return the new one.
async fn expired_key_makes_a_new_message(url: String) -> CaseResult {
    let store = open(&url).await;
    store.ensure_user(1, None, Money::ZERO).await?;
    let dialog = store.create_dialog(1).await?;
    let keyed = |text| NewMessage {
        sender_id: Some(1),
        idempotency_key: Some("old-key"),
        ..new_message(dialog.id, Sender::User, text)
    };
    let (old, created) = store.append_message(keyed("yesterday")).await?;
    assert!(created);
    let day_and_a_bit = 25 * 60 * 60 * 1000;
    execute(
        &url,
        &format!(
            "UPDATE messages SET created_at = created_at - {day_and_a_bit} WHERE id = {}",
            old.id
        ),
    )
    .await?;

    let (new, created) = store.append_message(keyed("today")).await?;
    assert!(created);
    assert_ne!(new.id, old.id);
    let (retry, created) = store.append_message(keyed("today, again")).await?;
    assert!(!created);
    assert_eq!(retry, new);
    let texts: Vec<String> = store
        .history(dialog.id, None, 10)
        .await?
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["yesterday", "today"]);
    Ok(())
}

/// A store ensures a user once per name: a second call with the same name
/// (or none) writes nothing — a rename made behind its back stays — while a
/// different name is written.
async fn ensure_user_twice_writes_once(url: String) -> CaseResult {
    let store = open(&url).await;
    store.ensure_user(1, Some("Ann"), Money(5)).await?;
    execute(&url, "UPDATE users SET name = 'Zed' WHERE id = 1").await?;
    store.ensure_user(1, Some("Ann"), Money(5)).await?;
    store.ensure_user(1, None, Money(5)).await?;
    let user = store.user(1).await?.expect("user 1 exists");
    assert_eq!(user.name.as_deref(), Some("Zed"), "no second write");

    store.ensure_user(1, Some("Bob"), Money(5)).await?;
    let user = store.user(1).await?.expect("user 1 exists");
    assert_eq!(user.name.as_deref(), Some("Bob"));
    assert_eq!(user.balance, Money(5));
    Ok(())
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
        dialog: DialogRef::Existing(dialog_id),
        sender,
        sender_id: None,
        text,
        tokens_used: 0,
        idempotency_key: None,
    }
}

/// Runs one statement on the database at `url` behind the store's back
/// (on its own connection), as an operator or another process would.
async fn execute(url: &str, sql: &str) -> Result<(), StoreError> {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
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
        many_concurrent_appends_are_all_stored,
        a_bad_request_fails_alone,
        duplicate_keys_return_the_first,
        answer_and_charge_are_stored_together,
        funded_messages_need_a_balance,
        dialogs_are_listed_newest_first_with_paging,
        a_negative_charge_tops_up,
    ],
    urls: [
        migrations_apply_twice,
        expired_key_makes_a_new_message,
        ensure_user_twice_writes_once,
    ],
}
