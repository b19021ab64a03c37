//! The admins' connection analytics end to end (docs/protocol.md,
//! `analytics_update`): connections opened and closed at the gateway are
//! recorded at the notification service, and the admins' live updates carry
//! `total_connections`, `average_connection_duration` and `error_rate`
//! computed from them.

use std::collections::HashMap;

use crate::common::{TestOptions, spawn_app};
use chatai_kit::identity::Role;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A known sequence — the admin connects (1 open), a user connects and
/// closes it themself (no error), another sends a binary frame and is
/// closed 1003 (an error) — reaches the admin as `total_connections` 3 and
/// `error_rate` 0.5 (one of the two closed connections), with an
/// `average_connection_duration` in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_updates_carry_the_connection_metrics() {
    let mut options = TestOptions::default();
    options.notification.analytics_interval_secs = 1;
    let app = spawn_app(options).await;
    let (mut admin, _) = app.connect_as(7001, Role::Admin, "").await;
    let snapshot = admin.recv_type("analytics_snapshot").await;
    for metric in [
        "total_connections",
        "average_connection_duration",
        "error_rate",
    ] {
        assert!(
            snapshot["metrics"][metric].is_number(),
            "{metric} in {snapshot}"
        );
    }

    let (user, _) = app.connect_as(7002, Role::User, "").await;
    user.close().await;
    let (mut offender, _) = app.connect_as(7003, Role::User, "").await;
    offender
        .send(Message::Binary(vec![0x7b, 0x7d].into()))
        .await;
    offender
        .expect_close(1003, "Binary frames are not supported")
        .await;

    // The snapshot's values, then each update's.
    let mut latest: HashMap<String, Value> = snapshot["metrics"]
        .as_object()
        .expect("metrics by name")
        .clone()
        .into_iter()
        .collect();
    while latest.get("total_connections") != Some(&Value::from(3))
        || latest.get("error_rate") != Some(&Value::from(0.5))
    {
        let update = admin.recv_type("analytics_update").await;
        let metric = update["metric"].as_str().expect("metric is text");
        assert!(update["change"].is_string(), "{update}");
        latest.insert(metric.to_owned(), update["value"].clone());
    }
    let average = latest
        .get("average_connection_duration")
        .and_then(Value::as_f64)
        .expect("an average_connection_duration");
    assert!(average >= 0.0, "{average}");
    app.stop().await;
}
