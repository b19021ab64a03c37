//! An SSE client for the tests: `GET /sse` with reqwest, the body read as it
//! streams and cut into events ([`SseClient`]); and `POST /api/frames`
//! ([`post_frame`]).

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;

use super::{TestApp, WAIT};

/// One event of the stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:` line, if any.
    pub id: Option<String>,
    /// Its `data:` lines, joined with `\n`, read as JSON.
    pub frame: Value,
}

/// An open `GET /sse` response, read event by event.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    /// Comments (`: ping`) seen so far.
    pub comments: usize,
}

impl SseClient {
    /// Opens `/sse{query}` with `token` as a Bearer header (none: no
    /// header) and `last_event_id`, and checks it is a stream.
    pub async fn open(
        app: &TestApp,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let response = open_raw(app, token, query, last_event_id, None).await;
        assert_eq!(response.status(), 200, "GET /sse{query} is a stream");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        SseClient {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// Opens the stream and reads `connected`.
    pub async fn connect(
        app: &TestApp,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (SseClient, SseEvent) {
        let mut client = SseClient::open(app, Some(token), "", last_event_id).await;
        let connected = client.next().await;
        assert_eq!(connected.frame["type"], "connected", "{:?}", connected);
        (client, connected)
    }

    /// The next event (comments counted and skipped); fails the test after
    /// [`WAIT`] or when the stream ends.
    pub async fn next(&mut self) -> SseEvent {
        self.try_next()
            .await
            .expect("the stream goes on with another event")
    }

    /// The next event, or `None` once the stream ended.
    pub async fn try_next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = Vec::new();
                let mut comment = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push(value);
                    } else if line.starts_with(':') {
                        comment = true;
                    } else if !line.is_empty() {
                        panic!("an unexpected line in the stream: {line:?}");
                    }
                }
                if data.is_empty() {
                    assert!(comment, "an empty event: {block:?}");
                    self.comments += 1;
                    continue;
                }
                let frame = serde_json::from_str(&data.join("\n")).expect("an event is JSON");
                return Some(SseEvent { id, frame });
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event arrives in time")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("the stream is UTF-8")),
                None => return None,
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> SseEvent {
        loop {
            let event = self.next().await;
            if event.frame["type"] == kind {
                return event;
            }
        }
    }

    /// Reads to the end: the `closed` event, then the end of the stream.
    pub async fn expect_closed(&mut self, code: u16) -> Value {
        let closed = self.next_of("closed").await;
        assert_eq!(closed.frame["code"], code, "{:?}", closed);
        assert!(closed.id.is_none());
        assert!(self.try_next().await.is_none(), "nothing after `closed`");
        closed.frame
    }
}

/// `GET /sse{query}` as sent, not read.
pub async fn open_raw(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
    last_event_id: Option<&str>,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
        );
    }
    if let Some(id) = last_event_id {
        headers.insert(
            "last-event-id",
            HeaderValue::from_str(id).expect("a header value"),
        );
    }
    if let Some(origin) = origin {
        headers.insert(
            "origin",
            HeaderValue::from_str(origin).expect("a header value"),
        );
    }
    tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .get(app.http_url(&format!("/sse{query}")))
            .headers(headers)
            .send(),
    )
    .await
    .expect("the gateway answers in time")
    .expect("the request is sent")
}

/// `POST {path}` with `body` and `token` as a Bearer header: the status and
/// the body as JSON.
pub async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(app.http_url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the gateway answers in time")
        .expect("the request is sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body: {text:?}"));
    (status, value)
}

/// `POST /api/frames` with `frame`: the status and the answer frame.
pub async fn post_frame(app: &TestApp, token: &str, frame: &Value) -> (u16, Value) {
    post(app, "/api/frames", Some(token), &frame.to_string()).await
}
