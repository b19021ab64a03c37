//! The queue of dialogs waiting for a human, and their assignment: one actor
//! task ([`Queue`]) owns every active handoff and the view of operators, and
//! a cloneable handle ([`HandoffService`]) sends it commands over a bounded
//! channel: one task owns the state, so no lock guards it.
//!
//! The actor reacts to four kinds of signal — a call (request, completion,
//! reply, read), an operator update from presence, a timer (no reply, waited
//! too long), a retry after a storage failure — and after each one
//! *settles*: tells new arrivals their place, gives the head of the queue to
//! the best eligible operator for as long as there is one, then tells every
//! user whose position changed. Each transition is written to the store
//! before any event about it goes out; the events are best effort after that
//! (a failed delivery is logged, the transition stands).
//!
//! Timers are deadlines on [`tokio::time::Instant`], checked by the actor's
//! loop (the next one is found by a scan: the queue is bounded by
//! `max_queue_len`, the assigned handoffs by the operators' caps), so tests
//! drive them with tokio's paused clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::holders::{self, HeldBy, HolderNote, NotedFor, VersionClock};
use chatai_kit::identity::{Caller, Role};
use chatai_kit::now_ms;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::directory::{ChosenStatus, OperatorDirectory, OperatorUpdate, OperatorView};
use crate::error::HandoffError;
use crate::events::{
    DEFAULT_RESOLUTION, DequeuedReason, HandoffCompleted, HandoffDequeued, HandoffQueued,
    HandoffRequest, OperatorAssigned, Outcome, REASSIGNED_NO_REPLY, REASSIGNED_OFFLINE,
    TRANSFERRED,
};
use crate::queue::{self, Operator, QueueKey, RecentHandling};
use crate::store::{
    CANCELLED, Handoff, HandoffState, HandoffStore, NewHandoff, Priority, RETURNED_TO_ASSISTANT,
    StoreError,
};
use crate::transcripts::{NoTranscripts, Transcripts};

/// Commands buffered for the actor before callers wait. Each is handled in
/// well under a millisecond plus one storage write, so 1024 absorbs bursts of
/// requests from every gateway without unbounded memory.
const COMMAND_BUFFER: usize = 1024;
/// How long the actor waits before retrying a transition the store refused.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest reason or resolution accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// The queue's rules, in domain units (from [`crate::HandoffConfig`]).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most handoffs one operator holds at once.
    pub max_handoffs: u32,
    /// An assigned handoff whose operator has not replied within this is taken back.
    pub reply_timeout: Duration,
    /// A handoff waiting longer than this goes back to the assistant.
    pub max_queue_time: Duration,
    /// Most handoffs waiting at once.
    pub max_queue_len: usize,
    /// Most handoffs one user may have waiting at once.
    pub max_queued_per_user: usize,
    /// Assumed handling time before any handoff was completed.
    pub default_handling: Duration,
}

/// A request for a human operator, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub dialog_id: i64,
    pub user_id: i64,
    pub reason: String,
    pub priority: Priority,
}

/// A handoff as callers see it: the stored record and its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffView {
    pub handoff: Handoff,
    /// 1-based position while queued, else 0.
    pub position: u32,
    /// Queued: the estimated wait (`None` when nobody could serve the
    /// queue); assigned: the wait the user had; else 0.
    pub wait_secs: Option<u32>,
    /// Online operators who chose available (who serve the queue).
    pub operators_online: u32,
    /// Queued: seconds since it (re-)entered the queue; else 0.
    pub waiting_secs: u32,
}

/// A completed handoff and how long its operator had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub view: HandoffView,
    pub duration_secs: u32,
}

/// The queue (in order) and the assigned handoffs (oldest assignment first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub queued: Vec<HandoffView>,
    pub assigned: Vec<HandoffView>,
    /// The holder version this listing is as of ([`chatai_kit::holders`]).
    pub version: u64,
}

/// A dialog's active handoff, if any, as of a holder version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub view: Option<HandoffView>,
    pub version: u64,
}

type Reply<T> = oneshot::Sender<Result<T, HandoffError>>;

enum Command {
    Request {
        request: NewRequest,
        reply: Reply<HandoffView>,
    },
    Complete {
        caller: Caller,
        dialog_id: i64,
        resolution: String,
        reply: Reply<Completed>,
    },
    Active {
        caller: Caller,
        dialog_id: i64,
        reply: Reply<Holding>,
    },
    Replied {
        dialog_id: i64,
        operator_id: i64,
        reply: Reply<()>,
    },
    List {
        reply: Reply<Listing>,
    },
    Transfer {
        caller: Caller,
        dialog_id: i64,
        to: Option<i64>,
        reason: String,
        reply: Reply<HandoffView>,
    },
    Claim {
        caller: Caller,
        dialog_id: i64,
        reply: Reply<HandoffView>,
    },
    Cancel {
        caller: Caller,
        dialog_id: i64,
        reply: Reply<HandoffView>,
    },
}

/// A command and the span of the call that sent it, so that the actor's work
/// (and the trace context of the events it sends) belongs to that call.
struct Envelope {
    command: Command,
    span: tracing::Span,
}

/// The handle to the queue. Cheap to clone. Checks who may call what, then
/// hands the call to the actor.
#[derive(Clone)]
pub struct HandoffService {
    commands: mpsc::Sender<Envelope>,
}

impl HandoffService {
    /// Loads every queued and assigned handoff from `store` and returns the
    /// handle and the actor, which the caller runs ([`Queue::run`]). Assigned
    /// handoffs keep their operator and get a fresh reply timer (unless the
    /// operator already replied); queued ones keep their place and the time
    /// they have waited.
    pub async fn load(
        store: Arc<dyn HandoffStore>,
        log: Arc<dyn EventLog>,
        directory: Arc<dyn OperatorDirectory>,
        updates: mpsc::Receiver<OperatorUpdate>,
        policy: Policy,
        shutdown: CancellationToken,
    ) -> Result<(HandoffService, Queue), StoreError> {
        let active = store.active().await?;
        let recent = store
            .recent_handling_ms(RecentHandling::KEEP as u32)
            .await?
            .into_iter()
            .map(|ms| Duration::from_millis(ms.max(0) as u64));
        let (commands_tx, commands) = mpsc::channel(COMMAND_BUFFER);
        let mut queue = Queue {
            store,
            log,
            directory,
            transcripts: Arc::new(NoTranscripts),
            recent: RecentHandling::new(recent, policy.default_handling),
            policy,
            commands,
            updates: Some(updates),
            shutdown,
            handoffs: HashMap::new(),
            by_dialog: HashMap::new(),
            waiting: BTreeSet::new(),
            operators: HashMap::new(),
            retry_drain_at: None,
            versions: VersionClock::default(),
        };
        queue.restore(active);
        Ok((
            HandoffService {
                commands: commands_tx,
            },
            queue,
        ))
    }

