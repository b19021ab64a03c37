//! The chat service's gRPC edge: the only place `chatai.v1` messages and
//! `tonic` types are touched. Everything behind it speaks domain types.
//!
//! - [`chat_api`] — `chatai.v1.Chat`, served: each call converts the request,
//!   calls [`crate::ChatService`] and converts the answer.
//! - [`handoff_client`] — the handoff service, called: [`crate::handoffs::Handoffs`]
//!   over gRPC, and the task following its holder notes.
//! - [`from_proto`] — wire to domain; [`to_proto`] — domain to wire.
//!
//! A [`crate::ChatError`] becomes a `Status` in one place, `crate::error`.

pub mod chat_api;
pub mod from_proto;
pub mod handoff_client;
pub mod to_proto;

pub use chat_api::ChatApi;
pub use handoff_client::{GrpcHandoffs, follow_holders};
