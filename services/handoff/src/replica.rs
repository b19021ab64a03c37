//! What one handoff replica does with the leader's lease ([`crate::leader`]):
//! stand by until it holds it, then lead a *term* — load the queue from the
//! `handoffs` table (the restart path), run the queue actor, the presence
//! follower and the load reporter — until the lease is lost or the service
//! stops; then stand by again. Losing the lease stops the term's actor first,
//! before anything else happens.
//!
//! The gRPC API reaches the term's queue through [`Current`]; a standby
//! answers every call `UNAVAILABLE` ([`HandoffError::NotLeader`]) and reports
//! `chatai.v1.Handoff` NOT_SERVING on gRPC health (the overall status and
//! `chatai.v1.EventStream` stay SERVING: its event stream serves like any
//! replica's).

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::EventLog;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::HandoffError;
use crate::leader::{Held, Lease, LeaseError, leader_store};
use crate::presence::{self, LoadReporter, PresenceChannel};
use crate::service::{HandoffService, Policy};
use crate::store::{HandoffStore, StoreError};
use crate::transcripts::Transcripts;

/// The gRPC service name whose health says whether this replica leads.
pub const SERVICE_NAME: &str = "chatai.v1.Handoff";

/// Operator updates buffered from the presence follower to the queue. The
/// follower waits when it is full (presence's stream then backs up, and cuts
/// us off if it must; we re-attach and start from a snapshot).
const UPDATE_BUFFER: usize = 1024;

/// The queue this replica leads now, if any: what the API calls.
#[derive(Clone)]
pub struct Current(watch::Receiver<Option<HandoffService>>);

impl Current {
    /// The leader's queue, or [`HandoffError::NotLeader`] on a standby.
    pub fn service(&self) -> Result<HandoffService, HandoffError> {
        self.0.borrow().clone().ok_or(HandoffError::NotLeader)
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// Everything a term needs, kept across terms.
pub struct Replica {
    pub lease: Lease,
    /// How often the lease is tried (standby) and checked (leader).
    pub poll: Duration,
    /// The service's store on the pool (SQLite writes go through it).
    pub store: Arc<dyn HandoffStore>,
    pub log: Arc<dyn EventLog>,
    pub presence: PresenceChannel,
    pub transcripts: Arc<dyn Transcripts>,
    pub policy: Policy,
    pub health: HealthReporter,
}

/// How a term ended.
enum Ended {
    Shutdown,
    /// The lease was lost (or could not be checked).
    Lost(LeaseError),
    /// Loading the queue failed; the lease is given up and tried again.
    LoadFailed(StoreError),
    /// A task of the term stopped on its own.
    TaskStopped(&'static str),
}

impl Replica {
    /// Marks this replica a standby (health and API) and returns the handle
    /// the API reads; [`run`](Self::run) then takes the lease when it can.
    pub async fn standby(&self) -> (Current, watch::Sender<Option<HandoffService>>) {
        self.health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let (sender, receiver) = watch::channel(None);
        (Current(receiver), sender)
    }

    /// Stands by and leads, term after term, until `shutdown`. Returns
    /// before shutdown only if a task of a term stopped on its own (the
    /// service's supervisor then stops the service, naming this task).
    pub async fn run(
        self,
        current: watch::Sender<Option<HandoffService>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let held = tokio::select! {
                () = shutdown.cancelled() => return,
                held = self.lease.acquire(self.poll) => held,
            };
            let ended = self.lead(&held, &current, &shutdown).await;
            // The term's actor has stopped (its future is gone): no call
            // reaches a queue any more, and health says so.
            current.send_replace(None);
            self.health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            drop(held);
            match ended {
                Ended::Shutdown => return,
                Ended::Lost(cause) => {
                    tracing::error!(%cause, "lost the handoff leader's lease; stopped leading, standing by");
                }
                Ended::LoadFailed(cause) => {
                    tracing::error!(%cause, "cannot load the handoff queue; gave the lease up");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.poll) => {}
                    }
                }
                Ended::TaskStopped(task) => {
                    tracing::error!(task, "a task of the leader stopped on its own");
                    return;
                }
            }
        }
    }

    /// One term: loads the queue through the held lease and runs it with its
    /// presence follower and load reporter until one of them stops or the
    /// lease is lost. Everything runs in this one future, so when it returns
    /// all of it has stopped.
    async fn lead(
        &self,
        held: &Held,
        current: &watch::Sender<Option<HandoffService>>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let term = shutdown.child_token();
        let _end_term = term.clone().drop_guard();
        let reporter = LoadReporter::new();
        let (updates_tx, updates) = mpsc::channel(UPDATE_BUFFER);
        let loaded = HandoffService::load(
            leader_store(held, &self.store),
            self.log.clone(),
            reporter.clone(),
            updates,
            self.policy.clone(),
            term.clone(),
        )
        .await;
        let (service, queue) = match loaded {
            Ok(loaded) => loaded,
            Err(cause) => return Ended::LoadFailed(cause),
        };
        tracing::info!(
            lock_backend = held.backend_pid(),
            "leading the handoff queue"
        );
        current.send_replace(Some(service));
        self.health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        let stopped = |task| {
            if shutdown.is_cancelled() {
                Ended::Shutdown
            } else {
                Ended::TaskStopped(task)
            }
        };
        tokio::select! {
            // First: a lost lease stops everything below at once.
            biased;
            cause = held.lost(self.poll) => Ended::Lost(cause),
            () = queue.with_transcripts(self.transcripts.clone()).run() => stopped("handoff queue"),
            () = presence::follow(self.presence.clone(), updates_tx, term.clone()) => stopped("presence follower"),
            () = reporter.run(self.presence.clone(), term.clone()) => stopped("presence load reporter"),
        }
    }
}
