//! The client token: a JWT carrying `sub` (the numeric id, as a string or a
//! JSON number), `role` (`user`, `operator` or `admin` — never `service`,
//! which is for internal callers only), a required `exp` and an optional
//! `name` (docs/protocol.md, "Tokens"); `iss` and `aud` too when the
//! deployment names them ([`Expected`]).
//!
//! This crate owns the format and the checks, without any I/O:
//! - this file: the claims, HS256 with the shared secret — verifying
//!   ([`TokenKeys::verify`], the gateway) and minting ([`TokenKeys::mint`]:
//!   the `chatai token` command, the load tool, tests);
//! - [`jwks`]: RS256 and ES256 tokens of an identity provider, verified with
//!   the public keys of its JWKS document ([`JwksKeys`]). Fetching and
//!   refreshing that document is the gateway's job, as is finding a token in
//!   a request.

pub mod jwks;

pub use jwks::{JwksError, JwksKeys, SkippedKey};

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use chatai_kit::identity::Role;
use chatai_kit::identity::bounded_name;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The secret used when `CHATAI_JWT_SECRET` is not set (or empty): for a
/// laptop, never for production (the gateway warns at start).
pub const DEVELOPMENT_SECRET: &str = "chatai-development-secret-do-not-use-in-production";

/// The shortest secret accepted when one is set: 256 bits, the HS256 key
/// size RFC 7518 §3.2 asks for.
pub const MIN_SECRET_BYTES: usize = 32;

/// A configured secret too short to be safe.
#[derive(Debug, thiserror::Error)]
#[error(
    "CHATAI_JWT_SECRET is {length} bytes long; a set secret must be at least {MIN_SECRET_BYTES} \
     bytes (leave it unset or empty for the built-in development secret)"
)]
pub struct WeakSecret {
    pub length: usize,
}

/// The secret to sign and verify with, by the one rule every process follows
/// (gateway, `chatai token`, the load tool): unset or empty means
/// development — [`DEVELOPMENT_SECRET`], `None` here, and the caller warns;
/// a set secret shorter than [`MIN_SECRET_BYTES`] is refused.
pub fn configured_secret(configured: Option<&str>) -> Result<Option<&str>, WeakSecret> {
    match configured {
        None | Some("") => Ok(None),
        Some(secret) if secret.len() < MIN_SECRET_BYTES => Err(WeakSecret {
            length: secret.len(),
        }),
        Some(secret) => Ok(Some(secret)),
    }
}

/// Seconds a token may be past its `exp`, or before its `nbf`, and still be
/// accepted (clock skew).
const LEEWAY_SECS: u64 = 5;

/// The verified claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The numeric id of the user, operator or admin (always > 0).
    pub sub: i64,
    /// `User`, `Operator` or `Admin`; never `Service`.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Display name, when the token has one.
    pub name: Option<String>,
    /// `chatai_max_priority`: the highest handoff priority this client may
    /// ask for (`low`, `normal`, `high`, `urgent`), when the issuer raises
    /// it above the default (`normal`). Read by the gateway.
    pub max_priority: Option<String>,
}

/// The `iss` and `aud` a token must carry, when the deployment names them
/// (`CHATAI_JWT_ISSUER`, `CHATAI_JWT_AUDIENCE`): each, when set, is required
/// and must match exactly (for `aud`, the value or one of the token's
/// list). Unset, the claim is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Why a token was refused (or could not be minted).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad shape, bad signature, wrong algorithm, expired, missing `exp`, a
    /// wrong `iss` or `aud`, or a claim of the wrong JSON type.
    #[error("invalid token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// (JWKS) The token's `alg` is not one the identity provider's keys are
    /// used with (RS256, ES256) — `HS256` included: no public key is ever a
    /// secret.
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// (JWKS) The token names no key (`kid`).
    #[error("token names no key (`kid`)")]
    MissingKeyId,
    /// (JWKS) The token names a key the provider's set does not hold (yet).
    #[error("token names an unknown key")]
    UnknownKey(String),
    /// A claim the token must carry (`sub`, `role`) is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// `sub` is not a positive integer (as a string of digits or a JSON number).
    #[error("token subject is not a positive numeric id")]
    BadSubject,
    /// `role` is not one a client may hold (`service` included).
    #[error("token role {0:?} is not allowed for clients")]
    BadRole(String),
}

