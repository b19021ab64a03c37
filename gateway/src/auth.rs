//! Client tokens: verifying and minting the HS256 JWTs clients connect with, and finding the token in a WebSocket upgrade request.
//!
//! A client token carries `sub` (the numeric id, as a string or a JSON
//! number), `role` (`user`, `operator` or `admin` — never `service`, which is
//! for internal callers only), a required `exp` and an optional `name`
//! (PROTOCOL.md, "Tokens"). The client may present it in three places, looked
//! at in this order: the `token` query parameter, an `Authorization: Bearer`
//! header, or a `chatai.bearer.<token>` WebSocket subprotocol offered next to
//! `chatai.v1`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatai_kit::identity::Role;
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Seconds a token may be past its `exp` and still be accepted (clock skew).
const LEEWAY_SECS: u64 = 5;

/// The subprotocol a client offers to speak this protocol; the server selects
/// it in its 101 response.
pub const CHATAI_SUBPROTOCOL: &str = "chatai.v1";

/// The prefix of the subprotocol that carries a token (`chatai.bearer.<token>`).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "chatai.bearer.";

/// The query parameter that carries a token.
pub const TOKEN_QUERY_PARAM: &str = "token";

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
}

/// Why a token was refused (or could not be minted).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad shape, bad signature, wrong algorithm, expired, missing `exp`, or a
    /// claim of the wrong JSON type.
    #[error("invalid token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
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
}

