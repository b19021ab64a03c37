//! Following another service's `EventStream` as a client, the way a gateway
//! does: one task attaches, says `Hello`, subscribes one recipient, waits for
//! `Subscribed`, has the follower read the service's current state (its
//! snapshot: events from then on are sure to arrive on the stream, and those
//! that arrive while it is read wait and are applied after it, in order),
//! then hands it every event. When the stream drops: again, with jittered
//! exponential backoff, forever, until shutdown.
//!
//! Used by the handoff service to follow presence (operator status) and by
//! the chat service to follow handoff (who holds each dialog).

use std::time::Duration;

use backon::BackoffBuilder;
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::events::Recipient;
use crate::identity::service_request;

/// A channel to another service's replicas with the internal token on
/// every call.
pub use crate::grpc::ServiceChannel;

/// How long `Subscribed` may take before the stream is given up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a follower does with the stream it follows.
#[async_trait::async_trait]
pub trait Follower: Send {
    /// Reads the followed service's current state, after each attach, once
    /// every later event is sure to arrive on the stream. An error gives the
    /// stream up (and it is attached again); [`Followed::Stop`] ends the
    /// following.
    async fn snapshot(&mut self) -> Result<Followed, tonic::Status>;

    /// One event for the followed recipient, in the service's order.
    /// [`Followed::Stop`] ends the following.
    async fn event(&mut self, event: pb::Event) -> Followed;

    /// The stream ended: what was learnt from it may be stale until the next
    /// snapshot.
    fn detached(&mut self) {}
}

/// Whether to go on following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    Continue,
    Stop,
}

/// Reconnect delays: quick at first, at most 5 s, jittered, forever.
pub fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Why one attached stream ended.
enum Ended {
    /// Shutdown, or the follower is done: stop following.
    Stop,
    /// The stream failed; `attached` says whether it had got as far as the
    /// snapshot (then the backoff starts over).
    Broken { attached: bool },
}

/// Follows `recipient` on the `EventStream` of the service behind `channel`
/// until `shutdown` or until the follower says stop. `hello_id` names this
/// client to the service (it logs it); `service` names the service in logs.
pub async fn follow(
    channel: ServiceChannel,
    hello_id: &str,
    service: &str,
    recipient: Recipient,
    follower: &mut impl Follower,
    shutdown: CancellationToken,
) {
    let mut events = EventStreamClient::new(channel);
    let mut delays = backoff().build();
    let mut failures = 0u32;
    loop {
        let ended = follow_once(
            &mut events,
            hello_id,
            service,
            &recipient,
            follower,
            &shutdown,
        )
        .await;
        follower.detached();
        match ended {
            Ended::Stop => return,
            Ended::Broken { attached: true } => {
                failures = 0;
                delays = backoff().build();
            }
            Ended::Broken { attached: false } => failures += 1,
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if failures == 1 {
            tracing::warn!(
                service,
                ?delay,
                "cannot follow the service; retrying with backoff"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn follow_once(
    events: &mut EventStreamClient<ServiceChannel>,
    hello_id: &str,
    service: &str,
    recipient: &Recipient,
    follower: &mut impl Follower,
    shutdown: &CancellationToken,
) -> Ended {
    let broken = Ended::Broken { attached: false };
    // Kept for the life of the stream: dropping it would end our side.
    let (outbound, rx) = mpsc::channel(4);
    let opening = [
        pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: hello_id.to_owned(),
            accepts_batches: true,
        }),
        pb::gateway_message::Msg::Subscribe(pb::Subscribe {
            request_id: 1,
            recipient: Some(recipient.into()),
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
        opened = events.attach(service_request(ReceiverStream::new(rx), None)) => opened,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::debug!(service, cause = %status, "cannot attach");
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
                tracing::debug!(service, "the subscription was not confirmed");
                return broken;
            }
        }
    }
    let snapshot = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Stop,
        snapshot = follower.snapshot() => snapshot,
    };
    match snapshot {
        Ok(Followed::Continue) => {}
        Ok(Followed::Stop) => return Ended::Stop,
        Err(status) => {
            tracing::warn!(service, cause = %status, "could not read the service's state");
            return broken;
        }
    }
    tracing::info!(service, %recipient, "following");
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Stop,
            message = inbound.message() => message,
        };
        let deliveries = match message {
            Ok(Some(message)) => deliveries(message),
            Ok(None) => {
                tracing::warn!(service, "the event stream closed; re-attaching");
                return Ended::Broken { attached: true };
            }
            Err(status) => {
                tracing::warn!(service, cause = %status, "the event stream failed; re-attaching");
                return Ended::Broken { attached: true };
            }
        };
        for event in deliveries.into_iter().filter_map(|delivery| delivery.event) {
            if follower.event(event).await == Followed::Stop {
                return Ended::Stop;
            }
        }
    }
}

/// The deliveries one message from the service carries, in order.
fn deliveries(message: pb::ServiceMessage) -> Vec<pb::Delivery> {
    match message.msg {
        Some(pb::service_message::Msg::Delivery(delivery)) => vec![delivery],
        Some(pb::service_message::Msg::DeliveryBatch(batch)) => batch.deliveries,
        _ => Vec::new(),
    }
}
