//! One client connection, from its `connected` frame to its close, in one
//! task: it reads client frames and turns them into service calls, writes the
//! events the registry queues for it (stamping durable ones with its cursor),
//! catches up from the services' logs when it resumes or a stream comes back,
//! and enforces the rate limit, the heartbeat and the token's expiry.
//!
//! Requests are handled one at a time, in order: the `ack` for a message is
//! written before the events it causes, and a client that floods waits on
//! TCP rather than growing a buffer here.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatai_kit::events::{Delivery, Recipient, generation_start};
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::connection_event::Kind;
use futures::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::Instrument;

use crate::Gateway;
use crate::auth::Claims;
use crate::close::CloseReason;
use crate::cursor::{Cursor, HANDOFF, SERVICE_COUNT};
use crate::frames::inbound::{self, ClientFrame, Inbound, OperatorStatus, Priority};
use crate::frames::outbound::{self, PreparedEvent};
use crate::registry::{Conn, Outbound};
use crate::services::error_for;

/// Queued frames written before one flush. Bounds the write buffer a burst
/// leaves allocated (with the socket's `write_buffer_size`, see `http.rs`).
const BATCH: usize = 16;

/// The upgraded socket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the HTTP layer established before the upgrade.
#[derive(Debug)]
pub struct Session {
    pub claims: Claims,
    /// The user or operator the connection is for.
    pub principal: Recipient,
    /// The cursor the client resumes from, if it gave one.
    pub resume: Option<Cursor>,
}

/// Serves one connection until it closes.
pub async fn serve(socket: Socket, gateway: Arc<Gateway>, session: Session) {
    let registry = &gateway.registry;
    let id = registry.next_id();
    let name = registry.connection_name(id);
    let (tx, rx) = flume::bounded(gateway.config.outbound_queue.max(1));
    let stop = gateway.connections_stop.child_token();
    let conn = Arc::new(
        Conn::new(id, session.claims.role, session.principal.clone(), tx, stop)
            .with_name(session.claims.name.as_deref()),
    );
    registry.register(conn.clone(), gateway.config.max_connections_per_user);
    metrics::gauge!("chatai_gateway_connections").increment(1.0);
    let opened = std::time::Instant::now();
    gateway.reporter.connection_event(connection_event(
        &gateway,
        &name,
        &session,
        Kind::Connect,
        0,
        0,
    ));
    let span = tracing::info_span!("connection", conn = %name, principal = %session.principal);

    let per_second = NonZeroU32::new(gateway.config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(gateway.config.rate_limit_burst).unwrap_or(per_second);
    let mut connection = Connection {
        caller: Caller {
            id: session.claims.sub,
            role: session.claims.role,
            name: session.claims.name.clone(),
            connection_id: Some(name),
        },
        token_expires: expiry_instant(session.claims.exp),
        gateway: gateway.clone(),
        socket,
        conn,
        rx,
        cursor: session.resume.unwrap_or_default(),
        known: [session.resume.is_some(); SERVICE_COUNT],
        rooms: Vec::new(),
        limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        strikes: 0,
        batching: false,
        last_heard: Instant::now(),
    };
    let reason = async {
        // Rarely awaited, large futures are boxed so an idle connection's
        // task only keeps room for its main loop (see BENCHMARKS.md).
        let reason = match Box::pin(connection.start(session.resume.is_some())).await {
            Ok(()) => connection.run().await,
            Err(Gone) => None,
        };
        if let Some(reason) = reason {
            connection.close(reason).await;
        }
        Box::pin(connection.finish()).await;
        reason
    }
    .instrument(span)
    .await;
    metrics::gauge!("chatai_gateway_connections").decrement(1.0);
    let name = connection.caller.connection_id.clone().unwrap_or_default();
    let lived = opened.elapsed().as_millis() as i64;
    let code = reason.map_or(0, |r| u32::from(r.code()));
    gateway.reporter.connection_event(connection_event(
        &gateway,
        &name,
        &session,
        Kind::Disconnect,
        lived,
        code,
    ));
}

fn connection_event(
    gateway: &Gateway,
    name: &str,
    session: &Session,
    kind: Kind,
    duration_ms: i64,
    close_code: u32,
) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        connection_id: name.to_owned(),
        gateway_id: gateway.registry.gateway_id().to_owned(),
        role: session.claims.role.as_str().to_owned(),
        principal_id: session.claims.sub,
        kind: kind as i32,
        at_ms: chatai_kit::now_ms(),
        duration_ms,
        close_code,
    }
}

