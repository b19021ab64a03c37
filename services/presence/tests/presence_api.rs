//! The `chatai.v1.Presence` API's rules over real gRPC: who may call what,
//! input checks with stable error codes, and what GetOperator and
//! ListOperators report.

mod common;

use chatai_kit::identity::Caller;
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use common::{
    Backend, Gateway, MAX_HANDOFFS, admin, get_operator, operator, request, set_load, set_status,
    spawn_app, spawn_app_on, user,
};
use tonic::Code;

/// An operator may set only their own status (another's is
/// PERMISSION_DENIED `forbidden`); admins may set anyone's; a status chosen
/// before any connection is recorded.
#[tokio::test]
async fn set_status_is_for_the_operator_themself() {
    let app = spawn_app().await;
    let mut client = app.client().await;

    let denied = set_status(&mut client, &operator(7), 8, pb::OperatorStatus::Away)
        .await
        .expect_err("another operator's status");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(error_code(&denied), Some("forbidden"));
    let denied = set_status(&mut client, &user(8), 8, pb::OperatorStatus::Away)
        .await
        .expect_err("a user with the same id is no operator");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let own = set_status(&mut client, &operator(8), 8, pb::OperatorStatus::Away)
        .await
        .expect("the operator's own status");
    assert_eq!(own.chosen_status, pb::OperatorStatus::Away as i32);
    assert_eq!(
        own.status,
        pb::OperatorStatus::Offline as i32,
        "no connection yet"
    );
    assert!(!own.online);

    let by_admin = set_status(&mut client, &admin(1), 9, pb::OperatorStatus::Busy)
        .await
        .expect("an admin sets anyone's status");
    assert_eq!(by_admin.chosen_status, pb::OperatorStatus::Busy as i32);
    app.stop().await;
}

/// Offline, unspecified and unknown statuses cannot be chosen:
/// INVALID_ARGUMENT `invalid_field`.
#[tokio::test]
async fn only_available_busy_or_away_can_be_chosen() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    for status in [pb::OperatorStatus::Offline, pb::OperatorStatus::Unspecified] {
        let refused = set_status(&mut client, &operator(7), 7, status)
            .await
            .expect_err("not a choosable status");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(error_code(&refused), Some("invalid_field"));
    }
    let unknown = client
        .set_status(request(
            &operator(7),
            pb::SetStatusRequest {
                operator_id: 7,
                status: 42,
            },
        ))
        .await
        .expect_err("an unknown status value");
    assert_eq!(error_code(&unknown), Some("invalid_field"));
    app.stop().await;
}

/// Connection reports and loads are for services only; users may not read
/// presence; a request without identity is UNAUTHENTICATED.
#[tokio::test]
async fn gateway_and_handoff_calls_need_the_service_role() {
    let app = spawn_app().await;
    let mut client = app.client().await;

    let opened = client
        .connection_opened(request(
            &operator(7),
            pb::ConnectionOpenedRequest {
                gateway_id: "gw-1".into(),
                connection: Some(Gateway::connection(7, "c1")),
                order: None,
            },
        ))
        .await
        .expect_err("an operator cannot report connections");
    assert_eq!(opened.code(), Code::PermissionDenied);
    let load = client
        .set_load(request(
            &admin(1),
            pb::SetLoadRequest {
                operator_id: 7,
                active_handoffs: 1,
            },
        ))
        .await
        .expect_err("only the handoff service sets load");
    assert_eq!(load.code(), Code::PermissionDenied);
    let listed = client
        .list_operators(request(&user(456), pb::ListOperatorsRequest {}))
        .await
        .expect_err("users do not read presence");
    assert_eq!(listed.code(), Code::PermissionDenied);
    let anonymous = client
        .list_operators(pb::ListOperatorsRequest {})
        .await
        .expect_err("no identity");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let no_ttl = client
        .refresh_connections(request(
            &Caller::service(),
            pb::RefreshConnectionsRequest {
                gateway_id: "gw-1".into(),
                connections: vec![],
                ttl_seconds: 0,
                order: None,
            },
        ))
        .await
        .expect_err("a lease needs a ttl");
    assert_eq!(error_code(&no_ttl), Some("invalid_field"));
    app.stop().await;
}

/// GetOperator of an operator never heard of is NOT_FOUND
/// `operator_not_found`; operators and admins may read.
#[tokio::test]
async fn unknown_operator_is_not_found() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let missing = client
        .get_operator(request(
            &operator(7),
            pb::GetOperatorRequest { operator_id: 99 },
        ))
        .await
        .expect_err("nobody by that id");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(error_code(&missing), Some("operator_not_found"));

    let mut gw = app.gateway("gw-1").await;
    gw.open(99, "c1").await;
    let found = client
        .get_operator(request(
            &admin(1),
            pb::GetOperatorRequest { operator_id: 99 },
        ))
        .await
        .expect("an admin reads an operator")
        .into_inner();
    assert!(found.online);
    assert_eq!(found.name, "Op99");
    app.stop().await;
}

/// ListOperators shows each operator's effective status, chosen status,
/// online flag, load, cap and connections, by id.
#[tokio::test]
async fn list_operators_shows_the_three_signals() {
    let app = spawn_app().await;
    let mut gw = app.gateway("gw-1").await;
    gw.open(7, "c1").await;
    gw.open(7, "c2").await;
    set_load(&mut gw.client, 7, MAX_HANDOFFS).await;
    gw.open(8, "c3").await;
    set_status(&mut gw.client, &operator(8), 8, pb::OperatorStatus::Away)
        .await
        .expect("own status");
    set_status(&mut gw.client, &admin(1), 9, pb::OperatorStatus::Busy)
        .await
        .expect("an admin sets a status");

    let list = gw
        .client
        .list_operators(request(&operator(8), pb::ListOperatorsRequest {}))
        .await
        .expect("operators list operators")
        .into_inner()
        .operators;
    let summary: Vec<_> = list
        .iter()
        .map(|o| {
            (
                o.operator_id,
                pb::OperatorStatus::try_from(o.status).expect("a known status"),
                pb::OperatorStatus::try_from(o.chosen_status).expect("a known status"),
                o.online,
                o.active_handoffs,
                o.connections,
            )
        })
        .collect();
    use pb::OperatorStatus::{Available, Away, Busy, Offline};
    assert_eq!(
        summary,
        vec![
            (7, Busy, Available, true, MAX_HANDOFFS, 2),
            (8, Away, Away, true, 0, 1),
            (9, Offline, Busy, false, 0, 0),
        ]
    );
    assert!(list.iter().all(|o| o.max_handoffs == MAX_HANDOFFS));
    assert_eq!(get_operator(&mut gw.client, 7).await, list[0]);
    app.stop().await;
}

/// The status an operator chose is stored: after a restart on the same
/// database, an operator who chose away comes back away, not available
/// (issue 9, item 4) — with the state in memory, and in Redis.
#[tokio::test]
async fn a_chosen_status_survives_a_restart() {
    for backend in Backend::ALL {
        let app = spawn_app_on(backend).await;
        let mut client = app.client().await;
        set_status(&mut client, &operator(8), 8, pb::OperatorStatus::Away)
            .await
            .expect("own status");
        let app = app.restart().await;
        let mut gw = app.gateway("gw-1").await;
        let back = gw.open(8, "c1").await;
        assert_eq!(back.chosen_status, pb::OperatorStatus::Away as i32);
        assert_eq!(back.status, pb::OperatorStatus::Away as i32);
        assert!(back.online);
        app.stop().await;
    }
}
