//! `operator_status_change` as every operator connection sees it: the real
//! service (1 s grace period, cap of 2 handoffs) on a real socket, driven by
//! gateway and handoff-service calls, observed through its `EventStream`.
//! Every case runs with the state and event log in memory, then in Redis.

mod common;

use chatai_proto::v1 as pb;
use common::{
    Backend, Gateway, MAX_HANDOFFS, get_operator, operator, set_load, set_status, spawn_app_on,
};

/// An operator's first connection brings them online as available, and the
/// event carries the whole picture.
#[tokio::test]
async fn first_connection_brings_operator_online() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;

        let info = gw.open(7, "c1").await;
        assert!(info.online);
        assert_eq!(info.status, pb::OperatorStatus::Available as i32);
        assert_eq!(
            events.next().await,
            serde_json::json!({
                "operator_id": 7,
                "status": "available",
                "chosen_status": "available",
                "online": true,
                "active_handoffs": 0,
                "max_handoffs": MAX_HANDOFFS,
                "name": "Op7",
                "version": info.version,
            })
        );
        assert!(info.version > 0, "{info:?}");
        app.stop().await;
    }
}

/// With two connections open, closing one keeps the operator online and
/// sends nothing: the next event is the one a later change causes.
#[tokio::test]
async fn closing_one_of_two_connections_changes_nothing() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;
        gw.open(7, "c1").await;
        gw.open(7, "c2").await;
        assert_eq!(events.next().await["online"], true);

        gw.close(7, "c1").await;
        let info = get_operator(&mut gw.client, 7).await;
        assert!(info.online);
        assert_eq!(info.connections, 1);

        // A marker change: had the close produced an event, it would come first.
        set_load(&mut gw.client, 7, 1).await;
        let next = events.next().await;
        assert_eq!(next["active_handoffs"], 1);
        assert_eq!(next["online"], true);
        app.stop().await;
    }
}

/// When the last connection closes the operator is still online; the
/// offline event comes once the grace period has passed.
#[tokio::test]
async fn offline_after_the_grace_period_once_all_connections_close() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;
        gw.open(7, "c1").await;
        gw.open(7, "c2").await;
        assert_eq!(events.next().await["status"], "available");

        gw.close(7, "c1").await;
        gw.close(7, "c2").await;
        let info = get_operator(&mut gw.client, 7).await;
        assert_eq!(info.connections, 0);
        assert!(info.online, "still online during the grace period");

        let offline = events.next().await;
        assert_eq!(offline["operator_id"], 7);
        assert_eq!(offline["status"], "offline");
        assert_eq!(offline["online"], false);
        assert_eq!(offline["chosen_status"], "available");
        let info = get_operator(&mut gw.client, 7).await;
        assert_eq!(info.status, pb::OperatorStatus::Offline as i32);
        app.stop().await;
    }
}

/// A reconnect within the grace period produces no offline event. Proof
/// without timing: operator 8 connects and leaves after 7's reconnect, so
/// 8's offline event is due after 7's cancelled one would have been; events
/// are sent in order, so 7's would have come first.
#[tokio::test]
async fn reconnect_within_grace_produces_no_offline_event() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;
        gw.open(7, "c1").await;
        assert_eq!(events.next().await["operator_id"], 7);

        gw.close(7, "c1").await;
        gw.open(7, "c2").await;

        gw.open(8, "c3").await;
        gw.close(8, "c3").await;
        let online = events.next().await;
        assert_eq!(
            (online["operator_id"].as_i64(), online["online"].as_bool()),
            (Some(8), Some(true))
        );
        let offline = events.next().await;
        assert_eq!(
            (offline["operator_id"].as_i64(), offline["status"].as_str()),
            (Some(8), Some("offline")),
            "operator 7's reconnect cancelled their grace period"
        );
        let info = get_operator(&mut gw.client, 7).await;
        assert!(info.online);
        assert_eq!(info.connections, 1);
        app.stop().await;
    }
}

/// Load at the cap makes an available operator busy; below it, available
/// again.
#[tokio::test]
async fn load_at_the_cap_is_busy_and_below_is_available() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;
        gw.open(7, "c1").await;
        events.next().await;

        let info = set_load(&mut gw.client, 7, MAX_HANDOFFS).await;
        assert_eq!(info.status, pb::OperatorStatus::Busy as i32);
        assert_eq!(info.chosen_status, pb::OperatorStatus::Available as i32);
        let busy = events.next().await;
        assert_eq!(busy["status"], "busy");
        assert_eq!(busy["chosen_status"], "available");
        assert_eq!(busy["active_handoffs"], MAX_HANDOFFS);

        set_load(&mut gw.client, 7, MAX_HANDOFFS - 1).await;
        let available = events.next().await;
        assert_eq!(available["status"], "available");
        assert_eq!(available["active_handoffs"], MAX_HANDOFFS - 1);
        app.stop().await;
    }
}

/// A chosen away is never overridden by the load cap, and choosing
/// available again while at the cap shows busy.
#[tokio::test]
async fn chosen_away_is_never_overridden_by_the_cap() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-1").await;
        gw.open(7, "c1").await;
        events.next().await;

        set_status(&mut gw.client, &operator(7), 7, pb::OperatorStatus::Away)
            .await
            .expect("the operator sets their own status");
        let away = events.next().await;
        assert_eq!(
            (away["status"].as_str(), away["chosen_status"].as_str()),
            (Some("away"), Some("away"))
        );

        set_load(&mut gw.client, 7, MAX_HANDOFFS).await;
        let still_away = events.next().await;
        assert_eq!(still_away["status"], "away");
        assert_eq!(still_away["active_handoffs"], MAX_HANDOFFS);

        set_status(
            &mut gw.client,
            &operator(7),
            7,
            pb::OperatorStatus::Available,
        )
        .await
        .expect("the operator sets their own status");
        let busy = events.next().await;
        assert_eq!(busy["status"], "busy");
        assert_eq!(busy["chosen_status"], "available");
        app.stop().await;
    }
}

/// A gateway that refreshes once with a 1 s lease and then goes silent
/// loses its connections, and its operator goes offline after the grace.
#[tokio::test]
async fn expired_gateway_lease_takes_its_operator_offline() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut events = app.operator_events().await;
        let mut gw = app.gateway("gw-silent").await;
        gw.refresh(vec![Gateway::connection(7, "c1")], 1).await;
        let online = events.next().await;
        assert_eq!(
            (online["operator_id"].as_i64(), online["online"].as_bool()),
            (Some(7), Some(true))
        );

        let offline = events.next().await;
        assert_eq!(offline["operator_id"], 7);
        assert_eq!(offline["status"], "offline");
        let info = get_operator(&mut gw.client, 7).await;
        assert_eq!(info.connections, 0);
        assert!(!info.online);
        app.stop().await;
    }
}
