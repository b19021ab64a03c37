//! Every WebSocket close code the gateway sends, with its reason, in one
//! place (docs/protocol.md, "Close codes", lists them for clients).

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Why the gateway closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The gateway is shutting down (1001); reconnect elsewhere or later.
    Shutdown = 1,
    /// The token is missing, malformed, badly signed or expired at connect (1008).
    InvalidToken,
    /// A valid token for someone else or the wrong role (1008).
    Unauthorized,
    /// A binary frame (1003).
    Binary,
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8,
    /// A frame over the size limit (1009).
    TooLarge,
    /// Kept flooding past the rate limit (1008).
    RateLimited,
    /// The token expired and was not refreshed (4001).
    TokenExpired,
    /// Too slow to read its events (4002); resume with the cursor.
    TooSlow,
    /// No frame and no pong within the idle timeout (4003).
    HeartbeatTimeout,
    /// A newer connection of the same user took its place (4004).
    Replaced,
    /// A frame breaking the WebSocket protocol: a continuation without a
    /// start, an unmasked client frame, reserved bits or opcodes… (1002).
    ProtocolError,
}

impl CloseReason {
    /// From the byte stored by [`crate::registry::Conn::stop`].
    pub fn from_u8(value: u8) -> Option<Self> {
        use CloseReason::*;
        [
            Shutdown,
            InvalidToken,
            Unauthorized,
            Binary,
            InvalidUtf8,
            TooLarge,
            RateLimited,
            TokenExpired,
            TooSlow,
            HeartbeatTimeout,
            Replaced,
            ProtocolError,
        ]
        .into_iter()
        .find(|r| *r as u8 == value)
    }

    pub fn code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1001,
            CloseReason::InvalidToken | CloseReason::Unauthorized | CloseReason::RateLimited => {
                1008
            }
            CloseReason::Binary => 1003,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::TooLarge => 1009,
            CloseReason::TokenExpired => 4001,
            CloseReason::TooSlow => 4002,
            CloseReason::HeartbeatTimeout => 4003,
            CloseReason::Replaced => 4004,
            CloseReason::ProtocolError => 1002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "Server shutting down",
            CloseReason::InvalidToken => "Invalid token",
            CloseReason::Unauthorized => "Unauthorized",
            CloseReason::Binary => "Binary frames are not supported",
            CloseReason::InvalidUtf8 => "Invalid UTF-8",
            CloseReason::TooLarge => "Frame too large",
            CloseReason::RateLimited => "Rate limit exceeded",
            CloseReason::TokenExpired => "Token expired",
            CloseReason::TooSlow => "Too slow",
            CloseReason::HeartbeatTimeout => "Heartbeat timeout",
            CloseReason::Replaced => "Too many connections",
            CloseReason::ProtocolError => "Protocol error",
        }
    }

    pub fn frame(self) -> CloseFrame {
        CloseFrame {
            code: CloseCode::from(self.code()),
            reason: self.reason().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason survives the byte it is stored as.
    #[test]
    fn reasons_round_trip_through_their_byte() {
        for value in 1..=11u8 {
            let reason = CloseReason::from_u8(value).expect("every byte 1..=11 is a reason");
            assert_eq!(reason as u8, value);
        }
        assert_eq!(CloseReason::from_u8(0), None);
    }
}
