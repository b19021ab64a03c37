//! The `EventStream` gRPC service, the same for all four services: gateways
//! attach, say which recipients they hold, and receive those recipients'
//! events; `Replay` reads a recipient's log.
//!
//! Each attached stream is one task (tonic's streaming recipe): it owns the
//! gateway's interest set, reads the backend's live fan-out (on a wake-up,
//! everything already there, up to [`MAX_BATCH`] events), and feeds a
//! bounded channel (bounded in deliveries: one entry per event) that tonic
//! drains to the gateway. A gateway too slow to keep up is cut off when the
//! live buffer overflows; it re-attaches and catches up from the logs, so
//! nothing durable is lost.
//!
//! Batching: for a gateway that said `Hello.accepts_batches`, each time tonic
//! takes the next message (`Outbound`) the deliveries already waiting in
//! the channel, up to [`MAX_BATCH`], go as one `DeliveryBatch` (a lone one as
//! a plain `Delivery`). It never waits for more, so batching adds no latency:
//! it merges what a burst, or a gateway reading slower than events come,
//! leaves queued. Order is the channel's order, so `Subscribed` acks and the
//! deliveries around them stay exactly as they were queued. Other gateways
//! get one `Delivery` per message, as before.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_server::{EventStream, EventStreamServer};
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::{Delivery, EventLog, Recipient, ReplayFrom};

/// Deliveries (and other messages) buffered towards one gateway before the
/// stream task waits.
const STREAM_BUFFER: usize = 1024;
/// The most deliveries sent in one `DeliveryBatch`.
pub const MAX_BATCH: usize = 64;
/// Replay page size when the request asks for none.
const DEFAULT_PAGE: usize = 500;
/// The largest replay page, in events.
const MAX_PAGE: usize = 5_000;
/// The largest replay page, in encoded bytes (well under the 4 MiB a gRPC
/// client decodes by default); a page is cut there and says `more`.
const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// The `EventStream` service over an [`EventLog`].
#[derive(Clone)]
pub struct EventStreamService {
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl EventStreamService {
    /// Stream tasks stop when `shutdown` is cancelled and are tracked by
    /// `tasks`, so the owner can wait for them.
    pub fn new(log: Arc<dyn EventLog>, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        EventStreamService {
            log,
            shutdown,
            tasks,
        }
    }

    /// The tonic service, ready to be added to a server's routes.
    pub fn into_server(self) -> EventStreamServer<Self> {
        EventStreamServer::new(self)
    }
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceMessage, Status>> + Send>>;

#[tonic::async_trait]
impl EventStream for EventStreamService {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        // Subscribe to the live fan-out before reading any interest, so no
        // event published after a `Subscribed` can be missed.
        let live = self.log.live();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let attached = Attached {
            log: self.log.clone(),
            shutdown: self.shutdown.clone(),
            inbound: request.into_inner(),
            live,
            tx,
            interest: HashSet::new(),
            gateway: String::new(),
            batches: false,
        };
        self.tasks.spawn(attached.run(self.shutdown.clone()));
        Ok(Response::new(Box::pin(Outbound { rx, held: None })))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.log_stats().await?))
    }

    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<pb::ReplayResponse>, Status> {
        let request = request.into_inner();
        let recipient = Recipient::try_from(
            request
                .recipient
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("recipient is required"))?,
        )?;
        if !recipient.is_durable() {
            return Err(Status::invalid_argument(
                "only users and operators have logs",
            ));
        }
        let from = match request.from {
            Some(pb::replay_request::From::AfterPosition(position)) => ReplayFrom::After(position),
            Some(pb::replay_request::From::SinceLastSeen(_)) | None => ReplayFrom::SinceLastSeen,
        };
        let limit = match request.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let page = self.log.read(&recipient, from, limit).await?;
        let mut deliveries = Vec::with_capacity(page.deliveries.len());
        let (mut bytes, mut next_after, mut more) = (0, page.next_after, page.more);
        for delivery in &page.deliveries {
            let wire = pb::Delivery::from(delivery);
            bytes += wire.encoded_len();
            if bytes > MAX_PAGE_BYTES && !deliveries.is_empty() {
                more = true;
                break;
            }
            next_after = delivery.position;
            deliveries.push(wire);
        }
        if deliveries.len() == page.deliveries.len() {
            next_after = page.next_after;
        }
        Ok(Response::new(pb::ReplayResponse {
            deliveries,
            complete: page.complete,
            next_after,
            more,
            start_after: page.start_after,
        }))
    }
}

