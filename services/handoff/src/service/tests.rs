//! The queue actor with a fake operator directory, an in-memory store and
//! the memory event log, on tokio's paused clock: timeouts are driven by
//! sleeping on the paused clock, never by real waiting.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chatai_kit::config::EventLogConfig;
use chatai_kit::events::Delivery;
use chatai_kit::events::memory::MemoryLog;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::*;
use crate::transcripts::TranscriptMessage;

// ---------------------------------------------------------------------------
// Fakes
// ---------------------------------------------------------------------------

/// The store's semantics (see `store/sql.rs`) over a vector; `fail` makes
/// every call fail as if the database were down.
#[derive(Default)]
struct MemoryStore {
    rows: Mutex<Vec<Handoff>>,
    fail: AtomicBool,
}

impl MemoryStore {
    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<Handoff>> {
        self.rows.lock().expect("store lock")
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        Ok(())
    }

    fn get(&self, id: i64) -> Handoff {
        self.rows()
            .iter()
            .find(|h| h.id == id)
            .cloned()
            .expect("handoff exists")
    }

    /// Inserts a row as stored earlier (for restarts).
    fn put(&self, handoff: Handoff) {
        self.rows().push(handoff);
    }

    fn update(
        &self,
        id: i64,
        expected: &'static str,
        allowed: &[HandoffState],
        change: impl FnOnce(&mut Handoff),
    ) -> Result<Handoff, StoreError> {
        self.check()?;
        let mut rows = self.rows();
        let row = rows
            .iter_mut()
            .find(|h| h.id == id && allowed.contains(&h.state))
            .ok_or(StoreError::NotInState { id, expected })?;
        change(row);
        Ok(row.clone())
    }
}

#[async_trait::async_trait]
impl HandoffStore for MemoryStore {
    async fn create(&self, new: NewHandoff<'_>) -> Result<Handoff, StoreError> {
        self.check()?;
        let mut rows = self.rows();
        if rows
            .iter()
            .any(|h| h.dialog_id == new.dialog_id && h.state.is_active())
        {
            return Err(StoreError::ActiveExists {
                dialog_id: new.dialog_id,
            });
        }
        let handoff = Handoff {
            id: rows.iter().map(|h| h.id).max().unwrap_or(0) + 1,
            dialog_id: new.dialog_id,
            user_id: new.user_id,
            operator_id: None,
            operator_name: None,
            priority: new.priority,
            reason: new.reason.to_owned(),
            state: HandoffState::Queued,
            requested_at_ms: new.requested_at_ms,
            requeued_at_ms: None,
            assigned_at_ms: None,
            first_reply_at_ms: None,
            completed_at_ms: None,
            resolution: None,
        };
        rows.push(handoff.clone());
        Ok(handoff)
    }

    async fn assign(
        &self,
        id: i64,
        operator_id: i64,
        operator_name: &str,
        at_ms: i64,
    ) -> Result<Handoff, StoreError> {
        self.update(id, "queued", &[HandoffState::Queued], |h| {
            h.state = HandoffState::Assigned;
            h.operator_id = Some(operator_id);
            h.operator_name = Some(operator_name.to_owned());
            h.assigned_at_ms = Some(at_ms);
            h.first_reply_at_ms = None;
        })
    }

    async fn record_first_reply(
        &self,
        id: i64,
        operator_id: i64,
        at_ms: i64,
    ) -> Result<Option<Handoff>, StoreError> {
        self.check()?;
        let mut rows = self.rows();
        Ok(rows
            .iter_mut()
            .find(|h| {
                h.id == id
                    && h.state == HandoffState::Assigned
                    && h.operator_id == Some(operator_id)
                    && h.first_reply_at_ms.is_none()
            })
            .map(|h| {
                h.first_reply_at_ms = Some(at_ms);
                h.clone()
            }))
    }