    /// Queues a handoff (and assigns it at once when someone is free).
    /// Services and admins only: users ask through the chat service, which
    /// checks the dialog is theirs.
    pub async fn request(
        &self,
        caller: &Caller,
        request: NewRequest,
    ) -> Result<HandoffView, HandoffError> {
        if !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        if request.dialog_id <= 0 {
            return Err(HandoffError::Missing("dialog_id"));
        }
        if request.user_id <= 0 {
            return Err(HandoffError::Missing("user_id"));
        }
        let reason = request.reason.trim().to_owned();
        if reason.chars().count() > MAX_TEXT_CHARS {
            return Err(HandoffError::ReasonTooLong {
                max: MAX_TEXT_CHARS,
            });
        }
        let request = NewRequest { reason, ..request };
        self.call(|reply| Command::Request { request, reply }).await
    }

    /// Ends the dialog's handoff: by its operator, or an admin / service
    /// (who may also end one still queued).
    pub async fn complete(
        &self,
        caller: &Caller,
        dialog_id: i64,
        resolution: &str,
    ) -> Result<Completed, HandoffError> {
        if !matches!(caller.role, Role::Operator) && !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        let resolution = match resolution.trim() {
            "" => DEFAULT_RESOLUTION.to_owned(),
            text if text.chars().count() > MAX_TEXT_CHARS => {
                return Err(HandoffError::ReasonTooLong {
                    max: MAX_TEXT_CHARS,
                });
            }
            text => text.to_owned(),
        };
        let caller = caller.clone();
        self.call(|reply| Command::Complete {
            caller,
            dialog_id,
            resolution,
            reply,
        })
        .await
    }

