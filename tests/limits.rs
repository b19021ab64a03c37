//! Socket limits at the edge (docs/protocol.md, "Connection limits"):
//! sockets that never finish a request are cut, unfinished sockets are
//! capped per client address, the node cap refuses with 1013 while health
//! answers, `X-Forwarded-For` counts only from trusted proxies, and a
//! gateway out of descriptors — its own process, with a low `ulimit -n` —
//! keeps answering health while idle sockets pile up.
//!
//! Clients get distinct addresses by binding to 127.0.0.x before
//! connecting. Nothing here measures time: each test waits (generously) for
//! an outcome.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{TestApp, TestOptions, WAIT, WsClient, free_addr, spawn_app};
use chatai_kit::identity::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A TCP connection to `server` from the loopback address `127.0.0.{last}`.
async fn connect_from(last: u8, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
        .expect("binding a loopback address");
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .expect("connecting in time")
        .expect("connecting to the gateway")
}

/// Reads until the server ends the connection; fails if it is still open
/// after [`WAIT`] (several times any timeout the tests configure).
async fn assert_cut(reader: &mut OwnedReadHalf, what: &str) {
    let ended = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "{what}: the gateway kept the socket open");
}

/// Opens a WebSocket on `/ws/{user}` from `127.0.0.{last}`, with an
/// `X-Forwarded-For` header if given.
async fn ws_from(
    app_addr: SocketAddr,
    token: &str,
    last: u8,
    user: i64,
    forwarded_for: Option<&str>,
) -> WsClient {
    let mut request = format!("ws://{app_addr}/ws/{user}?token={token}")
        .into_client_request()
        .expect("a valid URL");
    if let Some(value) = forwarded_for {
        request.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    let stream = connect_from(last, app_addr).await;
    let (stream, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("the WebSocket handshake finishes in time")
    .expect("the WebSocket handshake succeeds");
    WsClient { stream }
}

/// Sends a health request on `stream`: true when it is answered 200, false
/// when the gateway closed the socket instead.
async fn health_answered(mut stream: TcpStream) -> bool {
    let request = b"GET /api/websocket/health HTTP/1.1\r\nHost: gateway\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 12];
    let read = tokio::time::timeout(WAIT, stream.read_exact(&mut answer))
        .await
        .expect("an answer or a close in time");
    read.is_ok() && &answer == b"HTTP/1.1 200"
}

fn token(app: &TestApp, user: i64) -> String {
    app.token(user, Role::User)
}

/// A socket that sends nothing, one that sends half a request head, and one
/// that sends a head one byte every half second (slowloris) are all closed
/// once the header-read timeout passes: it bounds the whole head, not the
/// wait for each byte.
#[tokio::test]
async fn sockets_that_never_finish_a_request_head_are_cut() {
    let mut options = TestOptions::default();
    options.gateway.header_read_timeout_secs = 1;
    let app = spawn_app(options).await;

    let (mut idle, _idle_writer) = connect_from(1, app.gateway_addr).await.into_split();
    let (mut half, mut half_writer) = connect_from(1, app.gateway_addr).await.into_split();
    half_writer
        .write_all(b"GET /api/websocket/health HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .expect("writing half a head");
    let (mut slow, mut slow_writer) = connect_from(1, app.gateway_addr).await.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /api/websocket/health HTTP/1.1\r\nHost: gateway\r\nX-Padding: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow_writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    assert_cut(&mut idle, "a socket that sent nothing").await;
    assert_cut(&mut half, "a socket that sent half a head").await;
    assert_cut(&mut slow, "a head sent one byte every half second").await;
    trickle.abort();

    // A client that sends its request at once is served as before.
    let (status, _) = app.health().await;
    assert_eq!(status, 200);
    app.stop().await;
}

/// More unfinished sockets than the per-address cap from 127.0.0.2: the
/// extra one is closed at once, the others are still served, a client from
/// 127.0.0.3 connects, and 127.0.0.2 connects again once its sockets close.
#[tokio::test]
async fn unfinished_sockets_are_capped_per_client_address() {
    const CAP: usize = 8;
    let mut options = TestOptions::default();
    options.gateway.max_unfinished_per_ip = CAP;
    // Long enough that only the cap can close a socket during the test.
    options.gateway.header_read_timeout_secs = 600;
    let app = spawn_app(options).await;

    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect_from(2, app.gateway_addr).await);
    }
    let (mut extra, _extra_writer) = connect_from(2, app.gateway_addr).await.into_split();
    assert_cut(&mut extra, "a socket over the per-address cap").await;

    // The held ones were not cut: one of them is still answered.
    let first = held.pop().expect("a held socket");
    assert!(health_answered(first).await, "a held socket was cut");

    // Another address is not affected.
    let mut other = ws_from(app.gateway_addr, &token(&app, 3001), 3, 3001, None).await;
    other.recv_type("connected").await;

    // Once 127.0.0.2's sockets close, it gets its places back.
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !health_answered(connect_from(2, app.gateway_addr).await).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "127.0.0.2 never got its places back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// At the node cap a client is upgraded and closed 1013 `Try again later`;
/// health still answers, and a place freed is taken by the next client.
#[tokio::test]
async fn the_node_cap_refuses_with_1013_and_health_answers() {
    let mut options = TestOptions::default();
    options.gateway.max_connections = Some(2);
    let app = spawn_app(options).await;
    let (first, _) = app.connect_user(3101).await;
    let (_second, _) = app.connect_user(3102).await;

    let mut refused = app.ws_connect("/ws/3103", Some(&token(&app, 3103))).await;
    let before = refused.expect_close(1013, "Try again later").await;
    assert!(before.is_empty(), "frames before the close: {before:?}");

    let (status, health) = app.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["active_connections"], 2, "{health}");

    first.close().await;
    app.wait_for_connection_count(1).await;
    let (_third, connected) = app.connect_user(3103).await;
    assert_eq!(connected["user_id"], 3103);
    app.stop().await;
}

/// With a per-address cap of one: behind a trusted proxy (127.0.0.4) each
/// forwarded address gets its own place; from an untrusted peer
/// (127.0.0.5) `X-Forwarded-For` is ignored and the peer is the address.
#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let mut options = TestOptions::default();
    options.gateway.max_connections_per_ip = 1;
    options.gateway.trusted_proxies = "127.0.0.4/32".parse().expect("a CIDR");
    let app = spawn_app(options).await;
    let addr = app.gateway_addr;

    let mut a = ws_from(addr, &token(&app, 3201), 4, 3201, Some("198.51.100.1")).await;
    a.recv_type("connected").await;
    let mut same = ws_from(addr, &token(&app, 3202), 4, 3202, Some("198.51.100.1")).await;
    same.expect_close(1013, "Try again later").await;
    let mut b = ws_from(addr, &token(&app, 3203), 4, 3203, Some("198.51.100.2")).await;
    b.recv_type("connected").await;

    let mut c = ws_from(addr, &token(&app, 3204), 5, 3204, Some("198.51.100.3")).await;
    c.recv_type("connected").await;
    let mut spoofed = ws_from(addr, &token(&app, 3205), 5, 3205, Some("198.51.100.4")).await;
    spoofed.expect_close(1013, "Try again later").await;
    app.stop().await;
}

