//! The opaque resume cursor: the positions the gateway has delivered from each service, and its text form on the wire.
//!
//! Every durable frame carries a `cursor` (docs/protocol.md, "Delivery and
//! resume"); a client that reconnects with it gets every later event. To the
//! client it is an opaque string. Inside it is base64url without padding of:
//!
//! ```text
//! version byte (1) | chat | handoff | presence | notification
//! ```
//!
//! each position an unsigned LEB128 varint (1 to 10 bytes). Decoding is strict
//! — one spelling per cursor: no padding, no stray bits, minimal varints,
//! nothing after the fourth position — so a cursor that went wrong somewhere
//! is refused rather than half-understood.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::service_id::ServiceId;

/// How many services a cursor covers.
const SERVICE_COUNT: usize = ServiceId::COUNT;

/// The format version written in the first byte.
const VERSION: u8 = 1;
/// Longest cursor text accepted. The longest valid cursor (version byte and
/// four 10-byte varints: 41 bytes) is 55 characters.
const MAX_TEXT_LEN: usize = 64;
/// Longest LEB128 encoding of a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// Positions delivered from each service, in [`ServiceId::index`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub [u64; SERVICE_COUNT]);

/// Why a cursor text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    /// Not base64url without padding.
    #[error("cursor is not valid base64url")]
    Encoding,
    /// Longer than any cursor this gateway writes.
    #[error("cursor is too long")]
    TooLong,
    /// A format version this gateway does not know.
    #[error("unknown cursor version {0}")]
    Version(u8),
    /// Ends before all four positions.
    #[error("cursor is truncated")]
    Truncated,
    /// A position longer than 10 bytes, past `u64::MAX`, or not minimally encoded.
    #[error("cursor holds a malformed position")]
    Varint,
    /// Bytes after the last position.
    #[error("cursor has trailing bytes")]
    Trailing,
}

impl Cursor {
    /// Stands for a cursor the client sent but the gateway cannot read: it
    /// is past every log, so every replay from it reports "incomplete"
    /// (`recovered: false`, `cursor_expired`) and live delivery starts from
    /// each log's head.
    pub const UNREADABLE: Cursor = Cursor([u64::MAX; SERVICE_COUNT]);

    /// The cursor's text form: base64url without padding of the version byte
    /// and the four positions as LEB128 varints.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(1 + SERVICE_COUNT * MAX_VARINT_LEN);
        bytes.push(VERSION);
        for &position in &self.0 {
            write_varint(&mut bytes, position);
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor written by [`encode`](Self::encode); refuses anything else.
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Encoding)?;
        let (&version, mut rest) = bytes.split_first().ok_or(CursorError::Truncated)?;
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        let mut positions = [0; SERVICE_COUNT];
        for position in &mut positions {
            let (value, after) = read_varint(rest)?;
            *position = value;
            rest = after;
        }
        if !rest.is_empty() {
            return Err(CursorError::Trailing);
        }
        Ok(Cursor(positions))
    }

    /// The position delivered from `service`.
    pub fn get(&self, service: ServiceId) -> u64 {
        self.0[service.index()]
    }

    /// Records `position` as delivered from `service`.
    pub fn set(&mut self, service: ServiceId, position: u64) {
        self.0[service.index()] = position;
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cursor::decode(text)
    }
}

