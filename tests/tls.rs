//! TLS at the edge (`CHATAI_TLS_CERT`, `CHATAI_TLS_KEY`): a `wss://` client
//! trusting the test's own CA connects and chats; a plain `ws://` client and
//! a client that never starts the TLS handshake get nowhere — the latter is
//! cut by the handshake deadline.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

use chatai_kit::identity::Role;

use crate::common::{TestApp, TestOptions, WAIT, spawn_app};

/// A CA made for the test and a certificate for `localhost` and 127.0.0.1
/// it signed, written as PEM files under `folder`.
struct TestCa {
    ca: rustls::pki_types::CertificateDer<'static>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn test_ca(folder: &std::path::Path) -> TestCa {
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("a server key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("the server certificate");
    let cert = folder.join("gateway.crt");
    let key = folder.join("gateway.key");
    std::fs::write(&cert, server.pem()).expect("writing the certificate");
    std::fs::write(&key, server_key.serialize_pem()).expect("writing the key");
    TestCa {
        ca: ca.der().clone(),
        cert,
        key,
    }
}

/// The system with TLS at the gateway (and `header_read_timeout_secs`).
async fn tls_app(ca: &TestCa, header_read_timeout_secs: u64) -> TestApp {
    let mut options = TestOptions::default();
    options.gateway.tls_cert = Some(ca.cert.clone());
    options.gateway.tls_key = Some(ca.key.clone());
    options.gateway.header_read_timeout_secs = header_read_timeout_secs;
    spawn_app(options).await
}

/// The next text frame, as JSON (pings are answered by tungstenite).
async fn next_json<S>(stream: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a readable frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// A `wss://` client trusting the test CA connects (the certificate is
/// checked for `localhost`), gets `connected`, and chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_connects_and_chats() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let ca = test_ca(folder.path());
    let app = tls_app(&ca, 10).await;

    let mut roots = RootCertStore::empty();
    roots.add(ca.ca.clone()).expect("the CA as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(app.gateway_addr)
        .await
        .expect("TCP");
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the TLS handshake in time")
    .expect("the TLS handshake succeeds");
    let token = app.token(456, Role::User);
    let url = format!(
        "wss://localhost:{}/ws/456?token={token}",
        app.gateway_addr.port()
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("the WebSocket handshake in time")
        .expect("the WebSocket handshake succeeds");

    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user_id"], 456);
    let frame =
        json!({"type": "chat_message", "id": "m1", "message": "How do I reset my password?"});
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("sending");
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some("m1")),
        "{ack}"
    );
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["type"], "ai_response", "{answer}");
    app.stop().await;
}

/// A plain `ws://` client on the TLS port gets no WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_on_the_tls_port_fails() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let ca = test_ca(folder.path());
    let app = tls_app(&ca, 10).await;
    let token = app.token(456, Role::User);
    let url = format!("ws://{}/ws/456?token={token}", app.gateway_addr);
    let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the attempt ends in time");
    assert!(attempt.is_err(), "a plain client got a WebSocket over TLS");
    app.stop().await;
}

/// A client that opens TCP and never starts the TLS handshake is closed
/// once the header-read timeout (which bounds the handshake too) is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_cut_after_the_handshake_deadline() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let ca = test_ca(folder.path());
    let app = tls_app(&ca, 1).await;
    let mut silent = tokio::net::TcpStream::connect(app.gateway_addr)
        .await
        .expect("TCP");
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buffer))
        .await
        .expect("the gateway closes the silent socket");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the gateway sent something to a client that said nothing: {read:?}"
    );
    app.stop().await;
}
