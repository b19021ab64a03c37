//! Client tokens of an identity provider (`CHATAI_JWKS_URL`): RS256 and
//! ES256 tokens verified with the keys of a JWKS document the test serves
//! itself (`common::idp`), refreshed on an unknown `kid` (rate-limited) and
//! on schedule, kept while the provider is down; `iss`/`aud` checks; and
//! HS256 refused, the algorithm-confusion forgery included.

use std::time::Duration;

use chatai_kit::identity::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::common::idp::{RSA_PUBLIC_PEM, SigningKey, TestIdp, claims, pem_body};
use crate::common::{TestApp, TestOptions, connect_at, spawn_app};

/// The system, verifying client tokens with `idp`'s keys.
async fn app_trusting(idp: &TestIdp, options: TestOptions) -> TestApp {
    let mut options = options;
    options.gateway.jwks_url = Some(idp.url.clone());
    spawn_app(options).await
}

/// Connects to `path` with `token` and expects 1008 `Invalid token`.
async fn assert_invalid(app: &TestApp, path: &str, token: &str) {
    let mut client = app.ws_connect(path, Some(token)).await;
    let before = client.expect_close(1008, "Invalid token").await;
    assert!(before.is_empty(), "frames before the refusal: {before:?}");
}

/// An RS256 token and an ES256 token of the provider connect and chat; an
/// HS256 token signed with the (still configured) secret does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_of_the_provider_connect() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    let idp = TestIdp::start(&[&rsa, &ec]).await;
    let app = app_trusting(&idp, TestOptions::default()).await;

    let user = rsa.sign(&claims(456, "user"));
    let (mut client, connected) = connect_at(app.gateway_addr, &user, 456, Role::User, "").await;
    assert_eq!(connected["user_id"], 456);
    client.chat_and_answer("m1", None, "hello").await;

    let operator = ec.sign(&claims(7, "operator"));
    let (mut operator, connected) =
        connect_at(app.gateway_addr, &operator, 7, Role::Operator, "").await;
    assert_eq!(connected["role"], "operator");
    // Open (its own status change may come first).
    operator.heartbeat("h1").await;

    assert_invalid(&app, "/ws/456", &app.token(456, Role::User)).await;
    app.stop().await;
}

/// A token naming a key the gateway has not seen makes it fetch the
/// document once and connects when the provider has the key; a burst of
/// made-up key ids right after costs the provider nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refreshes_the_keys_once() {
    let rsa = SigningKey::rsa("rsa-1");
    let idp = TestIdp::start(&[&rsa]).await;
    let app = app_trusting(&idp, TestOptions::default()).await;
    let at_start = idp.fetches();
    assert!(at_start >= 1, "the keys are fetched at start");

    let rotated = SigningKey::ec("ec-2");
    idp.add(&rotated);
    let token = rotated.sign(&claims(456, "user"));
    let (mut client, _) = connect_at(app.gateway_addr, &token, 456, Role::User, "").await;
    client.assert_quiet_and_open("h1").await;
    assert_eq!(idp.fetches(), at_start + 1, "one fetch for the new key");

    for n in 0..5 {
        let made_up = rsa.sign_as(&format!("made-up-{n}"), &claims(456, "user"));
        assert_invalid(&app, "/ws/456", &made_up).await;
    }
    assert_eq!(
        idp.fetches(),
        at_start + 1,
        "made-up kids fetch nothing more"
    );
    app.stop().await;
}

/// The document is fetched again on schedule: a key the provider stopped
/// publishing is no longer accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_refreshed_on_schedule() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    let idp = TestIdp::start(&[&rsa, &ec]).await;
    let mut options = TestOptions::default();
    options.gateway.jwks_refresh_secs = 1;
    let app = app_trusting(&idp, options).await;
    let token = ec.sign(&claims(456, "user"));
    let (client, _) = connect_at(app.gateway_addr, &token, 456, Role::User, "").await;
    client.close().await;

    idp.remove("ec-1");
    // Fetches are one at a time: once a second one after the removal has
    // begun, the first has been read.
    idp.wait_for_fetches(idp.fetches() + 2).await;
    assert_invalid(&app, "/ws/456", &token).await;
    let (client, _) = connect_at(
        app.gateway_addr,
        &rsa.sign(&claims(456, "user")),
        456,
        Role::User,
        "",
    )
    .await;
    client.close().await;
    app.stop().await;
}

