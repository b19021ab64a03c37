//! The WebSocket frame codec of [`RawWs`](super::RawWs): a client frame
//! written (masked, whole), a server frame read (unmasked, whole), a close
//! frame's code and reason (RFC 6455 section 5).

use super::Closed;

/// A frame as the server sent it.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// The opcodes the tests write or read.
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One client frame with `fin` set: `opcode`, the payload masked (as a
/// client must), the length in the shortest form.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One whole frame at the start of `bytes`, and how many bytes it used.
pub fn parse_frame(bytes: &[u8]) -> Option<(RawFrame, usize)> {
    let [first, second, rest @ ..] = bytes else {
        return None;
    };
    assert!(first & 0x80 != 0, "the server sent a fragmented frame");
    assert!(second & 0x80 == 0, "the server masked a frame");
    let (len, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(header..header + len)?.to_vec();
    Some((
        RawFrame {
            opcode: first & 0x0f,
            payload,
        },
        header + len,
    ))
}

/// The code and reason of a close frame; `None` when it carries no code.
pub fn parse_close(frame: &RawFrame) -> Option<Closed> {
    let [high, low, reason @ ..] = frame.payload.as_slice() else {
        return None;
    };
    Some(Closed {
        code: u16::from_be_bytes([*high, *low]),
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}
