//! The client-facing JSON frames: [`inbound`] parses what clients send,
//! [`outbound`] builds what the server sends.

pub mod inbound;
pub mod outbound;
