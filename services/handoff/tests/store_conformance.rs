//! The conformance suite of [`HandoffStore`]: every case is written once and
//! run against each backend, as `sqlite::<case>` (a fresh file in a
//! temporary folder) and `postgres::<case>` (a fresh database on the server at
//! `CHATAI_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
//! dropped afterwards). The PostgreSQL tests fail, never skip, when the server
//! is unreachable.
//!
//! A new case is an `async fn` taking the store (or, to open it itself, the
//! URL) and returning `Result<(), StoreError>`, listed in `on_both_databases!` below.
//!
//! The store a handoff leader writes through on PostgreSQL (the same
//! statements on the connection holding the leader's lock,
//! [`store::HeldStore`]) runs every store case too: `held::every_case`.

use std::sync::Arc;

use chatai_handoff::store::{
    self, CANCELLED, Handoff, HandoffState, HandoffStore, NewHandoff, Priority,
    RETURNED_TO_ASSISTANT, StoreError,
};
use tokio::task::JoinSet;

type CaseResult = Result<(), StoreError>;

fn new(dialog_id: i64, priority: Priority, requested_at_ms: i64) -> NewHandoff<'static> {
    NewHandoff {
        dialog_id,
        user_id: 1000 + dialog_id,
        priority,
        reason: "needs a human",
        requested_at_ms,
    }
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// A created handoff is queued and reads back field for field, whatever the
/// reason's characters; an unknown id reads as `None`.
async fn create_reads_back_every_field(store: Arc<dyn HandoffStore>) -> CaseResult {
    let created = store
        .create(NewHandoff {
            reason: "не работает оплата 💳 — 'quotes' \"too\"",
            ..new(7, Priority::Urgent, 1_700_000_000_123)
        })
        .await?;
    assert!(created.id > 0);
    assert_eq!(
        created,
        Handoff {
            id: created.id,
            dialog_id: 7,
            user_id: 1007,
            operator_id: None,
            operator_name: None,
            priority: Priority::Urgent,
            reason: "не работает оплата 💳 — 'quotes' \"too\"".into(),
            state: HandoffState::Queued,
            requested_at_ms: 1_700_000_000_123,
            requeued_at_ms: None,
            assigned_at_ms: None,
            first_reply_at_ms: None,
            completed_at_ms: None,
            resolution: None,
        }
    );
    assert_eq!(store.handoff(created.id).await?, Some(created.clone()));
    assert_eq!(store.handoff(created.id + 1000).await?, None);
    for priority in Priority::ALL {
        let other = store
            .create(new(100 + priority as i64, priority, 1))
            .await?;
        assert_eq!(other.priority, priority);
    }
    Ok(())
}

/// A dialog has at most one queued or assigned handoff; once it ends, the
/// dialog may ask again.
async fn one_active_handoff_per_dialog(store: Arc<dyn HandoffStore>) -> CaseResult {
    let first = store.create(new(1, Priority::Normal, 10)).await?;
    match store.create(new(1, Priority::High, 11)).await {
        Err(StoreError::ActiveExists { dialog_id: 1 }) => {}
        other => panic!("expected ActiveExists, got {other:?}"),
    }
    store.assign(first.id, 5, "Olga", 20).await?;
    assert!(matches!(
        store.create(new(1, Priority::High, 21)).await,
        Err(StoreError::ActiveExists { dialog_id: 1 })
    ));
    store.complete(first.id, "done", 30).await?;
    let second = store.create(new(1, Priority::Low, 40)).await?;
    assert_ne!(second.id, first.id);
    store.return_to_assistant(second.id, 50).await?;
    store.create(new(1, Priority::Low, 60)).await?;
    // Other dialogs are unaffected.
    store.create(new(2, Priority::Low, 60)).await?;
    Ok(())
}

/// Ten concurrent requests for one dialog create exactly one handoff.
async fn concurrent_requests_create_one(store: Arc<dyn HandoffStore>) -> CaseResult {
    let mut tasks = JoinSet::new();
    for i in 0..10 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.create(new(42, Priority::Normal, i)).await });
    }
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("create task panicked") {
            Ok(_) => created += 1,
            Err(StoreError::ActiveExists { dialog_id: 42 }) => {}
            Err(other) => return Err(other),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.active().await?.len(), 1);
    Ok(())
}