    async fn requeue(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError> {
        self.update(id, "assigned", &[HandoffState::Assigned], |h| {
            h.state = HandoffState::Queued;
            h.operator_id = None;
            h.operator_name = None;
            h.assigned_at_ms = None;
            h.first_reply_at_ms = None;
            h.requeued_at_ms = Some(at_ms);
        })
    }

    async fn complete(&self, id: i64, resolution: &str, at_ms: i64) -> Result<Handoff, StoreError> {
        self.update(
            id,
            "queued or assigned",
            &[HandoffState::Queued, HandoffState::Assigned],
            |h| {
                h.state = HandoffState::Completed;
                h.completed_at_ms = Some(at_ms);
                h.resolution = Some(resolution.to_owned());
            },
        )
    }

    async fn return_to_assistant(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError> {
        self.update(id, "queued", &[HandoffState::Queued], |h| {
            h.state = HandoffState::Returned;
            h.completed_at_ms = Some(at_ms);
            h.resolution = Some(RETURNED_TO_ASSISTANT.to_owned());
        })
    }

    async fn transfer(
        &self,
        id: i64,
        from_operator: i64,
        to_operator: i64,
        to_name: &str,
        at_ms: i64,
    ) -> Result<Handoff, StoreError> {
        self.check()?;
        let mut rows = self.rows();
        let row = rows
            .iter_mut()
            .find(|h| {
                h.id == id
                    && h.state == HandoffState::Assigned
                    && h.operator_id == Some(from_operator)
            })
            .ok_or(StoreError::NotInState {
                id,
                expected: "assigned to the transferring operator",
            })?;
        row.operator_id = Some(to_operator);
        row.operator_name = Some(to_name.to_owned());
        row.assigned_at_ms = Some(at_ms);
        row.first_reply_at_ms = None;
        Ok(row.clone())
    }

    async fn cancel(&self, id: i64, at_ms: i64) -> Result<Handoff, StoreError> {
        self.update(id, "queued", &[HandoffState::Queued], |h| {
            h.state = HandoffState::Returned;
            h.completed_at_ms = Some(at_ms);
            h.resolution = Some(CANCELLED.to_owned());
        })
    }

    async fn handoff(&self, id: i64) -> Result<Option<Handoff>, StoreError> {
        self.check()?;
        Ok(self.rows().iter().find(|h| h.id == id).cloned())
    }

    async fn active(&self) -> Result<Vec<Handoff>, StoreError> {
        self.check()?;
        Ok(self
            .rows()
            .iter()
            .filter(|h| h.state.is_active())
            .cloned()
            .collect())
    }

    async fn recent_handling_ms(&self, limit: u32) -> Result<Vec<i64>, StoreError> {
        self.check()?;
        let mut done: Vec<(i64, i64, i64)> = self
            .rows()
            .iter()
            .filter(|h| h.state == HandoffState::Completed)
            .filter_map(|h| {
                Some((
                    h.completed_at_ms?,
                    h.id,
                    h.completed_at_ms? - h.assigned_at_ms?,
                ))
            })
            .collect();
        done.sort_by(|a, b| b.cmp(a));
        Ok(done
            .into_iter()
            .take(limit as usize)
            .map(|(_, _, took)| took)
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

/// Transcripts the test sets per dialog; none for the others.
#[derive(Default)]
struct FakeTranscripts {
    by_dialog: Mutex<HashMap<i64, Vec<TranscriptMessage>>>,
}

#[async_trait::async_trait]
impl Transcripts for FakeTranscripts {
    async fn last_messages(&self, dialog_id: i64) -> Option<Vec<TranscriptMessage>> {
        self.by_dialog
            .lock()
            .expect("transcripts lock")
            .get(&dialog_id)
            .cloned()
    }
}

/// Records every load the queue reports.
#[derive(Default)]
struct FakeDirectory {
    loads: Mutex<Vec<(i64, u32)>>,
}

impl OperatorDirectory for FakeDirectory {
    fn set_load(&self, operator_id: i64, active_handoffs: u32) {
        self.loads
            .lock()
            .expect("loads lock")
            .push((operator_id, active_handoffs));
    }
}

impl FakeDirectory {
    fn last(&self, operator_id: i64) -> Option<u32> {
        self.loads
            .lock()
            .expect("loads lock")
            .iter()
            .rev()
            .find(|(id, _)| *id == operator_id)
            .map(|(_, load)| *load)
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn policy(max_handoffs: u32) -> Policy {
    Policy {
        max_handoffs,
        reply_timeout: Duration::from_secs(180),
        max_queue_time: Duration::from_secs(600),
        max_queue_len: 100,
        max_queued_per_user: 3,
        default_handling: Duration::from_secs(300),
    }
}

fn service_caller() -> Caller {
    Caller::service()
}

fn caller(id: i64, role: Role) -> Caller {
    Caller {
        id,
        role,
        name: None,
        connection_id: None,
    }
}

fn available(operator_id: i64) -> OperatorView {
    OperatorView {
        operator_id,
        name: format!("Op{operator_id}"),
        online: true,
        chosen: ChosenStatus::Available,
        reported_load: None,
    }
}

/// One event as seen on the log.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    to: Recipient,
    kind: String,
    body: serde_json::Value,
}

struct Harness {
    service: HandoffService,
    store: Arc<MemoryStore>,
    directory: Arc<FakeDirectory>,
    transcripts: Arc<FakeTranscripts>,
    updates: mpsc::Sender<OperatorUpdate>,
    live: broadcast::Receiver<Delivery>,
    /// Every delivery read by [`Harness::events`], holder notes included.
    trail: Vec<Delivery>,
    shutdown: CancellationToken,
    actor: JoinHandle<()>,
}

impl Harness {
    async fn start(policy: Policy) -> Self {
        Self::start_on(policy, Arc::new(MemoryStore::default())).await
    }

    async fn start_on(policy: Policy, store: Arc<MemoryStore>) -> Self {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
        let live = log.live();
        let directory = Arc::new(FakeDirectory::default());
        let (updates, updates_rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let (service, queue) = HandoffService::load(
            store.clone(),
            log,
            directory.clone(),
            updates_rx,
            policy,
            shutdown.clone(),
        )
        .await
        .expect("the queue loads");
        let transcripts = Arc::new(FakeTranscripts::default());
        let actor = tokio::spawn(queue.with_transcripts(transcripts.clone()).run());
        Harness {
            service,
            store,
            directory,
            transcripts,
            updates,
            live,
            trail: Vec::new(),
            shutdown,
            actor,
        }
    }

    /// Sends an operator update and waits until the actor has handled it.
    async fn update(&self, update: OperatorUpdate) {
        self.updates.send(update).await.expect("the actor runs");
        self.settled().await;
    }

    async fn operators(&self, views: Vec<OperatorView>) {
        self.update(OperatorUpdate::Snapshot(views)).await;
    }

    /// Waits until the actor took every update, then makes a round trip, so
    /// everything sent before is handled.
    async fn settled(&self) {
        while self.updates.capacity() < self.updates.max_capacity() {
            tokio::task::yield_now().await;
        }
        self.list().await;
    }

    async fn request(&self, dialog_id: i64, priority: Priority) -> HandoffView {
        self.try_request(dialog_id, priority)
            .await
            .expect("the request is accepted")
    }

    /// Dialog `d` belongs to user `100 + d`.
    async fn try_request(
        &self,
        dialog_id: i64,
        priority: Priority,
    ) -> Result<HandoffView, HandoffError> {
        self.service
            .request(
                &service_caller(),
                NewRequest {
                    dialog_id,
                    user_id: 100 + dialog_id,
                    reason: format!("help with {dialog_id}"),
                    priority,
                },
            )
            .await
    }

    async fn complete_by(&self, operator_id: i64, dialog_id: i64) -> Completed {
        self.service
            .complete(&caller(operator_id, Role::Operator), dialog_id, "done")
            .await
            .expect("the holder completes")
    }

    async fn list(&self) -> Listing {
        self.service
            .list(&service_caller())
            .await
            .expect("services list the queue")
    }

    async fn holder(&self, dialog_id: i64) -> Option<i64> {
        self.service
            .active(&service_caller(), dialog_id)
            .await
            .expect("services read handoffs")
            .and_then(|view| view.handoff.operator_id)
    }

    /// The dialogs waiting, in order.
    async fn waiting(&self) -> Vec<i64> {
        self.list()
            .await
            .queued
            .iter()
            .map(|view| view.handoff.dialog_id)
            .collect()
    }

    /// Every event sent to clients since the last call (everything already
    /// handled); holder notes only go to [`Harness::trail`].
    fn events(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            match self.live.try_recv() {
                Ok(delivery) => {
                    self.trail.push(delivery.clone());
                    if delivery.event.kind == holders::KIND {
                        continue;
                    }
                    seen.push(Seen {
                        to: delivery.recipient.clone(),
                        kind: delivery.event.kind.clone(),
                        body: serde_json::from_slice(&delivery.event.body).expect("JSON body"),
                    })
                }
                Err(broadcast::error::TryRecvError::Empty) => return seen,
                Err(err) => panic!("live fan-out failed: {err}"),
            }
        }
    }

    async fn stop(self) -> Arc<MemoryStore> {
        self.shutdown.cancel();
        self.actor.await.expect("the actor ends cleanly");
        self.store
    }
}

fn of_kind<'a>(events: &'a [Seen], kind: &str) -> Vec<&'a Seen> {
    events.iter().filter(|e| e.kind == kind).collect()
}

/// `(user, position)` of every `handoff_queued`, in order.
fn positions(events: &[Seen]) -> Vec<(Recipient, u64)> {
    of_kind(events, "handoff_queued")
        .into_iter()
        .map(|e| (e.to.clone(), e.body["position"].as_u64().expect("position")))
        .collect()
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// A request is announced to operators and queued; with nobody online to
/// serve the queue it waits, told its position and that no estimate exists
/// (`null`, `operators_online: 0`).
#[tokio::test(start_paused = true)]
async fn request_is_announced_and_queued() {
    let mut h = Harness::start(policy(1)).await;
    let view = h.request(1, Priority::High).await;
    assert_eq!(view.handoff.state, HandoffState::Queued);
    assert_eq!(view.position, 1);
    assert_eq!((view.wait_secs, view.operators_online), (None, 0));
    let events = h.events();
    let version = h.list().await.version;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].to, Recipient::Role(Role::Operator));
    assert_eq!(events[0].kind, "handoff_request");
    assert_eq!(
        events[0].body,
        serde_json::json!({"handoff_id": view.handoff.id, "dialog_id": 1, "user_id": 101,
                           "reason": "help with 1", "priority": "high", "version": version})
    );
    assert_eq!(events[1].to, Recipient::User(101));
    assert_eq!(
        events[1].body,
        serde_json::json!({"handoff_id": view.handoff.id, "dialog_id": 1, "position": 1,
                           "estimated_wait_time": null, "operators_online": 0})
    );
    let second = h.request(2, Priority::Low).await;
    assert_eq!((second.position, second.wait_secs), (2, None));
}

/// The queue serves urgent > high > normal > low, first come first served
/// inside; each completion frees the seat for the next, and every user
/// whose position changed is told.
#[tokio::test(start_paused = true)]
async fn queue_serves_priority_then_fifo_and_tells_positions() {
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![available(7)]).await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(7));
    for (dialog, priority) in [
        (2, Priority::Low),
        (3, Priority::Urgent),
        (4, Priority::Normal),
        (5, Priority::Urgent),
        (6, Priority::High),
    ] {
        tokio::time::advance(Duration::from_millis(5)).await;
        h.request(dialog, priority).await;
    }
    assert_eq!(h.waiting().await, vec![3, 5, 6, 4, 2]);
    h.events();

    let mut served = Vec::new();
    let mut holding = 1;
    for _ in 0..5 {
        h.complete_by(7, holding).await;
        holding = h.list().await.assigned[0].handoff.dialog_id;
        served.push(holding);
    }
    assert_eq!(served, vec![3, 5, 6, 4, 2]);

    // One more round, watching the positions.
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![available(7)]).await;
    h.request(1, Priority::Normal).await;
    h.request(2, Priority::Normal).await;
    h.request(3, Priority::Normal).await;
    h.request(4, Priority::Urgent).await;
    let events = h.events();
    // 4 jumps the queue: it is told 1, and 2 and 3 move down.
    assert_eq!(
        positions(&events),
        vec![
            (Recipient::User(101), 1),
            (Recipient::User(102), 1),
            (Recipient::User(103), 2),
            (Recipient::User(104), 1),
            (Recipient::User(102), 2),
            (Recipient::User(103), 3),
        ]
    );
    h.complete_by(7, 1).await;
    let events = h.events();
    assert_eq!(
        positions(&events),
        vec![(Recipient::User(102), 1), (Recipient::User(103), 2)]
    );
    let assigned = of_kind(&events, "operator_assigned");
    assert_eq!(assigned.len(), 2);
    assert_eq!(assigned[0].to, Recipient::User(104));
    assert_eq!(assigned[1].to, Recipient::Operator(7));
    assert_eq!(assigned[0].body["dialog_id"], 4);
    assert_eq!(assigned[0].body["operator_name"], "Op7");
    assert_eq!(assigned[0].body["priority"], "urgent");
    let completed = of_kind(&events, "handoff_completed");
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0].to, Recipient::User(101));
    assert_eq!(completed[1].to, Recipient::Operator(7));
    assert_eq!(completed[0].body["resolution"], "done");
    assert_eq!(completed[0].body["operator_id"], 7);
    assert_eq!(completed[0].body["outcome"], "completed");
}

