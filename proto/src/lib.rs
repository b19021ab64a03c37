//! The `chatai.v1` gRPC API: messages, server traits (feature `server`) and
//! clients (feature `client`), generated at build time from `proto/chatai/v1`.
//!
//! Layout:
//! - `chatai/v1/events.proto` — the `EventStream` every service offers gateways.
//! - `chatai/v1/chat.proto`, `handoff.proto`, `presence.proto`,
//!   `notification.proto` — each service's own API.
//!
//! These are wire types: they stop at each crate's gRPC adapter, where
//! `From`/`TryFrom` turn them into domain types.

/// Generated code for package `chatai.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("chatai.v1");
}

/// The encoded file descriptor set of every `chatai.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatai_descriptor");
