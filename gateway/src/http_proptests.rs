//! Property tests of the HTTP and SSE inputs, as the frame parser has
//! (`frames/inbound/proptests.rs`): whatever a client puts in a
//! `POST /api/frames` body, a `Last-Event-ID` or `?cursor=`, a `?token=`
//! or an alert body, the gateway never panics and answers with an `error`
//! frame or a proper status; and an event written to a stream reads back
//! as the same frame.

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::alerts;
use crate::auth;
use crate::http_frames::{Route, route};
use crate::sse::{resume_point, write_event};

/// Text with JSON's and HTTP's special characters likely.
fn messy_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[{}\\[\\]\":,0-9a-z_ \\\\\n\r%&=+-]{0,64}",]
}

/// A frame-like JSON object: a type, perhaps an id, perhaps a
/// `connection_id` of any JSON kind, and other fields.
fn frame_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        messy_text().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    (
        prop::sample::select(vec!["chat_message", "join_room", "heartbeat", "nope", ""]),
        prop::option::of(value.clone()),
        prop::option::of(value.clone()),
        prop::collection::btree_map("[a-z_]{1,12}", value, 0..4),
    )
        .prop_map(|(kind, id, connection_id, extras)| {
            let mut frame = serde_json::Map::new();
            frame.insert("type".into(), kind.into());
            if let Some(id) = id {
                frame.insert("id".into(), id);
            }
            if let Some(connection_id) = connection_id {
                frame.insert("connection_id".into(), connection_id);
            }
            for (key, value) in extras {
                frame.entry(key).or_insert(value);
            }
            Value::Object(frame).to_string()
        })
}

/// An answer refused before dispatch is an `error` frame with a client
/// error status (or 200 for a frame-level error).
fn assert_error_answer(status: StatusCode, body: &str) {
    assert!(
        status == StatusCode::OK || status.is_client_error(),
        "{status}"
    );
    let frame: Value = serde_json::from_str(body).expect("the answer is JSON");
    assert_eq!(frame["type"], "error", "{frame}");
    assert!(frame["code"].is_string(), "{frame}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes as a body: routed, or refused with an `error` frame.
    #[test]
    fn any_body_is_routed_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err((status, frame)) = route(&body, 128) {
            assert_error_answer(status, &frame);
        }
    }

    /// Frame-like bodies: those with a string `connection_id` go to a
    /// stream, those without one are handled on their own, and any other
    /// `connection_id` is an `invalid_field` error.
    #[test]
    fn frame_like_bodies_go_where_their_connection_id_says(body in frame_like()) {
        let value: Value = serde_json::from_str(&body).expect("JSON");
        match (route(body.as_bytes(), 64 * 1024), value.get("connection_id")) {
            (Ok(Route::Stream { connection_id, .. }), Some(Value::String(named))) => {
                prop_assert_eq!(&connection_id, named);
            }
            (Ok(Route::OnItsOwn(text)), None | Some(Value::Null)) => prop_assert_eq!(text, body.as_str()),
            (Err((status, frame)), Some(_)) => {
                assert_error_answer(status, &frame);
                prop_assert!(frame.contains("invalid_field"));
            }
            (routed, named) => prop_assert!(false, "{routed:?} for connection_id {named:?}"),
        }
    }

    /// A body over the limit is 413, whatever it holds.
    #[test]
    fn big_bodies_are_413(body in prop::collection::vec(any::<u8>(), 65..200)) {
        let (status, frame) = route(&body, 64).expect_err("too large");
        prop_assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_error_answer(status, &frame);
    }

    /// Any `Last-Event-ID` header or `?cursor=` value resumes from some
    /// cursor (an unreadable one as expired); none panics.
    #[test]
    fn any_resume_point_is_read(value in messy_text(), query in messy_text()) {
        let mut headers = HeaderMap::new();
        if let Ok(header) = HeaderValue::from_str(&value) {
            headers.insert("last-event-id", header);
            prop_assert!(resume_point(&Uri::from_static("/sse"), &headers).is_some());
        }
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        if let Ok(uri) = format!("/sse?cursor={encoded}").parse::<Uri>() {
            prop_assert!(resume_point(&uri, &HeaderMap::new()).is_some());
        }
    }

    /// Any `?token=` value is found as given (decoded), or as none when
    /// empty; none panics.
    #[test]
    fn any_token_query_is_read(token in messy_text()) {
        let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let uri: Uri = format!("/sse?token={encoded}").parse().expect("an encoded query parses");
        let found = auth::presented_token(&uri, &HeaderMap::new()).map(|t| t.token);
        prop_assert_eq!(found, Some(token.clone()).filter(|t| !t.is_empty()));
    }

    /// Any alert body is read or refused with 400 and a code of the list.
    #[test]
    fn any_alert_body_is_read_or_refused(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        frame_like().prop_map(String::into_bytes),
        (messy_text(), messy_text(), prop::collection::vec(messy_text(), 0..3)).prop_map(|(m, s, a)| {
            json!({"message": m, "severity": s, "affected_services": a}).to_string().into_bytes()
        }),
    ]) {
        match alerts::read_body(&body) {
            Ok(alert) => prop_assert!(serde_json::from_slice::<Value>(&body).is_ok(), "{alert:?}"),
            Err((status, code, _)) => {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                prop_assert!(matches!(code.as_str(), "invalid_json" | "invalid_field"));
            }
        }
    }

    /// An event read back as a browser does (the `data:` lines joined with
    /// `\n`) is the frame it was written from, and its id is the cursor.
    #[test]
    fn events_read_back_as_their_frame(frame in any::<String>(), id in "[A-Za-z0-9_-]{0,40}") {
        let json = Value::from(frame).to_string();
        let mut buffer = BytesMut::new();
        write_event(&mut buffer, &json, Some(&id));
        let text = String::from_utf8(buffer.to_vec()).expect("UTF-8");
        prop_assert!(text.ends_with("\n\n"));
        let body = &text[..text.len() - 2];
        prop_assert!(!body.contains("\n\n"), "one event");
        let mut data = Vec::new();
        let mut seen_id = None;
        for line in body.split('\n') {
            if let Some(value) = line.strip_prefix("data: ") {
                data.push(value);
            } else if let Some(value) = line.strip_prefix("id: ") {
                seen_id = Some(value);
            } else {
                prop_assert!(false, "a stray line {line:?}");
            }
        }
        prop_assert_eq!(data.join("\n"), json);
        prop_assert_eq!(seen_id, Some(id.as_str()));
    }
}