/// The claims as they travel in the token, before our own checks.
#[derive(Deserialize)]
struct WireClaims {
    sub: Option<serde_json::Value>,
    role: Option<String>,
    /// Presence and expiry are checked by `jsonwebtoken` (`exp` is a required
    /// claim of the validation); the default only lets that check speak.
    #[serde(default)]
    exp: u64,
    name: Option<String>,
    chatai_max_priority: Option<String>,
}

/// The claims [`TokenKeys::mint`] writes.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: String,
    role: &'static str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// What every client token is checked for, whatever signed it: `alg` is
/// `algorithm` only (`alg: none` does not even parse as a header), `exp`
/// required and not past, `nbf` (RFC 7519 §4.1.5, optional) not ahead —
/// both with [`LEEWAY_SECS`] — and `iss`/`aud` as `expected` says.
fn validation(algorithm: Algorithm, expected: &Expected) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &expected.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &expected.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // No audience named: `aud` is not looked at (`jsonwebtoken` would
        // otherwise refuse every token that has one).
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// Our own checks of verified claims: `sub` and `role`.
fn claims_from(wire: WireClaims) -> Result<Claims, TokenError> {
    let sub = parse_subject(wire.sub.as_ref().ok_or(TokenError::MissingClaim("sub"))?)?;
    let role = parse_client_role(
        wire.role
            .as_deref()
            .ok_or(TokenError::MissingClaim("role"))?,
    )?;
    Ok(Claims {
        sub,
        role,
        exp: wire.exp,
        name: wire.name.map(bounded_name),
        max_priority: wire.chatai_max_priority,
    })
}

