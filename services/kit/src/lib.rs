//! Plumbing every ChatAI service shares, written once.
//!
//! Two features split it: `db` (the storing services) and `server` (every
//! service; the gateway leaves it off, so its build compiles gRPC clients
//! only, no server code).
//!
//! Layout:
//! - [`internal_auth`] — who may call the services: the internal token,
//!   mutual TLS, the start-up check of a part started alone, the token file
//!   of the all-in-one.
//! - [`identity`] — who is calling: the caller a gateway or internal client
//!   puts in gRPC metadata, read back in one place.
//! - [`config`] — configuration shared by every process (listen addresses,
//!   the internal token, event-log settings), read from the environment, and
//!   [`config::clap_defaults`], which every config struct's `Default` returns.
//! - [`telemetry`] — `tracing` set-up, OTLP export, W3C trace context in gRPC
//!   metadata and in events.
//! - [`shutdown`] — the one shutdown signal (SIGINT/SIGTERM).
//! - [`error_code`] — [`ErrorCode`](error_code::ErrorCode), every
//!   client-facing error code in one list (checked against docs/protocol.md).
//! - [`status`] — those codes carried in a gRPC `Status`.
//! - [`grpc`] — the internal-token interceptor of every client; with
//!   `server`, the gRPC server every service runs: health, reflection, the
//!   internal-token check, a span per request.
//! - [`metrics`] — the process's Prometheus recorder and buckets, the names
//!   of kit's own metrics, the `service` label rule; with `server`, the
//!   `/metrics` listener of a service started alone. The gRPC layer that
//!   counts and times every call is [`grpc::MetricsLayer`].
//! - [`supervisor`] — the long-lived tasks of a process: one that stops
//!   before shutdown stops the process and is named.
//! - [`events`] — the event-stream library: the event types and the
//!   `EventLog` trait; with `server`, the per-recipient durable logs (memory,
//!   Redis) and their shared paging rules, live fan-out, and the
//!   `EventStream` gRPC service gateways attach to.
//! - `redis_keys` (feature `redis`, part of `server`) — every Redis key and channel name, by
//!   the deployment's namespace (its prefix and its id), so deployments
//!   sharing a Redis server stay apart.
//! - [`timestamps`] — times as clients read them (RFC 3339, UTC, ms).
//! - [`holders`] — who holds a dialog: the notes the handoff service
//!   publishes for the chat service, and their versions.
//! - [`versioned`] — versions that only grow (also across restarts) and the
//!   "snapshot, then follow" rule that drops events a snapshot already holds.
//! - `db` (feature `db`) — opening the shared SQLite or PostgreSQL database
//!   (`db::connect`) and applying its migrations, embedded here once.
//! - `lease` (feature `db`) — a job only one replica may do at a time: a
//!   PostgreSQL advisory lock held on its own connection (SQLite: always held).
//! - `host` (feature `server`) — what every service process does around its
//!   own API: the event log, the tasks, readiness checks, serving, draining.
//! - `pending` (feature `server`) — reports another service must get,
//!   sent in the background, the latest per key, retried with backoff.
//! - `follow` (feature `server`) — following another service's `EventStream`
//!   as a client (a snapshot after each attach, then its events, re-attaching
//!   forever).

pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod error_code;
pub mod events;
#[cfg(feature = "server")]
pub mod follow;
pub mod grpc;
pub mod holders;
#[cfg(feature = "server")]
pub mod host;
pub mod identity;
pub mod internal_auth;
#[cfg(feature = "db")]
pub mod lease;
pub mod metrics;
#[cfg(feature = "server")]
pub mod pending;
#[cfg(feature = "redis")]
pub mod redis_keys;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod telemetry;
pub mod timestamps;
pub mod versioned;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
