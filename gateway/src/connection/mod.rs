//! One client connection, from its `connected` frame to its close, in one
//! task. This module owns the task's loop: reading the client, writing what
//! the registry queues (in batches, one flush each), the heartbeat, the
//! token's expiry and the close. The task is the same whatever carries the
//! frames (`transport`: a WebSocket, or an SSE stream with its requests
//! over `POST /api/frames`). The rest of the task's work lives in:
//! - `catch_up` — the start (`connected`), replaying the services' logs,
//!   resyncing after a gap or a lost stream, and writing durable events with
//!   the connection's cursor (`Positions`);
//! - `requests` — the client's frames: the rate limit, turning each frame
//!   into a service call and its `ack` or `error`, rooms, token refresh.
//!
//! Requests are handled one at a time, in order: the `ack` for a message is
//! written before the events it causes, and a client that floods waits on
//! TCP rather than growing a buffer here.

mod catch_up;
pub mod requests;
pub mod transport;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatai_kit::events::Recipient;
use chatai_kit::identity::Caller;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use self::catch_up::Positions;
use self::requests::Answer;
use self::transport::{Closed, Incoming};
pub use self::transport::{Socket, Transport, WebSocket};
use crate::auth::{self, Claims};
use crate::close::CloseReason;
use crate::cursor::Cursor;
use crate::frames::inbound::Priority;
use crate::frames::outbound;
use crate::gateway::Gateway;
use crate::registry::{Conn, OperatorConnection, Outbound};
use crate::reporting::{ConnectionEvent, ConnectionEventKind};

/// Queued frames written before one flush. Bounds the write buffer a burst
/// leaves allocated (with the socket's `write_buffer_size`, see `http.rs`).
const BATCH: usize = 16;

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
pub async fn serve<T: Transport>(transport: T, gateway: Arc<Gateway>, session: Session) {
    let id = gateway.registry.next_id();
    serve_as(transport, gateway, session, id).await;
}

