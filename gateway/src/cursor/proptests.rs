//! Property tests of the resume cursor ([`Cursor::decode`], [`Cursor::encode`]).
//!
//! Properties: decoding never panics; a text it accepts is the one spelling
//! of that cursor (it re-encodes to the same text), anything else is refused
//! with a [`CursorError`] (docs/protocol.md: an unreadable cursor counts as
//! expired); every cursor survives encode → decode. Together: the accepted
//! texts are exactly the encoded ones.
//!
//! Each property runs 256 cases; `PROPTEST_CASES=100000` runs more.

use proptest::prelude::*;

use super::*;

/// 256 cases per property unless `PROPTEST_CASES` says otherwise (proptest
/// reads that variable into its default config).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// A position, biased to the edges of the varint lengths (2^(7k) ± 1) and
/// of `u64`.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..300u64,
        (0u32..64, -1i8..=1)
            .prop_map(|(shift, delta)| (1u64 << shift).wrapping_add_signed(delta.into())),
        (1u32..=9).prop_map(|k| (1u64 << (7 * k)) - 1),
        Just(u64::MAX),
    ]
}

fn cursor() -> impl Strategy<Value = Cursor> {
    prop::array::uniform4(position()).prop_map(Cursor)
}

/// Decodes `text` and checks what holds for any input: an accepted text is
/// the cursor's one spelling; too long is said before anything else.
fn decode_checked(text: &str) -> Result<Cursor, CursorError> {
    let result = Cursor::decode(text);
    match &result {
        Ok(cursor) => assert_eq!(cursor.encode(), text, "one spelling per cursor"),
        Err(err) => assert_eq!(
            *err == CursorError::TooLong,
            text.len() > MAX_TEXT_LEN,
            "{text:?}: {err}"
        ),
    }
    result
}

proptest! {
    #![proptest_config(config())]

    /// Any string: no panic, accepted only in its one spelling.
    #[test]
    fn any_text(text in any::<String>()) {
        let _ = decode_checked(&text);
    }

    /// Strings of the base64url alphabet, up to the length limit: they get
    /// past the encoding check often and reach the varint reader.
    #[test]
    fn base64url_text(text in "[A-Za-z0-9_-]{0,64}") {
        let _ = decode_checked(&text);
    }

    /// Any bytes behind a version byte (mostly the right one): refused with
    /// the version named when it is wrong, else accepted only when the bytes
    /// are the cursor's own encoding.
    #[test]
    fn any_bytes(
        version in prop_oneof![4 => Just(VERSION), 1 => any::<u8>()],
        body in prop::collection::vec(prop_oneof![any::<u8>(), Just(0u8), Just(0x80u8), Just(0xffu8), Just(1u8)], 0..45),
    ) {
        let mut bytes = vec![version];
        bytes.extend(&body);
        let text = URL_SAFE_NO_PAD.encode(&bytes);
        let result = decode_checked(&text);
        if text.len() <= MAX_TEXT_LEN && version != VERSION {
            prop_assert_eq!(result, Err(CursorError::Version(version)));
        }
    }

    /// Every cursor survives encode → decode, within the length limit, in
    /// every form (`encode`, `Display`, `FromStr`).
    #[test]
    fn round_trip(cursor in cursor()) {
        let text = cursor.encode();
        prop_assert!(text.len() <= MAX_TEXT_LEN, "{}", text);
        prop_assert_eq!(decode_checked(&text), Ok(cursor));
        prop_assert_eq!(cursor.to_string(), text.clone());
        prop_assert_eq!(text.parse::<Cursor>(), Ok(cursor));
    }

    /// A valid cursor with one character changed, dropped or added is
    /// refused, or is the one spelling of another cursor.
    #[test]
    fn mutated_cursor(
        cursor in cursor(),
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABQgw_-09az=+/. é".chars().collect::<Vec<_>>()
        ),
        edit in 0..3u8,
    ) {
        let mut chars: Vec<char> = cursor.encode().chars().collect();
        let at = at.index(chars.len());
        match edit {
            0 => chars[at] = replacement,
            1 => { chars.remove(at); }
            _ => chars.insert(at, replacement),
        }
        let text: String = chars.into_iter().collect();
        if let Ok(other) = decode_checked(&text) {
            prop_assert!(other != cursor || text == cursor.encode(), "{}", text);
        }
    }
}