    /// The dialog's queued or assigned handoff, if any: for admins and
    /// services, or the operator holding it.
    pub async fn active(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<Option<HandoffView>, HandoffError> {
        Ok(self.holding(caller, dialog_id).await?.view)
    }

    /// As [`active`](Self::active), with the holder version it is as of.
    pub async fn holding(&self, caller: &Caller, dialog_id: i64) -> Result<Holding, HandoffError> {
        if !matches!(caller.role, Role::Operator) && !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        let caller = caller.clone();
        self.call(|reply| Command::Active {
            caller,
            dialog_id,
            reply,
        })
        .await
    }

    /// The operator holding the dialog replied (the chat service says so):
    /// their no-reply timer stops. Admins and services only.
    pub async fn operator_replied(
        &self,
        caller: &Caller,
        dialog_id: i64,
        operator_id: i64,
    ) -> Result<(), HandoffError> {
        if !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        self.call(|reply| Command::Replied {
            dialog_id,
            operator_id,
            reply,
        })
        .await
    }

    /// The queue and the assigned handoffs: operators, admins, services.
    pub async fn list(&self, caller: &Caller) -> Result<Listing, HandoffError> {
        if !matches!(caller.role, Role::Operator) && !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        self.call(|reply| Command::List { reply }).await
    }

    /// The holding operator (or an admin / service) hands the dialog on: to
    /// operator `to` if they are online and under the cap
    /// ([`HandoffError::OperatorUnavailable`] otherwise), or, without `to`,
    /// back to the queue at the front of its priority.
    pub async fn transfer(
        &self,
        caller: &Caller,
        dialog_id: i64,
        to: Option<i64>,
        reason: &str,
    ) -> Result<HandoffView, HandoffError> {
        if !matches!(caller.role, Role::Operator) && !caller.role.is_privileged() {
            return Err(HandoffError::Forbidden);
        }
        let reason = reason.trim();
        if reason.chars().count() > MAX_TEXT_CHARS {
            return Err(HandoffError::ReasonTooLong {
                max: MAX_TEXT_CHARS,
            });
        }
        let (caller, reason) = (caller.clone(), reason.to_owned());
        let to = to.filter(|id| *id > 0);
        self.call(|reply| Command::Transfer {
            caller,
            dialog_id,
            to,
            reason,
            reply,
        })
        .await
    }

    /// An operator under the cap takes a queued dialog out of order, whatever
    /// status they chose. Operators only.
    pub async fn claim(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffView, HandoffError> {
        if caller.role != Role::Operator {
            return Err(HandoffError::Forbidden);
        }
        let caller = caller.clone();
        self.call(|reply| Command::Claim {
            caller,
            dialog_id,
            reply,
        })
        .await
    }

    /// The dialog's owner (or an admin / service) withdraws a handoff while
    /// it waits; the assistant has the dialog again. Someone else's dialog
    /// gets the answer a dialog without a handoff gets.
    pub async fn cancel(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffView, HandoffError> {
        if caller.role == Role::Operator {
            return Err(HandoffError::Forbidden);
        }
        let caller = caller.clone();
        self.call(|reply| Command::Cancel {
            caller,
            dialog_id,
            reply,
        })
        .await
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, HandoffError> {
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope {
            command: command(reply),
            span: tracing::Span::current(),
        };
        self.commands
            .send(envelope)
            .await
            .map_err(|_| HandoffError::Stopped)?;
        answer.await.map_err(|_| HandoffError::Stopped)?
    }
}

/// One active handoff as the actor holds it.
#[derive(Debug)]
struct Entry {
    handoff: Handoff,
    /// When it (re-)entered the queue, on the actor's clock.
    queued_at: Instant,
    /// Assigned and no reply yet: when it is taken back.
    reply_deadline: Option<Instant>,
    /// The position last sent to the user (`None`: not told since it entered
    /// the queue).
    told_position: Option<u32>,
    /// The operator it was just taken from, passed over when possible.
    avoid: Option<i64>,
    /// After a failed timed transition: not retried before this.
    hold_until: Option<Instant>,
    /// Its operator went offline and taking it back failed: retried (after
    /// `hold_until`) whether or not they had replied.
    holder_offline: bool,
}

impl Entry {
    fn new(handoff: Handoff, queued_at: Instant) -> Self {
        Entry {
            handoff,
            queued_at,
            reply_deadline: None,
            told_position: None,
            avoid: None,
            hold_until: None,
            holder_offline: false,
        }
    }

    fn is_queued(&self) -> bool {
        self.handoff.state == HandoffState::Queued
    }

    /// When this entry's timer fires, if it has one.
    fn due(&self, policy: &Policy) -> Option<Instant> {
        let due = match self.handoff.state {
            HandoffState::Queued => Some(self.queued_at + policy.max_queue_time),
            HandoffState::Assigned if self.holder_offline => self.hold_until,
            HandoffState::Assigned => self.reply_deadline,
            _ => None,
        }?;
        Some(self.hold_until.map_or(due, |hold| hold.max(due)))
    }
}

/// The actor: owns the queue, the assigned handoffs and the operator view.
pub struct Queue {
    store: Arc<dyn HandoffStore>,
    log: Arc<dyn EventLog>,
    directory: Arc<dyn OperatorDirectory>,
    /// Where the transcript of an assigned dialog comes from.
    transcripts: Arc<dyn Transcripts>,
    policy: Policy,
    commands: mpsc::Receiver<Envelope>,
    /// `None` once the presence follower has stopped.
    updates: Option<mpsc::Receiver<OperatorUpdate>>,
    shutdown: CancellationToken,
    /// Every queued and assigned handoff, by id.
    handoffs: HashMap<i64, Entry>,
    /// The active handoff of each dialog.
    by_dialog: HashMap<i64, i64>,
    /// The queued handoffs, in serving order.
    waiting: BTreeSet<QueueKey>,
    /// Operators presence told of, and those holding handoffs.
    operators: HashMap<i64, Operator>,
    recent: RecentHandling,
    /// After a failed assignment: drain again then.
    retry_drain_at: Option<Instant>,
    /// Stamps every change of a dialog's holder (notes, listings).
    versions: VersionClock,
}

impl Queue {
    /// Reads the transcript an assigned operator gets from `transcripts`
    /// (none by default).
    pub fn with_transcripts(mut self, transcripts: Arc<dyn Transcripts>) -> Self {
        self.transcripts = transcripts;
        self
    }

    /// Handles commands, operator updates and timers until shutdown (or
    /// until every handle is gone).
    pub async fn run(mut self) {
        self.report_all_loads();
        self.settle().await;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                envelope = self.commands.recv() => match envelope {
                    Some(Envelope { command, span }) => {
                        self.on_command(command).instrument(span).await;
                    }
                    None => break,
                },
                update = next_update(&mut self.updates) => match update {
                    Some(update) => self.on_update(update).await,
                    None => {
                        tracing::debug!("presence follower stopped; no more operator updates");
                        self.updates = None;
                    }
                },
                _ = sleep_until(wake) => self.on_timers().await,
            }
            let queued = self.waiting.len();
            crate::metrics::queue(queued, self.handoffs.len().saturating_sub(queued));
        }
        // The term is over (the lease lost, or stopping): a standby reports
        // no queue, so only the leader's gauges count.
        crate::metrics::queue(0, 0);
        tracing::debug!("handoff queue stopped");
    }

    // ---------------------------------------------------------------------
    // Restoring after a restart
    // ---------------------------------------------------------------------

    fn restore(&mut self, active: Vec<Handoff>) {
        self.versions.tick();
        let now = Instant::now();
        let now_wall = now_ms();
        for handoff in active {
            let waited =
                Duration::from_millis((now_wall - handoff.queued_since_ms()).max(0) as u64);
            let queued_at = now.checked_sub(waited).unwrap_or(now);
            let mut entry = Entry::new(handoff, queued_at);
            match entry.handoff.state {
                HandoffState::Queued => {
                    self.waiting.insert(QueueKey::of(&entry.handoff));
                }
                HandoffState::Assigned => {
                    if let Some(operator_id) = entry.handoff.operator_id {
                        let name = entry.handoff.operator_name.clone().unwrap_or_default();
                        let operator = self.operator_entry(operator_id, &name);
                        operator.load += 1;
                    }
                    if entry.handoff.first_reply_at_ms.is_none() {
                        entry.reply_deadline = Some(now + self.policy.reply_timeout);
                    }
                }
                HandoffState::Completed | HandoffState::Returned => continue,
            }
            self.by_dialog
                .insert(entry.handoff.dialog_id, entry.handoff.id);
            self.handoffs.insert(entry.handoff.id, entry);
        }
        // The users were told their positions before the restart.
        let positions: Vec<(i64, u32)> = self.positions().collect();
        for (id, position) in positions {
            if let Some(entry) = self.handoffs.get_mut(&id) {
                entry.told_position = Some(position);
            }
        }
        tracing::info!(
            queued = self.waiting.len(),
            assigned = self.handoffs.len() - self.waiting.len(),
            "handoffs restored"
        );
    }

    /// The operator's entry, created (offline, unknown to presence) if needed.
    fn operator_entry(&mut self, operator_id: i64, name: &str) -> &mut Operator {
        self.operators
            .entry(operator_id)
            .or_insert_with(|| Operator {
                id: operator_id,
                name: name.to_owned(),
                online: false,
                chosen: ChosenStatus::Away,
                load: 0,
                last_active: None,
            })
    }

    // ---------------------------------------------------------------------
    // Calls
    // ---------------------------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { request, reply } => {
                let result = self.request(request).await;
                let _ = reply.send(result);
            }
            Command::Complete {
                caller,
                dialog_id,
                resolution,
                reply,
            } => {
                let result = self.complete(&caller, dialog_id, &resolution).await;
                let _ = reply.send(result);
            }
            Command::Active {
                caller,
                dialog_id,
                reply,
            } => {
                let _ = reply.send(self.active(&caller, dialog_id));
            }
            Command::Replied {
                dialog_id,
                operator_id,
                reply,
            } => {
                let result = self.replied(dialog_id, operator_id).await;
                let _ = reply.send(result);
            }
            Command::List { reply } => {
                let _ = reply.send(Ok(self.listing()));
            }
            Command::Transfer {
                caller,
                dialog_id,
                to,
                reason,
                reply,
            } => {
                let result = self.transfer(&caller, dialog_id, to, &reason).await;
                let _ = reply.send(result);
            }
            Command::Claim {
                caller,
                dialog_id,
                reply,
            } => {
                let result = self.claim(&caller, dialog_id).await;
                let _ = reply.send(result);
            }
            Command::Cancel {
                caller,
                dialog_id,
                reply,
            } => {
                let result = self.cancel(&caller, dialog_id).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn request(&mut self, request: NewRequest) -> Result<HandoffView, HandoffError> {
        if self.by_dialog.contains_key(&request.dialog_id) {
            return Err(HandoffError::Exists(request.dialog_id));
        }
        if self.waiting.len() >= self.policy.max_queue_len {
            return Err(HandoffError::QueueFull);
        }
        let waiting_for_user = self
            .handoffs
            .values()
            .filter(|entry| entry.is_queued() && entry.handoff.user_id == request.user_id)
            .count();
        if waiting_for_user >= self.policy.max_queued_per_user {
            return Err(HandoffError::TooManyForUser(request.user_id));
        }
        let handoff = self
            .store
            .create(NewHandoff {
                dialog_id: request.dialog_id,
                user_id: request.user_id,
                priority: request.priority,
                reason: &request.reason,
                requested_at_ms: now_ms(),
            })
            .await
            .map_err(|err| match err {
                StoreError::ActiveExists { dialog_id } => HandoffError::Exists(dialog_id),
                other => HandoffError::Store(other),
            })?;
        let id = handoff.id;
        tracing::info!(
            handoff_id = id,
            dialog_id = handoff.dialog_id,
            priority = %handoff.priority,
            "handoff requested"
        );
        self.insert_queued(Entry::new(handoff, Instant::now()));
        self.announce_request(id).await;
        self.settle().await;
        self.view(id)
            .ok_or(HandoffError::NotFound(request.dialog_id))
    }

    async fn complete(
        &mut self,
        caller: &Caller,
        dialog_id: i64,
        resolution: &str,
    ) -> Result<Completed, HandoffError> {
        let id = *self
            .by_dialog
            .get(&dialog_id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let entry = self
            .handoffs
            .get(&id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let holder = entry.handoff.operator_id;
        let was_queued = entry.is_queued();
        if !caller.role.is_privileged()
            && (caller.role != Role::Operator || holder != Some(caller.id))
        {
            return Err(HandoffError::NotHolder {
                dialog_id,
                operator_id: caller.id,
            });
        }
        let done = match self.store.complete(id, resolution, now_ms()).await {
            Ok(done) => done,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        self.remove(id);
        if was_queued {
            self.announce_dequeued(id, dialog_id, DequeuedReason::Completed)
                .await;
        }
        let duration_secs = match (done.assigned_at_ms, done.completed_at_ms) {
            (Some(assigned), Some(completed)) => {
                let took = Duration::from_millis((completed - assigned).max(0) as u64);
                self.recent.record(took);
                crate::metrics::handled(took);
                secs(took)
            }
            _ => 0,
        };
        if let Some(operator_id) = holder {
            self.release(operator_id);
        }
        tracing::info!(
            handoff_id = id,
            dialog_id,
            duration_secs,
            "handoff completed"
        );
        let body = HandoffCompleted {
            handoff_id: id,
            dialog_id,
            operator_id: holder.unwrap_or(0),
            resolution,
            duration: duration_secs,
            outcome: Outcome::Completed,
        };
        let about = (dialog_id, done.user_id);
        self.deliver_noted(
            about,
            NotedFor::User(done.user_id),
            "handoff_completed",
            &body,
        )
        .await;
        if let Some(operator_id) = holder {
            self.deliver_noted(
                about,
                NotedFor::Operator(operator_id),
                "handoff_completed",
                &body,
            )
            .await;
        }
        self.settle().await;
        Ok(Completed {
            view: HandoffView {
                handoff: done,
                position: 0,
                wait_secs: Some(0),
                operators_online: 0,
                waiting_secs: 0,
            },
            duration_secs,
        })
    }

    fn active(&self, caller: &Caller, dialog_id: i64) -> Result<Holding, HandoffError> {
        let view = self.by_dialog.get(&dialog_id).and_then(|id| self.view(*id));
        let version = self.versions.current();
        if caller.role.is_privileged() {
            return Ok(Holding { view, version });
        }
        match view {
            Some(view)
                if caller.role == Role::Operator && view.handoff.operator_id == Some(caller.id) =>
            {
                Ok(Holding {
                    view: Some(view),
                    version,
                })
            }
            _ => Err(HandoffError::NotHolder {
                dialog_id,
                operator_id: caller.id,
            }),
        }
    }

    async fn replied(&mut self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError> {
        let id = *self
            .by_dialog
            .get(&dialog_id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let entry = self
            .handoffs
            .get(&id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        if entry.handoff.state != HandoffState::Assigned
            || entry.handoff.operator_id != Some(operator_id)
        {
            return Err(HandoffError::NotHolder {
                dialog_id,
                operator_id,
            });
        }
        if entry.handoff.first_reply_at_ms.is_some() {
            return Ok(());
        }
        match self
            .store
            .record_first_reply(id, operator_id, now_ms())
            .await?
        {
            Some(handoff) => {
                if let Some(entry) = self.handoffs.get_mut(&id) {
                    entry.handoff = handoff;
                    entry.reply_deadline = None;
                }
                tracing::debug!(handoff_id = id, dialog_id, operator_id, "first reply");
            }
            // Someone else changed the row; believe the store.
            None => self.resync(id).await,
        }
        Ok(())
    }

    async fn transfer(
        &mut self,
        caller: &Caller,
        dialog_id: i64,
        to: Option<i64>,
        reason: &str,
    ) -> Result<HandoffView, HandoffError> {
        let id = *self
            .by_dialog
            .get(&dialog_id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let entry = self
            .handoffs
            .get(&id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let from = match (entry.handoff.state, entry.handoff.operator_id) {
            (HandoffState::Assigned, Some(from))
                if caller.role.is_privileged() || caller.id == from =>
            {
                from
            }
            _ => {
                return Err(HandoffError::NotHolder {
                    dialog_id,
                    operator_id: caller.id,
                });
            }
        };
        let Some(to) = to else {
            // Back to the queue, at the front of its priority, as any
            // handoff that goes back; the next settle tells the user.
            self.take_back(id, TRANSFERRED, Outcome::Transferred)
                .await?;
            self.settle().await;
            return self.view(id).ok_or(HandoffError::NotFound(dialog_id));
        };
        if to == from {
            return Err(HandoffError::TransferToSelf);
        }
        let to_name = match self.operators.get(&to) {
            Some(operator) if operator.online && operator.load < self.policy.max_handoffs => {
                operator.display_name()
            }
            _ => return Err(HandoffError::OperatorUnavailable(to)),
        };
        let assigned_at = entry.handoff.assigned_at_ms.unwrap_or_default();
        let at = now_ms();
        let moved = match self.store.transfer(id, from, to, &to_name, at).await {
            Ok(moved) => moved,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(entry) = self.handoffs.get_mut(&id) {
            entry.handoff = moved.clone();
            entry.reply_deadline = Some(Instant::now() + self.policy.reply_timeout);
            entry.hold_until = None;
            entry.holder_offline = false;
            entry.avoid = None;
        }
        self.versions.tick();
        self.release(from);
        self.gain(to);
        tracing::info!(handoff_id = id, dialog_id, from, to, "handoff transferred");
        let about = (dialog_id, moved.user_id);
        let completed = HandoffCompleted {
            handoff_id: id,
            dialog_id,
            operator_id: from,
            resolution: TRANSFERRED,
            duration: secs(Duration::from_millis((at - assigned_at).max(0) as u64)),
            outcome: Outcome::Transferred,
        };
        self.deliver_noted(
            about,
            NotedFor::Operator(from),
            "handoff_completed",
            &completed,
        )
        .await;
        // The wait the user had before the first operator got it.
        let waited = assigned_at - moved.queued_since_ms();
        let transcript = self.transcripts.last_messages(dialog_id).await;
        let body = OperatorAssigned {
            handoff_id: id,
            dialog_id,
            operator_id: to,
            operator_name: &to_name,
            estimated_wait_time: secs(Duration::from_millis(waited.max(0) as u64)),
            user_id: moved.user_id,
            reason: &moved.reason,
            priority: moved.priority.as_str(),
            transferred_from: Some(from),
            transfer_reason: (!reason.is_empty()).then_some(reason),
            transcript: None,
        };
        let to_operator = OperatorAssigned {
            transcript: transcript.as_deref(),
            ..body
        };
        self.deliver_noted(
            about,
            NotedFor::Operator(to),
            "operator_assigned",
            &to_operator,
        )
        .await;
        self.deliver_noted(
            about,
            NotedFor::User(moved.user_id),
            "operator_assigned",
            &body,
        )
        .await;
        self.settle().await;
        self.view(id).ok_or(HandoffError::NotFound(dialog_id))
    }

    async fn claim(
        &mut self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffView, HandoffError> {
        let id = *self
            .by_dialog
            .get(&dialog_id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        let entry = self
            .handoffs
            .get(&id)
            .ok_or(HandoffError::NotFound(dialog_id))?;
        if !entry.is_queued() {
            return Err(HandoffError::NotQueued(dialog_id));
        }
        let key = QueueKey::of(&entry.handoff);
        let max = self.policy.max_handoffs;
        let operator = self.operator_entry(caller.id, caller.name.as_deref().unwrap_or_default());
        if operator.load >= max {
            return Err(HandoffError::OperatorUnavailable(caller.id));
        }
        let name = operator.display_name();
        let assigned = match self.store.assign(id, caller.id, &name, now_ms()).await {
            Ok(assigned) => assigned,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        tracing::info!(
            handoff_id = id,
            dialog_id,
            operator_id = caller.id,
            "handoff claimed"
        );
        self.assigned(key, caller.id, &name, assigned).await;
        self.settle().await;
        self.view(id).ok_or(HandoffError::NotFound(dialog_id))
    }

    async fn cancel(
        &mut self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<HandoffView, HandoffError> {
        let entry = self
            .by_dialog
            .get(&dialog_id)
            .and_then(|id| self.handoffs.get(id))
            // Someone else's dialog reads as one without a handoff.
            .filter(|entry| {
                caller.role.is_privileged()
                    || (caller.role == Role::User && entry.handoff.user_id == caller.id)
            })
            .ok_or(HandoffError::NotFound(dialog_id))?;
        if !entry.is_queued() {
            return Err(HandoffError::NotQueued(dialog_id));
        }
        let id = entry.handoff.id;
        let cancelled = match self.store.cancel(id, now_ms()).await {
            Ok(cancelled) => cancelled,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        self.remove(id);
        tracing::info!(handoff_id = id, dialog_id, "handoff cancelled by its user");
        self.announce_dequeued(id, dialog_id, DequeuedReason::Cancelled)
            .await;
        let body = HandoffCompleted {
            handoff_id: id,
            dialog_id,
            operator_id: 0,
            resolution: CANCELLED,
            duration: 0,
            outcome: Outcome::Cancelled,
        };
        let user_id = cancelled.user_id;
        self.deliver_noted(
            (dialog_id, user_id),
            NotedFor::User(user_id),
            "handoff_completed",
            &body,
        )
        .await;
        self.settle().await;
        Ok(HandoffView {
            handoff: cancelled,
            position: 0,
            wait_secs: Some(0),
            operators_online: 0,
            waiting_secs: 0,
        })
    }

    fn listing(&self) -> Listing {
        let queued = self
            .positions()
            .filter_map(|(id, _)| self.view(id))
            .collect();
        let mut assigned: Vec<HandoffView> = self
            .handoffs
            .values()
            .filter(|entry| entry.handoff.state == HandoffState::Assigned)
            .filter_map(|entry| self.view(entry.handoff.id))
            .collect();
        assigned.sort_by_key(|view| (view.handoff.assigned_at_ms, view.handoff.id));
        Listing {
            queued,
            assigned,
            version: self.versions.current(),
        }
    }

    // ---------------------------------------------------------------------
    // Operator updates
    // ---------------------------------------------------------------------

    async fn on_update(&mut self, update: OperatorUpdate) {
        match update {
            OperatorUpdate::Snapshot(views) => {
                let seen: HashSet<i64> = views.iter().map(|v| v.operator_id).collect();
                // Operators presence does not list (it restarted and has not
                // heard of them) are not given work, but "unknown" is not
                // "offline": what they hold stays theirs, and presence is
                // told again what they hold — it then gives them a grace
                // period and says "offline" when it ends without them.
                for operator in self.operators.values_mut() {
                    if !seen.contains(&operator.id) {
                        operator.online = false;
                        if operator.load > 0 {
                            self.directory.set_load(operator.id, operator.load);
                        }
                    }
                }
                tracing::info!(
                    operators = views.len(),
                    "operator view rebuilt from presence"
                );
                for view in views {
                    self.apply_view(view).await;
                }
            }
            OperatorUpdate::Changed(view) => self.apply_view(view).await,
        }
        self.settle().await;
    }

    async fn apply_view(&mut self, view: OperatorView) {
        let operator = self.operator_entry(view.operator_id, &view.name);
        operator.online = view.online;
        operator.chosen = view.chosen;
        if !view.name.is_empty() {
            operator.name = view.name;
        }
        let load = operator.load;
        // Presence's count is ours to keep right (it forgets on a restart).
        if view.reported_load.is_some_and(|reported| reported != load) {
            self.directory.set_load(view.operator_id, load);
        }
        // "Offline" from a presence that believes they hold nothing is not a
        // verdict on their handoffs: it has not heard of them (a restart)
        // and is told just above; its next word, with the load, decides.
        let uninformed = view.reported_load == Some(0) && load > 0;
        if !view.online && !uninformed {
            let held: Vec<i64> = self
                .handoffs
                .values()
                .filter(|e| {
                    e.handoff.state == HandoffState::Assigned
                        && e.handoff.operator_id == Some(view.operator_id)
                })
                .map(|e| e.handoff.id)
                .collect();
            for id in held {
                if let Err(cause) = self
                    .take_back(id, REASSIGNED_OFFLINE, Outcome::Reassigned)
                    .await
                {
                    // Retried by the timers until it goes through.
                    tracing::error!(%cause, handoff_id = id, "could not take a handoff back from an offline operator; retrying");
                    if let Some(entry) = self.handoffs.get_mut(&id) {
                        entry.holder_offline = true;
                        entry.hold_until = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // Timers
    // ---------------------------------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        self.handoffs
            .values()
            .filter_map(|entry| entry.due(&self.policy))
            .chain(self.retry_drain_at)
            .min()
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        if self.retry_drain_at.is_some_and(|at| at <= now) {
            self.retry_drain_at = None;
        }
        let due: Vec<(i64, HandoffState, bool)> = self
            .handoffs
            .values()
            .filter(|entry| entry.due(&self.policy).is_some_and(|at| at <= now))
            .map(|entry| (entry.handoff.id, entry.handoff.state, entry.holder_offline))
            .collect();
        for (id, state, holder_offline) in due {
            let done = match state {
                HandoffState::Assigned if holder_offline => {
                    self.take_back(id, REASSIGNED_OFFLINE, Outcome::Reassigned)
                        .await
                }
                HandoffState::Assigned => {
                    self.take_back(id, REASSIGNED_NO_REPLY, Outcome::Reassigned)
                        .await
                }
                HandoffState::Queued => self.return_to_assistant(id).await,
                _ => Ok(()),
            };
            if let Err(cause) = done {
                tracing::error!(%cause, handoff_id = id, "timed transition failed; retrying");
                if let Some(entry) = self.handoffs.get_mut(&id) {
                    entry.hold_until = Some(now + RETRY_AFTER);
                }
            }
        }
        self.settle().await;
    }

    // ---------------------------------------------------------------------
    // Transitions
    // ---------------------------------------------------------------------

    /// Assigned → queued again, at the front of its priority: the operator is
    /// told (`handoff_completed` with `resolution`), the user is told their
    /// place by the next [`settle`](Self::settle).
    async fn take_back(
        &mut self,
        id: i64,
        resolution: &str,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let Some(entry) = self.handoffs.get(&id) else {
            return Ok(());
        };
        let (Some(operator_id), HandoffState::Assigned) =
            (entry.handoff.operator_id, entry.handoff.state)
        else {
            return Ok(());
        };
        let assigned_at = entry.handoff.assigned_at_ms.unwrap_or_default();
        let at = now_ms();
        let back = match self.store.requeue(id, at).await {
            Ok(back) => back,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        let (dialog_id, handoff_id, user_id) = (back.dialog_id, back.id, back.user_id);
        self.handoffs.remove(&id);
        let mut entry = Entry::new(back, Instant::now());
        entry.avoid = Some(operator_id);
        self.insert_queued(entry);
        self.release(operator_id);
        tracing::info!(
            handoff_id,
            dialog_id,
            operator_id,
            resolution,
            "handoff taken back"
        );
        let body = HandoffCompleted {
            handoff_id,
            dialog_id,
            operator_id,
            resolution,
            duration: secs(Duration::from_millis((at - assigned_at).max(0) as u64)),
            outcome,
        };
        self.deliver_noted(
            (dialog_id, user_id),
            NotedFor::Operator(operator_id),
            "handoff_completed",
            &body,
        )
        .await;
        self.announce_request(id).await;
        Ok(())
    }

    /// Queued too long → back to the assistant; the user is told.
    async fn return_to_assistant(&mut self, id: i64) -> Result<(), StoreError> {
        let returned = match self.store.return_to_assistant(id, now_ms()).await {
            Ok(returned) => returned,
            Err(err @ StoreError::NotInState { .. }) => {
                self.resync(id).await;
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        self.remove(id);
        self.announce_dequeued(id, returned.dialog_id, DequeuedReason::ReturnedToAssistant)
            .await;
        tracing::info!(
            handoff_id = id,
            dialog_id = returned.dialog_id,
            "handoff waited too long; back to the assistant"
        );
        let body = HandoffCompleted {
            handoff_id: id,
            dialog_id: returned.dialog_id,
            operator_id: 0,
            resolution: RETURNED_TO_ASSISTANT,
            duration: 0,
            outcome: Outcome::ReturnedToAssistant,
        };
        self.deliver_noted(
            (returned.dialog_id, returned.user_id),
            NotedFor::User(returned.user_id),
            "handoff_completed",
            &body,
        )
        .await;
        Ok(())
    }

    /// After any change: tell new arrivals their place, assign while someone
    /// is eligible, then tell everyone whose position changed.
    async fn settle(&mut self) {
        self.announce(true).await;
        self.drain().await;
        self.announce(false).await;
    }

    /// Gives the head of the queue to the best eligible operator, again and
    /// again, until the queue is empty or nobody is eligible.
    async fn drain(&mut self) {
        if self.retry_drain_at.is_some() {
            return;
        }
        while let Some(key) = self.waiting.first().copied() {
            let id = key.id();
            let avoid = self.handoffs.get(&id).and_then(|entry| entry.avoid);
            let Some(operator) =
                queue::pick(self.operators.values(), self.policy.max_handoffs, avoid)
            else {
                return;
            };
            let (operator_id, operator_name) = (operator.id, operator.display_name());
            let assigned = match self
                .store
                .assign(id, operator_id, &operator_name, now_ms())
                .await
            {
                Ok(assigned) => assigned,
                Err(StoreError::NotInState { .. }) => {
                    self.resync(id).await;
                    if self.waiting.first() == Some(&key) {
                        // Could not be re-read: try again later, not in a loop.
                        self.retry_drain_at = Some(Instant::now() + RETRY_AFTER);
                        return;
                    }
                    continue;
                }
                Err(cause) => {
                    tracing::error!(%cause, handoff_id = id, "assignment not stored; retrying shortly");
                    self.retry_drain_at = Some(Instant::now() + RETRY_AFTER);
                    return;
                }
            };
            self.assigned(key, operator_id, &operator_name, assigned)
                .await;
        }
    }

    /// A queued handoff was stored as assigned to `operator_id` (by the
    /// drain or a claim): it leaves the queue, the operator's load grows, and
    /// operators, the user and the operator are told.
    async fn assigned(
        &mut self,
        key: QueueKey,
        operator_id: i64,
        operator_name: &str,
        assigned: Handoff,
    ) {
        let id = key.id();
        self.waiting.remove(&key);
        let waited = match self.handoffs.get_mut(&id) {
            Some(entry) => {
                entry.reply_deadline = Some(Instant::now() + self.policy.reply_timeout);
                entry.told_position = None;
                entry.avoid = None;
                entry.hold_until = None;
                let waited = entry.queued_at.elapsed();
                crate::metrics::waited(waited);
                entry.handoff = assigned;
                self.versions.tick();
                waited
            }
            None => return,
        };
        self.gain(operator_id);
        let Some(handoff) = self.handoffs.get(&id).map(|e| e.handoff.clone()) else {
            return;
        };
        tracing::info!(
            handoff_id = id,
            dialog_id = handoff.dialog_id,
            operator_id,
            "handoff assigned"
        );
        self.announce_dequeued(id, handoff.dialog_id, DequeuedReason::Assigned)
            .await;
        let transcript = self.transcripts.last_messages(handoff.dialog_id).await;
        let body = OperatorAssigned {
            handoff_id: id,
            dialog_id: handoff.dialog_id,
            operator_id,
            operator_name,
            estimated_wait_time: secs(waited),
            user_id: handoff.user_id,
            reason: &handoff.reason,
            priority: handoff.priority.as_str(),
            transferred_from: None,
            transfer_reason: None,
            transcript: None,
        };
        let about = (handoff.dialog_id, handoff.user_id);
        self.deliver_noted(
            about,
            NotedFor::User(handoff.user_id),
            "operator_assigned",
            &body,
        )
        .await;
        let to_operator = OperatorAssigned {
            transcript: transcript.as_deref(),
            ..body
        };
        self.deliver_noted(
            about,
            NotedFor::Operator(operator_id),
            "operator_assigned",
            &to_operator,
        )
        .await;
    }

    /// Sends `handoff_queued` to each waiting user whose position differs
    /// from the one they were told; with `only_new`, only to those not told
    /// since they (re-)entered the queue.
    async fn announce(&mut self, only_new: bool) {
        let capacity = queue::capacity(self.operators.values(), self.policy.max_handoffs);
        let average = self.recent.average();
        let changed: Vec<(i64, u32)> = self
            .positions()
            .filter(|(id, position)| {
                self.handoffs
                    .get(id)
                    .is_some_and(|entry| match entry.told_position {
                        None => true,
                        Some(told) => !only_new && told != *position,
                    })
            })
            .collect();
        for (id, position) in changed {
            let Some(entry) = self.handoffs.get_mut(&id) else {
                continue;
            };
            entry.told_position = Some(position);
            let (about, body) = (
                (entry.handoff.dialog_id, entry.handoff.user_id),
                HandoffQueued {
                    handoff_id: id,
                    dialog_id: entry.handoff.dialog_id,
                    position,
                    estimated_wait_time: queue::estimated_wait(position, capacity, average),
                    operators_online: capacity.operators,
                },
            );
            self.deliver_noted(about, NotedFor::User(about.1), "handoff_queued", &body)
                .await;
        }
    }

    // ---------------------------------------------------------------------
    // Bookkeeping
    // ---------------------------------------------------------------------

    fn insert_queued(&mut self, entry: Entry) {
        self.versions.tick();
        self.waiting.insert(QueueKey::of(&entry.handoff));
        self.by_dialog
            .insert(entry.handoff.dialog_id, entry.handoff.id);
        self.handoffs.insert(entry.handoff.id, entry);
    }

    /// Forgets a handoff that is no longer active.
    fn remove(&mut self, id: i64) {
        if let Some(entry) = self.handoffs.remove(&id) {
            self.versions.tick();
            self.waiting.remove(&QueueKey::of(&entry.handoff));
            if self.by_dialog.get(&entry.handoff.dialog_id) == Some(&id) {
                self.by_dialog.remove(&entry.handoff.dialog_id);
            }
        }
    }

    /// The operator took a handoff: one more, and active now.
    fn gain(&mut self, operator_id: i64) {
        if let Some(operator) = self.operators.get_mut(&operator_id) {
            operator.load += 1;
            operator.last_active = Some(Instant::now());
            self.directory.set_load(operator_id, operator.load);
        }
    }

    /// Tells every operator (live) that a handoff (re-)entered the queue,
    /// with the queue version it is as of.
    async fn announce_request(&self, id: i64) {
        let Some(entry) = self.handoffs.get(&id) else {
            return;
        };
        let handoff = &entry.handoff;
        let body = HandoffRequest {
            handoff_id: handoff.id,
            dialog_id: handoff.dialog_id,
            user_id: handoff.user_id,
            reason: &handoff.reason,
            priority: handoff.priority.as_str(),
            version: self.versions.current(),
        };
        self.deliver(Recipient::Role(Role::Operator), "handoff_request", &body)
            .await;
    }

    /// Tells every operator (live) that a handoff left the queue, with the
    /// queue version it is as of.
    async fn announce_dequeued(&self, handoff_id: i64, dialog_id: i64, reason: DequeuedReason) {
        let body = HandoffDequeued {
            handoff_id,
            dialog_id,
            reason,
            version: self.versions.current(),
        };
        self.deliver(Recipient::Role(Role::Operator), "handoff_dequeued", &body)
            .await;
    }

    /// The operator let go of a handoff: one less, and idle from now.
    fn release(&mut self, operator_id: i64) {
        if let Some(operator) = self.operators.get_mut(&operator_id) {
            operator.load = operator.load.saturating_sub(1);
            operator.last_active = Some(Instant::now());
            self.directory.set_load(operator_id, operator.load);
        }
    }

    fn report_all_loads(&self) {
        for operator in self.operators.values().filter(|op| op.load > 0) {
            self.directory.set_load(operator.id, operator.load);
        }
    }

    /// Re-reads one handoff after the store refused a transition (another
    /// writer changed it), and believes the store.
    async fn resync(&mut self, id: i64) {
        let stored = match self.store.handoff(id).await {
            Ok(stored) => stored,
            Err(cause) => {
                tracing::error!(%cause, handoff_id = id, "cannot re-read a handoff");
                return;
            }
        };
        tracing::warn!(
            handoff_id = id,
            "handoff changed under the queue; reloading it"
        );
        if let Some(old) = self.handoffs.get(&id)
            && let (HandoffState::Assigned, Some(operator_id)) =
                (old.handoff.state, old.handoff.operator_id)
        {
            self.release(operator_id);
        }
        self.remove(id);
        match stored {
            Some(handoff) if handoff.state == HandoffState::Queued => {
                self.insert_queued(Entry::new(handoff, Instant::now()));
            }
            Some(handoff) if handoff.state == HandoffState::Assigned => {
                if let Some(operator_id) = handoff.operator_id {
                    let name = handoff.operator_name.clone().unwrap_or_default();
                    let operator = self.operator_entry(operator_id, &name);
                    operator.load += 1;
                    let load = operator.load;
                    self.directory.set_load(operator_id, load);
                }
                let mut entry = Entry::new(handoff, Instant::now());
                if entry.handoff.first_reply_at_ms.is_none() {
                    entry.reply_deadline = Some(Instant::now() + self.policy.reply_timeout);
                }
                self.by_dialog
                    .insert(entry.handoff.dialog_id, entry.handoff.id);
                self.handoffs.insert(id, entry);
                self.versions.tick();
            }
            _ => {}
        }
    }

    /// Queued handoffs with their 1-based positions, in order.
    fn positions(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.waiting
            .iter()
            .zip(1u32..)
            .map(|(key, position)| (key.id(), position))
    }

    fn view(&self, id: i64) -> Option<HandoffView> {
        let entry = self.handoffs.get(&id)?;
        let handoff = entry.handoff.clone();
        let capacity = queue::capacity(self.operators.values(), self.policy.max_handoffs);
        let (position, wait_secs) = if entry.is_queued() {
            let position = self
                .positions()
                .find(|(queued, _)| *queued == id)
                .map_or(0, |(_, position)| position);
            let wait = queue::estimated_wait(position, capacity, self.recent.average());
            (position, wait)
        } else {
            let waited = handoff
                .assigned_at_ms
                .map_or(0, |assigned| assigned - handoff.queued_since_ms());
            (0, Some(secs(Duration::from_millis(waited.max(0) as u64))))
        };
        let waiting_secs = if entry.is_queued() {
            secs(entry.queued_at.elapsed())
        } else {
            0
        };
        Some(HandoffView {
            handoff,
            position,
            wait_secs,
            operators_online: capacity.operators,
            waiting_secs,
        })
    }

    /// Delivers an event; a failure is logged, never undoes the transition
    /// (which is already stored). Returns its position (0 when not stored).
    async fn deliver(&self, recipient: Recipient, kind: &str, body: &impl Serialize) -> u64 {
        let event = match Event::new(kind, body) {
            Ok(event) => Arc::new(event),
            Err(cause) => {
                tracing::error!(%cause, kind, "event could not be built");
                return 0;
            }
        };
        match self.log.deliver(recipient.clone(), event).await {
            Ok(position) => position,
            Err(cause) => {
                tracing::error!(%cause, kind, %recipient, "event not delivered");
                0
            }
        }
    }

    /// Delivers an event about dialog `about.0` (owned by user `about.1`) to
    /// a user or an operator, then publishes the [`HolderNote`] the chat
    /// service routes by: the dialog's holder now, and the event's position.
    async fn deliver_noted(
        &self,
        (dialog_id, user_id): (i64, i64),
        recipient: NotedFor,
        kind: &str,
        body: &impl Serialize,
    ) {
        let to = match recipient {
            NotedFor::User(id) => Recipient::User(id),
            NotedFor::Operator(id) => Recipient::Operator(id),
        };
        let position = self.deliver(to, kind, body).await;
        let note = HolderNote {
            dialog_id,
            user_id,
            holder: self.holder_of(dialog_id),
            version: self.versions.current(),
            recipient,
            position,
        };
        let published = match Event::new(holders::KIND, &note) {
            Ok(event) => {
                self.log
                    .publish(Recipient::Room(holders::ROOM.into()), Arc::new(event))
                    .await
            }
            Err(cause) => Err(cause),
        };
        if let Err(cause) = published {
            tracing::error!(%cause, dialog_id, "holder note not published");
        }
    }

    /// Who holds the dialog now.
    fn holder_of(&self, dialog_id: i64) -> HeldBy {
        let entry = self
            .by_dialog
            .get(&dialog_id)
            .and_then(|id| self.handoffs.get(id));
        match entry {
            None => HeldBy::Assistant,
            Some(entry) => match (entry.handoff.state, entry.handoff.operator_id) {
                (HandoffState::Assigned, Some(operator_id)) => HeldBy::Operator {
                    operator_id,
                    operator_name: entry.handoff.operator_name.clone().unwrap_or_default(),
                },
                _ => HeldBy::Queued,
            },
        }
    }
}

/// The next operator update, or never once the follower has stopped.
async fn next_update(
    updates: &mut Option<mpsc::Receiver<OperatorUpdate>>,
) -> Option<OperatorUpdate> {
    match updates {
        Some(updates) => updates.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whole seconds, saturating.
fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
