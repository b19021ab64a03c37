//! `Notify` and `SystemAlert` over real gRPC, observed through the service's
//! own `EventStream` as a gateway sees it.

mod common;

use chatai_kit::events::Recipient;
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use common::{Service, as_caller, assert_refused, body, call};
use serde_json::json;
use tonic::Code;

fn notify_request(recipient: &Recipient, kind: &str, body_json: &str) -> pb::NotifyRequest {
    pb::NotifyRequest {
        recipient: Some(recipient.into()),
        r#type: kind.to_owned(),
        body_json: body_json.to_owned(),
    }
}

fn alert(severity: &str, message: &str) -> pb::SystemAlertRequest {
    pb::SystemAlertRequest {
        severity: severity.to_owned(),
        message: message.to_owned(),
        affected_services: vec!["ai_chat".into(), "document_upload".into()],
    }
}

/// A notification to a user is durable: the response has its position, a
/// gateway subscribed to the user receives it with that position and the
/// caller's body, and `Replay` from just before returns it again.
#[tokio::test]
async fn notify_to_a_user_is_durable_and_replays() {
    let service = Service::on_sqlite(60).await;
    let user = Recipient::User(456);
    let mut gateway = service.attach().await;
    gateway.subscribe(1, &user).await;

    let mut client = service.client().await;
    let sent = call(client.notify(as_caller(
        notify_request(
            &user,
            "promo_offer",
            r#"{"title":"50% off","code":"SPRING"}"#,
        ),
        Role::Service,
    )))
    .await
    .expect("a service may notify a user");
    assert!(sent.position > 0, "a user's notification is durable");
    assert!(!sent.event_id.is_empty());

    let delivery = gateway.next_delivery().await;
    assert_eq!(delivery.recipient, Some((&user).into()));
    assert_eq!(delivery.position, sent.position);
    let event = delivery.event.as_ref().expect("the event");
    assert_eq!(event.event_id, sent.event_id);
    assert_eq!(event.r#type, "promo_offer");
    assert_eq!(event.origin_connection, "");
    assert_eq!(
        body(&delivery),
        json!({"title": "50% off", "code": "SPRING"})
    );

    let mut events: EventStreamClient<_> = service.events().await;
    let page = call(events.replay(pb::ReplayRequest {
        recipient: Some((&user).into()),
        from: Some(pb::replay_request::From::AfterPosition(sent.position - 1)),
        limit: 10,
    }))
    .await
    .expect("replay");
    assert!(page.complete);
    assert_eq!(page.deliveries.len(), 1);
    let replayed = &page.deliveries[0];
    assert_eq!(replayed.position, sent.position);
    assert_eq!(
        replayed.event.as_ref().map(|e| e.event_id.as_str()),
        Some(sent.event_id.as_str())
    );
    service.stop().await;
}

/// An admin may notify too, and a notification to a role group is live
/// only (position 0).
#[tokio::test]
async fn admin_notifies_a_role_group_live() {
    let service = Service::on_sqlite(60).await;
    let operators = Recipient::Role(Role::Operator);
    let mut gateway = service.attach().await;
    gateway.subscribe(1, &operators).await;
    let mut client = service.client().await;
    let sent = call(client.notify(as_caller(
        notify_request(&operators, "shift_reminder", r#"{"starts_in":15}"#),
        Role::Admin,
    )))
    .await
    .expect("an admin may notify");
    assert_eq!(sent.position, 0, "a role group is live only");
    let delivery = gateway.next_delivery().await;
    assert_eq!(delivery.position, 0);
    assert_eq!(body(&delivery), json!({"starts_in": 15}));
    service.stop().await;
}

/// Users and operators may not notify (PERMISSION_DENIED `forbidden`); a
/// call without caller identity is UNAUTHENTICATED.
#[tokio::test]
async fn notify_by_a_user_or_operator_is_forbidden() {
    let service = Service::on_sqlite(60).await;
    let mut client = service.client().await;
    let request = notify_request(&Recipient::User(456), "promo_offer", "{}");
    for role in [Role::User, Role::Operator] {
        let refused = call(client.notify(as_caller(request.clone(), role))).await;
        assert_refused(refused, Code::PermissionDenied, "forbidden");
    }
    let anonymous = call(client.notify(request)).await;
    assert_eq!(
        anonymous.expect_err("no identity is refused").code(),
        Code::Unauthenticated
    );
    service.stop().await;
}

/// A type that is not snake_case ASCII or is one of the gateway's own
/// frames, a body that is not a JSON object, is too large or sets an
/// envelope field, and a missing recipient are INVALID_ARGUMENT
/// `invalid_request`.
#[tokio::test]
async fn notify_refuses_bad_type_body_and_recipient() {
    let service = Service::on_sqlite(60).await;
    let mut client = service.client().await;
    let user = Recipient::User(456);
    let too_long_type = "a".repeat(65);
    let too_large_body = format!(r#"{{"x":"{}"}}"#, "a".repeat(32 * 1024));
    let bad = [
        ("PromoOffer", "{}"),
        ("1promo", "{}"),
        ("promo-offer", "{}"),
        ("", "{}"),
        (too_long_type.as_str(), "{}"),
        ("ack", "{}"),
        ("error", "{}"),
        ("connected", "{}"),
        ("heartbeat_ack", "{}"),
        ("promo_offer", "[1, 2]"),
        ("promo_offer", r#""text""#),
        ("promo_offer", "not json"),
        ("promo_offer", ""),
        ("promo_offer", too_large_body.as_str()),
        ("promo_offer", r#"{"type":"ack"}"#),
        ("promo_offer", r#"{"cursor":"x"}"#),
    ];
    for (kind, body_json) in bad {
        let refused = call(client.notify(as_caller(
            notify_request(&user, kind, body_json),
            Role::Service,
        )))
        .await;
        assert_refused(refused, Code::InvalidArgument, "invalid_request");
    }
    let no_recipient = pb::NotifyRequest {
        recipient: None,
        ..notify_request(&user, "promo_offer", "{}")
    };
    let refused = call(client.notify(as_caller(no_recipient, Role::Service))).await;
    assert_refused(refused, Code::InvalidArgument, "invalid_request");
    service.stop().await;
}

/// A system alert reaches a gateway subscribed to everyone, live, with the
/// fields of the original design.
#[tokio::test]
async fn system_alert_reaches_everyone() {
    let service = Service::on_sqlite(60).await;
    let mut gateway = service.attach().await;
    gateway.subscribe(1, &Recipient::Everyone).await;
    let mut client = service.client().await;
    let sent = call(client.system_alert(as_caller(
        alert("warning", "Scheduled maintenance in 30 minutes"),
        Role::Admin,
    )))
    .await
    .expect("an admin may alert");

    let delivery = gateway.next_delivery().await;
    assert_eq!(delivery.recipient, Some((&Recipient::Everyone).into()));
    assert_eq!(delivery.position, 0, "system alerts are live only");
    let event = delivery.event.as_ref().expect("the event");
    assert_eq!(event.r#type, "system_alert");
    assert_eq!(event.event_id, sent.event_id);
    assert_eq!(
        body(&delivery),
        json!({
            "severity": "warning",
            "message": "Scheduled maintenance in 30 minutes",
            "affected_services": ["ai_chat", "document_upload"],
        })
    );
    service.stop().await;
}

/// A severity other than info/warning/critical and a blank message are
/// INVALID_ARGUMENT; users and operators may not alert.
#[tokio::test]
async fn system_alert_refuses_bad_severity_blank_message_and_users() {
    let service = Service::on_sqlite(60).await;
    let mut client = service.client().await;
    for severity in ["fatal", "WARNING", ""] {
        let refused =
            call(client.system_alert(as_caller(alert(severity, "Maintenance"), Role::Service)))
                .await;
        assert_refused(refused, Code::InvalidArgument, "invalid_request");
    }
    let blank = call(client.system_alert(as_caller(alert("info", "  "), Role::Service))).await;
    assert_refused(blank, Code::InvalidArgument, "invalid_request");
    for role in [Role::User, Role::Operator] {
        let refused = call(client.system_alert(as_caller(alert("info", "Hello"), role))).await;
        assert_refused(refused, Code::PermissionDenied, "forbidden");
    }
    service.stop().await;
}
