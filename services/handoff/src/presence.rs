//! The handoff service as a client of the presence service: it follows
//! presence's `EventStream` for `operator_status_change` events (rebuilding
//! its view from `Presence.ListOperators` on every attach) and reports each
//! operator's load with `Presence.SetLoad`. The only place presence's wire
//! types are touched.
//!
//! - [`follow`] — one task ([`chatai_kit::follow`]): subscribe
//!   `Role(OPERATOR)`, then `ListOperators` → [`OperatorUpdate::Snapshot`],
//!   then one [`OperatorUpdate::Changed`] per event; when the stream drops,
//!   again, with backoff. Events that arrive while the snapshot is read wait
//!   in the stream and come after it; those the snapshot already holds (a
//!   version at or below the listing's) are dropped
//!   ([`chatai_kit::versioned::SnapshotGate`]) — applied, a stale "offline"
//!   would take handoffs back from an operator the snapshot says is online.
//! - [`LoadReporter`] — the [`OperatorDirectory`] over gRPC: the queue drops
//!   the latest load per operator into a map (never blocking), one task
//!   sends them, retrying those that failed while presence is unreachable.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::config::{InternalAuth, ServiceTarget};
use chatai_kit::events::Recipient;
use chatai_kit::follow::{Followed, Follower};
use chatai_kit::identity::{Role, service_request};
use chatai_kit::pending::{Pending, Sent};
use chatai_kit::versioned::SnapshotGate;
use chatai_proto::v1 as pb;
use chatai_proto::v1::presence_client::PresenceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::directory::{
    ChosenStatus, OperatorDirectory, OperatorUpdate, OperatorView, parse_status_change,
};

/// A channel to presence with the internal token on every call.
pub type PresenceChannel = chatai_kit::follow::ServiceChannel;

/// The event type the follower reads.
const STATUS_CHANGE: &str = "operator_status_change";
/// How this client introduces itself on the stream (presence logs it).
const HELLO_ID: &str = "handoff-service";
/// Deadline of each unary call to presence.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to presence at `addr` that reconnects by
/// itself, with the internal token on every call.
pub fn channel(
    addr: &ServiceTarget,
    auth: &InternalAuth,
) -> Result<PresenceChannel, tonic::transport::Error> {
    chatai_kit::grpc::service_channel(addr, auth, crate::metrics::SERVICE)
}

/// Follows presence until `shutdown`, sending the queue a snapshot after each
/// attach and every status change after it.
pub async fn follow(
    channel: PresenceChannel,
    updates: mpsc::Sender<OperatorUpdate>,
    shutdown: CancellationToken,
) {
    let mut follower = PresenceFollower {
        presence: PresenceClient::new(channel.clone()),
        updates,
        gate: SnapshotGate::default(),
    };
    chatai_kit::follow::follow(
        channel,
        HELLO_ID,
        "presence",
        Recipient::Role(Role::Operator),
        &mut follower,
        shutdown,
    )
    .await;
}

/// Turns presence's listing and `operator_status_change` events into the
/// queue's [`OperatorUpdate`]s.
struct PresenceFollower {
    presence: PresenceClient<PresenceChannel>,
    updates: mpsc::Sender<OperatorUpdate>,
    /// Drops the events the last snapshot already holds.
    gate: SnapshotGate,
}

#[async_trait::async_trait]
impl Follower for PresenceFollower {
    async fn snapshot(&mut self) -> Result<Followed, Status> {
        let listing = self
            .presence
            .list_operators(service_request(
                pb::ListOperatorsRequest {},
                Some(CALL_TIMEOUT),
            ))
            .await?
            .into_inner();
        self.gate.snapshot(listing.version);
        let snapshot = listing.operators.iter().map(OperatorView::from).collect();
        if self
            .updates
            .send(OperatorUpdate::Snapshot(snapshot))
            .await
            .is_err()
        {
            return Ok(Followed::Stop);
        }
        Ok(Followed::Continue)
    }

    async fn event(&mut self, event: pb::Event) -> Followed {
        if event.r#type != STATUS_CHANGE {
            return Followed::Continue;
        }
        match parse_status_change(&event.body) {
            Ok((view, version)) if !self.gate.admits(version) => {
                tracing::debug!(
                    operator_id = view.operator_id,
                    version,
                    "dropping a status change the snapshot already holds"
                );
            }
            Ok((view, _)) => {
                if self
                    .updates
                    .send(OperatorUpdate::Changed(view))
                    .await
                    .is_err()
                {
                    return Followed::Stop;
                }
            }
            Err(cause) => tracing::warn!(%cause, "ignoring an operator_status_change"),
        }
        Followed::Continue
    }
}

