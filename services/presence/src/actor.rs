//! The task that applies presence changes, one at a time, and the cloneable
//! [`PresenceHandle`] through which everything else talks to it.
//!
//! The state itself lives in a [`StateStore`] — this process's memory, or
//! Redis shared with the other presence replicas. For each change the actor
//! reads the records it needs, lets `rules` decide, and commits the result
//! only if nothing it read has moved (another replica's change, a timer of
//! another replica): otherwise it reads and decides again. So every replica
//! answers every call, and two of them handling one operator at once lose
//! nothing.
//!
//! Commands arrive on a bounded channel and are answered on a oneshot; the
//! actor also fires the grace-period and lease timers (on every replica: the
//! end of a timer is one more change, which only the first replica to commit
//! makes). Each change's `operator_status_change`s are out before the call
//! is answered — published by the Redis store in the commit itself, or
//! delivered by the actor through the event log after a memory commit — so
//! events are never reordered, and a caller who has the answer knows everyone
//! else can have the event (an operator told "away" is not given work by a
//! handoff service that read the event before it). A chosen status is
//! stored in the database before it is applied ([`StatusStore`]): an answer
//! means it survives even the loss of the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::identity::Role;
use chatai_kit::supervisor::Supervisor;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::config::PresenceConfig;
use crate::error::PresenceError;
use crate::events::{OPERATOR_STATUS_CHANGE, OperatorStatusChange};
use crate::model::{ChosenStatus, Connection, OperatorView, ReportOrder};
use crate::rules::{Op, Outcome, Settings, Working, view_of};
use crate::state::{Committed, StateError, StateStore};
use crate::store::StatusStore;

/// Every operator heard of, and the version the listing is as of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub operators: Vec<OperatorView>,
    pub version: u64,
}

/// Commands waiting for the actor. Each one is a few map updates
/// (microseconds) in memory, a few Redis round trips with Redis, so the
/// queue only fills in a burst — a restarting gateway re-opening all its
/// operator connections at once, say. 1 024 absorbs such a burst; beyond it
/// callers wait for room (backpressure) instead of the queue growing
/// without bound.
pub const COMMAND_CAPACITY: usize = 1024;

/// How many times a change is read and decided again after conflicting with
/// other replicas' before the call fails (UNAVAILABLE, which callers retry).
/// A conflict needs another replica to commit on the same records between
/// this one's read and its commit (a few round trips), so a handful is
/// already rare.
const MAX_ATTEMPTS: u32 = 32;

/// How often a replica sharing its state looks for timers other replicas
/// set (it learns of its own at once). Bounds how late a grace period or a
/// lease another replica started ends.
const POLL_TIMERS: Duration = Duration::from_millis(500);

/// Ended timers handled in one go (the rest right after).
const DUE_BATCH: usize = 64;

/// Milliseconds for deadlines: the wall clock when the actor started plus
/// tokio's monotonic time since (the tests' paused clock moves it too).
/// Replicas sharing their state compare deadlines set on each other's
/// clocks, which agree to within the hosts' clock skew.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_ms: i64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            start: Instant::now(),
            start_ms: chatai_kit::now_ms(),
        }
    }

    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }

    /// When the clock says `ms` (now, if that has passed).
    fn instant_at(&self, ms: i64) -> Instant {
        let after = u64::try_from(ms.saturating_sub(self.start_ms)).unwrap_or(0);
        self.start + Duration::from_millis(after)
    }
}

/// What the actor can be asked.
enum Command {
    /// A change (a chosen status is stored first).
    Change {
        op: Op,
        reply: oneshot::Sender<Result<Outcome, PresenceError>>,
    },
    Get {
        operator_id: i64,
        reply: oneshot::Sender<Result<Option<OperatorView>, PresenceError>>,
    },
    List {
        reply: oneshot::Sender<Result<Listing, PresenceError>>,
    },
    /// Handles the timers that have ended now (tests: two replicas firing
    /// the same timer at once).
    #[cfg(test)]
    FireTimers { reply: oneshot::Sender<()> },
}

/// A command with the context of the request that sent it.
struct Envelope {
    command: Command,
    /// The caller's span: the actor's logs and the events' trace context
    /// belong to the request.
    span: Span,
    /// The gateway connection the request came from, carried by its events.
    origin: Option<String>,
}

/// A handle to the presence actor. Cheap to clone. Its calls fail with
/// [`PresenceError::Unavailable`] once the actor has stopped (shutdown).
#[derive(Clone, Debug)]
pub struct PresenceHandle {
    commands: mpsc::Sender<Envelope>,
}

