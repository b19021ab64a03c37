//! Connection lifecycle at the gateway: the per-user connection limit,
//! heartbeats and the idle timeout, the health and metrics endpoints, and
//! graceful shutdown.

use std::time::Duration;

use crate::common::{TestOptions, assert_timestamp, spawn_app};
use chatai_kit::identity::Role;
use serde_json::json;

/// A user's sixth connection closes the oldest with 4004 `Too many
/// connections`; the other five keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_connection_closes_the_oldest() {
    let app = spawn_app(TestOptions::default()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(app.connect_user(1).await.0);
    }
    let (other_user, _) = app.connect_user(2).await;
    app.wait_for_connection_count(6).await;

    let (sixth, _) = app.connect_user(1).await;
    let mut oldest = clients.remove(0);
    let before = oldest.expect_close(4004, "Too many connections").await;
    assert!(before.is_empty(), "{before:?}");
    clients.push(sixth);
    app.wait_for_connection_count(6).await;
    for (i, client) in clients.iter_mut().enumerate() {
        client.assert_quiet_and_open(&format!("c{i}")).await;
    }
    let mut other_user = other_user;
    other_user.assert_quiet_and_open("other").await;
    for client in clients {
        client.close().await;
    }
    other_user.close().await;
    app.stop().await;
}

/// `heartbeat` is answered by `heartbeat_ack` carrying the frame's `id` as
/// `ref` (and no `ref` when the frame had no `id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_is_acked_with_ref() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut client, _) = app.connect_user(1).await;
    client
        .send_json(&json!({ "type": "heartbeat", "id": "hb-1" }))
        .await;
    let ack = client.recv_type("heartbeat_ack").await;
    assert_eq!(ack["ref"], "hb-1", "{ack}");
    client.send_json(&json!({ "type": "heartbeat" })).await;
    let ack = client.recv_type("heartbeat_ack").await;
    assert!(ack.get("ref").is_none(), "{ack}");
    client.close().await;
    app.stop().await;
}

/// A client that sends nothing and answers no ping is closed with 4003
/// after the idle timeout (heartbeat 1 s, idle timeout 2 s here); the
/// interval it was told in `connected` is the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_4003() {
    let app = spawn_app(TestOptions::default().heartbeat(1, 2)).await;
    let token = app.token(1, Role::User);
    let mut silent = app.raw_connect("/ws/1", &token).await;
    let connected = silent.recv_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["heartbeat_interval"], 1, "{connected}");
    silent.expect_close(4003, "Heartbeat timeout").await;
    app.wait_for_connection_count(0).await;
    app.stop().await;
}

/// A client that answers the server's pings (as every WebSocket library
/// does while reading) stays open well past the idle timeout (heartbeat 1 s,
/// idle timeout 3 s here: at least twice the heartbeat, see the suite's
/// report about shorter idle timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_answering_pings_stays_open() {
    let app = spawn_app(TestOptions::default().heartbeat(1, 3)).await;
    let (mut client, _) = app.connect_user(1).await;
    client.expect_nothing_for(Duration::from_secs(5)).await;
    client.assert_quiet_and_open("alive").await;
    client.close().await;
    app.stop().await;
}

/// `GET /api/websocket/health` answers 200 with `status`,
/// `active_connections`, `queue_size` and `timestamp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_status_and_connections() {
    let app = spawn_app(TestOptions::default()).await;
    let (status, health) = app.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["active_connections"], 0, "{health}");
    assert!(health["queue_size"].is_u64(), "{health}");
    assert_timestamp(&health);

    let (client, _) = app.connect_user(1).await;
    let (status, health) = app.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["active_connections"], 1, "{health}");
    client.close().await;
    app.wait_for_connection_count(0).await;
    app.stop().await;
}

/// `GET /metrics` shows the count of connections cut for reading too
/// slowly from the start, before any was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_slow_disconnects_from_the_start() {
    let app = spawn_app(TestOptions::default()).await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.lines()
            .any(|line| line
                .starts_with("chatai_gateway_slow_disconnects_total{service=\"gateway\"} ")),
        "{body}"
    );
    app.stop().await;
}

/// `GET /metrics` is Prometheus text with the `chatai_gateway_connections` gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_connections_gauge() {
    let app = spawn_app(TestOptions::default()).await;
    let (client, _) = app.connect_user(1).await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.lines()
            .any(|line| line.starts_with("chatai_gateway_connections")),
        "{body}"
    );
    client.close().await;
    app.stop().await;
}

/// Stopping the system closes every open client with 1001 and every part
/// ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001() {
    let app = spawn_app(TestOptions::default()).await;
    let (mut user, _) = app.connect_user(1).await;
    let (mut operator, _) = app.connect_as(7, Role::Operator, "").await;
    // (The operator may first hear of its own presence; only the close matters.)
    tokio::join!(
        app.stop(),
        user.expect_close(1001, "Server shutting down"),
        operator.expect_close(1001, "Server shutting down"),
    );
}