/// The next handoff goes to the eligible operator with the fewest, and on a
/// tie to the one idle the longest (here the higher id).
#[tokio::test(start_paused = true)]
async fn fewest_handoffs_then_longest_idle_wins() {
    let h = Harness::start(policy(3)).await;
    h.operators(vec![available(1), available(2)]).await;
    h.request(10, Priority::Normal).await;
    assert_eq!(
        h.holder(10).await,
        Some(1),
        "a tie between fresh operators: lowest id"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    h.request(11, Priority::Normal).await;
    assert_eq!(h.holder(11).await, Some(2), "fewest handoffs");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.request(12, Priority::Normal).await;
    assert_eq!(
        h.holder(12).await,
        Some(1),
        "tie at one each: op 1 idle longer"
    );

    // Op 2 finishes first, op 1 later: both at none, op 2 idle longer.
    tokio::time::advance(Duration::from_secs(1)).await;
    h.complete_by(2, 11).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.complete_by(1, 12).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.complete_by(1, 10).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.request(13, Priority::Normal).await;
    assert_eq!(h.holder(13).await, Some(2));
    assert_eq!(h.directory.last(1), Some(0));
    assert_eq!(h.directory.last(2), Some(1));
}

/// Away, busy, offline and full operators get nothing; a request waits
/// until someone becomes available.
#[tokio::test(start_paused = true)]
async fn only_online_available_operators_below_the_cap_are_assigned() {
    let h = Harness::start(policy(1)).await;
    h.operators(vec![
        OperatorView {
            chosen: ChosenStatus::Away,
            ..available(1)
        },
        OperatorView {
            chosen: ChosenStatus::Busy,
            ..available(2)
        },
        OperatorView {
            online: false,
            ..available(3)
        },
        available(4),
    ])
    .await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(4));
    h.request(2, Priority::Urgent).await;
    assert_eq!(h.holder(2).await, None, "op 4 is full, the rest cannot");
    h.update(OperatorUpdate::Changed(available(1))).await;
    assert_eq!(h.holder(2).await, Some(1));
}

/// An operator who does not reply in time loses the handoff: they get
/// `handoff_completed` ("reassigned: no reply"), the user is queued again,
/// and the other eligible operator gets it.
#[tokio::test(start_paused = true)]
async fn no_reply_in_time_reassigns_to_another_operator() {
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![available(1), available(2)]).await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(1));
    h.events();

    tokio::time::sleep(Duration::from_secs(181)).await;
    h.settled().await;
    assert_eq!(h.holder(1).await, Some(2));
    let events = h.events();
    let kinds: Vec<(&Recipient, &str)> = events.iter().map(|e| (&e.to, e.kind.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (&Recipient::Operator(1), "handoff_completed"),
            // Back in the queue, then out of it: the operators' queue feed.
            (&Recipient::Role(Role::Operator), "handoff_request"),
            (&Recipient::User(101), "handoff_queued"),
            (&Recipient::Role(Role::Operator), "handoff_dequeued"),
            (&Recipient::User(101), "operator_assigned"),
            (&Recipient::Operator(2), "operator_assigned"),
        ]
    );
    assert_eq!(events[0].body["resolution"], "reassigned: no reply");
    assert_eq!(events[0].body["outcome"], "reassigned");
    assert_eq!(h.directory.last(1), Some(0));
    assert_eq!(h.directory.last(2), Some(1));
    assert!(h.store.get(1).requeued_at_ms.is_some());

    // Alone, the operator gets it back rather than nobody.
    let h = Harness::start(policy(1)).await;
    h.operators(vec![available(1)]).await;
    h.request(1, Priority::Normal).await;
    tokio::time::sleep(Duration::from_secs(181)).await;
    h.settled().await;
    assert_eq!(h.holder(1).await, Some(1));
}

