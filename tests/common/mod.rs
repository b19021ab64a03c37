//! What every end-to-end test shares, one module per concern:
//! - [`app`]: the whole system started in-process on port 0 ([`spawn_app`],
//!   [`TestApp`], [`TestOptions`]);
//! - [`deployment`]: each part in a process of its own, replicas too
//!   ([`deployment::Deployment`], [`deployment::Redis`]);
//! - [`ws`]: the WebSocket client on tokio-tungstenite ([`WsClient`],
//!   [`connect_at`]);
//! - [`raw`]: a WebSocket client written by hand over TCP ([`RawWs`]), for
//!   frames tungstenite refuses to write;
//! - [`frame`]: the frame codec [`RawWs`] reads and writes with;
//! - [`sse`]: an SSE client (`GET /sse` read as it streams) and
//!   `POST /api/frames`;
//! - [`idp`]: a test identity provider serving a JWKS ([`idp::TestIdp`]);
//! - here: the constants, the gRPC caller identity and the assertions on
//!   frames every module and test uses.
//!
//! Frames are awaited with a timeout ([`WAIT`]): the timeouts bound how long
//! a test waits; no test asserts how long anything took.

pub mod app;
pub mod deployment;
pub mod frame;
pub mod idp;
pub mod raw;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatai_kit::identity::{Caller, Role};
use serde_json::Value;

pub use app::{TestApp, TestOptions, spawn_app};
pub use raw::RawWs;
pub use ws::{Closed, WsClient, connect_at, with_header};

/// How long a test waits for a frame, a close or a state before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The question the built-in FAQ assistant answers.
pub const FAQ_QUESTION: &str = "How do I reset my password?";

/// What `assistant_name` the default assistant signs with.
pub const ASSISTANT_NAME: &str = "Support Assistant";

/// A port nobody uses right now, for a process to listen on later.
///
/// Picked below the kernel's ephemeral range (32768–60999 by default): a
/// port taken from that range and released could be handed to one of the
/// many outgoing connections the tests make before the process binds it.
/// A port is handed out once per test run: two tests picking the same free
/// port before either binds it would make one of their processes fail to
/// start.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let random = uuid::Uuid::new_v4().as_u128();
        let port = 20_000 + (random % 12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_err() {
            continue;
        }
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed_out.insert(port) {
            return addr;
        }
    }
}

/// A gRPC request carrying `id` in `role` as the caller.
pub fn as_caller<T>(id: i64, role: Role, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    Caller {
        id,
        role,
        name: None,
        connection_id: None,
    }
    .write_metadata(request.metadata_mut());
    request
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Asserts `frame` carries an RFC 3339 UTC `timestamp`.
pub fn assert_timestamp(frame: &Value) {
    let timestamp = frame["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp in {frame}"));
    let bytes = timestamp.as_bytes();
    let shaped = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && timestamp.ends_with('Z');
    assert!(shaped, "timestamp {timestamp:?} is not RFC 3339 UTC");
}
