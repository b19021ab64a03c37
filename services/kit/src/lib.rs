//! Plumbing every ChatAI service shares, written once.
//!
//! Layout:
//! - [`identity`] — who is calling: the caller a gateway or internal client
//!   puts in gRPC metadata, read back in one place.
//! - `db` (feature `db`) — opening the shared SQLite or PostgreSQL database
//!   and applying its migrations, for the services that store.
//! - [`config`] — configuration shared by every process (listen addresses,
//!   the internal token, event-log settings), read from the environment.
//! - [`telemetry`] — `tracing` set-up, OTLP export, W3C trace context in gRPC
//!   metadata and in events.
//! - [`shutdown`] — the one shutdown signal (SIGINT/SIGTERM).
//! - [`error_code`] — [`ErrorCode`](error_code::ErrorCode), every
//!   client-facing error code in one list (checked against docs/protocol.md).
//! - [`status`] — those codes carried in a gRPC `Status`.
//! - [`grpc`] — the gRPC server every service runs: health, reflection, the
//!   internal-token check, a span per request.
//! - [`host`] — what every service process does around its own API.
//! - [`events`] — the event-stream library: per-recipient durable logs, live
//!   fan-out, and the `EventStream` gRPC service gateways attach to.
//! - [`follow`] — following another service's `EventStream` as a client
//!   (a snapshot after each attach, then its events, re-attaching forever).
//! - [`holders`] — who holds a dialog: the notes the handoff service
//!   publishes for the chat service, and their versions.

pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod error_code;
pub mod events;
pub mod follow;
pub mod grpc;
pub mod holders;
pub mod host;
pub mod identity;
pub mod shutdown;
pub mod status;
pub mod telemetry;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
