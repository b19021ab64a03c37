//! The client-facing JSON frames: [`inbound`] parses what clients send,
//! [`outbound`] builds what the server sends; [`rooms`] reads dialog room ids
//! and the events that take an operator out of a room.

pub mod inbound;
pub mod outbound;
pub mod rooms;