impl PresenceHandle {
    /// Starts the actor under `supervisor`; it runs until shutdown (or
    /// until every handle is gone), keeps the state in `state`, delivers its
    /// events through `log` (those `state` does not publish itself) and
    /// keeps chosen statuses in `store`. `stored` is what `store` held at
    /// the start: the chosen status of an operator `state` has no record of.
    pub(crate) fn spawn(
        config: &PresenceConfig,
        log: Arc<dyn EventLog>,
        state: Arc<dyn StateStore>,
        store: Arc<dyn StatusStore>,
        stored: HashMap<i64, ChosenStatus>,
        supervisor: &Supervisor,
    ) -> Self {
        let (commands, inbox) = mpsc::channel(COMMAND_CAPACITY);
        let actor = Actor {
            settings: Settings {
                grace: config.grace_period(),
                max_handoffs: config.max_handoffs,
            },
            clock: Clock::start(),
            defaults: stored,
            state,
            inbox,
            log,
            store,
            shutdown: supervisor.shutdown().clone(),
            next_due_ms: None,
            next_poll: None,
        };
        supervisor.spawn(
            "presence actor",
            actor
                .run()
                // Background work for the trace sampler: the actor's life is
                // no trace worth exporting (`chatai_kit::telemetry`).
                .instrument(tracing::info_span!(
                    parent: None,
                    "presence_actor",
                    otel.name = "presence.actor",
                    chatai.background = true
                )),
        );
        PresenceHandle { commands }
    }

    /// Whether the actor is still taking commands (false after shutdown, or
    /// if it ever died), for the readiness check.
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// A gateway opened a connection for an operator.
    pub async fn connection_opened(
        &self,
        gateway: String,
        connection: Connection,
        order: Option<ReportOrder>,
    ) -> Result<OperatorView, PresenceError> {
        self.change(
            None,
            Op::Opened {
                gateway,
                connection,
                order,
            },
        )
        .await
        .and_then(viewed)
    }

    /// A gateway's connection closed.
    pub async fn connection_closed(
        &self,
        gateway: String,
        connection_id: String,
        order: Option<ReportOrder>,
    ) -> Result<(), PresenceError> {
        self.change(
            None,
            Op::Closed {
                gateway,
                connection_id,
                order,
            },
        )
        .await
        .map(drop)
    }

    /// A gateway's full list of connections, and its lease.
    pub async fn refresh(
        &self,
        gateway: String,
        connections: Vec<Connection>,
        ttl: Duration,
        order: Option<ReportOrder>,
    ) -> Result<(), PresenceError> {
        self.change(
            None,
            Op::Refresh {
                gateway,
                connections,
                ttl,
                order,
            },
        )
        .await
        .map(drop)
    }

    /// The status an operator chose: stored, applied, announced, answered.
    pub async fn set_status(
        &self,
        operator_id: i64,
        status: ChosenStatus,
        origin: Option<String>,
    ) -> Result<OperatorView, PresenceError> {
        self.change(
            origin,
            Op::SetStatus {
                operator_id,
                status,
            },
        )
        .await
        .and_then(viewed)
    }

    /// How many handoffs an operator holds.
    pub async fn set_load(
        &self,
        operator_id: i64,
        active_handoffs: u32,
    ) -> Result<OperatorView, PresenceError> {
        self.change(
            None,
            Op::SetLoad {
                operator_id,
                active_handoffs,
            },
        )
        .await
        .and_then(viewed)
    }

    /// One operator, if known.
    pub async fn get(&self, operator_id: i64) -> Result<Option<OperatorView>, PresenceError> {
        self.call(None, |reply| Command::Get { operator_id, reply })
            .await?
    }

    /// Every operator the state knows, by id, and the version the listing is
    /// as of.
    pub async fn list(&self) -> Result<Listing, PresenceError> {
        self.call(None, |reply| Command::List { reply }).await?
    }

    /// Makes the actor handle the timers that have ended, now.
    #[cfg(test)]
    pub async fn fire_timers(&self) -> Result<(), PresenceError> {
        self.call(None, |reply| Command::FireTimers { reply }).await
    }

    async fn change(&self, origin: Option<String>, op: Op) -> Result<Outcome, PresenceError> {
        self.call(origin, |reply| Command::Change { op, reply })
            .await?
    }

    async fn call<T>(
        &self,
        origin: Option<String>,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope {
            command: command(reply),
            span: Span::current(),
            origin,
        };
        self.commands
            .send(envelope)
            .await
            .map_err(|_| PresenceError::Unavailable)?;
        answer.await.map_err(|_| PresenceError::Unavailable)
    }
}

/// The operator a change was about (opens, statuses and loads always have
/// one).
fn viewed(outcome: Outcome) -> Result<OperatorView, PresenceError> {
    outcome.view.ok_or(PresenceError::Unavailable)
}

/// The task applying changes.
struct Actor {
    settings: Settings,
    clock: Clock,
    /// Chosen statuses stored in the database, for operators the state has
    /// no record of: read at the start, and kept up to date with this
    /// replica's own choices.
    defaults: HashMap<i64, ChosenStatus>,
    state: Arc<dyn StateStore>,
    inbox: mpsc::Receiver<Envelope>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn StatusStore>,
    shutdown: CancellationToken,
    /// When the earliest timer known to this replica ends (ms).
    next_due_ms: Option<i64>,
    /// When to look for timers other replicas set (shared state only).
    next_poll: Option<Instant>,
}