/// The first reply stops the timer; only the holder's reply counts, and only
/// services may report one.
#[tokio::test(start_paused = true)]
async fn a_reply_stops_the_no_reply_timer() {
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![available(1), available(2)]).await;
    h.request(1, Priority::Normal).await;
    let svc = service_caller();
    assert!(matches!(
        h.service.operator_replied(&svc, 1, 2).await,
        Err(HandoffError::NotHolder { .. })
    ));
    assert!(matches!(
        h.service
            .operator_replied(&caller(1, Role::Operator), 1, 1)
            .await,
        Err(HandoffError::Forbidden)
    ));
    assert!(matches!(
        h.service.operator_replied(&svc, 99, 1).await,
        Err(HandoffError::NotFound(99))
    ));
    tokio::time::sleep(Duration::from_secs(100)).await;
    h.service
        .operator_replied(&svc, 1, 1)
        .await
        .expect("the holder's reply is recorded");
    h.service
        .operator_replied(&svc, 1, 1)
        .await
        .expect("a second reply is fine");
    h.events();
    tokio::time::sleep(Duration::from_secs(1000)).await;
    h.settled().await;
    assert_eq!(h.holder(1).await, Some(1));
    assert!(h.events().is_empty());
    assert!(h.store.get(1).first_reply_at_ms.is_some());
}

/// A request that waits longer than the maximum goes back to the assistant:
/// the user gets `handoff_completed` with operator 0 and
/// `returned_to_assistant`, and the ones behind it move up.
#[tokio::test(start_paused = true)]
async fn waiting_too_long_returns_to_the_assistant() {
    let mut h = Harness::start(policy(1)).await;
    h.request(1, Priority::Normal).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    h.request(2, Priority::Normal).await;
    h.events();
    tokio::time::sleep(Duration::from_secs(301)).await;
    h.settled().await;
    let events = h.events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].to, Recipient::Role(Role::Operator));
    assert_eq!(events[0].body["reason"], "returned_to_assistant");
    let events = &events[1..];
    assert_eq!(events[0].to, Recipient::User(101));
    assert_eq!(
        events[0].body,
        serde_json::json!({"handoff_id": 1, "dialog_id": 1, "operator_id": 0,
                           "resolution": "returned_to_assistant", "duration": 0,
                           "outcome": "returned_to_assistant"})
    );
    assert_eq!(positions(events), vec![(Recipient::User(102), 1)]);
    assert_eq!(h.store.get(1).state, HandoffState::Returned);
    assert_eq!(h.holder(1).await, None);
    assert!(
        h.service
            .active(&service_caller(), 1)
            .await
            .expect("readable")
            .is_none()
    );
    h.request(1, Priority::Normal).await;
}

/// When an operator goes offline their handoffs go back to the front of
/// their priority (ahead of one requested earlier), the user is told, and
/// the next eligible operator gets it.
#[tokio::test(start_paused = true)]
async fn offline_operator_handoffs_go_to_the_front() {
    let store = Arc::new(MemoryStore::default());
    let now = now_ms();
    let queued = |id, dialog_id, requested_at_ms| Handoff {
        id,
        dialog_id,
        user_id: 100 + dialog_id,
        operator_id: None,
        operator_name: None,
        priority: Priority::Normal,
        reason: String::new(),
        state: HandoffState::Queued,
        requested_at_ms,
        requeued_at_ms: None,
        assigned_at_ms: None,
        first_reply_at_ms: None,
        completed_at_ms: None,
        resolution: None,
    };
    // Dialog 5 waits since before dialog 6 was even asked for; 6 is with op 1.
    store.put(queued(1, 5, now - 2000));
    store.put(Handoff {
        state: HandoffState::Assigned,
        operator_id: Some(1),
        operator_name: Some("Op1".into()),
        assigned_at_ms: Some(now - 500),
        ..queued(2, 6, now - 1000)
    });
    let mut h = Harness::start_on(policy(1), store).await;
    h.operators(vec![available(1)]).await;
    assert_eq!(h.holder(6).await, Some(1));
    assert_eq!(h.waiting().await, vec![5]);
    h.events();

    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        ..available(1)
    }))
    .await;
    assert_eq!(h.waiting().await, vec![6, 5]);
    let events = h.events();
    assert_eq!(events[0].to, Recipient::Operator(1));
    assert_eq!(events[0].body["resolution"], "reassigned: operator offline");
    assert_eq!(
        positions(&events),
        vec![(Recipient::User(106), 1), (Recipient::User(105), 2)]
    );
    assert_eq!(h.directory.last(1), Some(0));

    h.update(OperatorUpdate::Changed(available(2))).await;
    assert_eq!(h.holder(6).await, Some(2));
    assert_eq!(h.waiting().await, vec![5]);
}

/// A handoff that goes back to the queue goes to the front of its own
/// priority, never ahead of a higher one (docs/protocol.md, "Server → client").
#[tokio::test(start_paused = true)]
async fn a_requeued_handoff_stays_behind_higher_priorities() {
    let h = Harness::start(policy(1)).await;
    h.operators(vec![available(1)]).await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(1));
    h.request(2, Priority::High).await;
    h.request(3, Priority::Normal).await;
    assert_eq!(h.waiting().await, vec![2, 3]);

    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        ..available(1)
    }))
    .await;
    assert_eq!(
        h.waiting().await,
        vec![2, 1, 3],
        "behind the high one, ahead of the normal one that came later"
    );
}

