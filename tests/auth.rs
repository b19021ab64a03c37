//! Client tokens at the gateway: where a token may be presented, which
//! tokens are refused (and with which close), and a connection's life
//! against its token's expiry and `refresh_token`.

use std::time::Duration;

use crate::common::{TestApp, TestOptions, WAIT, spawn_app, unix_now, with_header};
use chatai_kit::identity::Role;
use chatai_tokens::TokenKeys;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// Connects to `path` with `token` (or none) and expects the refusal close
/// with no frame before it.
async fn assert_refused(app: &TestApp, path: &str, token: Option<&str>, reason: &str) {
    let mut client = app.ws_connect(path, token).await;
    let before = client.expect_close(1008, reason).await;
    assert!(before.is_empty(), "frames before the refusal: {before:?}");
}

/// No token at all: close 1008 `Invalid token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_invalid() {
    let app = spawn_app(TestOptions::default()).await;
    assert_refused(&app, "/ws/1", None, "Invalid token").await;
    assert_refused(&app, "/ws/1?token=", None, "Invalid token").await;
    app.stop().await;
}

/// A token that is not a JWT: close 1008 `Invalid token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_token_is_invalid() {
    let app = spawn_app(TestOptions::default()).await;
    assert_refused(&app, "/ws/1", Some("not-a-jwt"), "Invalid token").await;
    assert_refused(&app, "/ws/1", Some("a.b.c"), "Invalid token").await;
    app.stop().await;
}

/// A well-formed token signed with another secret: close 1008 `Invalid token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_with_another_secret_is_invalid() {
    let app = spawn_app(TestOptions::default()).await;
    let forged = TokenKeys::new(b"not the gateway's secret")
        .mint(1, Role::User, None, Duration::from_secs(3600))
        .expect("minting");
    assert_refused(&app, "/ws/1", Some(&forged), "Invalid token").await;
    app.stop().await;
}

/// An empty `CHATAI_JWT_SECRET` is no secret at all: it means the
/// development secret (as unset does), so a token signed with the empty key
/// is refused and one signed with the development secret connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_secret_means_the_development_secret() {
    let mut options = TestOptions::default();
    options.gateway.jwt_secret = Some(String::new());
    let app = spawn_app(options).await;
    let empty_key = TokenKeys::new(b"")
        .mint(1, Role::Admin, None, Duration::from_secs(3600))
        .expect("minting");
    assert_refused(&app, "/ws/1", Some(&empty_key), "Invalid token").await;
    let development = TokenKeys::new(chatai_tokens::DEVELOPMENT_SECRET.as_bytes())
        .mint(1, Role::Admin, None, Duration::from_secs(3600))
        .expect("minting");
    let mut client = app.ws_connect("/ws/1", Some(&development)).await;
    assert_eq!(client.recv_type("connected").await["role"], "admin");
    app.stop().await;
}

/// A set secret shorter than 32 bytes: the gateway refuses to start.
#[tokio::test]
async fn a_short_secret_is_refused_at_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = chatai_gateway::GatewayConfig {
        jwt_secret: Some("x".repeat(31)),
        ..chatai_gateway::GatewayConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let run = chatai_gateway::run(
        listener,
        config,
        chatai_kit::config::clap_defaults(),
        Default::default(),
        stop.clone(),
    );
    // A gateway that started would run until stopped: give up waiting then.
    let started = tokio::time::timeout(WAIT, run).await;
    stop.cancel();
    let started = started.expect("the gateway refused to start instead of running");
    assert!(
        matches!(started, Err(chatai_gateway::GatewayError::Secret(_))),
        "{started:?}"
    );
}