impl Actor {
    async fn run(mut self) {
        tracing::debug!("presence actor started");
        self.look_for_timers().await;
        let mut count_every = tokio::time::interval(crate::metrics::COUNT_EVERY);
        count_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = [
                self.next_due_ms.map(|ms| self.clock.instant_at(ms)),
                self.next_poll,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                // Shutdown first, then due timers before new commands, so a
                // command never observes a deadline that has passed unheeded.
                biased;
                () = self.shutdown.cancelled() => break,
                () = sleep_until(wake) => self.fire_timers().await,
                _ = count_every.tick() => self.count_operators().await,
                envelope = self.inbox.recv() => match envelope {
                    Some(envelope) => self.handle(envelope).await,
                    None => break,
                },
            }
        }
        tracing::debug!("presence actor stopped");
    }

    /// Sets the operators-by-status gauge from a listing of the state (with
    /// Redis, the one every replica shares: each replica reports the same
    /// counts). A listing that cannot be read leaves the gauge as it was.
    async fn count_operators(&self) {
        match self.state.list().await {
            Ok((operators, _)) => {
                let max_handoffs = self.settings.max_handoffs;
                crate::metrics::operators(
                    operators
                        .iter()
                        .map(|(id, op)| view_of(*id, op, max_handoffs).status),
                );
            }
            Err(cause) => {
                tracing::debug!(%cause, "operators not counted: the state could not be listed")
            }
        }
    }

    /// Handles the timers that have ended, then looks for the next one.
    async fn fire_timers(&mut self) {
        let span = tracing::info_span!("presence_timers");
        let due = self
            .state
            .due(self.clock.now_ms(), DUE_BATCH)
            .instrument(span.clone())
            .await;
        let mut failed = false;
        match due {
            Ok(timers) => {
                for timer in timers {
                    let op = Op::Expire(timer);
                    if let Err(cause) = self.change(&op, None, &span).await {
                        tracing::warn!(parent: &span, %cause, ?op, "an ended timer could not be handled; trying again later");
                        failed = true;
                    }
                }
            }
            Err(cause) => {
                tracing::warn!(parent: &span, %cause, "the timers could not be read; trying again later");
                failed = true;
            }
        }
        self.look_for_timers().await;
        if failed {
            // Not at once: what failed would most likely fail again.
            self.next_due_ms = None;
            self.next_poll = Some(Instant::now() + POLL_TIMERS);
        }
    }

    /// Learns when the earliest timer ends; with a shared state, also when
    /// to look again (other replicas set timers too).
    async fn look_for_timers(&mut self) {
        match self.state.next_due().await {
            Ok(next) => self.next_due_ms = next,
            Err(cause) => {
                tracing::warn!(%cause, "the next timer could not be read; trying again later");
                self.next_due_ms = None;
            }
        }
        self.next_poll = self.state.shared().then(|| Instant::now() + POLL_TIMERS);
    }

    /// Applies one command, announces what it changed, then answers it.
    async fn handle(&mut self, envelope: Envelope) {
        let Envelope {
            command,
            span,
            origin,
        } = envelope;
        match command {
            Command::Change { op, reply } => {
                let result = self.stored_then_changed(op, origin, &span).await;
                let _ = reply.send(result);
            }
            Command::Get { operator_id, reply } => {
                let max_handoffs = self.settings.max_handoffs;
                let result = self
                    .state
                    .operator(operator_id)
                    .instrument(span.clone())
                    .await
                    .map(|record| record.map(|op| view_of(operator_id, &op, max_handoffs)))
                    .map_err(|cause| unavailable(cause, &span));
                let _ = reply.send(result);
            }
            Command::List { reply } => {
                let max_handoffs = self.settings.max_handoffs;
                let result = self
                    .state
                    .list()
                    .instrument(span.clone())
                    .await
                    .map(|(operators, version)| Listing {
                        operators: operators
                            .iter()
                            .map(|(id, op)| view_of(*id, op, max_handoffs))
                            .collect(),
                        version,
                    })
                    .map_err(|cause| unavailable(cause, &span));
                let _ = reply.send(result);
            }
            #[cfg(test)]
            Command::FireTimers { reply } => {
                self.fire_timers().await;
                let _ = reply.send(());
            }
        }
    }

    /// A change; a chosen status is stored first: an answer means it
    /// survives a restart, and a failed write changes nothing.
    async fn stored_then_changed(
        &mut self,
        op: Op,
        origin: Option<String>,
        span: &Span,
    ) -> Result<Outcome, PresenceError> {
        if let Op::SetStatus {
            operator_id,
            status,
        } = op
        {
            let saved = self
                .store
                .save_chosen(operator_id, status, chatai_kit::now_ms())
                .instrument(span.clone())
                .await;
            if let Err(cause) = saved {
                tracing::error!(parent: span, %cause, operator_id, "the chosen status could not be stored");
                return Err(PresenceError::Storage);
            }
            self.defaults.insert(operator_id, status);
        }
        self.change(&op, origin, span)
            .await
            .map_err(|cause| unavailable(cause, span))
    }

    /// Reads what `op` needs, decides, commits; again on a conflict. Once
    /// committed, the change's events are out.
    async fn change(
        &mut self,
        op: &Op,
        origin: Option<String>,
        span: &Span,
    ) -> Result<Outcome, StateError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let gateway = match op.gateway() {
                Some(id) => Some((
                    id.to_owned(),
                    self.state.gateway(id).instrument(span.clone()).await?,
                )),
                None => None,
            };
            let ids: Vec<i64> = op
                .operators(gateway.as_ref().and_then(|(_, read)| read.record.as_ref()))
                .into_iter()
                .collect();
            let read = self.state.operators(&ids).instrument(span.clone()).await?;
            let mut working = Working::new(
                self.settings,
                self.clock.now_ms(),
                &self.defaults,
                gateway,
                read,
            );
            let outcome = span.in_scope(|| working.apply(op));
            let events = self.events(&outcome.changes, &origin, span);
            let commit = working.into_commit(op.fired(), events);
            let earliest = commit.timers.iter().filter_map(|(_, ends)| *ends).min();
            match self.state.commit(commit).instrument(span.clone()).await? {
                Committed::Applied { unpublished } => {
                    if let Some(ends) = earliest {
                        self.next_due_ms = Some(self.next_due_ms.map_or(ends, |at| at.min(ends)));
                    }
                    for view in &outcome.changes {
                        tracing::info!(
                            parent: span,
                            operator_id = view.operator_id,
                            status = view.status.as_str(),
                            chosen_status = ?view.chosen_status,
                            online = view.online,
                            active_handoffs = view.active_handoffs,
                            connections = view.connections,
                            version = view.version,
                            "operator status changed"
                        );
                    }
                    self.deliver(unpublished, span).await;
                    return Ok(outcome);
                }
                Committed::Conflict => {
                    tracing::debug!(parent: span, attempt, "presence change conflicted; reading again");
                }
            }
        }
        Err(StateError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// One `operator_status_change` per changed operator, for every
    /// operator connection.
    fn events(
        &self,
        changes: &[OperatorView],
        origin: &Option<String>,
        span: &Span,
    ) -> Vec<Arc<Event>> {
        changes
            .iter()
            .filter_map(|view| {
                let event = span.in_scope(|| {
                    Event::new(OPERATOR_STATUS_CHANGE, &OperatorStatusChange::from(view))
                });
                match event {
                    Ok(event) => Some(Arc::new(event.with_origin(origin.clone()))),
                    Err(cause) => {
                        tracing::error!(parent: span, %cause, "operator_status_change could not be built");
                        None
                    }
                }
            })
            .collect()
    }

    /// Delivers the events the store did not publish. A failure is logged:
    /// the state has changed either way, and the next change carries the
    /// whole picture again.
    async fn deliver(&self, events: Vec<Arc<Event>>, span: &Span) {
        for event in events {
            if let Err(cause) = self
                .log
                .deliver(Recipient::Role(Role::Operator), event)
                .instrument(span.clone())
                .await
            {
                tracing::warn!(parent: span, %cause, "operator_status_change was not delivered");
            }
        }
    }
}