/// The socket is gone (or the connection was stopped mid-write).
struct Gone;

struct Connection {
    gateway: Arc<Gateway>,
    socket: Socket,
    conn: Arc<Conn>,
    rx: flume::Receiver<Outbound>,
    caller: Caller,
    /// Positions delivered from each service.
    cursor: Cursor,
    /// Whether `cursor` holds a real position for each service (from the
    /// client's cursor or from this connection's own deliveries).
    known: [bool; SERVICE_COUNT],
    rooms: Vec<Recipient>,
    limiter: DefaultDirectRateLimiter,
    /// Frames refused in a row for the rate limit.
    strikes: u32,
    /// While writing a batch of queued frames: buffer them, one flush after.
    batching: bool,
    last_heard: Instant,
    token_expires: Instant,
}

/// What reading a client frame led to.
enum Flow {
    Continue,
    Close(CloseReason),
    Gone,
}

impl Connection {
    /// Subscribes the connection's principal at every service, catches up
    /// from their logs and sends `connected` first. An operator's connection
    /// is announced to the presence service.
    async fn start(&mut self, resuming: bool) -> Result<(), Gone> {
        let gateway = self.gateway.clone();
        if let Recipient::Operator(operator_id) = self.conn.principal {
            let connection = pb::OperatorConnection {
                operator_id,
                connection_id: self.caller.connection_id.clone().unwrap_or_default(),
                name: self.caller.name.clone().unwrap_or_default(),
            };
            if let Err(status) = gateway
                .services
                .operator_connected(gateway.registry.gateway_id(), connection)
                .await
            {
                tracing::warn!(cause = %status, "presence not told of the connection; the lease refresh will");
            }
        }
        let timeout = gateway.config.request_timeout();
        let principal = self.conn.principal.clone();
        let acquired = futures::future::join_all(gateway.upstreams.iter().map(|upstream| {
            let principal = principal.clone();
            async move {
                tokio::time::timeout(timeout, upstream.acquire(principal))
                    .await
                    .unwrap_or(false)
            }
        }))
        .await;
        let first_pages = futures::future::join_all(gateway.upstreams.iter().zip(&acquired).map(
            |(upstream, acquired)| {
                let from = self.replay_from(upstream.index);
                let principal = principal.clone();
                async move {
                    if !*acquired {
                        return None;
                    }
                    match upstream.replay(&principal, from, timeout).await {
                        Ok(page) => Some(page),
                        Err(status) => {
                            tracing::warn!(service = upstream.name, cause = %status, "replay failed; will catch up later");
                            None
                        }
                    }
                }
            },
        ))
        .await;
        let complete = first_pages.iter().flatten().all(|page| page.complete);
        let mut start = self.cursor;
        for (service, page) in first_pages.iter().enumerate() {
            if let Some(page) = page {
                // After an incomplete replay the client goes on from the head.
                start.set(
                    service,
                    if page.complete {
                        page.start_after
                    } else {
                        page.next_after
                    },
                );
            }
        }
        let connected = outbound::connected(
            self.caller.connection_id.as_deref().unwrap_or_default(),
            self.caller.id,
            self.caller.role.as_str(),
            &start.encode(),
            gateway.config.heartbeat_interval().as_secs(),
            resuming.then_some(complete),
        );
        self.send_text(connected).await?;
        if resuming && !complete {
            self.send_cursor_expired().await?;
        }
        for (service, page) in first_pages.into_iter().enumerate() {
            if let Some(page) = page {
                self.cursor.set(service, page.start_after);
                self.known[service] = true;
                self.deliver_pages(service, page).await?;
            }
        }
        Ok(())
    }

    fn replay_from(&self, service: usize) -> pb::replay_request::From {
        if self.known[service] {
            pb::replay_request::From::AfterPosition(self.cursor.get(service))
        } else {
            pb::replay_request::From::SinceLastSeen(true)
        }
    }

