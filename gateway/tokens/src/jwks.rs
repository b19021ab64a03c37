//! Tokens of an identity provider (Keycloak, Auth0, Cognito…): RS256 and
//! ES256 JWTs verified with the public keys of the provider's JWKS document
//! (RFC 7517). [`JwksKeys`] is one such document, read and ready; fetching
//! it, keeping it and refreshing it is the gateway's (`gateway/src/jwks.rs`).
//!
//! The rules, in the order a token meets them:
//! 1. its `alg` is RS256 or ES256 — nothing else, `HS256` least of all: a
//!    public key is never used as an HMAC secret (the algorithm-confusion
//!    attack);
//! 2. it names a key (`kid`) of the set, and that key is used with exactly
//!    that `alg` (the key's own `alg` when it declares one, else RS256 for an
//!    RSA key and ES256 for a P-256 one);
//! 3. the signature, `exp`, `nbf`, `iss` and `aud` as for every client token
//!    (crate root), then `sub` and `role`.
//!
//! Header parameters that point elsewhere (`jku`, `jwk`, `x5u`, `x5c`) are
//! never followed: the keys are the configured set's only.

use std::collections::HashMap;
use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::{Claims, Expected, TokenError, WireClaims, claims_from, validation};

/// The algorithms an identity provider's token may be signed with.
pub const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// A JWKS document that is not one at all.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
}

/// A key of the document that was left out, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, when it has one.
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// One usable key: the algorithm it is used with and how its tokens are checked.
struct VerifyingKey {
    algorithm: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
}

/// The signing keys of an identity provider, by `kid`.
pub struct JwksKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("JwksKeys").field("kids", &kids).finish()
    }
}