/// The claims [`TokenKeys::mint`] writes.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: String,
    role: &'static str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// The HS256 secret, ready to verify and mint client tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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
        // `Validation::new` accepts only the algorithm given, requires `exp`
        // and checks it; `alg: none` does not even parse as a header.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies signature (HS256 only) and `exp` (required; leeway 5 s).
    /// `sub` may be a numeric string or a JSON number and must be > 0; `role`
    /// is one of `user`, `operator`, `admin`.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)?;
        let wire = data.claims;
        let sub = parse_subject(wire.sub.as_ref().ok_or(AuthError::MissingClaim("sub"))?)?;
        let role = parse_client_role(
            wire.role
                .as_deref()
                .ok_or(AuthError::MissingClaim("role"))?,
        )?;
        Ok(Claims {
            sub,
            role,
            exp: wire.exp,
            name: wire.name,
        })
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
    ) -> Result<String, AuthError> {
        if sub <= 0 {
            return Err(AuthError::BadSubject);
        }
        let role = parse_client_role(role.as_str())?;
        let claims = MintClaims {
            sub: sub.to_string(),
            role: role.as_str(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            name,
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
fn parse_subject(sub: &serde_json::Value) -> Result<i64, AuthError> {
    let id = match sub {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or(AuthError::BadSubject)
}

/// A role a client token may carry.
fn parse_client_role(role: &str) -> Result<Role, AuthError> {
    match role.parse::<Role>() {
        Ok(role @ (Role::User | Role::Operator | Role::Admin)) => Ok(role),
        Ok(Role::Service) | Err(_) => Err(AuthError::BadRole(role.to_owned())),
    }
}

/// Where the client put its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The `token` query parameter.
    Query,
    /// An `Authorization: Bearer …` header.
    Header,
    /// A `chatai.bearer.<token>` entry of `Sec-WebSocket-Protocol`.
    Subprotocol,
}

/// A token found in an upgrade request, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    pub token: String,
    pub source: TokenSource,
}

/// The first value of query parameter `name`, percent-decoded
/// (`application/x-www-form-urlencoded` rules, so `+` reads as a space).
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Finds the token of a WebSocket upgrade request: the `token` query parameter
/// (percent-decoded), an `Authorization: Bearer …` header, or a
/// `Sec-WebSocket-Protocol` list containing `chatai.bearer.<token>`
/// (comma-separated, possibly several headers, whitespace around items).
/// Query first, then header, then subprotocol. Empty tokens count as absent.
pub fn presented_token(uri: &Uri, headers: &HeaderMap) -> Option<PresentedToken> {
    let found = |token: String, source| PresentedToken { token, source };
    if let Some(token) = query_param(uri, TOKEN_QUERY_PARAM).filter(|t| !t.is_empty()) {
        return Some(found(token, TokenSource::Query));
    }
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(bearer_token);
    if let Some(token) = bearer {
        return Some(found(token.to_owned(), TokenSource::Header));
    }
    subprotocols(headers)
        .find_map(|item| item.strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        .filter(|token| !token.is_empty())
        .map(|token| found(token.to_owned(), TokenSource::Subprotocol))
}

/// The credentials of an `Authorization` value with scheme `Bearer` (the
/// scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Every item of every `Sec-WebSocket-Protocol` header, trimmed.
fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Whether the client offered the `chatai.v1` subprotocol (then the server
/// must select it in its 101 response).
pub fn offers_chatai_subprotocol(headers: &HeaderMap) -> bool {
    subprotocols(headers).any(|item| item == CHATAI_SUBPROTOCOL)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use http::HeaderValue;
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

    fn is_jwt_error(result: Result<Claims, AuthError>) -> bool {
        matches!(result, Err(AuthError::Jwt(_)))
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

    /// `sub` is written as a string, as PROTOCOL.md says.
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
                matches!(keys().verify(&token), Err(AuthError::BadRole(r)) if r == role),
                "{role}"
            );
        }
        let token = sign(Algorithm::HS256, &json!({"sub": "1", "exp": later()}));
        assert!(matches!(
            keys().verify(&token),
            Err(AuthError::MissingClaim("role"))
        ));
        assert!(matches!(
            keys().mint(1, Role::Service, None, HOUR),
            Err(AuthError::BadRole(_))
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
                    Err(AuthError::BadSubject)
                        | Err(AuthError::MissingClaim("sub"))
                        | Err(AuthError::Jwt(_))
                ),
                "{sub}"
            );
        }
        let token = sign(Algorithm::HS256, &json!({"role": "user", "exp": later()}));
        assert!(matches!(
            keys().verify(&token),
            Err(AuthError::MissingClaim("sub"))
        ));
        assert!(matches!(
            keys().mint(0, Role::User, None, HOUR),
            Err(AuthError::BadSubject)
        ));
    }

    /// Garbage that is not a JWT at all is refused without panicking.
    #[test]
    fn garbage_is_refused() {
        for token in ["", ".", "..", "a.b.c", "not a token", "ey.ey.ey", "\u{0}"] {
            assert!(is_jwt_error(keys().verify(token)), "{token:?}");
        }
    }

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// The token is found in the query (percent-decoded), then the header, then the subprotocol.
    #[test]
    fn token_is_found_in_each_place() {
        let uri: Uri = "/ws/456?last_seq=3&token=a%2Eb%2Ec".parse().unwrap();
        assert_eq!(
            presented_token(&uri, &HeaderMap::new()),
            Some(PresentedToken {
                token: "a.b.c".into(),
                source: TokenSource::Query
            })
        );

        let bare: Uri = "/ws/456".parse().unwrap();
        let auth = headers(&[(AUTHORIZATION, "bearer  h.e.t ")]);
        assert_eq!(
            presented_token(&bare, &auth),
            Some(PresentedToken {
                token: "h.e.t".into(),
                source: TokenSource::Header
            })
        );

        let proto = headers(&[
            (SEC_WEBSOCKET_PROTOCOL, "chatai.v1"),
            (SEC_WEBSOCKET_PROTOCOL, " other , chatai.bearer.s.u.b ,x"),
        ]);
        assert_eq!(
            presented_token(&bare, &proto),
            Some(PresentedToken {
                token: "s.u.b".into(),
                source: TokenSource::Subprotocol
            })
        );
    }

    /// The query wins over the header, the header over the subprotocol.
    #[test]
    fn token_places_have_a_precedence() {
        let all = headers(&[
            (AUTHORIZATION, "Bearer from-header"),
            (
                SEC_WEBSOCKET_PROTOCOL,
                "chatai.v1, chatai.bearer.from-proto",
            ),
        ]);
        let with_query: Uri = "/ws/1?token=from-query".parse().unwrap();
        let without: Uri = "/ws/1?cursor=abc".parse().unwrap();
        let empty_query: Uri = "/ws/1?token=".parse().unwrap();
        assert_eq!(
            presented_token(&with_query, &all).unwrap().source,
            TokenSource::Query
        );
        assert_eq!(
            presented_token(&without, &all).unwrap().source,
            TokenSource::Header
        );
        assert_eq!(
            presented_token(&empty_query, &all).unwrap().token,
            "from-header"
        );
        let proto_only = headers(&[
            (AUTHORIZATION, "Basic dXNlcjpwYXNz"),
            (
                SEC_WEBSOCKET_PROTOCOL,
                "chatai.v1, chatai.bearer.from-proto",
            ),
        ]);
        assert_eq!(
            presented_token(&without, &proto_only),
            Some(PresentedToken {
                token: "from-proto".into(),
                source: TokenSource::Subprotocol
            })
        );
    }

    /// No token anywhere (or only empty ones) means none.
    #[test]
    fn no_token_is_none() {
        let uri: Uri = "/ws/1?token=".parse().unwrap();
        let empty = headers(&[
            (AUTHORIZATION, "Bearer "),
            (SEC_WEBSOCKET_PROTOCOL, "chatai.v1, chatai.bearer."),
        ]);
        assert_eq!(presented_token(&uri, &empty), None);
        assert_eq!(presented_token(&uri, &HeaderMap::new()), None);
    }

    /// `chatai.v1` is detected in any header of the list, only as a whole item.
    #[test]
    fn subprotocol_detection() {
        assert!(offers_chatai_subprotocol(&headers(&[(
            SEC_WEBSOCKET_PROTOCOL,
            "chatai.bearer.x ,  chatai.v1"
        )])));
        assert!(offers_chatai_subprotocol(&headers(&[
            (SEC_WEBSOCKET_PROTOCOL, "other"),
            (SEC_WEBSOCKET_PROTOCOL, "chatai.v1"),
        ])));
        assert!(!offers_chatai_subprotocol(&headers(&[(
            SEC_WEBSOCKET_PROTOCOL,
            "chatai.v10, chatai.bearer.chatai.v1"
        )])));
        assert!(!offers_chatai_subprotocol(&HeaderMap::new()));
    }

    /// `query_param` percent-decodes and returns the first occurrence.
    #[test]
    fn query_param_decodes() {
        let uri: Uri = "/ws/1?cursor=AQ%3D%3D&last_seq=5&last_seq=6&e="
            .parse()
            .unwrap();
        assert_eq!(query_param(&uri, "cursor").as_deref(), Some("AQ=="));
        assert_eq!(query_param(&uri, "last_seq").as_deref(), Some("5"));
        assert_eq!(query_param(&uri, "e").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "missing"), None);
        assert_eq!(query_param(&"/ws/1".parse().unwrap(), "cursor"), None);
    }

    /// Debug output never shows the secret.
    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", keys()).contains("test-secret"));
    }
}