/// With `CHATAI_JWT_ISSUER` and `CHATAI_JWT_AUDIENCE` set, a provider token
/// with another (or no) `iss` or `aud` is refused with 1008 `Invalid token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_issuer_or_audience_is_refused() {
    let rsa = SigningKey::rsa("rsa-1");
    let idp = TestIdp::start(&[&rsa]).await;
    let mut options = TestOptions::default();
    options.gateway.jwt_issuer = Some("https://idp.example".into());
    options.gateway.jwt_audience = Some("chatai".into());
    let app = app_trusting(&idp, options).await;
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut claims = claims(456, "user");
        if let Some(iss) = iss {
            claims["iss"] = iss.into();
        }
        if let Some(aud) = aud {
            claims["aud"] = aud.into();
        }
        rsa.sign(&claims)
    };
    let good = with(Some("https://idp.example"), Some("chatai"));
    let (client, _) = connect_at(app.gateway_addr, &good, 456, Role::User, "").await;
    client.close().await;
    for bad in [
        with(Some("https://evil.example"), Some("chatai")),
        with(Some("https://idp.example"), Some("another-app")),
        with(None, Some("chatai")),
        with(Some("https://idp.example"), None),
    ] {
        assert_invalid(&app, "/ws/456", &bad).await;
    }
    app.stop().await;
}

/// `iss` and `aud` apply to HS256 tokens too: one minted without them is
/// refused, one carrying them connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_apply_to_hs256_tokens() {
    let mut options = TestOptions::default();
    options.gateway.jwt_issuer = Some("chatai-tests".into());
    options.gateway.jwt_audience = Some("chatai".into());
    let app = spawn_app(options).await;
    let (client, _) = app.connect_user(456).await;
    client.close().await;
    let bare = chatai_tokens::TokenKeys::new(app.jwt_secret.as_bytes())
        .mint(456, Role::User, None, Duration::from_secs(3600))
        .expect("minting");
    assert_invalid(&app, "/ws/456", &bare).await;
    app.stop().await;
}

/// The algorithm-confusion forgery: an HS256 token naming the RSA key and
/// signed with its public key as the HMAC secret — as PEM, as DER, as the
/// published JWK — is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_is_refused() {
    let rsa = SigningKey::rsa("rsa-1");
    let idp = TestIdp::start(&[&rsa]).await;
    let app = app_trusting(&idp, TestOptions::default()).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let secrets = [
        RSA_PUBLIC_PEM.as_bytes().to_vec(),
        pem_body(RSA_PUBLIC_PEM),
        rsa.jwk().to_string().into_bytes(),
    ];
    for secret in secrets {
        let forged = jsonwebtoken::encode(
            &header,
            &claims(456, "admin"),
            &EncodingKey::from_secret(&secret),
        )
        .expect("signing");
        assert_invalid(&app, "/ws/456", &forged).await;
    }
    app.stop().await;
}

/// The provider going down after start logs nobody out: open connections
/// stay, new clients with known keys connect (even after a failed fetch for
/// an unknown key), and `refresh_token` keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_going_down_logs_nobody_out() {
    let rsa = SigningKey::rsa("rsa-1");
    let mut idp = TestIdp::start(&[&rsa]).await;
    let app = app_trusting(&idp, TestOptions::default()).await;
    let (mut first, _) = connect_at(
        app.gateway_addr,
        &rsa.sign(&claims(456, "user")),
        456,
        Role::User,
        "",
    )
    .await;

    idp.stop().await;
    // A fetch is tried, and fails.
    let made_up = rsa.sign_as("made-up", &claims(457, "user"));
    assert_invalid(&app, "/ws/457", &made_up).await;

    let (mut second, _) = connect_at(
        app.gateway_addr,
        &rsa.sign(&claims(457, "user")),
        457,
        Role::User,
        "",
    )
    .await;
    second.assert_quiet_and_open("h1").await;
    let mut later = claims(456, "user");
    later["exp"] = (crate::common::unix_now() + 7200).into();
    let ack = first
        .request(json!({"type": "refresh_token", "id": "r1", "token": rsa.sign(&later)}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (status, _) = app.health().await;
    assert_eq!(status, 200, "the gateway stays healthy on cached keys");
    app.stop().await;
}