    /// Writes a replay page and the pages after it. An incomplete page
    /// (events gone) moves the cursor to the log's head without writing.
    async fn deliver_pages(
        &mut self,
        service: usize,
        mut page: pb::ReplayResponse,
    ) -> Result<(), Gone> {
        let upstream = self.gateway.upstreams[service].clone();
        let timeout = self.gateway.config.request_timeout();
        loop {
            if !page.complete {
                self.cursor.set(service, page.next_after);
                self.known[service] = true;
                return Ok(());
            }
            for delivery in page.deliveries {
                match Delivery::try_from(delivery).map(|d| PreparedEvent::prepare(service, &d)) {
                    Ok(Ok(prepared)) => self.write_event(&prepared).await?,
                    _ => tracing::warn!(
                        service = upstream.name,
                        "skipping a malformed replayed event"
                    ),
                }
            }
            if self.cursor.get(service) < page.next_after {
                self.cursor.set(service, page.next_after);
            }
            if !page.more {
                return Ok(());
            }
            let from = pb::replay_request::From::AfterPosition(page.next_after);
            page = match upstream.replay(&self.conn.principal, from, timeout).await {
                Ok(page) => page,
                Err(status) => {
                    tracing::warn!(service = upstream.name, cause = %status, "replay page failed; will catch up later");
                    return Ok(());
                }
            };
        }
    }

    /// Catches up with `service` after its stream came back or a gap showed.
    async fn resync(&mut self, service: usize) -> Result<(), Gone> {
        let upstream = self.gateway.upstreams[service].clone();
        let had_position = self.known[service];
        let from = self.replay_from(service);
        let timeout = self.gateway.config.request_timeout();
        match upstream.replay(&self.conn.principal, from, timeout).await {
            Ok(page) => {
                if !page.complete && had_position {
                    self.send_cursor_expired().await?;
                    if let Some(fresh) = self.new_generation(service, &page).await {
                        self.cursor.set(service, fresh.start_after);
                        return self.deliver_pages(service, fresh).await;
                    }
                }
                if !had_position {
                    self.cursor.set(service, page.start_after);
                    self.known[service] = true;
                }
                self.deliver_pages(service, page).await
            }
            Err(status) => {
                tracing::warn!(service = upstream.name, cause = %status, "catch-up failed; waiting for the stream");
                Ok(())
            }
        }
    }

    /// When the log this connection was reading was lost and began again
    /// (`page` found its head in another generation), the new generation
    /// read from its start: what it holds arrived after the loss and is all
    /// there, so it is delivered rather than skipped. `None` when the log did
    /// not begin again, or the new generation is itself incomplete.
    async fn new_generation(
        &mut self,
        service: usize,
        page: &pb::ReplayResponse,
    ) -> Option<pb::ReplayResponse> {
        let head = page.next_after;
        let start = generation_start(head);
        if head == 0 || start == generation_start(self.cursor.get(service)) {
            return None;
        }
        let upstream = &self.gateway.upstreams[service];
        let from = pb::replay_request::From::AfterPosition(start);
        let timeout = self.gateway.config.request_timeout();
        match upstream.replay(&self.conn.principal, from, timeout).await {
            Ok(fresh) if fresh.complete => Some(fresh),
            Ok(_) => None,
            Err(status) => {
                tracing::warn!(service = upstream.name, cause = %status, "reading the new log generation failed; going on from its head");
                None
            }
        }
    }

    async fn send_cursor_expired(&mut self) -> Result<(), Gone> {
        let frame = outbound::error(
            None,
            "cursor_expired",
            "Some events after your cursor are no longer kept; reload history, live delivery continues",
        );
        self.send_text(frame).await
    }

    /// Writes a durable event once, stamped with the advanced cursor.
    async fn write_event(&mut self, event: &PreparedEvent) -> Result<(), Gone> {
        let service = event.service;
        if self.known[service] && event.position <= self.cursor.get(service) {
            return Ok(()); // already delivered (replay and live overlap)
        }
        self.cursor.set(service, event.position);
        self.known[service] = true;
        let text = event.render(Some(&self.cursor.encode()));
        self.send_text(text).await
    }

    async fn on_outbound(&mut self, outbound: Outbound) -> Result<(), Gone> {
        match outbound {
            Outbound::Event(event) => {
                let service = event.service;
                let last = self.cursor.get(service);
                let same_generation = generation_start(event.position) == generation_start(last);
                let gap = if same_generation {
                    event.position > last + 1
                } else {
                    // The log began again since this connection read it.
                    last != 0
                };
                if self.known[service] && gap {
                    // Something was missed; the log has it (or says it is gone).
                    Box::pin(self.resync(service)).await?;
                }
                self.write_event(&event).await
            }
            Outbound::Frame(frame) => self.send(Message::Text(frame)).await,
            Outbound::Resync(service) => Box::pin(self.resync(service)).await,
        }
    }

