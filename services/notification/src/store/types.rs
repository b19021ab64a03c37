//! The domain types the store reads and writes. Nothing here knows about SQL
//! or about the wire.

use chatai_kit::identity::Role;

/// Whether a connection opened or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    Connect,
    Disconnect,
}

impl ConnectionKind {
    /// The value stored in `connection_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Connect => "connect",
            ConnectionKind::Disconnect => "disconnect",
        }
    }

    /// Reads a stored `kind`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "connect" => Some(ConnectionKind::Connect),
            "disconnect" => Some(ConnectionKind::Disconnect),
            _ => None,
        }
    }
}

/// A gateway connection opened or closed, as the gateway reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The gateway's name for the connection, e.g. `gw1:42`.
    pub connection_id: String,
    pub gateway_id: String,
    /// `User`, `Operator` or `Admin` (a client's role; never `Service`).
    pub role: Role,
    /// The user's, operator's or admin's id.
    pub principal_id: i64,
    pub kind: ConnectionKind,
    /// When it happened, ms since the Unix epoch, by the gateway's clock.
    pub at_ms: i64,
    /// Disconnects: how long the connection was open, in ms.
    pub duration_ms: Option<i64>,
    /// Disconnects: the WebSocket close code, `None` when there was none.
    pub close_code: Option<u16>,
}

/// A stored [`ConnectionEvent`] with its id (ids grow with insertion order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConnectionEvent {
    pub id: i64,
    pub event: ConnectionEvent,
}

/// What the analytics read of the connection events of a window (see
/// `NotificationStore::connection_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Closed connections whose duration is known.
    pub timed: u64,
    /// The sum of those durations, in ms.
    pub duration_ms: u64,
    /// Closed connections whose close code was an error: any code but 1000
    /// (normal), 1001 (going away) and 4004 (replaced by a newer connection
    /// of the same user). A close without a code (the client closed, or the
    /// socket went away) is not one.
    pub errors: u64,
}
