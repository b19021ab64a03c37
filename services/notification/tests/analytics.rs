//! Gateway reports and the analytics pushed to admins, over real gRPC, with
//! the service pushing every second and an admin-role subscriber watching.
//!
//! The subscriber is in place before any report is sent, so anything pushed
//! before it subscribed was all zeros: counting each metric from 0, every
//! `analytics_update` it sees must carry a value different from the last one
//! seen for that metric and `change` = that difference. Waits end when the
//! expected values are seen (or fail after a timeout); no test depends on
//! which tick a report falls into.

mod common;

use std::collections::HashMap;

use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_testkit::TestGateway;
use common::{Service, as_caller, assert_refused, body, call};
use tonic::Code;

fn report(gateway_id: &str, counts: [u64; 4], ttl_seconds: u32) -> pb::GatewayReport {
    let [connections, users, operators, messages_last_minute] = counts;
    pb::GatewayReport {
        gateway_id: gateway_id.to_owned(),
        connections,
        users,
        operators,
        admins: 1,
        messages_last_minute,
        ttl_seconds,
    }
}

/// Metric values in the order connections, users, operators, messages.
fn expected(values: [u64; 4]) -> HashMap<String, u64> {
    [
        "active_connections",
        "active_users",
        "online_operators",
        "messages_per_minute",
    ]
    .into_iter()
    .map(str::to_owned)
    .zip(values)
    .collect()
}

/// The metrics read from stored connection events, which the report tests
/// leave at 0 (they record none): their pushes are skipped there, and
/// `GetAnalytics` must show them at 0.
const CONNECTION_METRICS: [&str; 3] = [
    "total_connections",
    "average_connection_duration",
    "error_rate",
];

/// `GetAnalytics`' metrics other than [`CONNECTION_METRICS`], which must
/// be 0.
fn reported(metrics: Vec<pb::Metric>) -> HashMap<String, u64> {
    metrics
        .into_iter()
        .filter(|m| {
            let connection = CONNECTION_METRICS.contains(&m.name.as_str());
            assert!(!connection || m.value == 0.0, "{m:?}");
            !connection
        })
        .map(|m| (m.name, m.value as u64))
        .collect()
}

/// The admin-role subscriber and what it has seen of each metric.
struct Admins {
    gateway: TestGateway,
    seen: HashMap<String, u64>,
}

impl Admins {
    async fn subscribe(service: &Service) -> Self {
        let mut gateway = service.attach().await;
        gateway.subscribe(1, &Recipient::Role(Role::Admin)).await;
        Admins {
            gateway,
            seen: HashMap::new(),
        }
    }

    /// The next `analytics_update` (live only): its metric and its body.
    async fn next_update(&mut self) -> (String, serde_json::Value) {
        let delivery = self.gateway.next_delivery().await;
        let event = delivery.event.as_ref().expect("the event");
        assert_eq!(event.r#type, "analytics_update");
        assert_eq!(delivery.position, 0, "analytics are live only");
        let update = body(&delivery);
        let metric = update["metric"]
            .as_str()
            .expect("metric is text")
            .to_owned();
        (metric, update)
    }

    /// Reads `analytics_update`s until every metric shows its `target`
    /// value, checking each update on the way; returns the updates read.
    async fn until(&mut self, target: &HashMap<String, u64>) -> Vec<(String, u64, String)> {
        let mut read = Vec::new();
        while target.iter().any(|(m, v)| self.seen.get(m) != Some(v)) {
            let (metric, update) = self.next_update().await;
            if CONNECTION_METRICS.contains(&metric.as_str()) {
                assert_eq!(update["value"], 0, "{update}");
                continue;
            }
            let value = update["value"].as_u64().expect("value is a number");
            let change = update["change"]
                .as_str()
                .expect("change is text")
                .to_owned();
            assert!(target.contains_key(&metric), "unknown metric {metric}");
            let previous = self.seen.get(&metric).copied();
            assert_ne!(
                previous,
                Some(value),
                "{metric} was pushed without changing"
            );
            let difference = i128::from(value) - i128::from(previous.unwrap_or(0));
            assert_eq!(change, format!("{difference:+}"), "{update}");
            self.seen.insert(metric.clone(), value);
            read.push((metric, value, change));
        }
        read
    }
}

/// Two gateways' reports are summed and pushed to admins with the right
/// `change`; a later report changing one count pushes only that metric; a
/// report whose ttl runs out drops out of the sums (and `GetAnalytics`
/// agrees at each step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_summed_pushed_on_change_and_expire() {
    let service = Service::on_sqlite(1).await;
    let mut admins = Admins::subscribe(&service).await;
    let mut client = service.client().await;
    let mut send = async |report: pb::GatewayReport| {
        call(client.report_gateway(as_caller(report, Role::Service)))
            .await
            .expect("a gateway reports");
    };