/// A restart loses nothing: queued handoffs keep their order, assigned ones
/// their operator (whose load is reported again), and the reply timer
/// starts over.
#[tokio::test(start_paused = true)]
async fn restart_restores_the_queue_and_assignments() {
    let h = Harness::start(policy(1)).await;
    h.operators(vec![available(1), available(2)]).await;
    h.request(1, Priority::Normal).await;
    h.service
        .operator_replied(&service_caller(), 1, 1)
        .await
        .expect("reply recorded");
    h.request(2, Priority::Normal).await;
    h.request(3, Priority::Low).await;
    h.request(4, Priority::High).await;
    assert_eq!(h.holder(1).await, Some(1));
    assert_eq!(h.holder(2).await, Some(2));
    assert_eq!(h.waiting().await, vec![4, 3]);
    let store = h.stop().await;

    tokio::time::advance(Duration::from_secs(100)).await;
    let h = Harness::start_on(policy(1), store).await;
    let listing = h.list().await;
    assert_eq!(listing.assigned.len(), 2);
    assert_eq!(h.holder(1).await, Some(1));
    assert_eq!(h.holder(2).await, Some(2));
    assert_eq!(h.waiting().await, vec![4, 3]);
    h.settled().await;
    assert_eq!(h.directory.last(1), Some(1), "loads are reported again");
    assert_eq!(h.directory.last(2), Some(1));

    // Op 2 never replied: a fresh timer, then op 1 (who replied to theirs)
    // holds one and op 2 would get it back only if alone — here dialog 4
    // (high) is ahead and goes to op 2, dialog 2 waits.
    h.operators(vec![available(1), available(2)]).await;
    tokio::time::sleep(Duration::from_secs(181)).await;
    h.settled().await;
    assert_eq!(h.holder(1).await, Some(1), "replied: no timer");
    assert_eq!(h.holder(2).await, None);
    assert_eq!(h.holder(4).await, Some(2));
    assert_eq!(h.waiting().await, vec![2, 3], "taken back: front of normal");
}

/// A second request for a dialog is refused, and so is one past the
/// queue's capacity.
#[tokio::test(start_paused = true)]
async fn duplicates_and_a_full_queue_are_refused() {
    let h = Harness::start(Policy {
        max_queue_len: 2,
        ..policy(1)
    })
    .await;
    h.request(1, Priority::Normal).await;
    assert!(matches!(
        h.try_request(1, Priority::Urgent).await,
        Err(HandoffError::Exists(1))
    ));
    h.request(2, Priority::Normal).await;
    assert!(matches!(
        h.try_request(3, Priority::Urgent).await,
        Err(HandoffError::QueueFull)
    ));
    // An assigned handoff leaves the queue: room again.
    h.operators(vec![available(1)]).await;
    h.request(3, Priority::Urgent).await;
    assert!(matches!(
        h.try_request(1, Priority::Normal).await,
        Err(HandoffError::Exists(1))
    ));
}

/// Who may request, complete, read and list.
#[tokio::test(start_paused = true)]
async fn callers_are_checked() {
    let h = Harness::start(policy(1)).await;
    h.operators(vec![available(1), available(2)]).await;
    let request = NewRequest {
        dialog_id: 1,
        user_id: 5,
        reason: "r".into(),
        priority: Priority::Normal,
    };
    for role in [Role::User, Role::Operator] {
        assert!(matches!(
            h.service.request(&caller(5, role), request.clone()).await,
            Err(HandoffError::Forbidden)
        ));
    }
    assert!(matches!(
        h.service
            .request(
                &service_caller(),
                NewRequest {
                    user_id: 0,
                    ..request.clone()
                }
            )
            .await,
        Err(HandoffError::Missing("user_id"))
    ));
    h.service
        .request(&caller(9, Role::Admin), request)
        .await
        .expect("admins may request");
    assert_eq!(h.holder(1).await, Some(1));

    let op2 = caller(2, Role::Operator);
    assert!(matches!(
        h.service.complete(&op2, 1, "x").await,
        Err(HandoffError::NotHolder { .. })
    ));
    assert!(matches!(
        h.service.active(&op2, 1).await,
        Err(HandoffError::NotHolder { .. })
    ));
    assert!(matches!(
        h.service.active(&caller(5, Role::User), 1).await,
        Err(HandoffError::Forbidden)
    ));
    assert!(matches!(
        h.service.list(&caller(5, Role::User)).await,
        Err(HandoffError::Forbidden)
    ));
    h.service.list(&op2).await.expect("operators list");
    let mine = h
        .service
        .active(&caller(1, Role::Operator), 1)
        .await
        .expect("the holder reads it")
        .expect("it is active");
    assert_eq!(mine.handoff.operator_id, Some(1));
    assert!(matches!(
        h.service.complete(&op2, 42, "x").await,
        Err(HandoffError::NotFound(42))
    ));
    let done = h
        .service
        .complete(&caller(3, Role::Admin), 1, "  ")
        .await
        .expect("admins complete");
    assert_eq!(done.view.handoff.resolution.as_deref(), Some("resolved"));
    assert_eq!(done.view.handoff.state, HandoffState::Completed);
}

/// Presence's idea of a load is corrected when it differs from the queue's.
#[tokio::test(start_paused = true)]
async fn presence_loads_are_corrected() {
    let h = Harness::start(policy(2)).await;
    h.operators(vec![
        OperatorView {
            reported_load: Some(3),
            ..available(1)
        },
        OperatorView {
            reported_load: Some(0),
            ..available(2)
        },
    ])
    .await;
    assert_eq!(h.directory.last(1), Some(0));
    assert_eq!(h.directory.last(2), None, "already right");
}

/// The estimate is position × the average handling time of recent
/// completions ÷ the seats of online operators who chose available (full
/// ones too): with 0, 1 and 3 such operators of 2 seats each.
#[tokio::test(start_paused = true)]
async fn estimates_follow_recent_handling_times() {
    let store = Arc::new(MemoryStore::default());
    for (id, took_secs) in [(1, 60), (2, 120)] {
        store.put(Handoff {
            id,
            dialog_id: id,
            user_id: 1,
            operator_id: Some(1),
            operator_name: None,
            priority: Priority::Normal,
            reason: String::new(),
            state: HandoffState::Completed,
            requested_at_ms: 0,
            requeued_at_ms: None,
            assigned_at_ms: Some(1_000),
            first_reply_at_ms: None,
            completed_at_ms: Some(1_000 + took_secs * 1000),
            resolution: Some("ok".into()),
        });
    }
    let h = Harness::start_on(policy(2), store).await;
    // Nobody to serve: no estimate.
    let first = h.request(10, Priority::Normal).await;
    assert_eq!((first.wait_secs, first.operators_online), (None, 0));
    // One operator, two seats, both taken by 10 and 11 at once; 12 and 13
    // wait: 90 s average over 2 seats.
    h.operators(vec![available(1)]).await;
    h.request(11, Priority::Normal).await;
    let third = h.request(12, Priority::Normal).await;
    let fourth = h.request(13, Priority::Normal).await;
    assert_eq!((third.position, third.wait_secs), (1, Some(45)));
    assert_eq!((fourth.position, fourth.wait_secs), (2, Some(90)));
    assert_eq!(fourth.operators_online, 1);
    // Three operators (six seats): 12 and 13 go to the new ones, so do 14
    // and 15; 16, 17 and 18 wait: 18 is third over six seats.
    h.operators(vec![available(1), available(2), available(3)])
        .await;
    for dialog_id in 14..=17 {
        h.request(dialog_id, Priority::Normal).await;
    }
    let waiting = h.request(18, Priority::Normal).await;
    assert_eq!(waiting.position, 3);
    assert_eq!((waiting.wait_secs, waiting.operators_online), (Some(45), 3));
}

