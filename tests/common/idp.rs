//! A test identity provider: a JWKS document served by the test itself on
//! 127.0.0.1:0 (axum) with the keys the test adds, counting the fetches;
//! and [`SigningKey`]s to sign tokens with: the checked-in RSA test key
//! (`gateway/tokens/testdata`, RS256) or a fresh P-256 key (ES256).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{WAIT, unix_now};

/// The RSA test key's public half (SPKI PEM), for forging tokens with it.
pub const RSA_PUBLIC_PEM: &str = include_str!("../../gateway/tokens/testdata/rsa_test_key.pub.pem");

/// A key the provider signs tokens with.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl SigningKey {
    /// The RSA test key, used with RS256, as key `kid`.
    pub fn rsa(kid: &str) -> SigningKey {
        let pem = include_str!("../../gateway/tokens/testdata/rsa_test_key.pem");
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&pem_body(pem)),
        }
    }

    /// A fresh P-256 key, used with ES256, as key `kid`.
    pub fn ec(kid: &str) -> SigningKey {
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
        }
    }

    /// The public key as the provider publishes it.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).expect("a public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).expect("JSON")
    }

    /// A token with `claims`, signed with this key and naming it.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token with `claims`, signed with this key but naming key `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

/// The body of a PEM document, decoded.
pub fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("base64 PEM body")
}

/// Claims of a client token for `sub` in `role`, valid for an hour.
pub fn claims(sub: i64, role: &str) -> Value {
    json!({ "sub": sub.to_string(), "role": role, "exp": unix_now() + 3600 })
}

#[derive(Default)]
struct Provider {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
}

/// The provider, serving `GET /jwks` until [`TestIdp::stop`].
pub struct TestIdp {
    /// `http://127.0.0.1:{port}/jwks`.
    pub url: String,
    provider: Arc<Provider>,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestIdp {
    /// Starts serving a document with `keys`.
    pub async fn start(keys: &[&SigningKey]) -> TestIdp {
        let provider = Arc::new(Provider::default());
        for key in keys {
            lock(&provider.keys).push(key.jwk());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the provider");
        let url = format!("http://{}/jwks", listener.local_addr().expect("an address"));
        let router = axum::Router::new()
            .route("/jwks", get(jwks))
            .with_state(provider.clone());
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        TestIdp {
            url,
            provider,
            stop,
            server: Some(tokio::spawn(async move {
                let _ = server.await;
            })),
        }
    }

    /// Publishes one more key.
    pub fn add(&self, key: &SigningKey) {
        lock(&self.provider.keys).push(key.jwk());
    }

    /// Stops publishing key `kid`.
    pub fn remove(&self, kid: &str) {
        lock(&self.provider.keys).retain(|jwk| jwk["kid"] != kid);
    }

    /// How many times the document was asked for.
    pub fn fetches(&self) -> usize {
        self.provider.fetches.load(Ordering::SeqCst)
    }

    /// Waits until the document has been asked for `count` times.
    pub async fn wait_for_fetches(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.fetches() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the JWKS was fetched {} times, not {count}",
                self.fetches()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The provider goes down: the port closes.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server)
                .await
                .expect("the provider stops")
                .expect("the provider's task");
        }
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn jwks(State(provider): State<Arc<Provider>>) -> axum::Json<Value> {
    provider.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = lock(&provider.keys).clone();
    axum::Json(json!({ "keys": keys }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
