//! The handoff service as a client of the presence service: it follows
//! presence's `EventStream` for `operator_status_change` events (rebuilding
//! its view from `Presence.ListOperators` on every attach) and reports each
//! operator's load with `Presence.SetLoad`. The only place presence's wire
//! types are touched.
//!
//! - [`follow`] — one task: attach, `Hello`, `Subscribe{Role(OPERATOR)}`,
//!   wait for `Subscribed`, `ListOperators` → [`OperatorUpdate::Snapshot`],
//!   then one [`OperatorUpdate::Changed`] per event; when the stream drops,
//!   again, with exponential backoff (`backon`). Events that arrive while
//!   the snapshot is read wait in the stream and are applied after it, in
//!   order, so the view ends as presence's.
//! - [`LoadReporter`] — the [`OperatorDirectory`] over gRPC: the queue drops
//!   the latest load per operator into a map (never blocking), one task
//!   sends them, retrying those that failed while presence is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::BackoffBuilder;
use chatai_kit::config::{InternalAuth, ServiceAddr};
use chatai_kit::events::Recipient;
use chatai_kit::grpc::TokenInterceptor;
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_proto::v1::presence_client::PresenceClient;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::directory::{
    ChosenStatus, OperatorDirectory, OperatorUpdate, OperatorView, parse_status_change,
};

/// A channel to presence with the internal token on every call.
pub type PresenceChannel = InterceptedService<Channel, TokenInterceptor>;

/// The event type the follower reads.
const STATUS_CHANGE: &str = "operator_status_change";
/// How this client introduces itself on the stream (presence logs it).
const HELLO_ID: &str = "handoff-service";
/// Deadline of each unary call to presence.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `Subscribed` may take before the stream is given up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily connecting channel to presence at `addr` that reconnects by
/// itself, with the internal token on every call.
pub fn channel(
    addr: &ServiceAddr,
    auth: &InternalAuth,
) -> Result<PresenceChannel, tonic::transport::Error> {
    let channel = addr.channel()?;
    Ok(InterceptedService::new(
        channel,
        TokenInterceptor::new(auth),
    ))
}

/// Reconnect delays: quick at first, at most 5 s, jittered, forever.
fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// A request carrying the service caller, with a deadline when `timeout`.
fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    Caller::service().write_metadata(request.metadata_mut());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Why one attached stream ended.
enum Ended {
    /// Shutdown, or the queue is gone: stop following.
    Stop,
    /// The stream failed; `attached` says whether it had got as far as the
    /// snapshot (then the backoff starts over).
    Broken { attached: bool },
}