/// `chatai token` follows the same rule: a short secret is refused with a
/// clear error, an empty one signs with the development secret.
#[test]
fn chatai_token_follows_the_secret_rule() {
    let token = |secret: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatai"))
            .args(["token", "--sub", "5"])
            .env("CHATAI_JWT_SECRET", secret)
            .output()
            .expect("the chatai binary runs")
    };
    let short = token("short-secret");
    assert!(!short.status.success(), "a short secret minted a token");
    let error = String::from_utf8_lossy(&short.stderr);
    assert!(error.contains("at least 32 bytes"), "{error}");

    let empty = token("");
    assert!(empty.status.success(), "{empty:?}");
    let minted = String::from_utf8_lossy(&empty.stdout).trim().to_owned();
    let claims = TokenKeys::new(chatai_tokens::DEVELOPMENT_SECRET.as_bytes())
        .verify(&minted)
        .expect("signed with the development secret");
    assert_eq!(claims.sub, 5);

    // With the gateway's expected `iss` and `aud` set, the token carries them.
    let expecting = std::process::Command::new(env!("CARGO_BIN_EXE_chatai"))
        .args(["token", "--sub", "6"])
        .env("CHATAI_JWT_SECRET", "")
        .env("CHATAI_JWT_ISSUER", "https://idp.example")
        .env("CHATAI_JWT_AUDIENCE", "chatai")
        .output()
        .expect("the chatai binary runs");
    assert!(expecting.status.success(), "{expecting:?}");
    let minted = String::from_utf8_lossy(&expecting.stdout).trim().to_owned();
    let expected = chatai_tokens::Expected {
        issuer: Some("https://idp.example".into()),
        audience: Some("chatai".into()),
    };
    let claims = TokenKeys::new(chatai_tokens::DEVELOPMENT_SECRET.as_bytes())
        .expecting(expected)
        .verify(&minted)
        .expect("carries the iss and aud a gateway expecting them checks");
    assert_eq!(claims.sub, 6);
}

/// A token past its `exp` (beyond the clock-skew leeway): close 1008 `Invalid token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_invalid() {
    let app = spawn_app(TestOptions::default()).await;
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "1", "role": "user", "exp": unix_now() - 120 }),
        &EncodingKey::from_secret(app.jwt_secret.as_bytes()),
    )
    .expect("signing");
    assert_refused(&app, "/ws/1", Some(&expired), "Invalid token").await;
    app.stop().await;
}

/// A valid token for another user id: close 1008 `Unauthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_for_another_user_is_unauthorized() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(2, Role::User);
    assert_refused(&app, "/ws/1", Some(&token), "Unauthorized").await;
    app.stop().await;
}

/// A user token on the operator endpoint, and an operator token on the user
/// endpoint, each for its own id: close 1008 `Unauthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_role_for_the_endpoint_is_unauthorized() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.token(7, Role::User);
    assert_refused(&app, "/ws/operator/7", Some(&user), "Unauthorized").await;
    let operator = app.token(7, Role::Operator);
    assert_refused(&app, "/ws/7", Some(&operator), "Unauthorized").await;
    app.stop().await;
}

/// Each role on its own endpoint is let in: a user and an admin on
/// `/ws/{id}`, an operator on `/ws/operator/{id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_connects_on_its_endpoint() {
    let app = spawn_app(TestOptions::default()).await;
    for (id, role, name) in [
        (10, Role::User, "user"),
        (11, Role::Admin, "admin"),
        (12, Role::Operator, "operator"),
    ] {
        let (mut client, connected) = app.connect_as(id, role, "").await;
        assert_eq!(connected["user_id"], id, "{connected}");
        assert_eq!(connected["role"], name, "{connected}");
        // Operators also hear about their own presence; only the round trip matters.
        client.heartbeat("open").await;
        client.close().await;
    }
    app.stop().await;
}

