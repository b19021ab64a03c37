//! The gateway's side of the event streams: one long-lived `Attach` stream per
//! service, owned by an actor task, through which the gateway says which
//! recipients it holds and receives their events; plus `Replay` to catch a
//! connection up from a service's log. The gateway says in its `Hello` that
//! it accepts batches: a `DeliveryBatch` is handled exactly as its deliveries
//! one by one, in order.
//!
//! The actor keeps a reference count per recipient. The first connection of a
//! recipient subscribes it and waits for the service's `Subscribed`; the last
//! one to leave unsubscribes it with the position it had seen. When the stream
//! drops, the actor reconnects with backoff, re-subscribes every recipient it
//! holds, and tells their connections to catch up from the log — clients keep
//! their WebSockets and lose nothing durable.
//!
//! Connections give and get the gateway's own types ([`ReplayFrom`],
//! [`ReplayPage`]); the gRPC messages stay in here and `wire.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use chatai_kit::events::{Delivery, Recipient};
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::registry::Registry;
use crate::service_id::ServiceId;
use crate::services::CallError;

/// Commands buffered for one actor.
const COMMAND_BUFFER: usize = 4096;
/// Messages buffered towards the service on the stream.
const STREAM_BUFFER: usize = 1024;

/// A channel to a service's replicas with the internal token on every call.
pub use chatai_kit::grpc::ServiceChannel;

enum Command {
    Acquire {
        recipient: Recipient,
        ready: oneshot::Sender<bool>,
    },
    Release {
        recipient: Recipient,
        delivered: u64,
    },
}

/// Where a replay starts in a recipient's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After this position (one the connection delivered).
    After(u64),
    /// After the last position the service remembers the recipient saw
    /// (for a connection that knows no position of its own).
    LastSeen,
}

/// A page of a recipient's durable log.
#[derive(Debug, Clone, Default)]
pub struct ReplayPage {
    /// In log order (malformed ones left out).
    pub deliveries: Vec<Delivery>,
    /// False when events after the requested position are gone (trimmed).
    pub complete: bool,
    /// The last position read; the next page starts after it.
    pub next_after: u64,
    /// More events follow: ask again from `next_after`.
    pub more: bool,
    /// The position this page started after (resolves [`ReplayFrom::LastSeen`]).
    pub start_after: u64,
}

/// Handle to one service's event stream.
#[derive(Clone)]
pub struct Upstream {
    pub service: ServiceId,
    client: EventStreamClient<ServiceChannel>,
    health: HealthClient<ServiceChannel>,
    commands: mpsc::Sender<Command>,
    attached: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts the actor for `service` on `channel`; it runs until
    /// `shutdown`. Returns the handle and the actor's future (for the
    /// caller's task tracker).
    pub fn start(
        service: ServiceId,
        channel: ServiceChannel,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (commands, rx) = mpsc::channel(COMMAND_BUFFER);
        let attached = Arc::new(AtomicBool::new(false));
        let health = HealthClient::new(channel.clone());
        let client = EventStreamClient::new(channel);
        let actor = Actor {
            service,
            client: client.clone(),
            registry,
            commands: rx,
            interest: HashMap::new(),
            pending: HashMap::new(),
            marks: HashMap::new(),
            next_request: 1,
            attached: attached.clone(),
        };
        let handle = Upstream {
            service,
            client,
            health,
            commands,
            attached,
        };
        (handle, actor.run(shutdown))
    }

