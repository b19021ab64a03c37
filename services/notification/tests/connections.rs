//! `RecordConnections` and the connection-event store, on SQLite and on
//! PostgreSQL: every case is written once and run on each backend as
//! `sqlite::<case>` and `postgres::<case>` (a fresh database per test; the
//! PostgreSQL tests fail, never skip, when the server is unreachable).

mod common;

use chatai_kit::identity::Role;
use chatai_notification::store::{self, ConnectionEvent, ConnectionKind, ConnectionStats};
use chatai_proto::v1 as pb;
use common::{Service, as_caller, assert_refused, call};
use tonic::Code;

fn wire_event(
    connection_id: &str,
    role: &str,
    principal_id: i64,
    kind: pb::connection_event::Kind,
    at_ms: i64,
) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        connection_id: connection_id.to_owned(),
        gateway_id: "gw-1".to_owned(),
        role: role.to_owned(),
        principal_id,
        kind: kind as i32,
        at_ms,
        duration_ms: 0,
        close_code: 0,
    }
}

fn connect(connection_id: &str, role: Role, principal_id: i64, at_ms: i64) -> ConnectionEvent {
    ConnectionEvent {
        connection_id: connection_id.to_owned(),
        gateway_id: "gw-1".to_owned(),
        role,
        principal_id,
        kind: ConnectionKind::Connect,
        at_ms,
        duration_ms: None,
        close_code: None,
    }
}

// ---------------------------------------------------------------------------
// Cases: each takes a fresh database's URL.
// ---------------------------------------------------------------------------

/// A gateway's batch (connects and disconnects, with and without a close
/// code) is stored through the service, every field as sent, in order.
/// The events are a minute old: the service's trim task, which may run at
/// any moment, deletes only those older than the retention (30 days).
async fn record_connections_stores_rows(url: String) {
    use pb::connection_event::Kind;
    let t = chatai_kit::now_ms() - 60_000;
    let service = Service::start(url.clone(), 60).await;
    let mut client = service.client().await;
    let batch = vec![
        wire_event("gw-1:1", "user", 456, Kind::Connect, t + 1_000),
        wire_event("gw-1:2", "operator", 9, Kind::Connect, t + 1_001),
        pb::ConnectionEvent {
            duration_ms: 4_000,
            close_code: 1000,
            ..wire_event("gw-1:1", "user", 456, Kind::Disconnect, t + 5_000)
        },
        pb::ConnectionEvent {
            duration_ms: 7_000,
            ..wire_event("gw-1:2", "operator", 9, Kind::Disconnect, t + 8_001)
        },
    ];
    call(client.record_connections(as_caller(
        pb::RecordConnectionsRequest { events: batch },
        Role::Service,
    )))
    .await
    .expect("a gateway records its connections");

    let store = store::connect(&url).await.expect("the store opens");
    let stored: Vec<ConnectionEvent> = store
        .connection_events(0, 100)
        .await
        .expect("the events read back")
        .into_iter()
        .map(|stored| stored.event)
        .collect();
    assert_eq!(
        stored,
        vec![
            connect("gw-1:1", Role::User, 456, t + 1_000),
            connect("gw-1:2", Role::Operator, 9, t + 1_001),
            ConnectionEvent {
                kind: ConnectionKind::Disconnect,
                at_ms: t + 5_000,
                duration_ms: Some(4_000),
                close_code: Some(1000),
                ..connect("gw-1:1", Role::User, 456, 0)
            },
            ConnectionEvent {
                kind: ConnectionKind::Disconnect,
                at_ms: t + 8_001,
                duration_ms: Some(7_000),
                close_code: None,
                ..connect("gw-1:2", Role::Operator, 9, 0)
            },
        ]
    );
    service.stop().await;
}

