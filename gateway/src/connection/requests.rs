//! A connection's client frames: the rate limit, parsing, and each request
//! turned into a service call answered with an `ack` or an `error` (rooms and
//! token refresh are handled here, without a service call of their own), and
//! leaving a dialog's room when the operator's hold on it ends.
//!
//! The requests that need no connection ([`handle`]) are also what
//! `POST /api/frames` runs for a frame that names no stream: one
//! implementation of each rule, whoever sends the frame.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::Recipient;
use chatai_kit::identity::{Caller, Role};
use serde_json::json;
use tracing::Instrument;

use super::transport::Transport;
use super::{Connection, Gone, expiry_instant};
use crate::close::CloseReason;
use crate::frames::inbound::{self, ClientFrame, Inbound, Priority};
use crate::frames::outbound;
use crate::frames::rooms::{self, EndedHold};
use crate::gateway::Gateway;
use crate::service_id::ServiceId;
use crate::services::CallError;

/// How a client frame was answered.
#[derive(Debug)]
pub enum Answer {
    /// With this frame.
    Reply(String),
    /// Not at all (`typing` without an `id`).
    Silent,
    /// With this frame, and the connection closes for this reason.
    Refused(String, CloseReason),
}

/// Who sends a request, and what the rules need to know of them.
#[derive(Clone, Copy)]
pub struct Sender<'a> {
    pub gateway: &'a Gateway,
    pub caller: &'a Caller,
    /// The highest handoff priority the sender's token allows.
    pub max_priority: Priority,
    /// The last position of the caller's handoff log delivered to the
    /// connection sending it (0 without one).
    pub handoff_seen: u64,
}

/// What [`handle`] did with a frame.
#[derive(Debug)]
pub enum Handled {
    Answer(Answer),
    /// The frame acts on a connection (rooms, its token): the connection
    /// handles it, or, without one, it is refused.
    NeedsConnection(ConnectionFrame),
}

/// The frames that act on the connection that sends them.
#[derive(Debug)]
pub enum ConnectionFrame {
    RefreshToken { token: String },
    JoinRoom { room_id: String },
    LeaveRoom { room_id: String },
}

impl ConnectionFrame {
    pub fn type_name(&self) -> &'static str {
        match self {
            ConnectionFrame::RefreshToken { .. } => "refresh_token",
            ConnectionFrame::JoinRoom { .. } => "join_room",
            ConnectionFrame::LeaveRoom { .. } => "leave_room",
        }
    }
}