/// Assign, first reply, take back, assign again, complete: each transition
/// writes what it says and only starts from its own state.
async fn transitions_follow_the_states(store: Arc<dyn HandoffStore>) -> CaseResult {
    let queued = store.create(new(3, Priority::High, 100)).await?;
    let id = queued.id;
    assert_not_in_state(store.requeue(id, 101).await);
    assert_eq!(store.record_first_reply(id, 5, 101).await?, None);

    let assigned = store.assign(id, 5, "Olga", 110).await?;
    assert_eq!(assigned.state, HandoffState::Assigned);
    assert_eq!(assigned.operator_id, Some(5));
    assert_eq!(assigned.operator_name.as_deref(), Some("Olga"));
    assert_eq!(assigned.assigned_at_ms, Some(110));
    assert_not_in_state(store.assign(id, 6, "Ivan", 111).await);
    assert_not_in_state(store.return_to_assistant(id, 111).await);

    assert_eq!(
        store.record_first_reply(id, 6, 120).await?,
        None,
        "not the holder"
    );
    let replied = store
        .record_first_reply(id, 5, 120)
        .await?
        .expect("the holder's first reply is written");
    assert_eq!(replied.first_reply_at_ms, Some(120));
    assert_eq!(
        store.record_first_reply(id, 5, 130).await?,
        None,
        "only the first"
    );

    let back = store.requeue(id, 140).await?;
    assert_eq!(back.state, HandoffState::Queued);
    assert_eq!(back.operator_id, None);
    assert_eq!(back.operator_name, None);
    assert_eq!(back.assigned_at_ms, None);
    assert_eq!(back.first_reply_at_ms, None);
    assert_eq!(back.requeued_at_ms, Some(140));
    assert_eq!(back.requested_at_ms, 100, "the request time stays");

    let again = store.assign(id, 6, "Ivan", 150).await?;
    assert_eq!(again.operator_id, Some(6));
    assert_eq!(again.requeued_at_ms, Some(140));
    let done = store.complete(id, "refund issued", 200).await?;
    assert_eq!(done.state, HandoffState::Completed);
    assert_eq!(done.completed_at_ms, Some(200));
    assert_eq!(done.resolution.as_deref(), Some("refund issued"));
    assert_eq!(done.operator_id, Some(6));
    assert_not_in_state(store.complete(id, "twice", 210).await);
    assert_not_in_state(store.requeue(id, 210).await);
    assert_eq!(store.handoff(id).await?, Some(done));

    // Unknown ids are "not in state" too.
    assert_not_in_state(store.assign(id + 1000, 1, "x", 1).await);
    Ok(())
}

/// A queued handoff can go back to the assistant or be completed unassigned;
/// an assigned one cannot go back to the assistant.
async fn queued_handoffs_return_or_complete(store: Arc<dyn HandoffStore>) -> CaseResult {
    let waiting = store.create(new(1, Priority::Low, 1)).await?;
    let returned = store.return_to_assistant(waiting.id, 600_001).await?;
    assert_eq!(returned.state, HandoffState::Returned);
    assert_eq!(returned.resolution.as_deref(), Some(RETURNED_TO_ASSISTANT));
    assert_eq!(returned.completed_at_ms, Some(600_001));
    assert_eq!(returned.operator_id, None);
    assert_not_in_state(store.return_to_assistant(waiting.id, 600_002).await);

    let cancelled = store.create(new(2, Priority::Low, 1)).await?;
    let done = store.complete(cancelled.id, "user left", 5).await?;
    assert_eq!(done.state, HandoffState::Completed);
    assert_eq!(done.operator_id, None);
    Ok(())
}

/// A transfer moves an assigned handoff from its holder only, clearing the
/// reply; a cancel takes a queued one back to the assistant, never a held one.
async fn transfers_and_cancels_follow_the_states(store: Arc<dyn HandoffStore>) -> CaseResult {
    let held = store.create(new(1, Priority::Normal, 1)).await?;
    assert_not_in_state(store.transfer(held.id, 7, 8, "Eve", 2).await);
    store.assign(held.id, 7, "Olga", 3).await?;
    store.record_first_reply(held.id, 7, 4).await?;
    assert_not_in_state(store.transfer(held.id, 9, 8, "Eve", 5).await);
    let moved = store.transfer(held.id, 7, 8, "Eve", 6).await?;
    assert_eq!(moved.state, HandoffState::Assigned);
    assert_eq!(moved.operator_id, Some(8));
    assert_eq!(moved.operator_name.as_deref(), Some("Eve"));
    assert_eq!(
        (moved.assigned_at_ms, moved.first_reply_at_ms),
        (Some(6), None)
    );
    assert_not_in_state(store.cancel(held.id, 7).await);

    let waiting = store.create(new(2, Priority::Normal, 1)).await?;
    let cancelled = store.cancel(waiting.id, 8).await?;
    assert_eq!(cancelled.state, HandoffState::Returned);
    assert_eq!(cancelled.resolution.as_deref(), Some(CANCELLED));
    assert_eq!(cancelled.completed_at_ms, Some(8));
    assert_not_in_state(store.cancel(waiting.id, 9).await);
    Ok(())
}