    /// Whether the stream to the service is up.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Why the service cannot do its work right now, if it cannot: its event
    /// stream is down, it does not answer health checks, or it reports
    /// NOT_SERVING (e.g. its store is unreachable).
    pub async fn problem(&self, timeout: Duration) -> Option<&'static str> {
        if !self.is_attached() {
            return Some("unreachable");
        }
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(timeout);
        let mut health = self.health.clone();
        match tokio::time::timeout(timeout, health.check(request)).await {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => None,
            Ok(Ok(_)) => Some("not serving (its database or Redis is unreachable)"),
            _ => Some("not answering health checks"),
        }
    }

    /// Durable events retained in this service's logs, if it answers in time.
    pub async fn retained_events(&self, timeout: Duration) -> Option<u64> {
        let mut request = tonic::Request::new(pb::StatsRequest {});
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.stats(request)).await {
            Ok(Ok(response)) => Some(response.into_inner().retained_events),
            _ => None,
        }
    }

    /// Holds `recipient` at this service. True once the service confirmed it
    /// sends the recipient's events; false when the stream is down (the
    /// connection is told to catch up when it is back).
    pub async fn acquire(&self, recipient: Recipient) -> bool {
        let (ready, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Acquire { recipient, ready })
            .await
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Holds `recipient` without waiting for the service's confirmation
    /// (for live-only recipients such as rooms).
    pub async fn hold(&self, recipient: Recipient) {
        let (ready, _) = oneshot::channel();
        let _ = self
            .commands
            .send(Command::Acquire { recipient, ready })
            .await;
    }

    /// Lets go of `recipient`; `delivered` is the last position its
    /// connection delivered from this service (0 = none).
    pub async fn release(&self, recipient: Recipient, delivered: u64) {
        let _ = self
            .commands
            .send(Command::Release {
                recipient,
                delivered,
            })
            .await;
    }

    /// Reads a page of `recipient`'s log at this service.
    pub async fn replay(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        timeout: Duration,
    ) -> Result<ReplayPage, CallError> {
        let mut request = tonic::Request::new(pb::ReplayRequest {
            recipient: Some(recipient.into()),
            from: Some(from.into()),
            limit: 0,
        });
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.replay(request)).await {
            Ok(response) => Ok(ReplayPage::from(response?.into_inner())),
            Err(_) => Err(tonic::Status::deadline_exceeded("replay timed out").into()),
        }
    }
}

enum State {
    /// Not subscribed (the stream is down).
    Down,
    /// Subscribe sent, `Subscribed` not yet received.
    Pending {
        request_id: u64,
        waiters: Vec<oneshot::Sender<bool>>,
        /// Re-subscribed after a reconnect: its connections must catch up.
        resync: bool,
    },
    Active,
}

struct Interest {
    refs: u32,
    state: State,
}

struct Actor {
    service: ServiceId,
    client: EventStreamClient<ServiceChannel>,
    registry: Arc<Registry>,
    commands: mpsc::Receiver<Command>,
    interest: HashMap<Recipient, Interest>,
    pending: HashMap<u64, Recipient>,
    /// Last-seen positions of recipients released while the stream was
    /// down, sent as `Unsubscribe` once it is back.
    marks: HashMap<Recipient, u64>,
    next_request: u64,
    attached: Arc<AtomicBool>,
}

/// Why an attached stream ended.
enum Ended {
    Shutdown,
    Broken,
}