impl From<&pb::OperatorInfo> for OperatorView {
    fn from(info: &pb::OperatorInfo) -> Self {
        let chosen = |status: i32| match pb::OperatorStatus::try_from(status) {
            Ok(pb::OperatorStatus::Available) => Some(ChosenStatus::Available),
            Ok(pb::OperatorStatus::Busy) => Some(ChosenStatus::Busy),
            Ok(pb::OperatorStatus::Away) => Some(ChosenStatus::Away),
            _ => None,
        };
        OperatorView {
            operator_id: info.operator_id,
            name: info.name.clone(),
            online: info.online,
            chosen: chosen(info.chosen_status)
                .or_else(|| chosen(info.status))
                .unwrap_or(ChosenStatus::Away),
            reported_load: Some(info.active_handoffs),
        }
    }
}

/// Reports loads to presence with `SetLoad`: the latest value per operator
/// waits ([`Pending`]) until the sender task takes it; a load presence could
/// not take now is sent again after a backoff.
#[derive(Debug)]
pub struct LoadReporter {
    pending: Pending<i64, u32>,
}

/// Operators whose load waits to be reported, at most (one entry each).
const MAX_PENDING_LOADS: usize = 65_536;

impl OperatorDirectory for LoadReporter {
    fn set_load(&self, operator_id: i64, active_handoffs: u32) {
        self.pending.put(operator_id, active_handoffs);
    }
}

impl LoadReporter {
    pub fn new() -> Arc<Self> {
        Arc::new(LoadReporter {
            pending: Pending::new(MAX_PENDING_LOADS, "operator loads"),
        })
    }

    /// Sends pending loads until `shutdown`.
    pub async fn run(self: Arc<Self>, channel: PresenceChannel, shutdown: CancellationToken) {
        let client = PresenceClient::new(channel);
        self.pending
            .run(shutdown, |operator_id, active_handoffs| {
                let mut client = client.clone();
                async move {
                    let sent = client
                        .set_load(service_request(
                            pb::SetLoadRequest {
                                operator_id,
                                active_handoffs,
                            },
                            Some(CALL_TIMEOUT),
                        ))
                        .await;
                    match sent {
                        Ok(_) => Sent::Done,
                        Err(status) if retryable(&status) => {
                            tracing::debug!(cause = %status, operator_id, "presence did not take a load");
                            Sent::Retry
                        }
                        Err(status) => {
                            tracing::warn!(cause = %status, operator_id, active_handoffs, "presence refused an operator's load");
                            Sent::Done
                        }
                    }
                }
            })
            .await;
    }
}

/// Failures worth another try: presence unreachable or overloaded.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The latest load per operator wins while it waits to be sent; one
    /// put back does not replace a newer one.
    #[test]
    fn reporter_keeps_the_latest_load() {
        let reporter = LoadReporter::new();
        reporter.set_load(1, 1);
        reporter.set_load(1, 2);
        reporter.set_load(2, 0);
        reporter.pending.put_back([(2, 5)]);
        let batch = reporter.pending.take();
        assert_eq!(batch, HashMap::from([(1, 2), (2, 0)]));
        assert!(reporter.pending.take().is_empty());
    }

    /// ListOperators entries read as views; the chosen status wins over the
    /// effective one.
    #[test]
    fn operator_info_reads_as_a_view() {
        let info = pb::OperatorInfo {
            operator_id: 3,
            status: pb::OperatorStatus::Busy as i32,
            chosen_status: pb::OperatorStatus::Available as i32,
            online: true,
            active_handoffs: 5,
            max_handoffs: 5,
            connections: 1,
            name: "Ann".into(),
            since_ms: 1,
            version: 3,
        };
        let view = OperatorView::from(&info);
        assert_eq!(view.chosen, ChosenStatus::Available);
        assert_eq!(view.reported_load, Some(5));
        let offline = pb::OperatorInfo {
            online: false,
            status: pb::OperatorStatus::Offline as i32,
            chosen_status: 0,
            ..info
        };
        let view = OperatorView::from(&offline);
        assert!(!view.online);
        assert_eq!(view.chosen, ChosenStatus::Away);
    }
}