/// The HS256 secret, ready to verify and mint client tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    expected: Expected,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys for the shared HS256 secret (`CHATAI_JWT_SECRET`).
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, &Expected::default()),
            expected: Expected::default(),
        }
    }

    /// The same keys, also requiring the `iss` and `aud` of `expected` (when
    /// set) — and writing them into the tokens they mint.
    pub fn expecting(mut self, expected: Expected) -> Self {
        self.validation = validation(Algorithm::HS256, &expected);
        self.expected = expected;
        self
    }

    /// Verifies signature (HS256 only), `exp` (required) and `nbf` (when
    /// present), each with a leeway of 5 s, and `iss`/`aud` when expected.
    /// `sub` may be a numeric string or a JSON number and must be > 0; `role`
    /// is one of `user`, `operator`, `admin`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)?;
        claims_from(data.claims)
    }

    /// Mints a token (for `chatai token` and tests): `sub` as a string, the
    /// role, `exp` = now + `ttl` (whole seconds), `name` if given. Refuses what
    /// [`verify`](Self::verify) would refuse: a non-positive `sub` or role
    /// `service`.
    pub fn mint(
        &self,
        sub: i64,
        role: Role,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        if sub <= 0 {
            return Err(TokenError::BadSubject);
        }
        let role = parse_client_role(role.as_str())?;
        let claims = MintClaims {
            sub: sub.to_string(),
            role: role.as_str(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            name,
            iss: self.expected.issuer.as_deref(),
            aud: self.expected.audience.as_deref(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A positive id from a JSON number or a string of ASCII digits.
fn parse_subject(sub: &serde_json::Value) -> Result<i64, TokenError> {
    let id = match sub {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or(TokenError::BadSubject)
}

/// A role a client token may carry.
fn parse_client_role(role: &str) -> Result<Role, TokenError> {
    match role.parse::<Role>() {
        Ok(role @ (Role::User | Role::Operator | Role::Admin)) => Ok(role),
        Ok(Role::Service) | Err(_) => Err(TokenError::BadRole(role.to_owned())),
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const HOUR: Duration = Duration::from_secs(3600);

    fn keys() -> TokenKeys {
        TokenKeys::new(SECRET)
    }

    /// Signs arbitrary claims with `alg` and the test secret.
    fn sign(alg: Algorithm, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn later() -> u64 {
        unix_now() + 3600
    }

    fn is_jwt_error(result: Result<Claims, TokenError>) -> bool {
        matches!(result, Err(TokenError::Jwt(_)))
    }

    /// A minted token verifies back to the same subject, role and name.
    #[test]
    fn mint_verify_round_trip() {
        for role in [Role::User, Role::Operator, Role::Admin] {
            let token = keys().mint(456, role, Some("Ann"), HOUR).unwrap();
            let claims = keys().verify(&token).unwrap();
            assert_eq!(claims.sub, 456);
            assert_eq!(claims.role, role);
            assert_eq!(claims.name.as_deref(), Some("Ann"));
            assert!(claims.exp >= unix_now() + 3590 && claims.exp <= unix_now() + 3600);
        }
        let token = keys().mint(7, Role::User, None, HOUR).unwrap();
        assert_eq!(keys().verify(&token).unwrap().name, None);
    }

    /// `sub` is written as a string, as docs/protocol.md says.
    #[test]
    fn minted_sub_is_a_string() {
        let token = keys().mint(456, Role::User, None, HOUR).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["sub"], json!("456"));
        assert_eq!(claims["role"], json!("user"));
    }

    /// `sub` as a JSON number is accepted too.
    #[test]
    fn numeric_sub_is_accepted() {
        let token = sign(
            Algorithm::HS256,
            &json!({"sub": 456, "role": "operator", "exp": later()}),
        );
        let claims = keys().verify(&token).unwrap();
        assert_eq!((claims.sub, claims.role), (456, Role::Operator));
    }

    /// A token past `exp` (beyond the 5 s leeway) is refused; within it, accepted.
    #[test]
    fn expired_token_is_refused() {
        let expired = sign(
            Algorithm::HS256,
            &json!({"sub": "1", "role": "user", "exp": unix_now() - 60}),
        );
        assert!(is_jwt_error(keys().verify(&expired)));
        let in_leeway = sign(
            Algorithm::HS256,
            &json!({"sub": "1", "role": "user", "exp": unix_now() - 2}),
        );
        assert!(keys().verify(&in_leeway).is_ok());
    }

    /// A token not yet valid (`nbf` ahead, beyond the leeway) is refused;
    /// within the leeway, or already valid, accepted.
    #[test]
    fn token_before_its_nbf_is_refused() {
        let not_yet = sign(
            Algorithm::HS256,
            &json!({"sub": "1", "role": "user", "exp": later(), "nbf": unix_now() + 600}),
        );
        assert!(is_jwt_error(keys().verify(&not_yet)));
        for nbf in [unix_now() + 2, unix_now() - 60] {
            let valid = sign(
                Algorithm::HS256,
                &json!({"sub": "1", "role": "user", "exp": later(), "nbf": nbf}),
            );
            assert!(keys().verify(&valid).is_ok(), "nbf {nbf}");
        }
    }

    /// A token signed with another secret is refused.
    #[test]
    fn wrong_secret_is_refused() {
        let token = TokenKeys::new(b"other")
            .mint(1, Role::User, None, HOUR)
            .unwrap();
        assert!(is_jwt_error(keys().verify(&token)));
    }

    /// `alg: none` and HS384 tokens are refused even with valid claims.
    #[test]
    fn other_algorithms_are_refused() {
        let claims = json!({"sub": "1", "role": "user", "exp": later()});
        let hs384 = sign(Algorithm::HS384, &claims);
        assert!(is_jwt_error(keys().verify(&hs384)));

        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(is_jwt_error(keys().verify(&token)), "{token}");
        }
    }

    /// A token without `exp`, or with a non-numeric one, is refused.
    #[test]
    fn missing_exp_is_refused() {
        let token = sign(Algorithm::HS256, &json!({"sub": "1", "role": "user"}));
        assert!(is_jwt_error(keys().verify(&token)));
        let token = sign(
            Algorithm::HS256,
            &json!({"sub": "1", "role": "user", "exp": "tomorrow"}),
        );
        assert!(is_jwt_error(keys().verify(&token)));
    }

    /// Unknown roles, `service` and a missing role are refused; `service` cannot be minted.
    #[test]
    fn bad_roles_are_refused() {
        for role in ["service", "root", "User", ""] {
            let token = sign(
                Algorithm::HS256,
                &json!({"sub": "1", "role": role, "exp": later()}),
            );
            assert!(
                matches!(keys().verify(&token), Err(TokenError::BadRole(r)) if r == role),
                "{role}"
            );
        }
        let token = sign(Algorithm::HS256, &json!({"sub": "1", "exp": later()}));
        assert!(matches!(
            keys().verify(&token),
            Err(TokenError::MissingClaim("role"))
        ));
        assert!(matches!(
            keys().mint(1, Role::Service, None, HOUR),
            Err(TokenError::BadRole(_))
        ));
    }

    /// A `sub` that is not a positive integer is refused.
    #[test]
    fn bad_subjects_are_refused() {
        let bad = [
            json!("abc"),
            json!(""),
            json!("12a"),
            json!("-5"),
            json!("+5"),
            json!(" 5"),
            json!("0"),
            json!("99999999999999999999"),
            json!(0),
            json!(-3),
            json!(4.5),
            json!(true),
            json!(null),
            json!([1]),
        ];
        // A non-string `sub` of another JSON type trips `jsonwebtoken`'s own
        // claim reader first (`Jwt`); either way the token is refused.
        for sub in bad {
            let token = sign(
                Algorithm::HS256,
                &json!({"sub": sub, "role": "user", "exp": later()}),
            );
            assert!(
                matches!(
                    keys().verify(&token),
                    Err(TokenError::BadSubject)
                        | Err(TokenError::MissingClaim("sub"))
                        | Err(TokenError::Jwt(_))
                ),
                "{sub}"
            );
        }
        let token = sign(Algorithm::HS256, &json!({"role": "user", "exp": later()}));
        assert!(matches!(
            keys().verify(&token),
            Err(TokenError::MissingClaim("sub"))
        ));
        assert!(matches!(
            keys().mint(0, Role::User, None, HOUR),
            Err(TokenError::BadSubject)
        ));
    }

    /// Garbage that is not a JWT at all is refused without panicking.
    #[test]
    fn garbage_is_refused() {
        for token in ["", ".", "..", "a.b.c", "not a token", "ey.ey.ey", "\u{0}"] {
            assert!(is_jwt_error(keys().verify(token)), "{token:?}");
        }
    }

    /// Unset and empty both mean the development secret; a set secret
    /// needs 32 bytes.
    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        assert_eq!(configured_secret(None).unwrap(), None);
        assert_eq!(configured_secret(Some("")).unwrap(), None);
        let short = "x".repeat(MIN_SECRET_BYTES - 1);
        assert!(matches!(
            configured_secret(Some(&short)),
            Err(WeakSecret { length: 31 })
        ));
        assert!(configured_secret(Some("a")).is_err());
        let enough = "x".repeat(MIN_SECRET_BYTES);
        assert_eq!(configured_secret(Some(&enough)).unwrap(), Some(&*enough));
    }

    /// Debug output never shows the secret.
    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", keys()).contains("test-secret"));
    }
}