impl Actor {
    async fn run(mut self, shutdown: CancellationToken) {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(3))
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            match self.attach_once(&shutdown).await {
                Some(Ended::Shutdown) => return,
                Some(Ended::Broken) => delays = backoff.build(),
                None => {}
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(3));
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut wait => break,
                    command = self.commands.recv() => match command {
                        Some(command) => self.command_while_down(command),
                        None => return,
                    },
                }
            }
        }
    }

    /// One attached stream, from connect to end. `None` when it could not
    /// be opened.
    async fn attach_once(&mut self, shutdown: &CancellationToken) -> Option<Ended> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut out = VecDeque::new();
        out.push_back(pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: self.registry.gateway_id().to_owned(),
            accepts_batches: true,
        }));
        // Role groups and everyone are always held: their events are few and
        // go to whoever is connected.
        for recipient in [
            Recipient::Role(Role::User),
            Recipient::Role(Role::Operator),
            Recipient::Role(Role::Admin),
            Recipient::Everyone,
        ] {
            out.push_back(subscribe(0, &recipient));
        }
        for (recipient, delivered) in std::mem::take(&mut self.marks) {
            if !self.interest.contains_key(&recipient) {
                out.push_back(unsubscribe(&recipient, delivered));
            }
        }
        let mut resubscribe = Vec::new();
        for (recipient, interest) in self.interest.iter_mut() {
            let request_id = self.next_request;
            self.next_request += 1;
            interest.state = State::Pending {
                request_id,
                waiters: Vec::new(),
                resync: true,
            };
            resubscribe.push((request_id, recipient.clone()));
        }
        for (request_id, recipient) in resubscribe {
            out.push_back(subscribe(request_id, &recipient));
            self.pending.insert(request_id, recipient);
        }
        let mut client = self.client.clone();
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Some(Ended::Shutdown),
            opened = client.attach(ReceiverStream::new(rx)) => opened,
        };
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(service = self.service.name(), cause = %status, "cannot attach to service; retrying");
                self.mark_down();
                return None;
            }
        };
        tracing::info!(
            service = self.service.name(),
            recipients = self.interest.len(),
            "attached to service"
        );
        self.attached.store(true, Ordering::Release);
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                permit = tx.reserve(), if !out.is_empty() => match (permit, out.pop_front()) {
                    (Ok(permit), Some(msg)) => permit.send(pb::GatewayMessage { msg: Some(msg) }),
                    _ => break Ended::Broken,
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.command_while_up(command, &mut out),
                    None => break Ended::Shutdown,
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.on_message(message),
                    Ok(None) => {
                        tracing::warn!(service = self.service.name(), "service closed the event stream; reconnecting");
                        break Ended::Broken;
                    }
                    Err(status) => {
                        tracing::warn!(service = self.service.name(), cause = %status, "event stream failed; reconnecting");
                        break Ended::Broken;
                    }
                },
            }
        };
        self.attached.store(false, Ordering::Release);
        self.mark_down();
        // Marks that never left keep for the next stream.
        for message in out {
            if let pb::gateway_message::Msg::Unsubscribe(pb::Unsubscribe {
                recipient: Some(recipient),
                delivered_position,
            }) = message
                && let Ok(recipient) = Recipient::try_from(&recipient)
            {
                self.keep_mark(recipient, delivered_position);
            }
        }
        Some(ended)
    }

    fn on_message(&mut self, message: pb::ServiceMessage) {
        match message.msg {
            Some(pb::service_message::Msg::Delivery(delivery)) => self.on_delivery(delivery),
            // Exactly as the same deliveries one by one, in order.
            Some(pb::service_message::Msg::DeliveryBatch(batch)) => {
                for delivery in batch.deliveries {
                    self.on_delivery(delivery);
                }
            }
            Some(pb::service_message::Msg::Subscribed(subscribed)) => {
                let Some(recipient) = self.pending.remove(&subscribed.request_id) else {
                    return;
                };
                let Some(interest) = self.interest.get_mut(&recipient) else {
                    return;
                };
                let State::Pending { request_id, .. } = &interest.state else {
                    return;
                };
                if *request_id != subscribed.request_id {
                    return;
                }
                if let State::Pending {
                    waiters, resync, ..
                } = std::mem::replace(&mut interest.state, State::Active)
                {
                    for waiter in waiters {
                        let _ = waiter.send(true);
                    }
                    if resync && recipient.is_durable() {
                        self.registry.resync(self.service, &recipient);
                    }
                }
            }
            None => {}
        }
    }

    fn on_delivery(&self, delivery: pb::Delivery) {
        match Delivery::try_from(delivery) {
            Ok(delivery) => {
                let _span = delivery_span(self.service.name(), &delivery);
                self.registry.dispatch(self.service, &delivery);
            }
            Err(err) => tracing::warn!(service = self.service.name(), cause = %err, "bad delivery"),
        }
    }

    fn command_while_up(&mut self, command: Command, out: &mut VecDeque<pb::gateway_message::Msg>) {
        match command {
            Command::Acquire { recipient, ready } => {
                let interest = self.interest.entry(recipient.clone()).or_insert(Interest {
                    refs: 0,
                    state: State::Down,
                });
                interest.refs += 1;
                match &mut interest.state {
                    State::Active => {
                        let _ = ready.send(true);
                    }
                    State::Pending { waiters, .. } => waiters.push(ready),
                    State::Down => {
                        let request_id = self.next_request;
                        self.next_request += 1;
                        interest.state = State::Pending {
                            request_id,
                            waiters: vec![ready],
                            resync: false,
                        };
                        out.push_back(subscribe(request_id, &recipient));
                        self.pending.insert(request_id, recipient);
                    }
                }
            }
            Command::Release {
                recipient,
                delivered,
            } => {
                if self.release(&recipient) {
                    out.push_back(unsubscribe(&recipient, delivered));
                }
            }
        }
    }

    /// Remembers a last-seen position to send when the stream is back.
    fn keep_mark(&mut self, recipient: Recipient, delivered: u64) {
        if delivered > 0 && recipient.is_durable() {
            let mark = self.marks.entry(recipient).or_default();
            *mark = (*mark).max(delivered);
        }
    }

    fn command_while_down(&mut self, command: Command) {
        match command {
            Command::Acquire { recipient, ready } => {
                self.interest
                    .entry(recipient)
                    .or_insert(Interest {
                        refs: 0,
                        state: State::Down,
                    })
                    .refs += 1;
                let _ = ready.send(false);
            }
            Command::Release {
                recipient,
                delivered,
            } => {
                if self.release(&recipient) {
                    self.keep_mark(recipient, delivered);
                }
            }
        }
    }

    /// Drops one reference; true when it was the last.
    fn release(&mut self, recipient: &Recipient) -> bool {
        let Some(interest) = self.interest.get_mut(recipient) else {
            return false;
        };
        interest.refs = interest.refs.saturating_sub(1);
        if interest.refs > 0 {
            return false;
        }
        if let Some(Interest {
            state:
                State::Pending {
                    request_id,
                    waiters,
                    ..
                },
            ..
        }) = self.interest.remove(recipient)
        {
            self.pending.remove(&request_id);
            for waiter in waiters {
                let _ = waiter.send(false);
            }
        }
        true
    }

    fn mark_down(&mut self) {
        for interest in self.interest.values_mut() {
            if let State::Pending { waiters, .. } =
                std::mem::replace(&mut interest.state, State::Down)
            {
                for waiter in waiters {
                    let _ = waiter.send(false);
                }
            }
        }
        self.pending.clear();
    }
}