/// A gateway in its own process with 256 descriptors (`ulimit -n`), the
/// services in this one: idle sockets from six addresses, more than it has
/// descriptors, pile up — and health keeps answering 200, and a WebSocket
/// client still connects.
#[tokio::test]
async fn a_gateway_flooded_past_its_descriptors_still_answers_health() {
    let app = spawn_app(TestOptions::default()).await;
    let gateway = free_addr();
    let logs = tempfile::tempdir().expect("a folder for the log");
    let log_path = logs.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut command = Command::new("sh");
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATAI_") || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["-c", "ulimit -n 256 && exec \"$0\" gateway"])
        .arg(env!("CARGO_BIN_EXE_chatai"))
        .env("CHATAI_GATEWAY_ADDR", gateway.to_string())
        .env("CHATAI_CHAT_ADDR", app.services.chat.to_string())
        .env("CHATAI_HANDOFF_ADDR", app.services.handoff.to_string())
        .env("CHATAI_PRESENCE_ADDR", app.services.presence.to_string())
        .env(
            "CHATAI_NOTIFICATION_ADDR",
            app.services.notification.to_string(),
        )
        .env("CHATAI_JWT_SECRET", &app.jwt_secret)
        // The in-test services check no internal token.
        .env("CHATAI_INSECURE_INTERNAL", "1")
        // Only the limits may close the idle sockets during the test.
        .env("CHATAI_HEADER_READ_TIMEOUT_SECS", "600")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway process starts");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // A new connection per request: a pooled one may be among those cut.
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let health_url = format!("http://{gateway}/api/websocket/health");
    let healthy = || async {
        http.get(&health_url)
            .send()
            .await
            .map(|response| response.status().as_u16())
            .ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while healthy().await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not become healthy\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 6 × 60 idle sockets: under the per-address cap (64) each, well past
    // the 256 descriptors together.
    let mut flood = Vec::new();
    for last in 10..16u8 {
        for _ in 0..60 {
            flood.push(connect_from(last, gateway).await);
        }
        assert_eq!(
            healthy().await,
            Some(200),
            "health with {} idle sockets open\n{}",
            flood.len(),
            read_log()
        );
    }
    let token = app.token(3301, Role::User);
    let (stream, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{gateway}/ws/3301?token={token}")),
    )
    .await
    .expect("the WebSocket handshake finishes in time")
    .expect("the WebSocket handshake succeeds");
    let mut client = WsClient { stream };
    client.recv_type("connected").await;
    assert_eq!(healthy().await, Some(200), "{}", read_log());
    // The caps kept it below its descriptor limit: accept never failed.
    let log = read_log();
    assert!(!log.contains("cannot accept"), "{log}");

    drop(flood);
    let _ = child.kill().await;
    app.stop().await;
}

/// With `CHATAI_ALLOWED_ORIGINS` set, a browser page from another origin is
/// refused (403) before the upgrade; a listed origin, in any case, and a
/// client sending no `Origin` (not a browser) connect. Without the setting
/// any origin connects (the other tests).
#[tokio::test]
async fn only_allowed_origins_open_websockets_when_a_list_is_set() {
    let mut options = TestOptions::default();
    options.gateway.allowed_origins = "https://app.example.com/, http://localhost:3000"
        .parse()
        .expect("a list");
    let app = spawn_app(options).await;
    let request = |user: i64, origin: Option<&str>| {
        let mut request = app.ws_request(&format!("/ws/{user}?token={}", token(&app, user)));
        if let Some(origin) = origin {
            request.headers_mut().insert(
                "origin",
                HeaderValue::from_str(origin).expect("a header value"),
            );
        }
        request
    };

    let refused = tokio_tungstenite::connect_async(request(3501, Some("https://evil.example")))
        .await
        .expect_err("a foreign origin is refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status().as_u16(), 403);
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }

    let (mut listed, _) = app
        .ws_connect_request(request(3502, Some("HTTPS://APP.example.com")))
        .await;
    listed.recv_type("connected").await;
    let (mut no_origin, _) = app.ws_connect_request(request(3503, None)).await;
    no_origin.recv_type("connected").await;
    app.stop().await;
}