/// Only internal services (gateways) may record; a batch with one invalid
/// event is refused whole (INVALID_ARGUMENT naming it) and stores nothing.
async fn record_connections_refuses_callers_and_bad_batches(url: String) {
    use pb::connection_event::Kind;
    let service = Service::start(url.clone(), 60).await;
    let mut client = service.client().await;
    let good = wire_event("gw-1:1", "user", 456, Kind::Connect, 1_000);
    for role in [Role::User, Role::Operator, Role::Admin] {
        let refused = call(client.record_connections(as_caller(
            pb::RecordConnectionsRequest {
                events: vec![good.clone()],
            },
            role,
        )))
        .await;
        assert_refused(refused, Code::PermissionDenied, "forbidden");
    }
    let bad_events = [
        wire_event("gw-1:2", "user", 456, Kind::Unspecified, 1_000),
        wire_event("gw-1:2", "service", 0, Kind::Connect, 1_000),
        wire_event("gw-1:2", "root", 1, Kind::Connect, 1_000),
        wire_event("", "user", 456, Kind::Connect, 1_000),
        pb::ConnectionEvent {
            close_code: 1000,
            ..wire_event("gw-1:2", "user", 456, Kind::Connect, 1_000)
        },
        pb::ConnectionEvent {
            duration_ms: -5,
            ..wire_event("gw-1:2", "user", 456, Kind::Disconnect, 1_000)
        },
        pb::ConnectionEvent {
            close_code: 70_000,
            ..wire_event("gw-1:2", "user", 456, Kind::Disconnect, 1_000)
        },
    ];
    for bad in bad_events {
        let refused = call(client.record_connections(as_caller(
            pb::RecordConnectionsRequest {
                events: vec![good.clone(), bad.clone()],
            },
            Role::Service,
        )))
        .await;
        match &refused {
            Err(status) => assert!(
                status.message().contains("connection event 1"),
                "the message names the event: {status:?}"
            ),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
        assert_refused(refused, Code::InvalidArgument, "invalid_request");
    }
    let store = store::connect(&url).await.expect("the store opens");
    assert!(
        store
            .connection_events(0, 100)
            .await
            .expect("the events read back")
            .is_empty(),
        "nothing from a refused call is stored"
    );
    service.stop().await;
}

/// The store reads events at or after a time, oldest first, up to a limit;
/// ids grow with insertion; an empty batch writes nothing.
async fn store_reads_since_a_time_in_order(url: String) {
    let store = store::connect(&url).await.expect("the store opens");
    store
        .record_connections(&[])
        .await
        .expect("an empty batch is fine");
    let events: Vec<ConnectionEvent> = (0..5)
        .map(|i| connect(&format!("gw-1:{i}"), Role::User, i, 100 * (5 - i)))
        .collect();
    store
        .record_connections(&events)
        .await
        .expect("the batch is stored");
    let since_200 = store
        .connection_events(200, 100)
        .await
        .expect("the events read back");
    let times: Vec<i64> = since_200.iter().map(|s| s.event.at_ms).collect();
    assert_eq!(times, vec![200, 300, 400, 500]);
    let limited = store
        .connection_events(0, 2)
        .await
        .expect("the events read back");
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].event.at_ms, 100);
    let all = store
        .connection_events(0, 100)
        .await
        .expect("the events read back");
    // Inserted in the order 500, 400, …, 100, so read by time the ids
    // (which grow with insertion) go down.
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
}

/// A batch that the database refuses part-way (here a negative duration,
/// which the schema's check refuses) is rolled back whole.
async fn store_batch_is_one_transaction(url: String) {
    let store = store::connect(&url).await.expect("the store opens");
    let refused_by_schema = ConnectionEvent {
        kind: ConnectionKind::Disconnect,
        duration_ms: Some(-1),
        ..connect("gw-1:2", Role::User, 2, 20)
    };
    let batch = [connect("gw-1:1", Role::User, 1, 10), refused_by_schema];
    assert!(store.record_connections(&batch).await.is_err());
    assert!(
        store
            .connection_events(0, 100)
            .await
            .expect("the events read back")
            .is_empty(),
        "the first event was rolled back with the second"
    );
}

/// Opening the store again on a migrated database applies nothing and works.
async fn migrations_apply_twice(url: String) {
    let first = store::connect(&url).await.expect("the store opens");
    first
        .record_connections(&[connect("gw-1:1", Role::Admin, 1, 1)])
        .await
        .expect("stored");
    let second = store::connect(&url).await.expect("the store opens again");
    assert_eq!(
        second
            .connection_events(0, 10)
            .await
            .expect("the events read back")
            .len(),
        1
    );
}

fn disconnect(
    connection_id: &str,
    at_ms: i64,
    duration_ms: Option<i64>,
    close_code: Option<u16>,
) -> ConnectionEvent {
    ConnectionEvent {
        kind: ConnectionKind::Disconnect,
        duration_ms,
        close_code,
        ..connect(connection_id, Role::User, 1, at_ms)
    }
}

