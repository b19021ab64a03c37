//! Property tests of the token reader ([`TokenKeys::verify`]), through the
//! public API only: arbitrary strings, JWT-shaped noise, and tokens built
//! from arbitrary header and payload JSON — signed with the right key, a
//! wrong key, another HMAC, or not at all, under every `alg` spelling.
//!
//! Properties: `verify` never panics; a token it accepts was signed HS256
//! with the right key under `"alg": "HS256"`, and its claims follow the
//! documented rules (docs/protocol.md, "Connecting"): `sub` > 0 and the one
//! sent, `role` one of user/operator/admin, `exp` present and not past, `nbf`
//! absent or not ahead, `name` and `chatai_max_priority` as sent; a
//! well-formed token with valid claims is accepted; anything else is refused
//! with a [`TokenError`].
//!
//! Times are generated an hour or more away from now, so no property depends
//! on how long a case takes. Each property runs 256 cases;
//! `PROPTEST_CASES=100000` runs more.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use chatai_kit::identity::bounded_name;
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::{Claims, Role, TokenError, TokenKeys};

const SECRET: &[u8] = b"property-test-secret-of-32-bytes-or-more";
/// The leeway `verify` documents for `exp` and `nbf`.
const LEEWAY: u64 = 5;

/// 256 cases per property unless `PROPTEST_CASES` says otherwise (proptest
/// reads that variable into its default config).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A generated claim: `None` leaves it out. Whether the rules accept it is
/// decided on the whole payload ([`claims_valid`]), as a generator for wrong
/// values may hit a right one.
type Rated = Option<Value>;

/// Strings with odd characters, and long ones (past `name`'s 256 bytes).
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[\u{0}-\u{1f}\u{200b}-\u{200f}\u{202a}-\u{202e}\u{1f600}-\u{1f64f}é a]{0,20}",
        "[aé\u{1f600}]{80,120}",
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .boxed()
}

/// `sub`: numeric strings and numbers, good and bad (weighted so that about
/// one payload in ten has valid claims throughout).
fn sub() -> BoxedStrategy<Rated> {
    prop_oneof![
        4 => (1..=i64::MAX).prop_map(|n| Some(json!(n.to_string()))),
        4 => (1..1000i64).prop_map(|n| Some(json!(n))),
        4 => "0{0,3}[1-9][0-9]{0,5}".prop_map(|s| Some(json!(s))),
        // The edges: zero, the largest id, one past it.
        3 => prop::sample::select(vec![
            json!(0),
            json!("0"),
            json!("000"),
            json!(1),
            json!(i64::MAX),
            json!(i64::MAX.to_string()),
            json!((i64::MAX as u64 + 1).to_string()),
            json!(i64::MAX as u64 + 1),
        ])
        .prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => prop::sample::select(vec![
            json!("0"),
            json!(""),
            json!("-5"),
            json!("+5"),
            json!(" 5"),
            json!("5 "),
            json!("12a"),
            json!("１"),
            json!("99999999999999999999"),
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1.5),
            json!(1.0),
            json!(true),
            json!([1]),
            json!({"id": 1}),
        ])
        .prop_map(Some),
        1 => (i64::MIN..=0).prop_map(|n| Some(json!(n))),
        1 => json_value().prop_map(Some),
    ]
    .boxed()
}

/// `role`: the three client roles, and everything else.
fn role() -> BoxedStrategy<Rated> {
    prop_oneof![
        8 => prop::sample::select(vec!["user", "operator", "admin"]).prop_map(|r| Some(json!(r))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => prop::sample::select(vec!["service", "User", "ADMIN", "", "root", "user ", "admin\u{0}"])
            .prop_map(|r| Some(json!(r))),
        1 => json_value().prop_map(Some),
    ]
    .boxed()
}

/// `exp` relative to `now`: future, past, and malformed (`null` included).
fn exp(now: u64) -> BoxedStrategy<Rated> {
    prop_oneof![
        8 => (now + 3600..now + 100_000_000).prop_map(|t| Some(json!(t))),
        1 => Just(Some(json!(u64::MAX))),
        2 => (0..now - 3600).prop_map(|t| Some(json!(t))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => prop::sample::select(vec![
            json!(-1),
            json!(i64::MIN),
            json!((now + 3600) as f64),
            json!(1e300),
            json!("tomorrow"),
            json!((now + 3600).to_string()),
            json!([now + 3600]),
            json!(true),
        ])
        .prop_map(Some),
    ]
    .boxed()
}

/// `nbf` relative to `now`: absent or past (fine), future or malformed
/// (refused; `null` too, as for `exp`: it is not a date).
fn nbf(now: u64) -> BoxedStrategy<Rated> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => (0..now - 3600).prop_map(|t| Some(json!(t))),
        1 => (now + 3600..now + 100_000_000).prop_map(|t| Some(json!(t))),
        1 => prop::sample::select(vec![json!(u64::MAX), json!(-1), json!("yesterday"), json!([0]), json!({})])
            .prop_map(Some),
    ]
    .boxed()
}