fn unsubscribe(recipient: &Recipient, delivered: u64) -> pb::gateway_message::Msg {
    pb::gateway_message::Msg::Unsubscribe(pb::Unsubscribe {
        recipient: Some(recipient.into()),
        delivered_position: delivered,
    })
}

fn subscribe(request_id: u64, recipient: &Recipient) -> pb::gateway_message::Msg {
    pb::gateway_message::Msg::Subscribe(pb::Subscribe {
        request_id,
        recipient: Some(recipient.into()),
    })
}

/// A span for an event this gateway passes on, in the trace of the request
/// that caused it (its context travels inside the event), so that the trace
/// of a client frame ends with the frames it caused. `None` for an event
/// that carries no trace (nothing exports spans).
fn delivery_span(service: &'static str, delivery: &Delivery) -> Option<tracing::span::EnteredSpan> {
    let context = &delivery.event.trace_context;
    if context.is_empty() {
        return None;
    }
    let span = tracing::info_span!(
        "deliver",
        otel.name = "gateway.deliver",
        chatai.part = "gateway",
        service,
        kind = %delivery.event.kind,
        recipient = %delivery.recipient,
        position = delivery.position,
    );
    chatai_kit::telemetry::adopt_parent_from_map(&span, context);
    Some(span.entered())
}