    /// The connection's main loop; returns how to close, or `None` when the
    /// socket is already gone.
    async fn run(&mut self) -> Option<CloseReason> {
        let heartbeat = self.gateway.config.heartbeat_interval();
        let idle_timeout = self.gateway.config.idle_timeout();
        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let stopped = self.conn.stopped();
            let expiry = tokio::time::sleep_until(self.token_expires);
            tokio::select! {
                biased;
                _ = stopped => return Some(self.conn.stop_reason()),
                outbound = self.rx.recv_async() => match outbound {
                    Ok(outbound) => {
                        if self.on_outbound_batch(outbound).await.is_err() {
                            return None;
                        }
                    }
                    Err(flume::RecvError::Disconnected) => return Some(CloseReason::Shutdown),
                },
                message = self.socket.next() => match self.on_message(message).await {
                    Flow::Continue => {}
                    Flow::Close(reason) => return Some(reason),
                    Flow::Gone => return None,
                },
                _ = ticks.tick() => {
                    let silent = self.last_heard.elapsed();
                    if silent >= idle_timeout {
                        return Some(CloseReason::HeartbeatTimeout);
                    }
                    // Ping once half an interval has passed in silence, so a
                    // client that answers is heard from well before the timeout.
                    if silent >= heartbeat / 2 && self.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
                _ = expiry => return Some(CloseReason::TokenExpired),
            }
        }
    }

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Flow {
        match message {
            None => Flow::Gone,
            Some(Ok(Message::Text(text))) => {
                self.last_heard = Instant::now();
                metrics::counter!("chatai_gateway_frames_in_total").increment(1);
                self.on_text(&text).await
            }
            Some(Ok(Message::Binary(_))) => Flow::Close(CloseReason::Binary),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.last_heard = Instant::now();
                Flow::Continue
            }
            Some(Ok(Message::Close(_))) => Flow::Gone,
            Some(Ok(Message::Frame(_))) => Flow::Continue,
            Some(Err(WsError::Utf8(_))) => Flow::Close(CloseReason::InvalidUtf8),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                Flow::Close(CloseReason::TooLarge)
            }
            Some(Err(err)) => {
                tracing::debug!(cause = %err, "socket failed");
                Flow::Gone
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        if self.limiter.check().is_err() {
            self.strikes += 1;
            if self.strikes > self.gateway.config.rate_limit_strikes {
                return Flow::Close(CloseReason::RateLimited);
            }
            let reference = inbound::parse(text).ok().and_then(|i| i.id);
            let frame = outbound::error(
                reference.as_deref(),
                "rate_limited",
                "Too many frames; this one was not processed. Slow down or the connection closes",
            );
            return self.reply(frame).await;
        }
        self.strikes = 0;
        let inbound = match inbound::parse(text) {
            Ok(inbound) => inbound,
            Err(err) => {
                let frame = outbound::error(err.ref_id.as_deref(), err.code, &err.message);
                return self.reply(frame).await;
            }
        };
        // A root: one trace per client frame, across every service it
        // touches (the connection's own span lives as long as the socket).
        let span = tracing::info_span!(
            parent: None,
            "frame",
            r#type = inbound.frame.type_name(),
            id = inbound.id.as_deref(),
            conn = self.caller.connection_id.as_deref(),
            principal = %self.conn.principal,
        );
        Box::pin(self.on_frame(inbound).instrument(span)).await
    }