/// `name` and `chatai_max_priority`: optional strings.
fn optional_string() -> BoxedStrategy<Rated> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(Value::Null)),
        6 => odd_string().prop_map(|s| Some(json!(s))),
        2 => prop::sample::select(vec!["low", "normal", "high", "urgent"]).prop_map(|s| Some(json!(s))),
        1 => json_value()
            .prop_filter("not a string", |v| !v.is_string() && !v.is_null())
            .prop_map(Some),
    ]
    .boxed()
}

/// Claims of a payload, whether the rules accept them all, and the payload
/// text — usually the claims' JSON; sometimes with a duplicated claim, some
/// other JSON or no JSON (never acceptable).
fn payload(now: u64) -> impl Strategy<Value = (String, Map<String, Value>, bool)> {
    let claims = (
        sub(),
        role(),
        exp(now),
        nbf(now),
        optional_string(),
        optional_string(),
        // Unregistered extra claims: ignored.
        prop::collection::vec(("x_[a-z]{1,5}", json_value()), 0..3),
        // Registered claims nobody asked to check: refusing is fine too.
        prop::option::weighted(
            0.05,
            (
                prop::sample::select(vec!["iss", "aud", "jti", "iat"]),
                json_value(),
            ),
        ),
    )
        .prop_map(
            |(sub, role, exp, nbf, name, priority, extras, registered)| {
                let mut object: Map<String, Value> = extras.into_iter().collect();
                if let Some((key, value)) = registered {
                    object.insert(key.into(), value);
                }
                for (key, value) in [
                    ("sub", sub),
                    ("role", role),
                    ("exp", exp),
                    ("nbf", nbf),
                    ("name", name),
                    ("chatai_max_priority", priority),
                ] {
                    if let Some(value) = value {
                        object.insert(key.into(), value);
                    }
                }
                let valid = claims_valid(&object);
                (object, valid)
            },
        );
    (claims, 0..20u8, json_value(), any::<String>()).prop_map(
        |((object, valid), form, other, noise)| {
            let text = Value::Object(object.clone()).to_string();
            match form {
                0 if object.contains_key("role") => {
                    // A second `role` after the first: a duplicate key.
                    let cut = text.len() - 1;
                    (
                        format!("{},\"role\":\"admin\"}}", &text[..cut]),
                        object,
                        false,
                    )
                }
                1 => (other.to_string(), object, false),
                2 => (noise, object, false),
                _ => (text, object, valid),
            }
        },
    )
}

/// Whether the rules accept these claims; the generators rate each claim,
/// this re-reads them so the rating travels with the object.
fn claims_valid(object: &Map<String, Value>) -> bool {
    let sub_ok = match object.get("sub") {
        Some(Value::String(s)) => {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && s.parse::<i64>().is_ok_and(|n| n > 0)
        }
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n > 0),
        _ => false,
    };
    let role_ok = matches!(
        object.get("role").and_then(Value::as_str),
        Some("user" | "operator" | "admin")
    );
    let exp_ok = object
        .get("exp")
        .and_then(Value::as_u64)
        .is_some_and(|t| t > now() + 60);
    let nbf_ok = match object.get("nbf") {
        None => true,
        Some(value) => value.as_u64().is_some_and(|t| t.saturating_add(60) < now()),
    };
    let strings_ok = ["name", "chatai_max_priority"].iter().all(|key| {
        matches!(
            object.get(*key),
            None | Some(Value::Null | Value::String(_))
        )
    });
    let no_registered = !["iss", "aud", "jti", "iat"]
        .iter()
        .any(|k| object.contains_key(*k));
    sub_ok && role_ok && exp_ok && nbf_ok && strings_ok && no_registered
}