/// Waits until `wake`; forever when there is nothing to wait for.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake).await,
        None => std::future::pending().await,
    }
}

/// A state that cannot be read or written, logged here and answered as
/// UNAVAILABLE (callers retry).
fn unavailable(cause: StateError, span: &Span) -> PresenceError {
    tracing::error!(parent: span, %cause, "the presence state is unavailable");
    PresenceError::State
}

#[cfg(test)]
mod tests {
    //! The state machine through the actor, on tokio's paused clock: time
    //! only moves when a test advances it, so grace periods and leases are
    //! exercised without waiting.

    use super::*;
    use chatai_kit::config::EventLogConfig;
    use chatai_kit::events::Delivery;
    use chatai_kit::events::memory::MemoryLog;
    use tokio::sync::broadcast;
    use tokio::sync::broadcast::error::TryRecvError;

    use crate::model::Status;
    use crate::state::memory::MemoryState;
    use crate::store::memory::MemoryStatusStore;

    const GRACE: Duration = Duration::from_secs(30);
    const MAX: u32 = 3;

    struct Fixture {
        handle: PresenceHandle,
        live: broadcast::Receiver<Delivery>,
        supervisor: Supervisor,
    }

    fn start(grace: Duration) -> Fixture {
        start_with(
            grace,
            Arc::new(MemoryStatusStore::default()),
            HashMap::new(),
        )
    }

    /// A presence service whose store is `store`, holding `stored` at start.
    fn start_with(
        grace: Duration,
        store: Arc<MemoryStatusStore>,
        stored: HashMap<i64, ChosenStatus>,
    ) -> Fixture {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
        let live = log.live();
        let supervisor = Supervisor::new(CancellationToken::new());
        let config = PresenceConfig {
            grace_period_secs: grace.as_secs(),
            max_handoffs: MAX,
        };
        let handle = PresenceHandle::spawn(
            &config,
            log,
            Arc::new(MemoryState::default()),
            store,
            stored,
            &supervisor,
        );
        Fixture {
            handle,
            live,
            supervisor,
        }
    }