/// The document's outline: each key is read on its own, so one key of a
/// kind this crate cannot read (another curve, an encryption key) does not
/// cost the others.
#[derive(serde::Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl JwksKeys {
    /// No keys: every token names an unknown one.
    pub fn empty() -> Self {
        JwksKeys {
            keys: HashMap::new(),
        }
    }

    /// Reads a JWKS document (`{"keys": [...]}`). Keys that cannot sign
    /// client tokens — no `kid`, `use` other than `sig`, a key type,
    /// curve or algorithm other than RSA/RS256 and P-256/ES256, unreadable
    /// numbers — are left out and listed; `expected` is what every token
    /// must carry besides.
    pub fn from_json(
        document: &[u8],
        expected: &Expected,
    ) -> Result<(JwksKeys, Vec<SkippedKey>), JwksError> {
        let document: Document = serde_json::from_slice(document)?;
        let mut keys = HashMap::new();
        let mut skipped = Vec::new();
        for value in document.keys {
            let kid = value
                .get("kid")
                .and_then(|kid| kid.as_str())
                .map(str::to_owned);
            let read = serde_json::from_value::<Jwk>(value)
                .map_err(|_| "not a key this gateway can read")
                .and_then(|jwk| usable(&jwk));
            match (read, kid) {
                (Ok(_), None) => skipped.push(SkippedKey {
                    kid: None,
                    reason: "no `kid`",
                }),
                (Ok((algorithm, decoding)), Some(kid)) => {
                    let validation = validation(algorithm, expected);
                    keys.insert(
                        kid,
                        VerifyingKey {
                            algorithm,
                            decoding,
                            validation,
                        },
                    );
                }
                (Err(reason), kid) => skipped.push(SkippedKey { kid, reason }),
            }
        }
        Ok((JwksKeys { keys }, skipped))
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set holds key `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies an identity provider's token (rules in the module doc).
    /// [`TokenError::UnknownKey`] says the set may be out of date.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey(kid))?;
        if header.alg != key.algorithm {
            return Err(TokenError::Algorithm(header.alg));
        }
        let data = jsonwebtoken::decode::<WireClaims>(token, &key.decoding, &key.validation)?;
        claims_from(data.claims)
    }
}

/// The algorithm a key is used with and the key itself, if it is one for
/// signing client tokens.
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), &'static str> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signing key (`use`)");
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return Err("key type or algorithm not accepted (RSA/RS256, P-256/ES256)"),
    };
    let decoding = DecodingKey::from_jwk(jwk).map_err(|_| "unreadable key parameters")?;
    Ok((algorithm, decoding))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{Role, TokenKeys, unix_now};
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// The test RSA key (testdata/README.md), as PKCS#1 DER.
    fn rsa_private_der() -> Vec<u8> {
        pem_body(include_str!("../testdata/rsa_test_key.pem"))
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        STANDARD.decode(body).unwrap()
    }

    /// A fresh P-256 key, as PKCS#8 DER.
    fn ec_private_der() -> Vec<u8> {
        rcgen::KeyPair::generate().unwrap().serialize_der()
    }

    /// The public JWK of `key`, with `kid` (and no `alg` unless `declare`).
    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, declare: bool) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        if !declare {
            jwk.common.key_algorithm = None;
        }
        serde_json::to_value(jwk).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({"sub": "456", "role": "user", "exp": unix_now() + 3600})
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        claims: &serde_json::Value,
        key: &EncodingKey,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    struct Fixture {
        rsa: EncodingKey,
        ec: EncodingKey,
        keys: JwksKeys,
    }

    fn fixture(expected: &Expected) -> Fixture {
        let rsa = EncodingKey::from_rsa_der(&rsa_private_der());
        let ec = EncodingKey::from_ec_der(&ec_private_der());
        let document = json!({"keys": [
            jwk(&rsa, Algorithm::RS256, "rsa-1", true),
            jwk(&ec, Algorithm::ES256, "ec-1", false),
        ]});
        let (keys, skipped) =
            JwksKeys::from_json(document.to_string().as_bytes(), expected).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        Fixture { rsa, ec, keys }
    }

    /// RS256 and ES256 tokens naming their key verify to their claims.
    #[test]
    fn rs256_and_es256_tokens_verify() {
        let f = fixture(&Expected::default());
        assert_eq!(f.keys.len(), 2);
        let rs = sign(Algorithm::RS256, Some("rsa-1"), &claims(), &f.rsa);
        let es = sign(Algorithm::ES256, Some("ec-1"), &claims(), &f.ec);
        for token in [rs, es] {
            let claims = f.keys.verify(&token).unwrap();
            assert_eq!((claims.sub, claims.role), (456, Role::User));
        }
    }

    /// A token naming no key, or a key the set does not hold, is refused
    /// with an answer saying which.
    #[test]
    fn unknown_and_missing_kids_are_told_apart() {
        let f = fixture(&Expected::default());
        let unknown = sign(Algorithm::RS256, Some("rsa-2"), &claims(), &f.rsa);
        assert!(
            matches!(f.keys.verify(&unknown), Err(TokenError::UnknownKey(kid)) if kid == "rsa-2")
        );
        let none = sign(Algorithm::RS256, None, &claims(), &f.rsa);
        assert!(matches!(
            f.keys.verify(&none),
            Err(TokenError::MissingKeyId)
        ));
    }

    /// A key is used with its own algorithm only: an ES256 header naming the
    /// RSA key, or an RS256 one naming the EC key, is refused.
    #[test]
    fn a_key_is_used_with_its_algorithm_only() {
        let f = fixture(&Expected::default());
        let es_on_rsa = sign(Algorithm::ES256, Some("rsa-1"), &claims(), &f.ec);
        assert!(matches!(
            f.keys.verify(&es_on_rsa),
            Err(TokenError::Algorithm(Algorithm::ES256))
        ));
        let rs_on_ec = sign(Algorithm::RS256, Some("ec-1"), &claims(), &f.rsa);
        assert!(matches!(
            f.keys.verify(&rs_on_ec),
            Err(TokenError::Algorithm(Algorithm::RS256))
        ));
    }

    /// The algorithm-confusion attack: an HS256 token whose "secret" is the
    /// RSA public key (as PEM, as DER, as its modulus, as the JWK's JSON) is
    /// refused, and so is every other algorithm the set is not used with.
    #[test]
    fn hs256_with_the_public_key_as_secret_is_refused() {
        let f = fixture(&Expected::default());
        let public_pem = include_str!("../testdata/rsa_test_key.pub.pem");
        let public_jwk = jwk(&f.rsa, Algorithm::RS256, "rsa-1", true);
        let modulus = URL_SAFE_NO_PAD
            .decode(public_jwk["n"].as_str().unwrap())
            .unwrap();
        let secrets: Vec<Vec<u8>> = vec![
            public_pem.as_bytes().to_vec(),
            pem_body(public_pem),
            modulus,
            public_jwk.to_string().into_bytes(),
        ];
        for secret in secrets {
            let forged = sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims(),
                &EncodingKey::from_secret(&secret),
            );
            assert!(
                matches!(
                    f.keys.verify(&forged),
                    Err(TokenError::Algorithm(Algorithm::HS256))
                ),
                "{:?}",
                f.keys.verify(&forged)
            );
        }
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let forged = sign(
                alg,
                Some("rsa-1"),
                &claims(),
                &EncodingKey::from_secret(b"x"),
            );
            assert!(matches!(
                f.keys.verify(&forged),
                Err(TokenError::Algorithm(_))
            ));
        }
    }

    /// `iss` and `aud`, when expected, are required and must match.
    #[test]
    fn issuer_and_audience_are_checked() {
        let expected = Expected {
            issuer: Some("https://idp.example".into()),
            audience: Some("chatai".into()),
        };
        let f = fixture(&expected);
        let with = |iss: Option<&str>, aud: Option<serde_json::Value>| {
            let mut claims = claims();
            if let Some(iss) = iss {
                claims["iss"] = iss.into();
            }
            if let Some(aud) = aud {
                claims["aud"] = aud;
            }
            f.keys
                .verify(&sign(Algorithm::RS256, Some("rsa-1"), &claims, &f.rsa))
        };
        assert!(with(Some("https://idp.example"), Some(json!("chatai"))).is_ok());
        assert!(
            with(
                Some("https://idp.example"),
                Some(json!(["other", "chatai"]))
            )
            .is_ok()
        );
        for refused in [
            with(Some("https://evil.example"), Some(json!("chatai"))),
            with(Some("https://idp.example"), Some(json!("other"))),
            with(None, Some(json!("chatai"))),
            with(Some("https://idp.example"), None),
        ] {
            assert!(matches!(refused, Err(TokenError::Jwt(_))), "{refused:?}");
        }
        // Nothing expected: neither is looked at.
        let f = fixture(&Expected::default());
        let mut claims = claims();
        claims["iss"] = "anyone".into();
        claims["aud"] = "anything".into();
        assert!(
            f.keys
                .verify(&sign(Algorithm::RS256, Some("rsa-1"), &claims, &f.rsa))
                .is_ok()
        );
    }

    /// The HS256 keys check `iss` and `aud` the same way, and mint them.
    #[test]
    fn hs256_keys_check_and_mint_issuer_and_audience() {
        let expected = Expected {
            issuer: Some("chatai".into()),
            audience: Some("gateway".into()),
        };
        let keys = TokenKeys::new(b"secret").expecting(expected);
        let minted = keys
            .mint(5, Role::User, None, std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(keys.verify(&minted).unwrap().sub, 5);
        let plain = TokenKeys::new(b"secret")
            .mint(5, Role::User, None, std::time::Duration::from_secs(60))
            .unwrap();
        assert!(matches!(keys.verify(&plain), Err(TokenError::Jwt(_))));
    }

    /// Keys that cannot sign client tokens are left out, named, and do not
    /// cost the others; a document that is not one is an error.
    #[test]
    fn unusable_keys_are_skipped() {
        let rsa = EncodingKey::from_rsa_der(&rsa_private_der());
        let good = jwk(&rsa, Algorithm::RS256, "good", false);
        let mut no_kid = good.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut encryption = good.clone();
        encryption["kid"] = "enc".into();
        encryption["use"] = "enc".into();
        let mut rs512 = good.clone();
        rs512["kid"] = "rs512".into();
        rs512["alg"] = "RS512".into();
        let secret = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"});
        let odd_curve = json!({"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"});
        let p384 = json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"});
        let document = json!({"keys": [good, no_kid, encryption, rs512, secret, odd_curve, p384]});
        let (keys, skipped) =
            JwksKeys::from_json(document.to_string().as_bytes(), &Expected::default()).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.contains("good"));
        let skipped: Vec<Option<&str>> = skipped.iter().map(|s| s.kid.as_deref()).collect();
        assert_eq!(
            skipped,
            [
                None,
                Some("enc"),
                Some("rs512"),
                Some("hmac"),
                Some("k1"),
                Some("p384")
            ]
        );
        for garbage in [&b"not json"[..], b"{}", b"{\"keys\": 5}", b"[]"] {
            assert!(JwksKeys::from_json(garbage, &Expected::default()).is_err());
        }
    }
}