/// The frames whose answer needs no connection: each becomes a service call
/// answered with an `ack` or an `error`.
pub async fn handle(sender: Sender<'_>, reference: Option<&str>, frame: ClientFrame) -> Handled {
    let services = &sender.gateway.services;
    let caller = sender.caller;
    let reply = match frame {
        ClientFrame::Heartbeat => outbound::heartbeat_ack(reference),
        ClientFrame::ChatMessage { dialog_id, message } => {
            match services
                .send_message(caller, reference, dialog_id, message, sender.handoff_seen)
                .await
            {
                Ok(sent) => {
                    sender.gateway.reporter.messages.tick();
                    outbound::ack(
                        reference,
                        json!({ "dialog_id": sent.dialog_id, "message_id": sent.message_id }),
                    )
                }
                Err(err) => error_frame(reference, &err),
            }
        }
        ClientFrame::Typing {
            dialog_id,
            is_typing,
        } => match services
            .typing(caller, dialog_id, is_typing, sender.handoff_seen)
            .await
        {
            Ok(()) if reference.is_some() => {
                outbound::ack(reference, json!({ "dialog_id": dialog_id }))
            }
            Ok(()) => return Handled::Answer(Answer::Silent),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::SetStatus { .. } | ClientFrame::CompleteHandoff { .. }
            if caller.role != Role::Operator =>
        {
            outbound::error(
                reference,
                ErrorCode::Forbidden,
                "Only operators may do that",
            )
        }
        ClientFrame::SetStatus { status } => match services.set_status(caller, status).await {
            Ok(effective) => outbound::ack(
                reference,
                json!({ "status": effective.as_str(), "chosen_status": status.as_str() }),
            ),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::CompleteHandoff {
            dialog_id,
            resolution,
        } => match services
            .complete_handoff(caller, dialog_id, resolution)
            .await
        {
            Ok(done) => outbound::ack(
                reference,
                json!({ "dialog_id": dialog_id, "duration": done.duration_seconds }),
            ),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::HandoffRequest { .. } if caller.role == Role::Operator => outbound::error(
            reference,
            ErrorCode::Forbidden,
            "Operators take handoffs; users request them",
        ),
        ClientFrame::HandoffRequest {
            dialog_id,
            reason,
            priority,
        } => {
            // A client picks its priority only up to what its token
            // allows: ten `urgent`s must not jump every queue.
            let given = priority.min(sender.max_priority);
            match services
                .request_handoff(caller, dialog_id, reason, given)
                .await
            {
                Ok(handoff) => outbound::ack(
                    reference,
                    json!({
                        "dialog_id": dialog_id,
                        "priority": given.as_str(),
                        "handoff_id": handoff.handoff_id,
                        "position": handoff.position,
                        "estimated_wait_time": handoff.estimated_wait_seconds,
                        "operators_online": handoff.operators_online,
                        "operator_id": handoff.operator_id,
                    }),
                ),
                Err(err) => error_frame(reference, &err),
            }
        }
        ClientFrame::TransferHandoff { .. } | ClientFrame::ClaimHandoff { .. }
            if caller.role != Role::Operator =>
        {
            outbound::error(
                reference,
                ErrorCode::Forbidden,
                "Only operators may do that",
            )
        }
        ClientFrame::TransferHandoff {
            dialog_id,
            to_operator_id,
            reason,
        } => match services
            .transfer_handoff(caller, dialog_id, to_operator_id, reason)
            .await
        {
            Ok(handoff) => outbound::ack(
                reference,
                json!({
                    "dialog_id": dialog_id,
                    "handoff_id": handoff.handoff_id,
                    "operator_id": handoff.operator_id,
                    "position": handoff.position,
                }),
            ),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::ClaimHandoff { dialog_id } => {
            match services.claim_handoff(caller, dialog_id).await {
                Ok(handoff) => outbound::ack(
                    reference,
                    json!({
                        "dialog_id": dialog_id,
                        "handoff_id": handoff.handoff_id,
                        "operator_id": handoff.operator_id,
                    }),
                ),
                Err(err) => error_frame(reference, &err),
            }
        }
        ClientFrame::CancelHandoff { .. } if caller.role == Role::Operator => outbound::error(
            reference,
            ErrorCode::Forbidden,
            "Operators transfer or complete handoffs; users cancel them",
        ),
        ClientFrame::CancelHandoff { dialog_id } => {
            match services.cancel_handoff(caller, dialog_id).await {
                Ok(handoff) => outbound::ack(
                    reference,
                    json!({ "dialog_id": dialog_id, "handoff_id": handoff.handoff_id }),
                ),
                Err(err) => error_frame(reference, &err),
            }
        }
        ClientFrame::GetHistory {
            dialog_id,
            before_id,
            limit,
        } => match services
            .get_history(caller, dialog_id, before_id, limit)
            .await
        {
            Ok(page) => outbound::ack(
                reference,
                json!({
                    "dialog_id": page.dialog_id,
                    "messages": page.messages,
                    "has_more": page.has_more,
                }),
            ),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::ListDialogs { before_id, limit } => {
            match services.list_dialogs(caller, before_id, limit).await {
                Ok(page) => outbound::ack(
                    reference,
                    json!({ "dialogs": page.dialogs, "has_more": page.has_more }),
                ),
                Err(err) => error_frame(reference, &err),
            }
        }
        ClientFrame::MarkRead {
            dialog_id,
            message_id,
        } => match services
            .mark_read(caller, dialog_id, message_id, sender.handoff_seen)
            .await
        {
            Ok(()) => outbound::ack(
                reference,
                json!({ "dialog_id": dialog_id, "message_id": message_id }),
            ),
            Err(err) => error_frame(reference, &err),
        },
        ClientFrame::RefreshToken { token } => {
            return Handled::NeedsConnection(ConnectionFrame::RefreshToken { token });
        }
        ClientFrame::JoinRoom { room_id } => {
            return Handled::NeedsConnection(ConnectionFrame::JoinRoom { room_id });
        }
        ClientFrame::LeaveRoom { room_id } => {
            return Handled::NeedsConnection(ConnectionFrame::LeaveRoom { room_id });
        }
    };
    Handled::Answer(Answer::Reply(reply))
}

/// The `error` frame of a parse failure.
pub fn parse_error(err: &inbound::FrameError) -> String {
    outbound::error(err.ref_id.as_deref(), err.code, &err.message)
}

/// A client frame read and counted in `chatai_gateway_frames_in_total`
/// (by its type, or `invalid`); the `error` frame to answer when it did
/// not parse. Every transport's frames come through here.
pub fn read_frame(text: &str) -> Result<Inbound, String> {
    match inbound::parse(text) {
        Ok(inbound) => {
            crate::metrics::frame_in(inbound.frame.type_name());
            Ok(inbound)
        }
        Err(err) => {
            crate::metrics::frame_in("invalid");
            Err(parse_error(&err))
        }
    }
}

/// The `error` frame of a frame refused for the rate limit, counted as a
/// `limited` frame in.
pub fn rate_limited(text: &str) -> String {
    crate::metrics::frame_in("limited");
    let reference = inbound::parse(text).ok().and_then(|i| i.id);
    outbound::error(
        reference.as_deref(),
        ErrorCode::RateLimited,
        "Too many frames; this one was not processed. Slow down or the connection closes",
    )
}

impl<T: Transport> Connection<T> {
    pub(super) async fn on_text(&mut self, text: &str) -> Answer {
        if self.limiter.check().is_err() {
            self.strikes += 1;
            let frame = rate_limited(text);
            if self.strikes > self.gateway.config.rate_limit_strikes {
                return Answer::Refused(frame, CloseReason::RateLimited);
            }
            return Answer::Reply(frame);
        }
        self.strikes = 0;
        let inbound = match read_frame(text) {
            Ok(inbound) => inbound,
            Err(frame) => return Answer::Reply(frame),
        };
        // A root: one trace per client frame, across every service it
        // touches (the connection's own span lives as long as the socket).
        let span = tracing::info_span!(
            parent: None,
            "frame",
            otel.name = "gateway.frame",
            chatai.part = "gateway",
            r#type = inbound.frame.type_name(),
            id = inbound.id.as_deref(),
            conn = self.caller.connection_id.as_deref(),
            principal = %self.conn.principal,
        );
        Box::pin(self.on_frame(inbound).instrument(span)).await
    }

    async fn on_frame(&mut self, Inbound { id, frame }: Inbound) -> Answer {
        let reference = id.as_deref();
        let gateway = self.gateway.clone();
        let sender = Sender {
            gateway: &gateway,
            caller: &self.caller,
            max_priority: self.max_priority,
            handoff_seen: self.handoff_seen(),
        };
        let frame = match handle(sender, reference, frame).await {
            Handled::Answer(answer) => return answer,
            Handled::NeedsConnection(frame) => frame,
        };
        let reply = match frame {
            ConnectionFrame::RefreshToken { token } => self.refresh_token(reference, &token).await,
            ConnectionFrame::JoinRoom { room_id } => self.join_room(reference, &room_id).await,
            ConnectionFrame::LeaveRoom { room_id } => self.leave_room(reference, &room_id).await,
        };
        Answer::Reply(reply)
    }

    /// The last position of the caller's own log at the handoff service
    /// this connection was delivered (0 for none): the chat service routes
    /// the caller's messages by a holder view at least that new.
    fn handoff_seen(&self) -> u64 {
        self.positions.delivered_or_zero(ServiceId::Handoff)
    }

    /// Joins a `dialog:{id}` room, for its owner, its operator and admins:
    /// live copies of the dialog's events, the sender's own excluded. The
    /// `ack` names the room as the server spells it (`dialog:01` → `dialog:1`).
    async fn join_room(&mut self, reference: Option<&str>, room_id: &str) -> String {
        let Some(dialog_id) = rooms::dialog_of(room_id) else {
            return outbound::error(
                reference,
                ErrorCode::Forbidden,
                "Only `dialog:{id}` rooms can be joined",
            );
        };
        if let Err(err) = self
            .gateway
            .services
            .check_access(&self.caller, dialog_id)
            .await
        {
            return error_frame(reference, &err);
        }
        let room = Recipient::dialog_room(dialog_id);
        if !self.rooms.contains(&room) {
            self.gateway.registry.join(room.clone(), &self.conn);
            for upstream in &self.gateway.upstreams {
                // Room events are live only: nothing to wait for.
                upstream.hold(room.clone()).await;
            }
            self.rooms.push(room.clone());
        }
        outbound::ack(reference, json!({ "room_id": room_name(&room) }))
    }

    /// Leaves a room, named in any spelling `join_room` accepts; leaving a
    /// room the connection is not in changes nothing and is acknowledged too.
    async fn leave_room(&mut self, reference: Option<&str>, room_id: &str) -> String {
        let Some(room) = rooms::dialog_of(room_id).map(Recipient::dialog_room) else {
            return outbound::ack(reference, json!({ "room_id": room_id }));
        };
        self.leave(&room).await;
        outbound::ack(reference, json!({ "room_id": room_name(&room) }))
    }

    /// Takes the connection out of `room`: the registry, its own list, and
    /// its interest at every service. Whether it was in it.
    async fn leave(&mut self, room: &Recipient) -> bool {
        let Some(index) = self.rooms.iter().position(|r| r == room) else {
            return false;
        };
        self.rooms.swap_remove(index);
        self.gateway.registry.leave(room, &self.conn);
        for upstream in &self.gateway.upstreams {
            upstream.release(room.clone(), 0).await;
        }
        true
    }

    /// This operator's hold on a dialog ended (its `handoff_completed` was
    /// just written): the connection leaves the dialog's room and, if it was
    /// in it, is told with `room_left`. (The registry already stopped the
    /// room's copies to it when the event arrived.)
    pub(super) async fn hold_ended(&mut self, ended: EndedHold) -> Result<(), Gone> {
        if self.conn.principal != Recipient::Operator(ended.operator_id) {
            return Ok(());
        }
        let room = ended.room();
        if !self.leave(&room).await {
            return Ok(());
        }
        tracing::debug!(
            dialog_id = ended.dialog_id,
            reason = ended.reason.as_str(),
            "left a dialog's room"
        );
        self.send_text(outbound::room_left(room_name(&room), ended.reason))
            .await
    }

    /// Extends the connection's life with a newer token for the same subject and role.
    async fn refresh_token(&mut self, reference: Option<&str>, token: &str) -> String {
        match self.gateway.verifier.verify(token).await {
            Ok(claims) if claims.sub == self.caller.id && claims.role == self.caller.role => {
                self.token_expires = expiry_instant(claims.exp);
                self.max_priority = Priority::ceiling(claims.max_priority.as_deref());
                outbound::ack(reference, json!({ "expires_at": claims.exp }))
            }
            Ok(_) => outbound::error(
                reference,
                ErrorCode::Unauthorized,
                "The token is for another subject or role",
            ),
            Err(_) => outbound::error(
                reference,
                ErrorCode::InvalidToken,
                "The token is invalid or expired",
            ),
        }
    }
}

/// A room's name as clients see it (`dialog:1`).
fn room_name(room: &Recipient) -> &str {
    match room {
        Recipient::Room(name) => name,
        _ => "",
    }
}

/// The `error` frame for a failed service call.
fn error_frame(reference: Option<&str>, err: &CallError) -> String {
    let (code, message) = err.client_error();
    outbound::error(reference, code, &message)
}
