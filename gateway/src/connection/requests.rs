//! A connection's client frames: the rate limit, parsing, and each request
//! turned into a service call answered with an `ack` or an `error` (rooms and
//! token refresh are handled here, without a service call of their own).

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use serde_json::json;
use tracing::Instrument;

use super::{Connection, Flow, Gone, expiry_instant};
use crate::close::CloseReason;
use crate::frames::inbound::{self, ClientFrame, Inbound, Priority};
use crate::frames::outbound;
use crate::service_id::ServiceId;
use crate::services::CallError;

impl Connection {
    pub(super) async fn on_text(&mut self, text: &str) -> Flow {
        if self.limiter.check().is_err() {
            self.strikes += 1;
            if self.strikes > self.gateway.config.rate_limit_strikes {
                return Flow::Close(CloseReason::RateLimited);
            }
            let reference = inbound::parse(text).ok().and_then(|i| i.id);
            let frame = outbound::error(
                reference.as_deref(),
                ErrorCode::RateLimited,
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
                    Err(err) => error_frame(reference, &err),
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
                Err(err) => error_frame(reference, &err),
            },
            ClientFrame::RefreshToken { token } => self.refresh_token(reference, &token).await,
            ClientFrame::SetStatus { .. } | ClientFrame::CompleteHandoff { .. }
                if self.caller.role != Role::Operator =>
            {
                outbound::error(
                    reference,
                    ErrorCode::Forbidden,
                    "Only operators may do that",
                )
            }
            ClientFrame::SetStatus { status } => {
                match services.set_status(&self.caller, status).await {
                    Ok(effective) => outbound::ack(
                        reference,
                        json!({ "status": effective.as_str(), "chosen_status": status.as_str() }),
                    ),
                    Err(err) => error_frame(reference, &err),
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
                    Err(err) => error_frame(reference, &err),
                }
            }
            ClientFrame::HandoffRequest { .. } if self.caller.role == Role::Operator => {
                outbound::error(
                    reference,
                    ErrorCode::Forbidden,
                    "Operators take handoffs; users request them",
                )
            }
            ClientFrame::HandoffRequest {
                dialog_id,
                reason,
                priority,
            } => {
                // A client picks its priority only up to what its token
                // allows: ten `urgent`s must not jump every queue.
                let given = priority.min(self.max_priority);
                match services
                    .request_handoff(&self.caller, dialog_id, reason, given)
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
            ClientFrame::JoinRoom { room_id } => self.join_room(reference, &room_id).await,
            ClientFrame::LeaveRoom { room_id } => self.leave_room(reference, &room_id).await,
        };
        self.reply(reply).await
    }

    /// The last position of the caller's own log at the handoff service
    /// this connection was delivered (0 for none): the chat service routes
    /// the caller's messages by a holder view at least that new.
    fn handoff_seen(&self) -> u64 {
        self.positions.delivered_or_zero(ServiceId::Handoff)
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

/// The `error` frame for a failed service call.
fn error_frame(reference: Option<&str>, err: &CallError) -> String {
    let (code, message) = err.client_error();
    outbound::error(reference, code, &message)
}