/// A header: `alg` in every spelling (and missing or not a string), `typ`,
/// `kid`, extra fields. `true` when it is `{"alg":"HS256"}` with at most a
/// `typ` of `JWT` and a string `kid`.
fn header() -> impl Strategy<Value = (Map<String, Value>, bool)> {
    let alg = prop_oneof![
        12 => Just(Some(json!("HS256"))),
        2 => prop::sample::select(vec![
            "HS384", "HS512", "none", "None", "NONE", "hs256", "HS256 ", "RS256", "ES256",
            "PS256", "EdDSA", "",
        ])
        .prop_map(|a| Some(json!(a))),
        1 => Just(None),
        1 => json_value().prop_map(Some),
    ];
    let typ = prop_oneof![
        3 => Just(None),
        3 => Just(Some(json!("JWT"))),
        1 => prop::sample::select(vec![json!("jwt"), json!(""), json!(1), json!(null)]).prop_map(Some),
    ];
    let kid = prop_oneof![
        4 => Just(None),
        2 => "[a-z0-9]{0,8}".prop_map(|k| Some(json!(k))),
        1 => json_value().prop_map(Some),
    ];
    let extras = prop::option::weighted(0.1, ("[a-z]{1,5}", json_value()));
    (alg, typ, kid, extras).prop_map(|(alg, typ, kid, extras)| {
        let canonical = alg.as_ref() == Some(&json!("HS256"))
            && typ.as_ref().is_none_or(|t| t == "JWT")
            && kid.as_ref().is_none_or(Value::is_string)
            && extras.is_none();
        let mut object = Map::new();
        if let Some((key, value)) = extras {
            object.insert(key, value);
        }
        for (key, value) in [("alg", alg), ("typ", typ), ("kid", kid)] {
            if let Some(value) = value {
                object.insert(key.into(), value);
            }
        }
        (object, canonical)
    })
}

/// How the third segment is made.
#[derive(Debug, Clone)]
enum Signature {
    /// HMAC-SHA256 with the right key: the only one accepted.
    Right,
    /// HMAC-SHA384 or -SHA512 with the right key.
    OtherHmac(Algorithm),
    /// HMAC-SHA256 with another key.
    WrongKey(Vec<u8>),
    /// An empty third segment.
    Empty,
    /// No third segment at all (`header.payload`).
    Missing,
    /// Random bytes.
    Noise(Vec<u8>),
}

fn signature() -> impl Strategy<Value = Signature> {
    prop_oneof![
        12 => Just(Signature::Right),
        1 => prop::sample::select(vec![Algorithm::HS384, Algorithm::HS512]).prop_map(Signature::OtherHmac),
        2 => prop::collection::vec(any::<u8>(), 0..48)
            .prop_filter("another key", |k| k != SECRET)
            .prop_map(Signature::WrongKey),
        1 => Just(Signature::Empty),
        1 => Just(Signature::Missing),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Signature::Noise),
    ]
}

/// How the segments are base64-encoded: only the first is a JWT's.
fn encoding() -> impl Strategy<Value = u8> {
    prop_oneof![16 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)]
}

fn encode_segment(encoding: u8, bytes: &[u8]) -> String {
    match encoding {
        0 => URL_SAFE_NO_PAD.encode(bytes),
        1 => URL_SAFE.encode(bytes),
        _ => STANDARD.encode(bytes),
    }
}

fn sign(input: &str, key: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(key), alg)
        .expect("HMAC signing cannot fail")
}

/// Verifies `token` and, when accepted, checks the claims against the
/// payload it carried and the documented rules.
fn verify_checked(token: &str, payload: Option<&Map<String, Value>>) -> Result<Claims, TokenError> {
    let before = now();
    let result = TokenKeys::new(SECRET).verify(token);
    let after = now();
    if let Ok(claims) = &result {
        let payload =
            payload.unwrap_or_else(|| panic!("{token} accepted without a payload of ours"));
        assert!(claims.sub > 0, "{token}");
        match &payload["sub"] {
            Value::String(s) => assert_eq!(s.parse::<i64>().ok(), Some(claims.sub), "{token}"),
            Value::Number(n) => assert_eq!(n.as_i64(), Some(claims.sub), "{token}"),
            other => panic!("{token} accepted with sub {other}"),
        }
        assert!(matches!(
            claims.role,
            Role::User | Role::Operator | Role::Admin
        ));
        assert_eq!(
            payload["role"].as_str(),
            Some(claims.role.as_str()),
            "{token}"
        );
        assert_eq!(payload["exp"].as_u64(), Some(claims.exp), "{token}");
        assert!(
            claims.exp.saturating_add(LEEWAY) >= before,
            "{token} expired"
        );
        match payload.get("nbf") {
            None | Some(Value::Null) => {}
            Some(nbf) => assert!(
                nbf.as_u64().is_some_and(|nbf| nbf <= after + LEEWAY),
                "{token} accepted with nbf {nbf}"
            ),
        }
        let name = payload
            .get("name")
            .and_then(Value::as_str)
            .map(|n| bounded_name(n.to_owned()));
        assert_eq!(claims.name, name, "{token}");
        let priority = payload.get("chatai_max_priority").and_then(Value::as_str);
        assert_eq!(claims.max_priority.as_deref(), priority, "{token}");
    }
    result
}

