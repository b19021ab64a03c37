//! [`Verifier`]: how this gateway checks client tokens — HS256 with the
//! shared secret (`CHATAI_JWT_SECRET`, the default), or an identity
//! provider's RS256/ES256 keys (`CHATAI_JWKS_URL`). Never both: with a JWKS
//! URL set, HS256 tokens are refused, so no public key can ever be taken for
//! a secret and nobody holding the secret can mint around the provider.
//! `iss`/`aud` (`CHATAI_JWT_ISSUER`, `CHATAI_JWT_AUDIENCE`) apply either way.

use chatai_tokens::{Claims, TokenError, TokenKeys};

use crate::jwks::Jwks;

/// Checks client tokens (at connect, on `refresh_token`, for the stats route).
#[derive(Clone)]
pub enum Verifier {
    /// HS256 with the shared secret.
    Secret(Box<TokenKeys>),
    /// RS256/ES256 with the identity provider's keys.
    Provider(Jwks),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Secret(_) => f.write_str("Verifier::Secret"),
            Verifier::Provider(_) => f.write_str("Verifier::Provider"),
        }
    }
}

impl Verifier {
    /// The verified claims of `token`, or why it was refused.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match self {
            Verifier::Secret(keys) => keys.verify(token),
            Verifier::Provider(jwks) => jwks.verify(token).await,
        }
    }

    /// The claims of the token an HTTP request presented; `None` for no
    /// token or one that does not verify (why, logged at debug: a refused
    /// token is the client's mistake). Every HTTP route answers `None` with
    /// 401 `invalid_token`.
    pub async fn verify_presented(&self, token: Option<&str>) -> Option<Claims> {
        match self.verify(token?).await {
            Ok(claims) => Some(claims),
            Err(cause) => {
                tracing::debug!(%cause, "token refused");
                None
            }
        }
    }

    /// Why no token can be verified now (for the health check): the
    /// provider's keys have not been read yet.
    pub fn problem(&self) -> Option<&'static str> {
        match self {
            Verifier::Provider(jwks) if !jwks.loaded() => {
                Some("identity provider keys (CHATAI_JWKS_URL) not loaded")
            }
            _ => None,
        }
    }
}