impl EventStreamService {
    async fn log_stats(&self) -> Result<pb::StatsResponse, Status> {
        let stats = self.log.stats().await?;
        Ok(pb::StatsResponse {
            retained_events: stats.retained_events,
            recipients: stats.recipients,
        })
    }
}

/// What the stream task queues for its gateway.
enum Outgoing {
    /// A delivery that may go in a `DeliveryBatch` with the ones after it.
    Batchable(pb::Delivery),
    /// A message sent as it is (and the end of the stream, as an error).
    Message(Result<pb::ServiceMessage, Status>),
}

/// The stream tonic sends to the gateway: what the stream task queued, in
/// order, with the batchable deliveries that are ready at once merged into
/// one `DeliveryBatch` of at most [`MAX_BATCH`]. It never waits for more.
struct Outbound {
    rx: mpsc::Receiver<Outgoing>,
    /// A message taken while filling a batch, sent next.
    held: Option<Outgoing>,
}

impl Stream for Outbound {
    type Item = Result<pb::ServiceMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let first = match this.held.take() {
            Some(held) => held,
            None => match ready!(this.rx.poll_recv(cx)) {
                Some(next) => next,
                None => return Poll::Ready(None),
            },
        };
        let first = match first {
            Outgoing::Message(message) => return Poll::Ready(Some(message)),
            Outgoing::Batchable(delivery) => delivery,
        };
        let mut deliveries = vec![first];
        while deliveries.len() < MAX_BATCH {
            match this.rx.try_recv() {
                Ok(Outgoing::Batchable(delivery)) => deliveries.push(delivery),
                Ok(other) => {
                    this.held = Some(other);
                    break;
                }
                // Empty, or closed (the next poll ends the stream).
                Err(_) => break,
            }
        }
        let msg = if deliveries.len() == 1 {
            deliveries.pop().map(pb::service_message::Msg::Delivery)
        } else {
            Some(pb::service_message::Msg::DeliveryBatch(pb::DeliveryBatch {
                deliveries,
            }))
        };
        Poll::Ready(Some(Ok(pb::ServiceMessage { msg })))
    }
}

/// One attached gateway stream.
struct Attached {
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
    inbound: Streaming<pb::GatewayMessage>,
    live: broadcast::Receiver<Delivery>,
    tx: mpsc::Sender<Outgoing>,
    interest: HashSet<Recipient>,
    gateway: String,
    /// The gateway accepts `DeliveryBatch` (said in its `Hello`).
    batches: bool,
}

impl Attached {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.tx.try_send(Outgoing::Message(Err(Status::unavailable("service is shutting down"))));
                    break;
                }
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.handle(message).await {
                            let _ = self.tx.send(Outgoing::Message(Err(status))).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(gateway = %self.gateway, cause = %status, "gateway stream failed");
                        break;
                    }
                },
                delivery = self.live.recv() => {
                    // Then what else is ready, up to a bound, without
                    // waiting and without a turn of this loop each.
                    let mut next = Some(delivery);
                    let mut taken = 0;
                    let mut open = true;
                    while let Some(delivery) = next.take() {
                        if !self.forward(delivery).await {
                            open = false;
                            break;
                        }
                        taken += 1;
                        if taken < MAX_BATCH {
                            next = match self.live.try_recv() {
                                Ok(delivery) => Some(Ok(delivery)),
                                Err(TryRecvError::Empty) => None,
                                Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
                                Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                            };
                        }
                    }
                    if !open {
                        break;
                    }
                }
            }
        }
        tracing::debug!(gateway = %self.gateway, "gateway stream ended");
    }

    /// Queues a delivery from the live fan-out for the gateway if it holds
    /// its recipient; false when the stream must end (the gateway is gone,
    /// fell behind, or the fan-out closed).
    async fn forward(&mut self, delivery: Result<Delivery, RecvError>) -> bool {
        match delivery {
            Ok(delivery) => {
                if !self.interest.contains(&delivery.recipient) {
                    return true;
                }
                let delivery = pb::Delivery::from(&delivery);
                let queued = if self.batches {
                    Outgoing::Batchable(delivery)
                } else {
                    as_is(pb::service_message::Msg::Delivery(delivery))
                };
                self.send(queued).await
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(gateway = %self.gateway, missed, "gateway fell behind the live fan-out; cutting its stream");
                let cut = Status::data_loss("gateway fell behind; re-attach and replay");
                let _ = self.tx.send(Outgoing::Message(Err(cut))).await;
                false
            }
            Err(RecvError::Closed) => false,
        }
    }

    /// Sends to the gateway; false when it is gone or the service is
    /// shutting down (a gateway that does not read must not hold up the drain).
    async fn send(&self, queued: Outgoing) -> bool {
        tokio::select! {
            sent = self.tx.send(queued) => sent.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }

    async fn handle(&mut self, message: pb::GatewayMessage) -> Result<(), Status> {
        use pb::gateway_message::Msg;
        match message.msg {
            Some(Msg::Hello(hello)) => {
                tracing::info!(gateway = %hello.gateway_id, batches = hello.accepts_batches, "gateway attached");
                self.gateway = hello.gateway_id;
                self.batches = hello.accepts_batches;
            }
            Some(Msg::Subscribe(subscribe)) => {
                let recipient = Recipient::try_from(
                    subscribe
                        .recipient
                        .as_ref()
                        .ok_or_else(|| Status::invalid_argument("subscribe without recipient"))?,
                )?;
                self.interest.insert(recipient);
                let ack = pb::service_message::Msg::Subscribed(pb::Subscribed {
                    request_id: subscribe.request_id,
                });
                if !self.send(as_is(ack)).await {
                    return Err(Status::cancelled("gateway gone"));
                }
            }
            Some(Msg::Unsubscribe(unsubscribe)) => {
                let recipient =
                    Recipient::try_from(unsubscribe.recipient.as_ref().ok_or_else(|| {
                        Status::invalid_argument("unsubscribe without recipient")
                    })?)?;
                self.interest.remove(&recipient);
                if recipient.is_durable() && unsubscribe.delivered_position > 0 {
                    self.log
                        .mark_seen(&recipient, unsubscribe.delivered_position)
                        .await?;
                }
            }
            None => return Err(Status::invalid_argument("empty gateway message")),
        }
        Ok(())
    }
}