/// `active` lists every queued and assigned handoff by id, nothing finished.
async fn active_lists_queued_and_assigned(store: Arc<dyn HandoffStore>) -> CaseResult {
    let a = store.create(new(1, Priority::Low, 1)).await?;
    let b = store.create(new(2, Priority::Urgent, 2)).await?;
    let c = store.create(new(3, Priority::Normal, 3)).await?;
    let d = store.create(new(4, Priority::Normal, 4)).await?;
    let b = store.assign(b.id, 9, "Op", 5).await?;
    store.complete(c.id, "done", 6).await?;
    store.return_to_assistant(d.id, 7).await?;
    assert_eq!(store.active().await?, vec![a, b]);
    Ok(())
}

/// Handling times (completed − assigned) of completed handoffs that had an
/// operator, newest completion first, at most `limit`.
async fn recent_handling_is_newest_first(store: Arc<dyn HandoffStore>) -> CaseResult {
    assert!(store.recent_handling_ms(20).await?.is_empty());
    for (dialog, assigned_at, completed_at) in
        [(1, 1_000, 61_000), (2, 2_000, 5_000), (3, 0, 90_000)]
    {
        let h = store.create(new(dialog, Priority::Normal, 0)).await?;
        store.assign(h.id, 1, "Op", assigned_at).await?;
        store.complete(h.id, "ok", completed_at).await?;
    }
    // Not handled by anyone: left out.
    let unassigned = store.create(new(4, Priority::Normal, 0)).await?;
    store.complete(unassigned.id, "cancelled", 100_000).await?;
    let returned = store.create(new(5, Priority::Normal, 0)).await?;
    store.return_to_assistant(returned.id, 100_000).await?;

    assert_eq!(
        store.recent_handling_ms(20).await?,
        vec![90_000, 60_000, 3_000]
    );
    assert_eq!(store.recent_handling_ms(2).await?, vec![90_000, 60_000]);
    Ok(())
}

async fn ping_answers(store: Arc<dyn HandoffStore>) -> CaseResult {
    store.ping().await
}

/// Opening the same database twice applies the migrations once and keeps
/// the rows (every service sharing the database migrates on start).
async fn migrations_apply_twice(url: String) -> CaseResult {
    let first = store::connect(&url).await?;
    let created = first.create(new(1, Priority::High, 5)).await?;
    drop(first);
    let second = store::connect(&url).await?;
    assert_eq!(second.active().await?, vec![created]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn assert_not_in_state(result: Result<Handoff, StoreError>) {
    match result {
        Err(StoreError::NotInState { .. }) => {}
        other => panic!("expected NotInState, got {other:?}"),
    }
}

/// Opens the store at `url` through the public entry point, migrations included.
async fn open(url: &str) -> Arc<dyn HandoffStore> {
    match store::connect(url).await {
        Ok(store) => store,
        Err(err) => panic!("cannot open the store: {err}"),
    }
}

/// The leader's store on PostgreSQL: the lock's own connection.
mod held {
    use super::*;
    use chatai_handoff::leader::{leader_store, lease};

    async fn run_case<F, Fut>(case: F)
    where
        F: FnOnce(Arc<dyn HandoffStore>) -> Fut + Send + 'static,
        Fut: Future<Output = CaseResult> + Send + 'static,
    {
        chatai_testkit::on_postgres(|url| async move {
            let database = chatai_kit::db::connect(&url).await.expect("the database");
            let pooled = store::store_on(database.clone());
            let held = lease(&database)
                .try_acquire()
                .await
                .expect("tried")
                .expect("the only contender leads");
            let outcome = case(leader_store(&held, &pooled)).await;
            drop(held);
            outcome.expect("the case passes on the held store");
        })
        .await;
    }

    /// Every store case, each on a fresh database, through the held store.
    #[tokio::test]
    async fn every_case() {
        run_case(create_reads_back_every_field).await;
        run_case(one_active_handoff_per_dialog).await;
        run_case(concurrent_requests_create_one).await;
        run_case(transitions_follow_the_states).await;
        run_case(queued_handoffs_return_or_complete).await;
        run_case(transfers_and_cancels_follow_the_states).await;
        run_case(active_lists_queued_and_assigned).await;
        run_case(recent_handling_is_newest_first).await;
        run_case(ping_answers).await;
    }
}

chatai_testkit::on_both_databases! {
    open: open,
    stores: [
        create_reads_back_every_field,
        one_active_handoff_per_dialog,
        concurrent_requests_create_one,
        transitions_follow_the_states,
        queued_handoffs_return_or_complete,
        transfers_and_cancels_follow_the_states,
        active_lists_queued_and_assigned,
        recent_handling_is_newest_first,
        ping_answers,
    ],
    urls: [
        migrations_apply_twice,
    ],
}