    // Two gateways: the sums reach the admins.
    send(report("gw-a", [3, 2, 1, 5], 60)).await;
    send(report("gw-b", [4, 3, 2, 7], 60)).await;
    let sums = expected([7, 5, 3, 12]);
    admins.until(&sums).await;

    // gw-a gains two connections: only active_connections moves, by +2.
    send(report("gw-a", [5, 2, 1, 5], 60)).await;
    let read = admins.until(&expected([9, 5, 3, 12])).await;
    assert_eq!(
        read,
        vec![("active_connections".to_owned(), 9, "+2".to_owned())]
    );

    // gw-b reports the same counts with a 1 s ttl, then stops reporting:
    // once it expires the sums fall back to gw-a's counts.
    send(report("gw-b", [4, 3, 2, 7], 1)).await;
    let read = admins.until(&expected([5, 2, 1, 5])).await;
    assert_eq!(
        read,
        vec![
            ("active_connections".to_owned(), 5, "-4".to_owned()),
            ("active_users".to_owned(), 2, "-3".to_owned()),
            ("online_operators".to_owned(), 1, "-2".to_owned()),
            ("messages_per_minute".to_owned(), 5, "-7".to_owned()),
        ],
        "one push per metric, once gw-b expired"
    );

    let now = call(client.get_analytics(as_caller(pb::GetAnalyticsRequest {}, Role::Admin)))
        .await
        .expect("an admin reads analytics");
    let values = reported(now.metrics);
    assert_eq!(values, expected([5, 2, 1, 5]));
    service.stop().await;
}

/// `GetAnalytics` answers at once with the sums of the live reports.
#[tokio::test]
async fn get_analytics_sums_the_live_reports() {
    let service = Service::on_sqlite(60).await;
    let mut client = service.client().await;
    for gateway in ["gw-a", "gw-b"] {
        call(client.report_gateway(as_caller(report(gateway, [2, 1, 1, 10], 60), Role::Service)))
            .await
            .expect("a gateway reports");
    }
    let now = call(client.get_analytics(as_caller(pb::GetAnalyticsRequest {}, Role::Service)))
        .await
        .expect("a service reads analytics");
    let values = reported(now.metrics);
    assert_eq!(values, expected([4, 2, 2, 20]));
    service.stop().await;
}

/// Only internal services report; only admins and services read analytics;
/// a report without a gateway id or with a ttl outside 1..=3600 s is
/// INVALID_ARGUMENT.
#[tokio::test]
async fn reports_and_reads_are_checked() {
    let service = Service::on_sqlite(60).await;
    let mut client = service.client().await;
    for role in [Role::User, Role::Operator, Role::Admin] {
        let refused =
            call(client.report_gateway(as_caller(report("gw-a", [1, 1, 0, 0], 15), role))).await;
        assert_refused(refused, Code::PermissionDenied, "forbidden");
    }
    for role in [Role::User, Role::Operator] {
        let refused = call(client.get_analytics(as_caller(pb::GetAnalyticsRequest {}, role))).await;
        assert_refused(refused, Code::PermissionDenied, "forbidden");
    }
    for bad in [
        report("", [1, 1, 0, 0], 15),
        report("gw-a", [1, 1, 0, 0], 0),
        report("gw-a", [1, 1, 0, 0], 3_601),
    ] {
        let refused = call(client.report_gateway(as_caller(bad, Role::Service))).await;
        assert_refused(refused, Code::InvalidArgument, "invalid_request");
    }
    service.stop().await;
}