/// Appends `value` as an unsigned LEB128 varint.
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        // Truncation to the low 7 bits is the point.
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Reads one minimal unsigned LEB128 varint off the front of `bytes`.
fn read_varint(bytes: &[u8]) -> Result<(u64, &[u8]), CursorError> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if i == MAX_VARINT_LEN {
            return Err(CursorError::Varint);
        }
        let bits = u64::from(byte & 0x7f);
        // The tenth byte holds only bit 63.
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            return Err(CursorError::Varint);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after others means a longer spelling than needed.
            if i > 0 && byte == 0 {
                return Err(CursorError::Varint);
            }
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(CursorError::Truncated)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn raw(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Cursors of zero, small, maximal and mixed positions survive encode → decode.
    #[test]
    fn round_trip() {
        let cases = [
            Cursor::default(),
            Cursor([1, 2, 3, 4]),
            Cursor([127, 128, 16_383, 16_384]),
            Cursor([u64::MAX; SERVICE_COUNT]),
            Cursor([0, u64::MAX, 42, 1 << 63]),
            Cursor([u64::MAX - 1, 0, (1 << 56) - 1, 1 << 56]),
        ];
        for cursor in cases {
            let text = cursor.encode();
            assert!(text.len() <= MAX_TEXT_LEN, "{text}");
            assert_eq!(Cursor::decode(&text), Ok(cursor), "{text}");
            assert_eq!(text.parse::<Cursor>(), Ok(cursor));
            assert_eq!(cursor.to_string(), text);
        }
    }

    /// The zero cursor has a short, fixed spelling (version 1, four zero bytes).
    #[test]
    fn zero_cursor_spelling() {
        assert_eq!(Cursor::default().encode(), raw(&[1, 0, 0, 0, 0]));
        assert_eq!(Cursor::default().encode(), "AQAAAAA");
    }

    /// `get` and `set` address one service each.
    #[test]
    fn get_and_set() {
        let mut cursor = Cursor::default();
        cursor.set(ServiceId::Handoff, 9);
        cursor.set(ServiceId::Notification, u64::MAX);
        assert_eq!(cursor, Cursor([0, 9, 0, u64::MAX]));
        assert_eq!(cursor.get(ServiceId::Handoff), 9);
        assert_eq!(cursor.get(ServiceId::Chat), 0);
        assert_eq!(cursor.get(ServiceId::Presence), 0);
    }

    /// Text that is not base64url without padding is refused.
    #[test]
    fn bad_encoding_is_refused() {
        for text in [
            "not a cursor!",
            "AQAAAAA=",
            "AQ+/AAA",
            "A",
            "AQAAAA\u{e9}",
            " AQAAAAA",
        ] {
            assert_eq!(Cursor::decode(text), Err(CursorError::Encoding), "{text}");
        }
        // Stray bits in the last character: a second spelling of the same bytes.
        assert_eq!(Cursor::decode("AQAAAAB"), Err(CursorError::Encoding));
    }

    /// Empty and cut-short cursors are refused.
    #[test]
    fn truncated_is_refused() {
        assert_eq!(Cursor::decode(""), Err(CursorError::Truncated));
        assert_eq!(Cursor::decode(&raw(&[1])), Err(CursorError::Truncated));
        assert_eq!(
            Cursor::decode(&raw(&[1, 0, 0, 0])),
            Err(CursorError::Truncated)
        );
        assert_eq!(
            Cursor::decode(&raw(&[1, 0, 0, 0, 0x80])),
            Err(CursorError::Truncated)
        );
    }

    /// Other versions are refused with the version named.
    #[test]
    fn wrong_version_is_refused() {
        assert_eq!(
            Cursor::decode(&raw(&[0, 0, 0, 0, 0])),
            Err(CursorError::Version(0))
        );
        assert_eq!(
            Cursor::decode(&raw(&[2, 0, 0, 0, 0])),
            Err(CursorError::Version(2))
        );
    }

    /// Bytes after the fourth position are refused.
    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(
            Cursor::decode(&raw(&[1, 0, 0, 0, 0, 0])),
            Err(CursorError::Trailing)
        );
    }

    /// Text longer than 64 characters is refused before decoding.
    #[test]
    fn too_long_is_refused() {
        assert_eq!(Cursor::decode(&"A".repeat(65)), Err(CursorError::TooLong));
        assert_eq!(Cursor::decode(&"é".repeat(40)), Err(CursorError::TooLong));
    }

    /// Varints over 10 bytes, past u64::MAX, or not minimal are refused.
    #[test]
    fn bad_varints_are_refused() {
        let mut eleven = vec![1];
        eleven.extend([0xff; 10]);
        eleven.extend([0x01, 0, 0, 0]);
        assert_eq!(Cursor::decode(&raw(&eleven)), Err(CursorError::Varint));

        let mut overflow = vec![1];
        overflow.extend([0xff; 9]);
        overflow.extend([0x02, 0, 0, 0]);
        assert_eq!(Cursor::decode(&raw(&overflow)), Err(CursorError::Varint));

        // 0 spelled in two bytes.
        assert_eq!(
            Cursor::decode(&raw(&[1, 0x80, 0x00, 0, 0, 0])),
            Err(CursorError::Varint)
        );
    }

    /// Decode never panics, whatever bytes the text carries.
    #[test]
    fn decode_never_panics() {
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..500 {
            let len = (next() % 50) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the time, make it look like a real cursor to reach the varint reader.
            if next() % 2 == 0 && !bytes.is_empty() {
                bytes[0] = VERSION;
            }
            let text = raw(&bytes);
            if let Ok(cursor) = Cursor::decode(&text) {
                assert_eq!(cursor.encode(), text, "one spelling per cursor");
            }
            // Raw, mostly invalid text as well.
            let noise: String = (0..len).map(|_| char::from(next() as u8 % 128)).collect();
            let _ = Cursor::decode(&noise);
        }
    }
}