    fn conn(operator_id: i64, connection_id: &str) -> Connection {
        Connection {
            operator_id,
            connection_id: connection_id.to_owned(),
            name: format!("Op {operator_id}"),
        }
    }

    impl Fixture {
        async fn open(&self, gateway: &str, operator_id: i64, connection_id: &str) -> OperatorView {
            self.handle
                .connection_opened(gateway.into(), conn(operator_id, connection_id), None)
                .await
                .expect("the actor answers")
        }

        async fn close(&self, gateway: &str, connection_id: &str) {
            self.handle
                .connection_closed(gateway.into(), connection_id.into(), None)
                .await
                .expect("the actor answers");
        }

        async fn get(&self, operator_id: i64) -> OperatorView {
            self.handle
                .get(operator_id)
                .await
                .expect("the actor answers")
                .expect("the operator is known")
        }

        /// The next `operator_status_change` body.
        async fn next_change(&mut self) -> serde_json::Value {
            let delivery = self.live.recv().await.expect("the live fan-out is open");
            assert_eq!(delivery.recipient, Recipient::Role(Role::Operator));
            assert_eq!(delivery.event.kind, OPERATOR_STATUS_CHANGE);
            serde_json::from_slice(&delivery.event.body).expect("the body is JSON")
        }

        /// Asserts no event is pending once the actor has handled everything
        /// sent so far (a round trip: it publishes before taking the next
        /// command).
        async fn assert_quiet(&mut self) {
            self.handle.list().await.expect("the actor answers");
            match self.live.try_recv() {
                Err(TryRecvError::Empty) => {}
                other => panic!("expected no event, got {other:?}"),
            }
        }

        async fn stop(self) {
            self.supervisor.shutdown().cancel();
            self.supervisor
                .wait()
                .await
                .expect("the actor ran until shutdown");
        }
    }

    /// The first connection brings an operator online as available, with the
    /// full event body; a second connection changes nothing and says nothing.
    #[tokio::test(start_paused = true)]
    async fn first_connection_brings_operator_online() {
        let mut f = start(GRACE);
        let view = f.open("gw1", 7, "c1").await;
        assert_eq!(view.status, Status::Available);
        assert!(view.online);
        assert_eq!(view.connections, 1);
        assert_eq!(
            f.next_change().await,
            serde_json::json!({
                "operator_id": 7,
                "status": "available",
                "chosen_status": "available",
                "online": true,
                "active_handoffs": 0,
                "max_handoffs": MAX,
                "name": "Op 7",
                "version": view.version,
            })
        );
        assert!(view.version > 0, "a change has a version");
        assert_eq!(f.open("gw2", 7, "c2").await.connections, 2);
        // Opening the same connection again is idempotent.
        assert_eq!(f.open("gw2", 7, "c2").await.connections, 2);
        f.assert_quiet().await;
        f.stop().await;
    }

    /// After the last connection closes the operator stays online through the
    /// grace period, then goes offline with one event; closing one of two
    /// connections says nothing.
    #[tokio::test(start_paused = true)]
    async fn offline_only_after_the_grace_period() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.open("gw1", 7, "c2").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        f.assert_quiet().await;
        f.close("gw1", "c2").await;
        let view = f.get(7).await;
        assert!(view.online, "online during the grace period");
        assert_eq!(view.connections, 0);

        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        f.assert_quiet().await;
        assert!(f.get(7).await.online);