/// The three connection metrics, from a known sequence of connections
/// recorded through `RecordConnections`: four opened in the window, three
/// closed there lasting 1 s, 2 s and 3 s — one of them too slow (4002) —
/// plus one opened and closed with an error long before the window. The
/// push carries `total_connections` 4, `average_connection_duration` 2 (s)
/// and `error_rate` 1/3 (to four decimals), and `GetAnalytics` agrees.
#[tokio::test]
async fn connection_metrics_come_from_the_stored_events() {
    use pb::connection_event::Kind;
    let service = Service::on_sqlite(1).await;
    let mut admins = service.attach().await;
    admins.subscribe(1, &Recipient::Role(Role::Admin)).await;
    let mut client = service.client().await;
    let now = chatai_kit::now_ms();
    let event =
        |id: &str, kind: Kind, at_ms: i64, duration_ms: i64, close_code: u32| pb::ConnectionEvent {
            connection_id: id.to_owned(),
            gateway_id: "gw-a".to_owned(),
            role: "user".to_owned(),
            principal_id: 1,
            kind: kind as i32,
            at_ms,
            duration_ms,
            close_code,
        };
    let two_hours_ago = now - 7_200_000;
    let events = vec![
        event("gw-a:0", Kind::Connect, two_hours_ago, 0, 0),
        event("gw-a:0", Kind::Disconnect, two_hours_ago + 10, 10, 1011),
        event("gw-a:1", Kind::Connect, now - 5_000, 0, 0),
        event("gw-a:2", Kind::Connect, now - 5_000, 0, 0),
        event("gw-a:3", Kind::Connect, now - 5_000, 0, 0),
        event("gw-a:4", Kind::Connect, now - 5_000, 0, 0),
        event("gw-a:1", Kind::Disconnect, now - 4_000, 1_000, 1000),
        event("gw-a:2", Kind::Disconnect, now - 3_000, 2_000, 4002),
        event("gw-a:3", Kind::Disconnect, now - 2_000, 3_000, 0),
    ];
    call(client.record_connections(as_caller(
        pb::RecordConnectionsRequest { events },
        Role::Service,
    )))
    .await
    .expect("a gateway records its connections");

    let wanted = [
        ("total_connections", serde_json::json!(4)),
        ("average_connection_duration", serde_json::json!(2)),
        ("error_rate", serde_json::json!(0.3333)),
    ];
    let mut latest: HashMap<String, serde_json::Value> = HashMap::new();
    while wanted
        .iter()
        .any(|(metric, value)| latest.get(*metric) != Some(value))
    {
        let delivery = admins.next_delivery().await;
        let update = body(&delivery);
        let metric = update["metric"]
            .as_str()
            .expect("metric is text")
            .to_owned();
        latest.insert(metric, update["value"].clone());
    }
    let now = call(client.get_analytics(as_caller(pb::GetAnalyticsRequest {}, Role::Admin)))
        .await
        .expect("an admin reads analytics");
    let values: HashMap<String, f64> = now.metrics.into_iter().map(|m| (m.name, m.value)).collect();
    assert_eq!(values["total_connections"], 4.0);
    assert_eq!(values["average_connection_duration"], 2.0);
    assert_eq!(values["error_rate"], 0.3333);
    service.stop().await;
}

/// Two replicas on one PostgreSQL database and one Redis event log, each
/// told every gateway's reports: only the one holding the analytics lease
/// pushes, so an admin sees each change once (a second pusher's opening
/// round of zeros, or a change pushed twice, fails `Admins::until`); when
/// it stops, the other takes the lease over and pushes every metric once,
/// at its current value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_one_pushes_the_analytics() {
    chatai_testkit::on_postgres(|url| async move {
        let first = Service::replica(url.clone(), 1).await;
        let mut admins = Admins::subscribe(&first).await;
        admins.until(&expected([0, 0, 0, 0])).await;
        let second = Service::replica(url, 1).await;
        let mut admins_on_second = Admins::subscribe(&second).await;
        let (mut to_first, mut to_second) = (first.client().await, second.client().await);
        for counts in [[3, 2, 1, 4], [5, 2, 1, 4]] {
            for client in [&mut to_first, &mut to_second] {
                call(client.report_gateway(as_caller(report("gw-a", counts, 60), Role::Service)))
                    .await
                    .expect("a gateway reports");
            }
            admins.until(&expected(counts)).await;
        }
        admins_on_second.until(&expected([5, 2, 1, 4])).await;

        first.stop().await;
        let mut taken_over = HashMap::new();
        while taken_over.len() < 4 {
            let (metric, update) = admins_on_second.next_update().await;
            if CONNECTION_METRICS.contains(&metric.as_str()) {
                continue;
            }
            let value = update["value"].as_u64().expect("value is a number");
            assert!(
                taken_over.insert(metric, value).is_none(),
                "each metric pushed once by the new pusher: {update}"
            );
        }
        assert_eq!(taken_over, expected([5, 2, 1, 4]));
        second.stop().await;
    })
    .await;
}