/// A storage outage during an assignment leaves the handoff queued and the
/// assignment is retried once the store answers again.
#[tokio::test(start_paused = true)]
async fn assignment_is_retried_after_a_storage_failure() {
    let h = Harness::start(policy(1)).await;
    h.request(1, Priority::Normal).await;
    h.store.fail.store(true, Ordering::SeqCst);
    h.update(OperatorUpdate::Changed(available(1))).await;
    assert!(matches!(
        h.service.active(&service_caller(), 1).await,
        Ok(Some(view)) if view.handoff.state == HandoffState::Queued
    ));
    assert!(matches!(
        h.try_request(2, Priority::Normal).await,
        Err(HandoffError::Store(_))
    ));
    h.store.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(RETRY_AFTER * 2).await;
    h.settled().await;
    assert_eq!(h.holder(1).await, Some(1));
}

/// Every event to a user or an operator is followed by a holder note for
/// the chat service: the event's position, the dialog's holder after it,
/// versions that never go down, and listings as of the latest version.
#[tokio::test(start_paused = true)]
async fn every_client_event_is_followed_by_a_holder_note() {
    let mut h = Harness::start(policy(1)).await;
    h.request(1, Priority::Normal).await;
    h.operators(vec![available(7)]).await;
    h.settled().await;
    h.complete_by(7, 1).await;
    h.settled().await;
    h.events();
    let listing = h.list().await;
    let trail = std::mem::take(&mut h.trail);
    let mut last_version = 0;
    let mut noted = Vec::new();
    for (index, delivery) in trail.iter().enumerate() {
        let noted_for = match delivery.recipient {
            Recipient::User(id) => NotedFor::User(id),
            Recipient::Operator(id) => NotedFor::Operator(id),
            _ => continue,
        };
        let note = trail
            .get(index + 1)
            .filter(|next| next.event.kind == holders::KIND)
            .map(|next| {
                assert_eq!(next.recipient, Recipient::Room(holders::ROOM.into()));
                serde_json::from_slice::<HolderNote>(&next.event.body).expect("a note")
            })
            .unwrap_or_else(|| panic!("no note after {}", delivery.event.kind));
        assert_eq!(note.recipient, noted_for);
        assert_eq!(note.position, delivery.position);
        assert!(note.version >= last_version, "versions never go down");
        last_version = note.version;
        noted.push((delivery.event.kind.clone(), noted_for, note.holder));
    }
    let bo = HeldBy::Operator {
        operator_id: 7,
        operator_name: "Op7".into(),
    };
    assert_eq!(
        noted,
        vec![
            ("handoff_queued".into(), NotedFor::User(101), HeldBy::Queued),
            ("operator_assigned".into(), NotedFor::User(101), bo.clone()),
            ("operator_assigned".into(), NotedFor::Operator(7), bo),
            (
                "handoff_completed".into(),
                NotedFor::User(101),
                HeldBy::Assistant
            ),
            (
                "handoff_completed".into(),
                NotedFor::Operator(7),
                HeldBy::Assistant
            ),
        ]
    );
    assert!(listing.version >= last_version);
    h.stop().await;
}

/// Dialog 6, assigned to operator 1 who has replied, as stored before a
/// restart.
fn held_and_replied() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    let now = now_ms();
    store.put(Handoff {
        id: 2,
        dialog_id: 6,
        user_id: 106,
        operator_id: Some(1),
        operator_name: Some("Op1".into()),
        priority: Priority::Normal,
        reason: String::new(),
        state: HandoffState::Assigned,
        requested_at_ms: now - 1000,
        requeued_at_ms: None,
        assigned_at_ms: Some(now - 500),
        first_reply_at_ms: Some(now - 100),
        completed_at_ms: None,
        resolution: None,
    });
    store
}

/// Presence restarted and does not list an operator who holds a dialog:
/// "unknown" is not "offline" (issue 9, items 1 and 3). The dialog stays
/// theirs, presence is told their load again (it then gives them a grace
/// period), and only its "offline" with the load known takes it back.
#[tokio::test(start_paused = true)]
async fn an_operator_presence_does_not_list_keeps_their_dialogs_until_it_says_offline() {
    let mut h = Harness::start_on(policy(2), held_and_replied()).await;
    h.settled().await;
    // What the queue reported at start is not what this test is about.
    h.directory.loads.lock().expect("loads lock").clear();
    h.operators(vec![]).await;
    assert_eq!(h.holder(6).await, Some(1), "unlisted is not offline");
    assert_eq!(h.directory.last(1), Some(1), "presence is told again");

    // Presence, told, gives them the grace period: online with the load.
    h.update(OperatorUpdate::Changed(OperatorView {
        reported_load: Some(1),
        ..available(1)
    }))
    .await;
    assert_eq!(h.holder(6).await, Some(1));
    assert!(of_kind(&h.events(), "handoff_completed").is_empty());

    // The grace period ends without them.
    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        reported_load: Some(1),
        ..available(1)
    }))
    .await;
    assert_eq!(h.waiting().await, vec![6]);
    let events = h.events();
    let taken = of_kind(&events, "handoff_completed");
    assert_eq!(taken.len(), 1, "{events:?}");
    assert_eq!(taken[0].body["resolution"], "reassigned: operator offline");
}

/// "Offline" from a presence that believes the operator holds nothing (it
/// restarted and heard of them some other way) is not a verdict on their
/// dialogs: the load is reported and the next word, with the load, decides.
#[tokio::test(start_paused = true)]
async fn an_offline_from_a_presence_that_knows_no_load_takes_nothing() {
    let mut h = Harness::start_on(policy(2), held_and_replied()).await;
    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        reported_load: Some(0),
        ..available(1)
    }))
    .await;
    assert_eq!(h.holder(6).await, Some(1));
    assert_eq!(h.directory.last(1), Some(1));
    assert!(of_kind(&h.events(), "handoff_completed").is_empty());

    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        reported_load: Some(1),
        ..available(1)
    }))
    .await;
    assert_eq!(h.waiting().await, vec![6]);
}

/// Taking a dialog back from an operator gone offline is retried when the
/// store fails, also when they had replied (no reply timer runs then).
#[tokio::test(start_paused = true)]
async fn a_failed_take_back_from_an_offline_operator_is_retried() {
    let mut h = Harness::start_on(policy(2), held_and_replied()).await;
    h.operators(vec![OperatorView {
        reported_load: Some(1),
        ..available(1)
    }])
    .await;
    h.store.fail.store(true, Ordering::SeqCst);
    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        reported_load: Some(1),
        ..available(1)
    }))
    .await;
    assert!(of_kind(&h.events(), "handoff_completed").is_empty());
    h.store.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(RETRY_AFTER * 2).await;
    assert_eq!(h.waiting().await, vec![6], "taken back on the retry");
    let events = h.events();
    let taken = of_kind(&events, "handoff_completed");
    assert_eq!(taken.len(), 1, "{events:?}");
    assert_eq!(taken[0].body["resolution"], "reassigned: operator offline");
}