        tokio::time::advance(Duration::from_secs(2)).await;
        let change = f.next_change().await;
        assert_eq!(change["status"], "offline");
        assert_eq!(change["online"], false);
        assert_eq!(change["chosen_status"], "available");
        assert_eq!(f.get(7).await.status, Status::Offline);
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A reconnect within the grace period cancels it: no event then, and
    /// none when the original deadline passes.
    #[tokio::test(start_paused = true)]
    async fn reconnect_within_grace_is_invisible() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        tokio::time::advance(GRACE / 2).await;
        f.open("gw2", 7, "c9").await;
        tokio::time::advance(GRACE * 2).await;
        f.assert_quiet().await;
        let view = f.get(7).await;
        assert!(view.online);
        assert_eq!(view.connections, 1);
        f.stop().await;
    }

    /// With a zero grace period the operator is offline as soon as the last
    /// connection closes.
    #[tokio::test(start_paused = true)]
    async fn zero_grace_is_immediate() {
        let mut f = start(Duration::ZERO);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        assert_eq!(f.next_change().await["status"], "offline");
        f.stop().await;
    }

    /// A gateway that stops refreshing loses its connections when the lease
    /// expires; the operator then goes offline after the grace period.
    #[tokio::test(start_paused = true)]
    async fn expired_lease_drops_connections_then_grace_applies() {
        let mut f = start(GRACE);
        let ttl = Duration::from_secs(10);
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1"), conn(8, "c2")], ttl, None)
            .await
            .expect("the actor answers");
        assert_eq!(f.next_change().await["operator_id"], 7);
        assert_eq!(f.next_change().await["operator_id"], 8);

        // A refresh before expiry renews the lease.
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1"), conn(8, "c2")], ttl, None)
            .await
            .expect("the actor answers");
        tokio::time::advance(Duration::from_secs(5)).await;
        f.assert_quiet().await;
        assert_eq!(f.get(7).await.connections, 1);

        // No more refreshes: the lease expires, the connections go, and the
        // operators are still online (grace) with no event.
        tokio::time::advance(ttl).await;
        f.assert_quiet().await;
        let view = f.get(7).await;
        assert_eq!(view.connections, 0);
        assert!(view.online);

        // Both grace periods end at the same instant, in either order.
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let mut offline = [f.next_change().await, f.next_change().await];
        offline.sort_by_key(|change| change["operator_id"].as_i64());
        for (change, id) in offline.iter().zip([7, 8]) {
            assert_eq!(change["operator_id"], id);
            assert_eq!(change["status"], "offline");
        }
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A refresh replaces the gateway's set: connections it no longer lists
    /// are dropped, other gateways' connections are untouched.
    #[tokio::test(start_paused = true)]
    async fn refresh_replaces_the_gateways_set() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "a").await;
        f.open("gw1", 8, "b").await;
        f.open("gw2", 8, "c").await;
        f.next_change().await;
        f.next_change().await;
        f.handle
            .refresh(
                "gw1".into(),
                vec![conn(7, "a")],
                Duration::from_secs(60),
                None,
            )
            .await
            .expect("the actor answers");
        assert_eq!(f.get(7).await.connections, 1);
        assert_eq!(f.get(8).await.connections, 1, "gw2's connection stays");
        f.handle
            .refresh("gw1".into(), vec![], Duration::from_secs(60), None)
            .await
            .expect("the actor answers");
        let seven = f.get(7).await;
        assert_eq!(seven.connections, 0);
        assert!(seven.online, "the grace period applies");
        f.assert_quiet().await;
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let change = f.next_change().await;
        assert_eq!(change["operator_id"], 7);
        assert_eq!(change["status"], "offline");
        f.assert_quiet().await;
        f.stop().await;
    }

    /// Load at the cap makes an available operator busy and below it
    /// available again; a chosen away is never overridden, and choosing
    /// available while at the cap shows busy. Unchanged values say nothing.
    #[tokio::test(start_paused = true)]
    async fn load_and_chosen_status_derive_the_effective_status() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;

        let at_cap = f.handle.set_load(7, MAX).await.expect("answers");
        assert_eq!(at_cap.status, Status::Busy);
        let change = f.next_change().await;
        assert_eq!(change["status"], "busy");
        assert_eq!(change["chosen_status"], "available");
        assert_eq!(change["active_handoffs"], MAX);

        f.handle.set_load(7, MAX).await.expect("answers");
        f.assert_quiet().await;

        f.handle.set_load(7, MAX - 1).await.expect("answers");
        assert_eq!(f.next_change().await["status"], "available");

        f.handle
            .set_status(7, ChosenStatus::Away, None)
            .await
            .expect("answers");
        assert_eq!(f.next_change().await["status"], "away");
        f.handle.set_load(7, MAX).await.expect("answers");
        let change = f.next_change().await;
        assert_eq!(change["status"], "away", "auto-busy never overrides away");
        assert_eq!(change["active_handoffs"], MAX);

        f.handle
            .set_status(7, ChosenStatus::Available, None)
            .await
            .expect("answers");
        let change = f.next_change().await;
        assert_eq!(change["status"], "busy");
        assert_eq!(change["chosen_status"], "available");

        f.handle
            .set_status(7, ChosenStatus::Available, None)
            .await
            .expect("answers");
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A status chosen before any connection is recorded, and the chosen
    /// status survives going offline and coming back.
    #[tokio::test(start_paused = true)]
    async fn chosen_status_is_kept_across_reconnects() {
        let mut f = start(GRACE);
        assert!(f.handle.get(7).await.expect("answers").is_none());
        let view = f
            .handle
            .set_status(7, ChosenStatus::Away, None)
            .await
            .expect("answers");
        assert_eq!(view.status, Status::Offline);
        assert_eq!(view.chosen_status, ChosenStatus::Away);
        let change = f.next_change().await;
        assert_eq!(change["status"], "offline");
        assert_eq!(change["chosen_status"], "away");

        assert_eq!(f.open("gw1", 7, "c1").await.status, Status::Away);
        assert_eq!(f.next_change().await["status"], "away");
        f.close("gw1", "c1").await;
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert_eq!(f.next_change().await["status"], "offline");
        assert_eq!(f.open("gw1", 7, "c2").await.status, Status::Away);
        f.stop().await;
    }

    /// After shutdown the handle reports the service unavailable.
    #[tokio::test(start_paused = true)]
    async fn calls_after_shutdown_are_unavailable() {
        let f = start(GRACE);
        let handle = f.handle.clone();
        assert!(handle.is_running());
        f.stop().await;
        assert!(!handle.is_running());
        assert!(matches!(
            handle.list().await,
            Err(PresenceError::Unavailable)
        ));
    }

    fn order(incarnation: u64, sequence: u64) -> Option<ReportOrder> {
        Some(ReportOrder {
            incarnation,
            sequence,
        })
    }

    /// After a (re)start, an operator nobody has reported a connection for
    /// but who holds handoffs is online through one grace period — not
    /// offline at once (issue 9, item 1) — and offline after it unless they
    /// come back. An operator seen in this run and gone offline is not
    /// brought back by a load.
    #[tokio::test(start_paused = true)]
    async fn a_loaded_operator_unknown_since_the_start_gets_the_grace_period() {
        let mut f = start(GRACE);
        let view = f.handle.set_load(7, 1).await.expect("answers");
        assert!(view.online, "{view:?}");
        assert_eq!(view.connections, 0);
        let change = f.next_change().await;
        assert_eq!(change["online"], true);
        assert_eq!(change["active_handoffs"], 1);
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        f.assert_quiet().await;
        // Back in time: nothing more is said, and the grace period is over.
        f.open("gw1", 7, "c1").await;
        tokio::time::advance(GRACE * 2).await;
        f.assert_quiet().await;
        assert!(f.get(7).await.online);

        // Someone who does not come back goes offline after the grace.
        f.handle.set_load(8, 2).await.expect("answers");
        f.next_change().await;
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let change = f.next_change().await;
        assert_eq!(change["operator_id"], 8);
        assert_eq!(change["online"], false);
        // Known now: a later load does not make them online again.
        let view = f.handle.set_load(8, 3).await.expect("answers");
        assert!(!view.online, "{view:?}");
        assert_eq!(f.next_change().await["active_handoffs"], 3);
        f.stop().await;
    }

    /// A status chosen before a restart is the one an operator comes back
    /// with (issue 9, item 4), and every choice is written to the store.
    #[tokio::test(start_paused = true)]
    async fn a_stored_choice_is_kept_over_a_restart() {
        let store = Arc::new(MemoryStatusStore::default());
        let stored = HashMap::from([(7, ChosenStatus::Away)]);
        let mut f = start_with(GRACE, store.clone(), stored);
        assert!(
            f.handle.list().await.expect("answers").operators.is_empty(),
            "nothing is known of a stored operator until they are heard of"
        );
        let view = f.open("gw1", 7, "c1").await;
        assert_eq!(view.chosen_status, ChosenStatus::Away);
        assert_eq!(view.status, Status::Away);
        assert_eq!(f.next_change().await["status"], "away");

        f.handle
            .set_status(9, ChosenStatus::Busy, None)
            .await
            .expect("answers");
        assert_eq!(
            store.rows.lock().expect("not poisoned").get(&9),
            Some(&ChosenStatus::Busy)
        );
        f.stop().await;
    }

    /// A choice that cannot be stored is refused and changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_choice_that_cannot_be_stored_changes_nothing() {
        let store = Arc::new(MemoryStatusStore::default());
        let mut f = start_with(GRACE, store.clone(), HashMap::new());
        f.open("gw1", 7, "c1").await;
        f.next_change().await;
        store
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = f.handle.set_status(7, ChosenStatus::Away, None).await;
        assert!(
            matches!(refused, Err(PresenceError::Storage)),
            "{refused:?}"
        );
        f.assert_quiet().await;
        assert_eq!(f.get(7).await.chosen_status, ChosenStatus::Available);
        f.stop().await;
    }

    /// An event log whose deliveries wait until the test lets them through.
    struct HeldLog {
        inner: MemoryLog,
        open: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl EventLog for HeldLog {
        async fn deliver(
            &self,
            recipient: Recipient,
            event: Arc<Event>,
        ) -> Result<u64, chatai_kit::events::EventLogError> {
            let _pass = self.open.acquire().await;
            self.inner.deliver(recipient, event).await
        }
        async fn publish(
            &self,
            recipient: Recipient,
            event: Arc<Event>,
        ) -> Result<(), chatai_kit::events::EventLogError> {
            self.inner.publish(recipient, event).await
        }
        async fn read(
            &self,
            recipient: &Recipient,
            from: chatai_kit::events::ReplayFrom,
            limit: usize,
        ) -> Result<chatai_kit::events::LogPage, chatai_kit::events::EventLogError> {
            self.inner.read(recipient, from, limit).await
        }
        async fn mark_seen(
            &self,
            recipient: &Recipient,
            position: u64,
        ) -> Result<(), chatai_kit::events::EventLogError> {
            self.inner.mark_seen(recipient, position).await
        }
        fn live(&self) -> broadcast::Receiver<Delivery> {
            self.inner.live()
        }
        async fn trim(&self) -> Result<(), chatai_kit::events::EventLogError> {
            self.inner.trim().await
        }
        async fn stats(
            &self,
        ) -> Result<chatai_kit::events::LogStats, chatai_kit::events::EventLogError> {
            self.inner.stats().await
        }
    }

    /// The answer to `set_status` comes after its `operator_status_change`
    /// is out (issue 9, item 8): a caller told "away" knows every follower
    /// can already read it, so no handoff is given to them after the answer
    /// by a follower that was not told.
    #[tokio::test(start_paused = true)]
    async fn the_answer_comes_after_the_announcement() {
        let log = Arc::new(HeldLog {
            inner: MemoryLog::new(&EventLogConfig::default()),
            open: tokio::sync::Semaphore::new(0),
        });
        let supervisor = Supervisor::new(CancellationToken::new());
        let config = PresenceConfig {
            grace_period_secs: GRACE.as_secs(),
            max_handoffs: MAX,
        };
        let handle = PresenceHandle::spawn(
            &config,
            log.clone(),
            Arc::new(MemoryState::default()),
            Arc::new(MemoryStatusStore::default()),
            HashMap::new(),
            &supervisor,
        );
        let mut live = log.live();
        let answer = handle.set_status(7, ChosenStatus::Away, None);
        tokio::pin!(answer);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), &mut answer)
                .await
                .is_err(),
            "no answer while the announcement is held"
        );
        log.open.add_permits(100);
        let view = answer.await.expect("answered once announced");
        assert_eq!(view.chosen_status, ChosenStatus::Away);
        let delivery = live.try_recv().expect("announced before the answer");
        assert_eq!(delivery.event.kind, OPERATOR_STATUS_CHANGE);
        supervisor.shutdown().cancel();
        supervisor.wait().await.expect("stops");
    }

    /// Reports from one gateway applied in the order they happened, whatever
    /// the order they arrive in (issue 9, item 8): a lease refresh read
    /// before a close does not bring the closed connection back, one read
    /// before an open does not drop the new connection, an older open or
    /// close is ignored, and a newer run of the gateway starts afresh.
    #[tokio::test(start_paused = true)]
    async fn a_gateways_reports_apply_in_the_order_they_happened() {
        let mut f = start(GRACE);
        let ttl = Duration::from_secs(60);
        let open = |id: &str, sequence| {
            f.handle
                .connection_opened("gw1".into(), conn(7, id), order(1, sequence))
        };
        open("c1", 1).await.expect("answers");
        f.next_change().await;
        // The lease read the list (c1 open) at 2; c1 closes at 3; the
        // close arrives first.
        f.handle
            .connection_closed("gw1".into(), "c1".into(), order(1, 3))
            .await
            .expect("answers");
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1")], ttl, order(1, 2))
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 0, "c1 stays closed");

        // c2 opens at 5; a lease read at 4 (without c2) arrives after it.
        f.handle
            .connection_opened("gw1".into(), conn(7, "c2"), order(1, 5))
            .await
            .expect("answers");
        f.handle
            .refresh("gw1".into(), vec![], ttl, order(1, 4))
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 1, "c2 stays open");

        // An open of c3 at 6 arriving after its close at 7 is ignored.
        f.handle
            .connection_closed("gw1".into(), "c3".into(), order(1, 7))
            .await
            .expect("answers");
        f.handle
            .connection_opened("gw1".into(), conn(7, "c3"), order(1, 6))
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 1, "c3 never counts");

        // A newer lease (8) is the whole truth again.
        f.handle
            .refresh(
                "gw1".into(),
                vec![conn(7, "c2"), conn(7, "c4")],
                ttl,
                order(1, 8),
            )
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 2);

        // The gateway restarted (run 2): its first lease replaces
        // everything, and late reports of run 1 change nothing.
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1")], ttl, order(2, 1))
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 1);
        f.handle
            .connection_opened("gw1".into(), conn(7, "c9"), order(1, 99))
            .await
            .expect("answers");
        f.handle
            .connection_closed("gw1".into(), "c1".into(), order(1, 100))
            .await
            .expect("answers");
        assert_eq!(f.get(7).await.connections, 1, "run 1 is over");
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A listing says the version it is as of: every change it reflects has
    /// a version at or below it, and the next change one above.
    #[tokio::test(start_paused = true)]
    async fn a_listing_is_as_of_a_version() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.open("gw1", 8, "c2").await;
        let first = f.next_change().await["version"]
            .as_u64()
            .expect("a version");
        let second = f.next_change().await["version"]
            .as_u64()
            .expect("a version");
        assert!(second > first);
        let listing = f.handle.list().await.expect("answers");
        assert_eq!(listing.version, second);
        assert!(
            listing
                .operators
                .iter()
                .all(|op| op.version <= listing.version)
        );
        f.handle.set_load(7, 1).await.expect("answers");
        let third = f.next_change().await["version"]
            .as_u64()
            .expect("a version");
        assert!(third > listing.version);
        f.stop().await;
    }
}