/// `msg`, queued to be sent as it is.
fn as_is(msg: pb::service_message::Msg) -> Outgoing {
    Outgoing::Message(Ok(pb::ServiceMessage { msg: Some(msg) }))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn delivery(position: u64) -> pb::Delivery {
        pb::Delivery {
            recipient: Some((&Recipient::User(1)).into()),
            position,
            event: None,
        }
    }

    fn positions(message: &pb::ServiceMessage) -> Vec<u64> {
        match &message.msg {
            Some(pb::service_message::Msg::Delivery(d)) => vec![d.position],
            Some(pb::service_message::Msg::DeliveryBatch(b)) => {
                assert!(b.deliveries.len() > 1, "a batch of one is a Delivery");
                b.deliveries.iter().map(|d| d.position).collect()
            }
            other => panic!("expected deliveries, got {other:?}"),
        }
    }

    /// What is queued goes out in order: ready deliveries merged up to
    /// `MAX_BATCH`, a lone one as a `Delivery`, other messages in their
    /// place between batches, non-batchable deliveries one by one.
    #[tokio::test]
    async fn outbound_merges_ready_deliveries_in_order() {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut outbound = Outbound { rx, held: None };
        for position in 1..=3 {
            tx.send(Outgoing::Batchable(delivery(position)))
                .await
                .expect("queued");
        }
        let ack = pb::service_message::Msg::Subscribed(pb::Subscribed { request_id: 9 });
        tx.send(as_is(ack.clone())).await.expect("queued");
        for position in 4..=(4 + MAX_BATCH as u64) {
            tx.send(Outgoing::Batchable(delivery(position)))
                .await
                .expect("queued");
        }
        let single = pb::service_message::Msg::Delivery(delivery(100));
        tx.send(as_is(single.clone())).await.expect("queued");
        tx.send(Outgoing::Batchable(delivery(101)))
            .await
            .expect("queued");

        let next = |outbound: &mut Outbound| {
            let mut next = outbound.next();
            let polled = futures::FutureExt::now_or_never(&mut next);
            polled
                .expect("ready without waiting")
                .expect("not ended")
                .expect("not an error")
        };
        assert_eq!(positions(&next(&mut outbound)), vec![1, 2, 3]);
        assert_eq!(next(&mut outbound).msg, Some(ack));
        let full = positions(&next(&mut outbound));
        assert_eq!(full, (4..4 + MAX_BATCH as u64).collect::<Vec<_>>());
        // The last of the run stops at the non-batchable delivery.
        assert_eq!(positions(&next(&mut outbound)), vec![4 + MAX_BATCH as u64]);
        assert_eq!(next(&mut outbound).msg, Some(single));
        assert_eq!(positions(&next(&mut outbound)), vec![101]);

        // Nothing ready: it waits, and it does not end while the task lives.
        assert!(futures::FutureExt::now_or_never(outbound.next()).is_none());
        drop(tx);
        assert!(outbound.next().await.is_none(), "ends with the task");
    }
}