/// A token in an `Authorization: Bearer` header is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_is_accepted() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(5, Role::User);
    let request = with_header(
        app.ws_request("/ws/5"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let (mut client, _) = app.ws_connect_request(request).await;
    let connected = client.recv_type("connected").await;
    assert_eq!(connected["user_id"], 5, "{connected}");
    client.assert_quiet_and_open("open").await;
    client.close().await;
    app.stop().await;
}

/// A token offered as the `chatai.bearer.<token>` subprotocol next to
/// `chatai.v1` is accepted, and the server selects `chatai.v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_token_is_accepted_and_chatai_v1_selected() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token(5, Role::User);
    let request = with_header(
        app.ws_request("/ws/5"),
        "sec-websocket-protocol",
        &format!("chatai.v1, chatai.bearer.{token}"),
    );
    let (mut client, response) = app.ws_connect_request(request).await;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("chatai.v1")
    );
    let connected = client.recv_type("connected").await;
    assert_eq!(connected["user_id"], 5, "{connected}");
    client.assert_quiet_and_open("open").await;
    client.close().await;
    app.stop().await;
}

/// `refresh_token` with a newer token for the same subject and role is
/// acknowledged; one for another subject, or a garbage one, gets an `error`
/// and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_accepts_only_the_same_subject() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut client, _) = app.connect_user(5).await;

    let newer = app.token_with_ttl(5, Role::User, Duration::from_secs(7200));
    client
        .send_json(&json!({ "type": "refresh_token", "id": "r1", "token": newer }))
        .await;
    let ack = client.recv_type("ack").await;
    assert_eq!(ack["ref"], "r1", "{ack}");
    assert!(
        ack["expires_at"]
            .as_u64()
            .is_some_and(|exp| exp > unix_now() + 3600),
        "{ack}"
    );

    let someone_else = app.token(6, Role::User);
    client
        .send_json(&json!({ "type": "refresh_token", "id": "r2", "token": someone_else }))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["ref"], "r2", "{error}");
    assert_eq!(error["code"], "unauthorized", "{error}");

    let admin_self = app.token(5, Role::Admin);
    client
        .send_json(&json!({ "type": "refresh_token", "id": "r3", "token": admin_self }))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["ref"], "r3", "{error}");
    assert_eq!(error["code"], "unauthorized", "another role: {error}");

    client
        .send_json(&json!({ "type": "refresh_token", "id": "r4", "token": "garbage" }))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["ref"], "r4", "{error}");
    assert_eq!(error["code"], "invalid_token", "{error}");

    client.assert_quiet_and_open("open").await;
    client.close().await;
    app.stop().await;
}

/// A connection whose token runs out without a refresh is closed with 4001
/// `Token expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrefreshed_token_expiry_closes_4001() {
    let app = spawn_app(TestOptions::default()).await;
    let token = app.token_with_ttl(5, Role::User, Duration::from_secs(2));
    let mut client = app.ws_connect("/ws/5", Some(&token)).await;
    client.recv_type("connected").await;
    let before = client.expect_close(4001, "Token expired").await;
    assert!(before.is_empty(), "{before:?}");
    app.stop().await;
}

/// A connection refreshed before its first token's expiry outlives that
/// token: heartbeats keep being answered until well past the first `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_connection_outlives_its_first_token() {
    let app = spawn_app(TestOptions::default()).await;
    let short = app.token_with_ttl(5, Role::User, Duration::from_secs(2));
    let first_exp = app.keys.verify(&short).expect("a valid token").exp;
    let mut client = app.ws_connect("/ws/5", Some(&short)).await;
    client.recv_type("connected").await;
    let newer = app.token(5, Role::User);
    client
        .send_json(&json!({ "type": "refresh_token", "id": "r", "token": newer }))
        .await;
    let ack = client.recv_type("ack").await;
    assert_eq!(ack["ref"], "r", "{ack}");
    // Keep the connection busy until two seconds past the first token's
    // expiry; an unrefreshed connection would have been closed by then.
    let mut round = 0;
    while unix_now() <= first_exp + 2 {
        client.assert_quiet_and_open(&format!("hb{round}")).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.assert_quiet_and_open("after").await;
    client.close().await;
    app.stop().await;
}