/// One user cannot fill the queue: past the per-user cap their requests are
/// refused (`too_many_handoffs`) while other users' are taken; once one of
/// theirs is served, they may ask again (issue 10, finding 6).
#[tokio::test(start_paused = true)]
async fn one_user_cannot_fill_the_queue() {
    let h = Harness::start(policy(1)).await;
    let service = service_caller();
    let ask = |dialog_id: i64, user_id: i64| {
        h.service.request(
            &service,
            NewRequest {
                dialog_id,
                user_id,
                reason: String::new(),
                priority: Priority::Urgent,
            },
        )
    };
    for dialog_id in 1..=3 {
        ask(dialog_id, 7).await.expect("within the cap");
    }
    let refused = ask(4, 7).await;
    assert!(
        matches!(refused, Err(HandoffError::TooManyForUser(7))),
        "{refused:?}"
    );
    ask(5, 8).await.expect("another user is served");
    assert_eq!(h.waiting().await, vec![1, 2, 3, 5]);

    // One of the user's is taken by an operator: room for one more.
    h.operators(vec![available(1)]).await;
    assert_eq!(h.holder(1).await, Some(1));
    ask(4, 7).await.expect("one waits less now");
}

// ---------------------------------------------------------------------------
// The operator workspace: transfer, claim, cancel, versions (issue 11)
// ---------------------------------------------------------------------------

fn chose(operator_id: i64, chosen: ChosenStatus) -> OperatorView {
    OperatorView {
        chosen,
        ..available(operator_id)
    }
}

/// The one event of `kind` sent to `to`.
fn the<'a>(events: &'a [Seen], to: &Recipient, kind: &str) -> &'a Seen {
    let found: Vec<&Seen> = events
        .iter()
        .filter(|e| &e.to == to && e.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} to {to}: {events:?}");
    found[0]
}

/// A transfer to a named operator moves the hold at once: the former holder
/// gets `handoff_completed` (`transferred`), the new one and the user
/// `operator_assigned` naming where it came from, and both loads follow.
#[tokio::test(start_paused = true)]
async fn transfer_to_a_named_operator_moves_the_hold() {
    let mut h = Harness::start(policy(2)).await;
    h.operators(vec![available(1)]).await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(1));
    h.update(OperatorUpdate::Changed(available(2))).await;
    h.events();

    let view = h
        .service
        .transfer(&caller(1, Role::Operator), 1, Some(2), "billing question")
        .await
        .expect("the holder transfers");
    assert_eq!(view.handoff.operator_id, Some(2));
    assert_eq!(h.holder(1).await, Some(2));
    assert_eq!(h.store.get(view.handoff.id).operator_id, Some(2));
    let events = h.events();
    let completed = the(&events, &Recipient::Operator(1), "handoff_completed");
    assert_eq!(completed.body["resolution"], "transferred");
    assert_eq!(completed.body["outcome"], "transferred");
    assert_eq!(completed.body["operator_id"], 1);
    for to in [Recipient::Operator(2), Recipient::User(101)] {
        let assigned = the(&events, &to, "operator_assigned");
        assert_eq!(assigned.body["operator_id"], 2);
        assert_eq!(assigned.body["transferred_from"], 1);
        assert_eq!(assigned.body["transfer_reason"], "billing question");
    }
    assert_eq!(
        (h.directory.last(1), h.directory.last(2)),
        (Some(0), Some(1))
    );
    // The new holder's no-reply timer runs; the former holder cannot finish it.
    assert!(matches!(
        h.service.complete(&caller(1, Role::Operator), 1, "x").await,
        Err(HandoffError::NotHolder { .. })
    ));
    h.complete_by(2, 1).await;
}

/// A transfer is refused to an operator who is full, offline or unknown,
/// to the holder themself, and from anyone but the holder; the hold stays.
#[tokio::test(start_paused = true)]
async fn a_transfer_is_refused_when_the_target_is_full_or_offline() {
    let h = Harness::start(policy(1)).await;
    h.operators(vec![available(1), available(2)]).await;
    h.request(1, Priority::Normal).await;
    h.request(2, Priority::Normal).await;
    let first = h.holder(1).await.expect("dialog 1 is held");
    let second = h.holder(2).await.expect("dialog 2 is held");
    h.update(OperatorUpdate::Changed(OperatorView {
        online: false,
        ..available(3)
    }))
    .await;
    let by_holder = caller(first, Role::Operator);
    for target in [second, 3, 99] {
        let refused = h.service.transfer(&by_holder, 1, Some(target), "").await;
        assert!(
            matches!(refused, Err(HandoffError::OperatorUnavailable(t)) if t == target),
            "{target}: {refused:?}"
        );
    }
    assert!(matches!(
        h.service.transfer(&by_holder, 1, Some(first), "").await,
        Err(HandoffError::TransferToSelf)
    ));
    assert!(matches!(
        h.service
            .transfer(&caller(second, Role::Operator), 1, None, "")
            .await,
        Err(HandoffError::NotHolder { .. })
    ));
    assert!(matches!(
        h.service
            .transfer(&caller(101, Role::User), 1, None, "")
            .await,
        Err(HandoffError::Forbidden)
    ));
    assert_eq!(h.holder(1).await, Some(first));
    assert_eq!(h.holder(2).await, Some(second));
}

/// A transfer without a target puts the dialog back in the queue at the
/// front of its priority, like any handoff that goes back: the operator is
/// told `transferred`, operators see it arrive again, the user their place.
#[tokio::test(start_paused = true)]
async fn a_transfer_to_the_queue_goes_to_the_front() {
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![available(1)]).await;
    h.request(1, Priority::Normal).await;
    assert_eq!(h.holder(1).await, Some(1));
    // Away: the operator keeps the dialog and gets no new one.
    h.update(OperatorUpdate::Changed(chose(1, ChosenStatus::Away)))
        .await;
    h.request(2, Priority::Normal).await;
    h.request(3, Priority::Normal).await;
    h.events();

    let view = h
        .service
        .transfer(&caller(1, Role::Operator), 1, None, "")
        .await
        .expect("the holder transfers to the queue");
    assert_eq!(
        (view.handoff.state, view.position),
        (HandoffState::Queued, 1)
    );
    assert_eq!(h.waiting().await, vec![1, 2, 3]);
    let events = h.events();
    let completed = the(&events, &Recipient::Operator(1), "handoff_completed");
    assert_eq!(completed.body["outcome"], "transferred");
    assert_eq!(
        the(&events, &Recipient::Role(Role::Operator), "handoff_request").body["dialog_id"],
        1
    );
    assert!(positions(&events).contains(&(Recipient::User(101), 1)));
    assert_eq!(h.directory.last(1), Some(0));
}

