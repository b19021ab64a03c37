//! The `EventStream` gRPC service, the same for all four services: gateways
//! attach, say which recipients they hold, and receive those recipients'
//! events; `Replay` reads a recipient's log.
//!
//! Each attached stream is one task (tonic's streaming recipe): it owns the
//! gateway's interest set, reads the backend's live fan-out, and feeds a
//! bounded channel that tonic drains to the gateway. A gateway too slow to
//! keep up is cut off when the live buffer overflows; it re-attaches and
//! catches up from the logs, so nothing durable is lost.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_server::{EventStream, EventStreamServer};
use futures::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::{Delivery, EventLog, Recipient, ReplayFrom};

/// Messages buffered towards one gateway before the stream task waits.
const STREAM_BUFFER: usize = 1024;
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
        };
        self.tasks.spawn(attached.run(self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

/// One attached gateway stream.
struct Attached {
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
    inbound: Streaming<pb::GatewayMessage>,
    live: broadcast::Receiver<Delivery>,
    tx: mpsc::Sender<Result<pb::ServiceMessage, Status>>,
    interest: HashSet<Recipient>,
    gateway: String,
}

impl Attached {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.tx.try_send(Err(Status::unavailable("service is shutting down")));
                    break;
                }
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.handle(message).await {
                            let _ = self.tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(gateway = %self.gateway, cause = %status, "gateway stream failed");
                        break;
                    }
                },
                delivery = self.live.recv() => match delivery {
                    Ok(delivery) => {
                        if self.interest.contains(&delivery.recipient) {
                            let message = pb::service_message::Msg::Delivery((&delivery).into());
                            if !self.send(message).await {
                                break;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(gateway = %self.gateway, missed, "gateway fell behind the live fan-out; cutting its stream");
                        let _ = self.tx.send(Err(Status::data_loss("gateway fell behind; re-attach and replay"))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        tracing::debug!(gateway = %self.gateway, "gateway stream ended");
    }

    /// Sends to the gateway; false when it is gone or the service is
    /// shutting down (a gateway that does not read must not hold up the drain).
    async fn send(&self, message: pb::service_message::Msg) -> bool {
        tokio::select! {
            sent = self.tx.send(Ok(pb::ServiceMessage { msg: Some(message) })) => sent.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }

    async fn handle(&mut self, message: pb::GatewayMessage) -> Result<(), Status> {
        use pb::gateway_message::Msg;
        match message.msg {
            Some(Msg::Hello(hello)) => {
                tracing::info!(gateway = %hello.gateway_id, "gateway attached");
                self.gateway = hello.gateway_id;
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
                if !self.send(ack).await {
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