/// The analytics' counts over a known sequence: before the window, one
/// connection opened and closed with an error (not counted); in it, five
/// opened and five closed — normally (1000), going away (1001), replaced
/// (4004), without a code (the client closed), too slow (4002) and
/// rate-limited (1008): two errors of six closed, one of them without a
/// known duration.
async fn store_counts_connections_and_errors(url: String) {
    let store = store::connect(&url).await.expect("the store opens");
    assert_eq!(
        store.connection_stats(0).await.expect("the counts"),
        ConnectionStats::default(),
        "an empty table counts nothing"
    );
    let mut events = vec![
        connect("gw-1:0", Role::User, 1, 500),
        disconnect("gw-1:0", 900, Some(400), Some(4002)),
    ];
    for i in 1..=5 {
        events.push(connect(&format!("gw-1:{i}"), Role::User, i, 1_000 + i));
    }
    events.extend([
        disconnect("gw-1:1", 2_000, Some(1_000), Some(1000)),
        disconnect("gw-1:2", 2_001, Some(2_000), Some(1001)),
        disconnect("gw-1:3", 2_002, Some(3_000), Some(4004)),
        disconnect("gw-1:4", 2_003, Some(4_000), None),
        disconnect("gw-1:5", 2_004, Some(5_000), Some(4002)),
        // Opened before the window (no connect in it), closed in it.
        disconnect("gw-1:x", 2_005, None, Some(1008)),
    ]);
    store.record_connections(&events).await.expect("stored");
    assert_eq!(
        store.connection_stats(1_000).await.expect("the counts"),
        ConnectionStats {
            opened: 5,
            closed: 6,
            timed: 5,
            duration_ms: 15_000,
            errors: 2,
        }
    );
    assert_eq!(
        store.connection_stats(0).await.expect("the counts"),
        ConnectionStats {
            opened: 6,
            closed: 7,
            timed: 6,
            duration_ms: 15_400,
            errors: 3,
        },
        "the window's start is where counting starts"
    );
}

/// Trimming deletes the events before the cut-off, a bounded batch at a
/// time, and keeps the rest.
async fn store_trims_events_before_a_time(url: String) {
    let store = store::connect(&url).await.expect("the store opens");
    let events: Vec<ConnectionEvent> = (0..7)
        .map(|i| connect(&format!("gw-1:{i}"), Role::User, i, 100 * i))
        .collect();
    store.record_connections(&events).await.expect("stored");
    // Five events (0 … 400) are older than 450: two batches of at most 3.
    assert_eq!(store.trim_connection_events(450, 3).await.expect("trim"), 3);
    assert_eq!(store.trim_connection_events(450, 3).await.expect("trim"), 2);
    assert_eq!(store.trim_connection_events(450, 3).await.expect("trim"), 0);
    let left: Vec<i64> = store
        .connection_events(0, 100)
        .await
        .expect("the events read back")
        .iter()
        .map(|stored| stored.event.at_ms)
        .collect();
    assert_eq!(left, vec![500, 600]);
}

/// The service's own task trims: events older than the retention are gone
/// soon after they are recorded (the trim runs every second with a 10 s
/// retention), younger ones stay.
async fn service_trims_old_events(url: String) {
    use pb::connection_event::Kind;
    let config = chatai_notification::NotificationConfig {
        connection_events_retention_secs: 10,
        ..chatai_notification::NotificationConfig::default()
    };
    let service = Service::start_with(url.clone(), config).await;
    let mut client = service.client().await;
    let now = chatai_kit::now_ms();
    let batch = vec![
        wire_event("gw-1:old", "user", 1, Kind::Connect, now - 3_600_000),
        wire_event("gw-1:new", "user", 2, Kind::Connect, now),
    ];
    call(client.record_connections(as_caller(
        pb::RecordConnectionsRequest { events: batch },
        Role::Service,
    )))
    .await
    .expect("a gateway records its connections");
    let store = store::connect(&url).await.expect("the store opens");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let left: Vec<String> = store
            .connection_events(0, 100)
            .await
            .expect("the events read back")
            .into_iter()
            .map(|stored| stored.event.connection_id)
            .collect();
        if left == ["gw-1:new"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old event is trimmed, the new one kept: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    service.stop().await;
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

chatai_testkit::on_both_databases! {
    urls: [
        record_connections_stores_rows,
        record_connections_refuses_callers_and_bad_batches,
        store_reads_since_a_time_in_order,
        store_batch_is_one_transaction,
        migrations_apply_twice,
        store_counts_connections_and_errors,
        store_trims_events_before_a_time,
        service_trims_old_events,
    ],
}