/// Follows presence until `shutdown`, sending the queue a snapshot after each
/// attach and every status change after it.
pub async fn follow(
    channel: PresenceChannel,
    updates: mpsc::Sender<OperatorUpdate>,
    shutdown: CancellationToken,
) {
    let mut events = EventStreamClient::new(channel.clone());
    let mut presence = PresenceClient::new(channel);
    let mut delays = backoff().build();
    let mut failures = 0u32;
    loop {
        match follow_once(&mut events, &mut presence, &updates, &shutdown).await {
            Ended::Stop => return,
            Ended::Broken { attached: true } => {
                failures = 0;
                delays = backoff().build();
            }
            Ended::Broken { attached: false } => failures += 1,
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if failures == 1 {
            tracing::warn!(?delay, "cannot follow presence; retrying with backoff");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn follow_once(
    events: &mut EventStreamClient<PresenceChannel>,
    presence: &mut PresenceClient<PresenceChannel>,
    updates: &mpsc::Sender<OperatorUpdate>,
    shutdown: &CancellationToken,
) -> Ended {
    let broken = Ended::Broken { attached: false };
    // Kept for the life of the stream: dropping it would end our side.
    let (outbound, rx) = mpsc::channel(4);
    let opening = [
        pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: HELLO_ID.to_owned(),
            // This follower reads single deliveries only.
            accepts_batches: false,
        }),
        pb::gateway_message::Msg::Subscribe(pb::Subscribe {
            request_id: 1,
            recipient: Some((&Recipient::Role(Role::Operator)).into()),
        }),
    ];
    for msg in opening {
        if outbound
            .send(pb::GatewayMessage { msg: Some(msg) })
            .await
            .is_err()
        {
            return broken;
        }
    }
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Stop,
        opened = events.attach(request(ReceiverStream::new(rx), None)) => opened,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::debug!(cause = %status, "cannot attach to presence");
            return broken;
        }
    };
    // Wait for `Subscribed`: every event from then on reaches us.
    let subscribed = async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ServiceMessage {
                    msg: Some(pb::service_message::Msg::Subscribed(ack)),
                })) if ack.request_id == 1 => return true,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return false,
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ended::Stop,
        ok = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed) => {
            if !matches!(ok, Ok(true)) {
                tracing::debug!("presence did not confirm the subscription");
                return broken;
            }
        }
    }
    let listed = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Stop,
        listed = presence.list_operators(request(pb::ListOperatorsRequest {}, Some(CALL_TIMEOUT))) => listed,
    };
    let operators = match listed {
        Ok(response) => response.into_inner().operators,
        Err(status) => {
            tracing::warn!(cause = %status, "presence did not list its operators");
            return broken;
        }
    };
    let snapshot = operators.iter().map(OperatorView::from).collect();
    if updates
        .send(OperatorUpdate::Snapshot(snapshot))
        .await
        .is_err()
    {
        return Ended::Stop;
    }
    tracing::info!(operators = operators.len(), "following presence");
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Stop,
            message = inbound.message() => message,
        };
        let delivery = match message {
            Ok(Some(pb::ServiceMessage {
                msg: Some(pb::service_message::Msg::Delivery(delivery)),
            })) => delivery,
            Ok(Some(_)) => continue,
            Ok(None) => {
                tracing::warn!("presence closed the event stream; re-attaching");
                return Ended::Broken { attached: true };
            }
            Err(status) => {
                tracing::warn!(cause = %status, "presence event stream failed; re-attaching");
                return Ended::Broken { attached: true };
            }
        };
        let Some(event) = delivery.event else {
            continue;
        };
        if event.r#type != STATUS_CHANGE {
            continue;
        }
        match parse_status_change(&event.body) {
            Ok(view) => {
                if updates.send(OperatorUpdate::Changed(view)).await.is_err() {
                    return Ended::Stop;
                }
            }
            Err(cause) => tracing::warn!(%cause, "ignoring an operator_status_change"),
        }
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
/// waits in a map until the sender task takes it.
#[derive(Debug, Default)]
pub struct LoadReporter {
    pending: Mutex<HashMap<i64, u32>>,
    wake: Notify,
}

impl OperatorDirectory for LoadReporter {
    fn set_load(&self, operator_id: i64, active_handoffs: u32) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(operator_id, active_handoffs);
        self.wake.notify_one();
    }
}

impl LoadReporter {
    pub fn new() -> Arc<Self> {
        Arc::new(LoadReporter::default())
    }

    fn take(&self) -> HashMap<i64, u32> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back a value that could not be sent, unless a newer one came.
    fn put_back(&self, operator_id: i64, active_handoffs: u32) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(operator_id)
            .or_insert(active_handoffs);
    }

    /// Sends pending loads until `shutdown`.
    pub async fn run(self: Arc<Self>, channel: PresenceChannel, shutdown: CancellationToken) {
        let mut client = PresenceClient::new(channel);
        let mut delays = backoff().build();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                let mut failed = false;
                for (operator_id, active_handoffs) in batch {
                    let call = client.set_load(request(
                        pb::SetLoadRequest {
                            operator_id,
                            active_handoffs,
                        },
                        Some(CALL_TIMEOUT),
                    ));
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        sent = call => sent,
                    };
                    match sent {
                        Ok(_) => {}
                        Err(status) if retryable(&status) => {
                            if !failing {
                                tracing::warn!(cause = %status, operator_id, "cannot tell presence an operator's load; retrying");
                            }
                            failed = true;
                            self.put_back(operator_id, active_handoffs);
                        }
                        Err(status) => {
                            tracing::warn!(cause = %status, operator_id, active_handoffs, "presence refused an operator's load");
                        }
                    }
                }
                failing = failed;
                if failed {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                } else {
                    delays = backoff().build();
                }
            }
        }
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
    use super::*;

    /// The latest load per operator wins while it waits to be sent.
    #[test]
    fn reporter_keeps_the_latest_load() {
        let reporter = LoadReporter::new();
        reporter.set_load(1, 1);
        reporter.set_load(1, 2);
        reporter.set_load(2, 0);
        reporter.put_back(2, 5);
        let batch = reporter.take();
        assert_eq!(batch, HashMap::from([(1, 2), (2, 0)]));
        assert!(reporter.take().is_empty());
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