/// An operator under the cap claims a queued dialog out of order even while
/// away; at the cap, or for a dialog already held, the claim is refused.
#[tokio::test(start_paused = true)]
async fn a_claim_takes_a_queued_dialog_out_of_order_below_the_cap() {
    let mut h = Harness::start(policy(1)).await;
    h.operators(vec![chose(5, ChosenStatus::Away)]).await;
    h.request(1, Priority::Urgent).await;
    h.request(2, Priority::Low).await;
    h.events();

    let view = h
        .service
        .claim(&caller(5, Role::Operator), 2)
        .await
        .expect("an away operator under the cap claims");
    assert_eq!(view.handoff.operator_id, Some(5));
    assert_eq!(h.waiting().await, vec![1]);
    let events = h.events();
    let dequeued = the(
        &events,
        &Recipient::Role(Role::Operator),
        "handoff_dequeued",
    );
    assert_eq!(dequeued.body["dialog_id"], 2);
    assert_eq!(dequeued.body["reason"], "assigned");
    the(&events, &Recipient::Operator(5), "operator_assigned");
    the(&events, &Recipient::User(102), "operator_assigned");
    assert_eq!(h.directory.last(5), Some(1));

    assert!(matches!(
        h.service.claim(&caller(5, Role::Operator), 1).await,
        Err(HandoffError::OperatorUnavailable(5))
    ));
    assert!(matches!(
        h.service.claim(&caller(6, Role::Operator), 2).await,
        Err(HandoffError::NotQueued(2))
    ));
    assert!(matches!(
        h.service.claim(&caller(6, Role::Operator), 9).await,
        Err(HandoffError::NotFound(9))
    ));
    assert!(matches!(
        h.service.claim(&caller(101, Role::User), 1).await,
        Err(HandoffError::Forbidden)
    ));
    assert_eq!(h.waiting().await, vec![1]);
}

/// Only the owner cancels, and only while the handoff waits: the dialog goes
/// back to the assistant, operators see it leave the queue, the user gets
/// `handoff_completed` (`cancelled`). Someone else's dialog reads as one
/// without a handoff.
#[tokio::test(start_paused = true)]
async fn a_cancel_is_the_owners_and_only_while_queued() {
    let mut h = Harness::start(policy(1)).await;
    let queued = h.request(1, Priority::Normal).await;
    h.request(2, Priority::Normal).await;
    h.events();
    assert!(matches!(
        h.service.cancel(&caller(999, Role::User), 1).await,
        Err(HandoffError::NotFound(1))
    ));
    assert!(matches!(
        h.service.cancel(&caller(7, Role::Operator), 1).await,
        Err(HandoffError::Forbidden)
    ));
    assert_eq!(h.waiting().await, vec![1, 2]);

    let view = h
        .service
        .cancel(&caller(101, Role::User), 1)
        .await
        .expect("the owner cancels");
    assert_eq!(view.handoff.state, HandoffState::Returned);
    assert_eq!(
        h.store.get(queued.handoff.id).resolution.as_deref(),
        Some("cancelled")
    );
    assert_eq!(h.waiting().await, vec![2]);
    assert_eq!(h.holder(1).await, None);
    let events = h.events();
    let dequeued = the(
        &events,
        &Recipient::Role(Role::Operator),
        "handoff_dequeued",
    );
    assert_eq!(dequeued.body["reason"], "cancelled");
    let completed = the(&events, &Recipient::User(101), "handoff_completed");
    assert_eq!(completed.body["outcome"], "cancelled");
    assert!(positions(&events).contains(&(Recipient::User(102), 1)));
    assert!(matches!(
        h.service.cancel(&caller(101, Role::User), 1).await,
        Err(HandoffError::NotFound(1))
    ));

    h.operators(vec![available(3)]).await;
    assert_eq!(h.holder(2).await, Some(3));
    assert!(matches!(
        h.service.cancel(&caller(102, Role::User), 2).await,
        Err(HandoffError::NotQueued(2))
    ));
    assert_eq!(h.holder(2).await, Some(3));
}

/// `handoff_request` and `handoff_dequeued` carry the queue version they are
/// as of: above any listing read before them, at or below one read after.
#[tokio::test(start_paused = true)]
async fn queue_events_carry_the_listing_version() {
    let mut h = Harness::start(policy(1)).await;
    let before = h.list().await.version;
    h.request(1, Priority::Normal).await;
    let after_request = h.list().await.version;
    let events = h.events();
    let arrived = the(&events, &Recipient::Role(Role::Operator), "handoff_request").body["version"]
        .as_u64()
        .expect("a version");
    assert!(
        before < arrived && arrived <= after_request,
        "{before} {arrived} {after_request}"
    );

    h.operators(vec![available(1)]).await;
    let after_assignment = h.list().await.version;
    let events = h.events();
    let left = the(
        &events,
        &Recipient::Role(Role::Operator),
        "handoff_dequeued",
    )
    .body["version"]
        .as_u64()
        .expect("a version");
    assert!(
        after_request < left && left <= after_assignment,
        "{after_request} {left} {after_assignment}"
    );
}

/// The operator a dialog is assigned to gets its transcript in
/// `operator_assigned` (issue 11, item 2); the user's copy has none, and
/// without a transcript the field is left out.
#[tokio::test(start_paused = true)]
async fn the_assigned_operator_gets_the_transcript() {
    let mut h = Harness::start(policy(2)).await;
    let said = TranscriptMessage {
        message_id: 3,
        sender: "user",
        sender_id: Some(101),
        message: "still waiting".into(),
        timestamp: "2026-11-29T12:00:00Z".into(),
    };
    h.transcripts
        .by_dialog
        .lock()
        .expect("transcripts lock")
        .insert(1, vec![said]);
    h.request(1, Priority::Normal).await;
    h.request(2, Priority::Normal).await;
    h.events();
    h.operators(vec![available(1)]).await;
    let events = h.events();
    let assigned = of_kind(&events, "operator_assigned");
    let to_operator: Vec<_> = assigned
        .iter()
        .filter(|e| e.to == Recipient::Operator(1))
        .collect();
    let to_users: Vec<_> = assigned
        .iter()
        .filter(|e| matches!(e.to, Recipient::User(_)))
        .collect();
    assert_eq!((to_operator.len(), to_users.len()), (2, 2), "{events:?}");
    let first = to_operator
        .iter()
        .find(|e| e.body["dialog_id"] == 1)
        .expect("dialog 1");
    assert_eq!(
        first.body["transcript"],
        serde_json::json!([{"message_id": 3, "sender": "user", "sender_id": 101,
                            "message": "still waiting", "timestamp": "2026-11-29T12:00:00Z"}])
    );
    let second = to_operator
        .iter()
        .find(|e| e.body["dialog_id"] == 2)
        .expect("dialog 2");
    assert!(second.body.get("transcript").is_none(), "{second:?}");
    assert!(to_users.iter().all(|e| e.body.get("transcript").is_none()));
}