proptest! {
    #![proptest_config(config())]

    /// Any string is refused, without a panic.
    #[test]
    fn any_text(text in any::<String>()) {
        prop_assert!(verify_checked(&text, None).is_err());
    }

    /// Three (or two, or four) base64url segments of arbitrary bytes are refused.
    #[test]
    fn jwt_shaped_noise(segments in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 2..5)) {
        let token = segments.iter().map(|s| URL_SAFE_NO_PAD.encode(s)).collect::<Vec<_>>().join(".");
        prop_assert!(verify_checked(&token, None).is_err());
    }

    /// Tokens from arbitrary headers and payloads under every signature: an
    /// accepted one was HS256 with the right key and has valid claims
    /// (checked in `verify_checked`); a well-formed one with valid claims is
    /// accepted.
    #[test]
    fn built_tokens(
        (header, canonical_header) in header(),
        (payload_text, claims, claims_ok) in payload(now()),
        signature in signature(),
        encoding in encoding(),
    ) {
        let header_text = Value::Object(header.clone()).to_string();
        let input = format!(
            "{}.{}",
            encode_segment(encoding, header_text.as_bytes()),
            encode_segment(encoding, payload_text.as_bytes()),
        );
        let token = match &signature {
            Signature::Right => format!("{input}.{}", sign(&input, SECRET, Algorithm::HS256)),
            Signature::OtherHmac(alg) => format!("{input}.{}", sign(&input, SECRET, *alg)),
            Signature::WrongKey(key) => format!("{input}.{}", sign(&input, key, Algorithm::HS256)),
            Signature::Empty => format!("{input}."),
            Signature::Missing => input.clone(),
            Signature::Noise(bytes) => format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes)),
        };
        let well_formed = canonical_header && encoding == 0 && matches!(signature, Signature::Right);
        let result = verify_checked(&token, Some(&claims));
        if result.is_ok() {
            prop_assert!(matches!(signature, Signature::Right), "{}: {:?}", token, signature);
            prop_assert_eq!(header.get("alg"), Some(&json!("HS256")), "{}", token);
        }
        if well_formed && claims_ok {
            prop_assert!(result.is_ok(), "{} ({}, {}) refused: {:?}", token, header_text, payload_text, result.err());
        }
    }

    /// A well-formed token whose claims are valid but for one, drawn from
    /// everything above: accepted exactly when that claim follows the rules
    /// too (and then with the claims sent).
    #[test]
    fn one_claim_varied(
        (name, value) in prop_oneof![
            sub().prop_map(|v| ("sub", v)),
            role().prop_map(|v| ("role", v)),
            exp(now()).prop_map(|v| ("exp", v)),
            nbf(now()).prop_map(|v| ("nbf", v)),
            optional_string().prop_map(|v| ("name", v)),
            optional_string().prop_map(|v| ("chatai_max_priority", v)),
        ],
    ) {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("7"));
        claims.insert("role".into(), json!("user"));
        claims.insert("exp".into(), json!(now() + 86_400));
        match value {
            Some(value) => claims.insert(name.into(), value),
            None => claims.remove(name),
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()),
        );
        let token = format!("{input}.{}", sign(&input, SECRET, Algorithm::HS256));
        let result = verify_checked(&token, Some(&claims));
        prop_assert_eq!(
            result.is_ok(),
            claims_valid(&claims),
            "{:?}: {:?}", claims, result.err()
        );
    }

    /// Tokens minted for any positive id, client role and name verify back
    /// to them.
    #[test]
    fn minted_tokens(
        sub in 1..=i64::MAX,
        role in prop::sample::select(vec![Role::User, Role::Operator, Role::Admin]),
        name in prop::option::of(odd_string()),
    ) {
        let keys = TokenKeys::new(SECRET);
        let token = keys
            .mint(sub, role, name.as_deref(), std::time::Duration::from_secs(3600))
            .expect("a client role and positive id mint");
        let claims = keys.verify(&token).expect("a minted token verifies");
        prop_assert_eq!((claims.sub, claims.role), (sub, role));
        prop_assert_eq!(claims.name, name.map(bounded_name));
        prop_assert!(matches!(
            TokenKeys::new(b"some-other-secret-of-32-bytes-or-more").verify(&token),
            Err(TokenError::Jwt(_))
        ));
    }
}
