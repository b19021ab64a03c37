//! Finding a client's token in a WebSocket upgrade request. The client may
//! present it in three places, looked at in this order: the `token` query
//! parameter, an `Authorization: Bearer` header, or a `chatai.bearer.<token>`
//! WebSocket subprotocol offered next to `chatai.v1`. The token itself (its
//! claims, verifying, minting) is `chatai_tokens`'s.

use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, Uri};

pub use chatai_tokens::{Claims, TokenError, TokenKeys};

/// The subprotocol a client offers to speak this protocol; the server selects
/// it in its 101 response.
pub const CHATAI_SUBPROTOCOL: &str = "chatai.v1";

/// The prefix of the subprotocol that carries a token (`chatai.bearer.<token>`).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "chatai.bearer.";

/// The query parameter that carries a token.
pub const TOKEN_QUERY_PARAM: &str = "token";

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

/// The caller a verified token names, on connection `connection_id` when
/// the request came over one.
pub fn caller_of(claims: &Claims, connection_id: Option<String>) -> chatai_kit::identity::Caller {
    chatai_kit::identity::Caller {
        id: claims.sub,
        role: claims.role,
        name: claims.name.clone(),
        connection_id,
    }
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

/// The token of an `Authorization: Bearer …` header, if the request has
/// one (the HTTP API's only way to present a token: query strings end up in
/// logs).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(bearer_token)
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
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::HeaderValue;

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
}