/// Serves one connection with the id `id` (from the registry's
/// [`next_id`](crate::registry::Registry::next_id)) until it closes.
pub async fn serve_as<T: Transport>(
    transport: T,
    gateway: Arc<Gateway>,
    session: Session,
    id: crate::registry::ConnId,
) {
    let registry = &gateway.registry;
    let name = registry.connection_name(id);
    let (tx, rx) = flume::bounded(gateway.config.outbound_queue.max(1));
    let stop = gateway.connections_stop.child_token();
    let conn = Arc::new(
        Conn::new(id, session.claims.role, session.principal.clone(), tx, stop)
            .with_name(session.claims.name.as_deref()),
    );
    registry.register(conn.clone(), gateway.config.max_connections_per_user);
    gateway.limit.opened(&session.principal, id);
    crate::metrics::connection(session.claims.role, 1.0);
    let opened = std::time::Instant::now();
    gateway.reporter.connection_event(connection_event(
        &gateway,
        &name,
        &session,
        ConnectionEventKind::Connect,
    ));
    let span = tracing::info_span!("connection", conn = %name, principal = %session.principal);

    let per_second = NonZeroU32::new(gateway.config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(gateway.config.rate_limit_burst).unwrap_or(per_second);
    let mut connection = Connection {
        caller: auth::caller_of(&session.claims, Some(name)),
        token_expires: expiry_instant(session.claims.exp),
        max_priority: Priority::ceiling(session.claims.max_priority.as_deref()),
        gateway: gateway.clone(),
        transport,
        conn,
        rx,
        positions: Positions::resuming_from(session.resume),
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
        // A write cut short by a stop (shutdown, replaced, too slow) ends as
        // `Gone` too, but the socket is still there: it gets the close code.
        let reason = reason.or_else(|| {
            let conn = &connection.conn;
            conn.is_stopped().then(|| conn.stop_reason())
        });
        if let Some(reason) = reason {
            connection.close(reason).await;
        }
        Box::pin(connection.finish()).await;
        reason
    }
    .instrument(span)
    .await;
    crate::metrics::connection(session.claims.role, -1.0);
    gateway.limit.closed(&session.principal, id);
    let name = connection.caller.connection_id.clone().unwrap_or_default();
    let closed = ConnectionEventKind::Disconnect {
        duration_ms: opened.elapsed().as_millis() as i64,
        close_code: reason.map_or(0, |r| u32::from(r.code())),
    };
    gateway
        .reporter
        .connection_event(connection_event(&gateway, &name, &session, closed));
}

fn connection_event(
    gateway: &Gateway,
    name: &str,
    session: &Session,
    kind: ConnectionEventKind,
) -> ConnectionEvent {
    ConnectionEvent {
        connection_id: name.to_owned(),
        gateway_id: gateway.registry.gateway_id().to_owned(),
        role: session.claims.role,
        principal_id: session.claims.sub,
        kind,
        at_ms: chatai_kit::now_ms(),
    }
}

/// The socket is gone (or the connection was stopped mid-write).
struct Gone;

struct Connection<T> {
    gateway: Arc<Gateway>,
    transport: T,
    conn: Arc<Conn>,
    rx: flume::Receiver<Outbound>,
    caller: Caller,
    /// What this connection delivered from each service.
    positions: Positions,
    rooms: Vec<Recipient>,
    limiter: DefaultDirectRateLimiter,
    /// Frames refused in a row for the rate limit.
    strikes: u32,
    /// While writing a batch of queued frames: buffer them, one flush after.
    batching: bool,
    last_heard: Instant,
    token_expires: Instant,
    /// The highest handoff priority this client may ask for (its token).
    max_priority: Priority,
}

/// What reading a client frame led to.
enum Flow {
    Continue,
    Close(CloseReason),
    Gone,
}

impl<T: Transport> Connection<T> {
    /// This connection as the presence service is told of it, when it is an
    /// operator's.
    fn operator_connection(&self) -> Option<OperatorConnection> {
        let Recipient::Operator(operator_id) = self.conn.principal else {
            return None;
        };
        Some(OperatorConnection {
            operator_id,
            connection_id: self.caller.connection_id.clone().unwrap_or_default(),
            name: self.conn.name.clone(),
        })
    }

    /// The connection's main loop; returns how to close, or `None` when the
    /// client is already gone.
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
                incoming = self.transport.next() => match self.on_incoming(incoming).await {
                    Flow::Continue => {}
                    Flow::Close(reason) => return Some(reason),
                    Flow::Gone => return None,
                },
                _ = ticks.tick() => {
                    let silent = self.last_heard.elapsed();
                    if T::IDLE_TIMEOUT && silent >= idle_timeout {
                        return Some(CloseReason::HeartbeatTimeout);
                    }
                    // Ping once half an interval has passed in silence, so a
                    // client that answers is heard from well before the timeout.
                    if silent >= heartbeat / 2 && self.ping().await.is_err() {
                        return None;
                    }
                }
                _ = expiry => return Some(CloseReason::TokenExpired),
            }
        }
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Flow {
        match incoming {
            Incoming::Gone => Flow::Gone,
            Incoming::Close(reason) => Flow::Close(reason),
            Incoming::Nothing => Flow::Continue,
            Incoming::Heard => {
                self.last_heard = Instant::now();
                Flow::Continue
            }
            Incoming::Text(text, answer) => {
                self.last_heard = Instant::now();
                let answered = self.on_text(&text).await;
                match answer {
                    // Over the transport, in order with the events.
                    None => match answered {
                        Answer::Reply(frame) => match self.send_text(frame).await {
                            Ok(()) => Flow::Continue,
                            Err(Gone) => Flow::Gone,
                        },
                        Answer::Silent => Flow::Continue,
                        Answer::Refused(_, reason) => Flow::Close(reason),
                    },
                    // An HTTP request's answer goes in its response.
                    Some(answer) => match answered {
                        Answer::Reply(frame) => {
                            let _ = answer.send(frame);
                            Flow::Continue
                        }
                        Answer::Silent => {
                            let _ = answer.send(outbound::ack(None, serde_json::json!({})));
                            Flow::Continue
                        }
                        Answer::Refused(frame, reason) => {
                            let _ = answer.send(frame);
                            Flow::Close(reason)
                        }
                    },
                }
            }
        }
    }

    /// Writes `first` and the frames already queued behind it (at most
    /// [`BATCH`]), then flushes once: a burst costs one write to the socket,
    /// not one per frame.
    async fn on_outbound_batch(&mut self, first: Outbound) -> Result<(), Gone> {
        crate::metrics::outbound_queue(self.rx.len() + 1);
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
            flushed = self.transport.flush() => flushed.map_err(|Closed| Gone),
            _ = stopped => Err(Gone),
        }
    }

    async fn on_outbound(&mut self, outbound: Outbound) -> Result<(), Gone> {
        match outbound {
            Outbound::Event(event) => {
                self.on_event(&event).await?;
                crate::metrics::delivered(event.created_ms);
                Ok(())
            }
            Outbound::Frame(frame) => self.send(frame, None).await,
            // Checked again here: the connection may have left the room, or
            // been taken out of it, since the copy was queued.
            Outbound::RoomCopy { room, frame } if self.rooms.contains(&room) => {
                self.send(frame, None).await
            }
            Outbound::RoomCopy { .. } => Ok(()),
            Outbound::Resync(service) => Box::pin(self.resync(service)).await,
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.send(Utf8Bytes::from(text), None).await
    }

    /// Writes one frame (buffers it, in a batch), giving up when the
    /// connection is stopped. `cursor`: the frame's resume position, for a
    /// transport that says it apart (SSE's `id:`).
    async fn send(&mut self, frame: Utf8Bytes, cursor: Option<&str>) -> Result<(), Gone> {
        let stopped = self.conn.stopped();
        let kind = crate::metrics::outbound_type(&frame);
        let write = self.transport.write(frame, cursor, self.batching);
        tokio::select! {
            sent = write => {
                crate::metrics::frame_out(kind);
                sent.map_err(|Closed| Gone)
            }
            _ = stopped => Err(Gone),
        }
    }

    /// A keep-alive (a WebSocket ping, an SSE comment).
    async fn ping(&mut self) -> Result<(), Gone> {
        let stopped = self.conn.stopped();
        tokio::select! {
            sent = self.transport.ping() => sent.map_err(|Closed| Gone),
            _ = stopped => Err(Gone),
        }
    }

    /// Tells the client why the connection ends (a close frame, a `closed`
    /// event), waiting briefly.
    async fn close(&mut self, reason: CloseReason) {
        tracing::debug!(
            code = reason.code(),
            reason = reason.reason(),
            "closing connection"
        );
        crate::metrics::close(reason);
        self.transport.close(reason, Duration::from_secs(1)).await;
    }

    /// Leaves the registry and lets go of the principal at every service,
    /// telling each how far this connection got.
    async fn finish(&mut self) {
        self.gateway.registry.unregister(&self.conn, &self.rooms);
        if let Some(connection) = self.operator_connection()
            && let Err(err) = self
                .gateway
                .services
                .operator_disconnected(
                    self.gateway.registry.gateway_id(),
                    connection.operator_id,
                    &connection.connection_id,
                    self.gateway.registry.report_order(),
                )
                .await
        {
            tracing::warn!(cause = %err, "presence not told of the close; the lease will expire");
        }
        for upstream in &self.gateway.upstreams {
            let delivered = self.positions.delivered_or_zero(upstream.service);
            upstream
                .release(self.conn.principal.clone(), delivered)
                .await;
            for room in &self.rooms {
                upstream.release(room.clone(), 0).await;
            }
        }
    }
}

/// When a token with this `exp` (Unix seconds) runs out, on tokio's clock.
fn expiry_instant(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Instant::now() + Duration::from_secs(exp.saturating_sub(now).min(10 * 365 * 24 * 3600))
}