    async fn reply(&mut self, frame: String) -> Flow {
        match self.send_text(frame).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Gone,
        }
    }

    async fn on_frame(&mut self, Inbound { id, frame }: Inbound) -> Flow {
        let reference = id.as_deref();
        let services = self.gateway.services.clone();
        let reply = match frame {
            ClientFrame::Heartbeat => outbound::heartbeat_ack(reference),
            ClientFrame::ChatMessage { dialog_id, message } => {
                match services
                    .send_message(
                        &self.caller,
                        reference,
                        dialog_id,
                        message,
                        self.handoff_seen(),
                    )
                    .await
                {
                    Ok(sent) => {
                        self.gateway.reporter.messages.tick();
                        outbound::ack(
                            reference,
                            json!({ "dialog_id": sent.dialog_id, "message_id": sent.message_id }),
                        )
                    }
                    Err(status) => error_frame(reference, &status),
                }
            }
            ClientFrame::Typing {
                dialog_id,
                is_typing,
            } => match services
                .typing(&self.caller, dialog_id, is_typing, self.handoff_seen())
                .await
            {
                Ok(()) if reference.is_some() => {
                    outbound::ack(reference, json!({ "dialog_id": dialog_id }))
                }
                Ok(()) => return Flow::Continue,
                Err(status) => error_frame(reference, &status),
            },
            ClientFrame::RefreshToken { token } => self.refresh_token(reference, &token),
            ClientFrame::SetStatus { .. } | ClientFrame::CompleteHandoff { .. }
                if self.caller.role != Role::Operator =>
            {
                outbound::error(reference, "forbidden", "Only operators may do that")
            }
            ClientFrame::SetStatus { status } => {
                let wire = match status {
                    OperatorStatus::Available => pb::OperatorStatus::Available,
                    OperatorStatus::Busy => pb::OperatorStatus::Busy,
                    OperatorStatus::Away => pb::OperatorStatus::Away,
                };
                match services.set_status(&self.caller, wire).await {
                    Ok(info) => outbound::ack(
                        reference,
                        json!({ "status": status_name(info.status), "chosen_status": status.as_str() }),
                    ),
                    Err(status) => error_frame(reference, &status),
                }
            }
            ClientFrame::CompleteHandoff {
                dialog_id,
                resolution,
            } => {
                match services
                    .complete_handoff(&self.caller, dialog_id, resolution)
                    .await
                {
                    Ok(done) => outbound::ack(
                        reference,
                        json!({ "dialog_id": dialog_id, "duration": done.duration_seconds }),
                    ),
                    Err(status) => error_frame(reference, &status),
                }
            }
            ClientFrame::HandoffRequest { .. } if self.caller.role == Role::Operator => {
                outbound::error(
                    reference,
                    "forbidden",
                    "Operators take handoffs; users request them",
                )
            }
            ClientFrame::HandoffRequest {
                dialog_id,
                reason,
                priority,
            } => {
                let wire = match priority {
                    Priority::Low => pb::Priority::Low,
                    Priority::Normal => pb::Priority::Normal,
                    Priority::High => pb::Priority::High,
                    Priority::Urgent => pb::Priority::Urgent,
                };
                match services
                    .request_handoff(&self.caller, dialog_id, reason, wire)
                    .await
                {
                    Ok(handoff) => outbound::ack(
                        reference,
                        json!({
                            "dialog_id": dialog_id,
                            "handoff_id": handoff.handoff_id,
                            "position": handoff.position,
                            "estimated_wait_time": handoff.estimated_wait_seconds,
                            "operator_id": handoff.operator_id,
                        }),
                    ),
                    Err(status) => error_frame(reference, &status),
                }
            }
            ClientFrame::JoinRoom { room_id } => self.join_room(reference, &room_id).await,
            ClientFrame::LeaveRoom { room_id } => self.leave_room(reference, &room_id).await,
        };
        self.reply(reply).await
    }

    /// The last position of the caller's own log at the handoff service
    /// this connection was delivered (0 for none): the chat service routes
    /// the caller's messages by a holder view at least that new.
    fn handoff_seen(&self) -> u64 {
        if self.known[HANDOFF] {
            self.cursor.get(HANDOFF)
        } else {
            0
        }
    }

    /// Joins a `dialog:{id}` room, for its owner, its operator and admins:
    /// live copies of the dialog's events, the sender's own excluded.
    async fn join_room(&mut self, reference: Option<&str>, room_id: &str) -> String {
        let Some(dialog_id) = room_id
            .strip_prefix("dialog:")
            .and_then(|id| id.parse::<i64>().ok())
        else {
            return outbound::error(
                reference,
                "forbidden",
                "Only `dialog:{id}` rooms can be joined",
            );
        };
        if let Err(status) = self
            .gateway
            .services
            .check_access(&self.caller, dialog_id)
            .await
        {
            return error_frame(reference, &status);
        }
        let room = Recipient::dialog_room(dialog_id);
        if !self.rooms.contains(&room) {
            self.gateway.registry.join(room.clone(), &self.conn);
            for upstream in &self.gateway.upstreams {
                // Room events are live only: nothing to wait for.
                upstream.hold(room.clone()).await;
            }
            self.rooms.push(room);
        }
        outbound::ack(reference, json!({ "room_id": room_id }))
    }

    async fn leave_room(&mut self, reference: Option<&str>, room_id: &str) -> String {
        let room = Recipient::Room(room_id.into());
        if let Some(index) = self.rooms.iter().position(|r| r == &room) {
            self.rooms.swap_remove(index);
            self.gateway.registry.leave(&room, &self.conn);
            for upstream in &self.gateway.upstreams {
                upstream.release(room.clone(), 0).await;
            }
        }
        outbound::ack(reference, json!({ "room_id": room_id }))
    }

    /// Extends the connection's life with a newer token for the same subject and role.
    fn refresh_token(&mut self, reference: Option<&str>, token: &str) -> String {
        match self.gateway.keys.verify(token) {
            Ok(claims) if claims.sub == self.caller.id && claims.role == self.caller.role => {
                self.token_expires = expiry_instant(claims.exp);
                outbound::ack(reference, json!({ "expires_at": claims.exp }))
            }
            Ok(_) => outbound::error(
                reference,
                "unauthorized",
                "The token is for another subject or role",
            ),
            Err(_) => outbound::error(
                reference,
                "invalid_token",
                "The token is invalid or expired",
            ),
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.send(Message::Text(Utf8Bytes::from(text))).await
    }

    /// Writes one message (buffers it, in a batch), giving up when the
    /// connection is stopped.
    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        let stopped = self.conn.stopped();
        let socket = &mut self.socket;
        let write = async {
            if self.batching {
                socket.feed(message).await
            } else {
                socket.send(message).await
            }
        };
        tokio::select! {
            sent = write => {
                metrics::counter!("chatai_gateway_frames_out_total").increment(1);
                sent.map_err(|_| Gone)
            }
            _ = stopped => Err(Gone),
        }
    }

    /// Writes `first` and the frames already queued behind it (at most
    /// [`BATCH`]), then flushes once: a burst costs one write to the socket,
    /// not one per frame.
    async fn on_outbound_batch(&mut self, first: Outbound) -> Result<(), Gone> {
        self.batching = true;
        let mut written = self.on_outbound(first).await;
        for _ in 1..BATCH {
            if written.is_err() {
                break;
            }
            match self.rx.try_recv() {
                Ok(next) => written = self.on_outbound(next).await,
                Err(_) => break,
            }
        }
        self.batching = false;
        written?;
        let stopped = self.conn.stopped();
        tokio::select! {
            flushed = self.socket.flush() => flushed.map_err(|_| Gone),
            _ = stopped => Err(Gone),
        }
    }

    /// Sends a close frame and waits briefly for the client's.
    async fn close(&mut self, reason: CloseReason) {
        tracing::debug!(
            code = reason.code(),
            reason = reason.reason(),
            "closing connection"
        );
        if reason == CloseReason::TooSlow {
            metrics::counter!("chatai_gateway_slow_disconnects_total").increment(1);
        }
        let grace = Duration::from_secs(1);
        if tokio::time::timeout(grace, self.socket.close(Some(reason.frame())))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(grace, async {
                while let Some(Ok(_)) = self.socket.next().await {}
            })
            .await;
        }
    }

    /// Leaves the registry and lets go of the principal at every service,
    /// telling each how far this connection got.
    async fn finish(&mut self) {
        self.gateway.registry.unregister(&self.conn, &self.rooms);
        if let Recipient::Operator(operator_id) = self.conn.principal {
            let name = self.caller.connection_id.clone().unwrap_or_default();
            if let Err(status) = self
                .gateway
                .services
                .operator_disconnected(self.gateway.registry.gateway_id(), operator_id, &name)
                .await
            {
                tracing::warn!(cause = %status, "presence not told of the close; the lease will expire");
            }
        }
        for upstream in &self.gateway.upstreams {
            let delivered = if self.known[upstream.index] {
                self.cursor.get(upstream.index)
            } else {
                0
            };
            upstream
                .release(self.conn.principal.clone(), delivered)
                .await;
            for room in &self.rooms {
                upstream.release(room.clone(), 0).await;
            }
        }
    }
}

/// A presence status as clients write it.
fn status_name(status: i32) -> &'static str {
    match pb::OperatorStatus::try_from(status) {
        Ok(pb::OperatorStatus::Available) => "available",
        Ok(pb::OperatorStatus::Busy) => "busy",
        Ok(pb::OperatorStatus::Away) => "away",
        _ => "offline",
    }
}

fn error_frame(reference: Option<&str>, status: &tonic::Status) -> String {
    let (code, message) = error_for(status);
    outbound::error(reference, &code, &message)
}

/// When a token with this `exp` (Unix seconds) runs out, on tokio's clock.
fn expiry_instant(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Instant::now() + Duration::from_secs(exp.saturating_sub(now).min(10 * 365 * 24 * 3600))
}
