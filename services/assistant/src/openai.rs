//! [`OpenAiCompatible`]: the client for an OpenAI-compatible chat-completions API.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::handoff::{
    HANDOFF_MARKER, NO_GOOD_ANSWER_TEXT, REQUESTED_TEXT, asks_for_human, strip_marker,
};
use crate::{
    Answer, Assistant, AssistantConfig, AssistantError, HumanReason, Speaker, Turn, last_user_turn,
    tokens,
};

/// An assistant backed by any server speaking OpenAI's `POST
/// {url}/chat/completions`.
///
/// Each answer sends a system prompt and the dialog up to the last user turn
/// (user turns as `user`, the assistant's and operators' as `assistant`), and
/// reads `choices[0].message.content` and `usage.total_tokens` (falling back
/// to [`estimate_tokens`](crate::estimate_tokens) of question plus answer when
/// the server reports no usage).
///
/// Handoffs: a user asking for a person is answered at once with
/// [`HumanReason::Requested`], without calling the model (no cost, and it
/// works while the API is down). The system prompt tells the model to reply
/// `[HANDOFF]` when it cannot answer well; a reply containing that marker is
/// [`HumanReason::NoGoodAnswer`].
pub struct OpenAiCompatible {
    name: String,
    model: String,
    endpoint: reqwest::Url,
    authorization: Option<HeaderValue>,
    timeout_secs: u64,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    /// A client for the model API in `config`.
    ///
    /// Checks everything that can be checked without a request: the URL
    /// (`http://`, or `https://` with the `tls` feature), the key (must fit
    /// in a header) and the timeout (at least one second).
    pub fn new(config: &AssistantConfig) -> Result<Self, AssistantError> {
        let base = config.openai_url.trim_end_matches('/');
        let invalid = || AssistantError::InvalidUrl {
            url: config.openai_url.clone(),
        };
        let endpoint =
            reqwest::Url::parse(&format!("{base}/chat/completions")).map_err(|_| invalid())?;
        match endpoint.scheme() {
            "http" => {}
            "https" if cfg!(feature = "tls") => {}
            "https" => {
                return Err(AssistantError::TlsUnavailable {
                    url: config.openai_url.clone(),
                });
            }
            _ => return Err(invalid()),
        }
        if endpoint.host_str().is_none() {
            return Err(invalid());
        }

        let authorization = config
            .openai_api_key
            .as_deref()
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| AssistantError::InvalidApiKey)?;
                value.set_sensitive(true);
                Ok::<_, AssistantError>(value)
            })
            .transpose()?;

        if config.openai_timeout_secs == 0 {
            return Err(AssistantError::InvalidTimeout);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.openai_timeout_secs))
            .build()
            .map_err(AssistantError::ClientBuild)?;

        Ok(Self {
            name: config.name.clone(),
            model: config.openai_model.clone(),
            endpoint,
            authorization,
            timeout_secs: config.openai_timeout_secs,
            client,
        })
    }

    fn system_prompt(&self) -> String {
        format!(
            "You are {name}, the support assistant of ChatAI, a real-time AI chat platform \
             where users chat with an AI assistant and can be handed to human operators; \
             AI answers are charged to a prepaid balance per token used. Answer the user's \
             last message helpfully, briefly and in the user's language. If you cannot \
             answer it well, or it needs something only a human can do, reply with exactly \
             {HANDOFF_MARKER} and nothing else: a human operator will then take over.",
            name = self.name
        )
    }

    /// Maps a transport error, telling a timeout apart.
    fn transport(&self, error: reqwest::Error) -> AssistantError {
        if error.is_timeout() {
            AssistantError::Timeout {
                secs: self.timeout_secs,
            }
        } else {
            AssistantError::Http(error)
        }
    }
}

/// The request body.
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// The parts of the response body we read; everything else is ignored.
#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// The longest piece of an error body that goes into the logs.
const LOGGED_BODY_CHARS: usize = 500;

#[async_trait::async_trait]
impl Assistant for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    async fn answer(&self, conversation: &[Turn]) -> Result<Answer, AssistantError> {
        let (last, question) = last_user_turn(conversation)?;
        if asks_for_human(question) {
            return Ok(Answer {
                text: REQUESTED_TEXT.to_owned(),
                tokens_used: tokens::exchange(question, REQUESTED_TEXT),
                needs_human: Some(HumanReason::Requested),
            });
        }

        let system = self.system_prompt();
        let mut messages = Vec::with_capacity(last + 2);
        messages.push(Message {
            role: "system",
            content: &system,
        });
        messages.extend(conversation.iter().take(last + 1).map(|turn| Message {
            role: match turn.speaker {
                Speaker::User => "user",
                Speaker::Assistant | Speaker::Operator => "assistant",
            },
            content: &turn.text,
        }));
        let body = ChatRequest {
            model: &self.model,
            messages,
        };

        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        tracing::debug!(endpoint = %self.endpoint, model = %self.model, turns = last + 1, "asking the model");
        let response = request.send().await.map_err(|e| self.transport(e))?;

        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(LOGGED_BODY_CHARS).collect();
            tracing::warn!(status = status.as_u16(), %body, "the model API answered with an error status");
            return Err(AssistantError::Status {
                status: status.as_u16(),
            });
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let completion: ChatResponse =
            serde_json::from_slice(&bytes).map_err(AssistantError::Malformed)?;

        let reply = completion
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .map(|content| content.trim().to_owned())
            .filter(|content| !content.is_empty())
            .ok_or(AssistantError::EmptyAnswer)?;

        let (text, needs_human) = match strip_marker(&reply) {
            Some(rest) if rest.is_empty() => (
                NO_GOOD_ANSWER_TEXT.to_owned(),
                Some(HumanReason::NoGoodAnswer),
            ),
            Some(rest) => (rest, Some(HumanReason::NoGoodAnswer)),
            None => (reply, None),
        };
        let tokens_used = completion
            .usage
            .and_then(|usage| usage.total_tokens)
            .map(|total| u32::try_from(total).unwrap_or(u32::MAX))
            .filter(|&total| total > 0)
            .unwrap_or_else(|| tokens::exchange(question, &text));

        Ok(Answer {
            text,
            tokens_used,
            needs_human,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::AssistantKind;

    /// What the fake model API received.
    #[derive(Debug)]
    struct Captured {
        method: Method,
        path: String,
        authorization: Option<String>,
        body: Value,
    }

    /// How the fake model API answers.
    #[derive(Clone)]
    enum Reply {
        /// This status and body.
        With(u16, String),
        /// Never.
        Hang,
    }

    struct Fake {
        reply: Reply,
        seen: mpsc::UnboundedSender<Captured>,
    }

    async fn handle(
        State(fake): State<Arc<Fake>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let captured = Captured {
            method,
            path: uri.path().to_owned(),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let _ = fake.seen.send(captured);
        match &fake.reply {
            Reply::With(status, body) => (
                StatusCode::from_u16(*status).expect("valid status"),
                [(header::CONTENT_TYPE, "application/json")],
                body.clone(),
            )
                .into_response(),
            Reply::Hang => std::future::pending().await,
        }
    }

    /// Starts a fake model API on 127.0.0.1:0 (bound before it is used, no
    /// sleeps); returns its base URL (`http://…/v1`) and what it receives.
    async fn fake_api(reply: Reply) -> (String, mpsc::UnboundedReceiver<Captured>) {
        let (seen, received) = mpsc::unbounded_channel();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::new(Fake { reply, seen }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), received)
    }

    fn completion(content: &str, total_tokens: Option<u64>) -> String {
        let mut body = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "finish_reason": "stop"
            }]
        });
        if let Some(total) = total_tokens {
            body["usage"] = json!({
                "prompt_tokens": 30, "completion_tokens": total - 30, "total_tokens": total
            });
        }
        body.to_string()
    }

    fn config(url: &str) -> AssistantConfig {
        AssistantConfig {
            kind: AssistantKind::Openai,
            name: "Ada".to_owned(),
            openai_url: url.to_owned(),
            openai_model: "test-model".to_owned(),
            openai_api_key: Some("sk-test".to_owned()),
            openai_timeout_secs: 5,
        }
    }

    fn client(url: &str) -> OpenAiCompatible {
        OpenAiCompatible::new(&config(url)).expect("client")
    }

    /// The request goes to `{url}/chat/completions` with the bearer key, the model, a system
    /// prompt and the dialog up to the last user turn (operators as `assistant`); the reply's
    /// content and `usage.total_tokens` become the answer.
    #[tokio::test]
    async fn sends_the_dialog_and_reads_the_completion() {
        let (url, mut received) = fake_api(Reply::With(
            200,
            completion("Use “Forgot password?” on the sign-in page.", Some(42)),
        ))
        .await;
        let assistant = client(&url);
        let conversation = [
            Turn::user("Hi"),
            Turn::new(Speaker::Assistant, "Hello! How can I help?"),
            Turn::new(Speaker::Operator, "An operator note."),
            Turn::user("How do I reset my password?"),
            Turn::new(Speaker::Operator, "Typed after the question."),
        ];

        let answer = assistant.answer(&conversation).await.expect("answers");
        assert_eq!(
            answer,
            Answer {
                text: "Use “Forgot password?” on the sign-in page.".to_owned(),
                tokens_used: 42,
                needs_human: None,
            }
        );

        let request = received.recv().await.expect("one request");
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(request.body["model"], "test-model");
        let messages = request.body["messages"].as_array().expect("messages");
        let roles: Vec<&str> = messages.iter().filter_map(|m| m["role"].as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "assistant", "user"]);
        let contents: Vec<&str> = messages
            .iter()
            .skip(1)
            .filter_map(|m| m["content"].as_str())
            .collect();
        assert_eq!(
            contents,
            [
                "Hi",
                "Hello! How can I help?",
                "An operator note.",
                "How do I reset my password?"
            ]
        );
        let system = messages[0]["content"].as_str().expect("system prompt");
        assert!(
            system.contains("Ada") && system.contains(HANDOFF_MARKER),
            "{system}"
        );
    }

    /// Without a key no Authorization header is sent, and a trailing slash in the URL is fine.
    #[tokio::test]
    async fn no_key_no_authorization_header() {
        let (url, mut received) = fake_api(Reply::With(200, completion("Hello.", Some(40)))).await;
        let assistant = OpenAiCompatible::new(&AssistantConfig {
            openai_api_key: None,
            ..config(&format!("{url}/"))
        })
        .expect("client");
        assistant
            .answer(&[Turn::user("Hello?")])
            .await
            .expect("answers");
        let request = received.recv().await.expect("one request");
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.authorization, None);
    }

    /// Without `usage` in the response, tokens fall back to the estimate of question plus answer.
    #[tokio::test]
    async fn missing_usage_falls_back_to_the_estimate() {
        let (url, _received) = fake_api(Reply::With(200, completion("Twelve chars", None))).await;
        let answer = client(&url)
            .answer(&[Turn::user("abcdefgh")])
            .await
            .expect("answers");
        assert_eq!(answer.tokens_used, 2 + 3);
    }

    /// A reply that is the handoff marker becomes the polite handoff text with `NoGoodAnswer`;
    /// text around the marker is kept without it.
    #[tokio::test]
    async fn the_handoff_marker_asks_for_a_human() {
        let (url, _received) =
            fake_api(Reply::With(200, completion(" [HANDOFF]\n", Some(35)))).await;
        let answer = client(&url)
            .answer(&[Turn::user("Why was I charged twice?")])
            .await
            .expect("answers");
        assert_eq!(answer.needs_human, Some(HumanReason::NoGoodAnswer));
        assert_eq!(answer.text, NO_GOOD_ANSWER_TEXT);
        assert_eq!(answer.tokens_used, 35);

        let (url, _received) = fake_api(Reply::With(
            200,
            completion(
                "Let me find someone who can check that. [HANDOFF]",
                Some(50),
            ),
        ))
        .await;
        let answer = client(&url)
            .answer(&[Turn::user("Why was I charged twice?")])
            .await
            .expect("answers");
        assert_eq!(answer.needs_human, Some(HumanReason::NoGoodAnswer));
        assert_eq!(answer.text, "Let me find someone who can check that.");
    }

    /// A user asking for a person is answered with `Requested` without calling the model.
    #[tokio::test]
    async fn asking_for_a_person_skips_the_model() {
        let (url, mut received) = fake_api(Reply::With(500, String::new())).await;
        let answer = client(&url)
            .answer(&[Turn::user("I want to talk to a human")])
            .await
            .expect("answers");
        assert_eq!(answer.needs_human, Some(HumanReason::Requested));
        assert_eq!(answer.text, REQUESTED_TEXT);
        assert!(answer.tokens_used > 0);
        assert!(received.try_recv().is_err(), "the model was called");
    }

    /// A non-2xx response is `Status` with the code.
    #[tokio::test]
    async fn error_status_is_typed() {
        let (url, _received) = fake_api(Reply::With(
            500,
            r#"{"error":{"message":"boom"}}"#.to_owned(),
        ))
        .await;
        let result = client(&url).answer(&[Turn::user("Hello?")]).await;
        assert!(
            matches!(result, Err(AssistantError::Status { status: 500 })),
            "{result:?}"
        );
    }

    /// A body that is not a chat completion is `Malformed`; one without answer text is `EmptyAnswer`.
    #[tokio::test]
    async fn malformed_and_empty_bodies_are_typed() {
        for body in ["<html>oops</html>", r#"{"choices": "many"}"#, "{}"] {
            let (url, _received) = fake_api(Reply::With(200, body.to_owned())).await;
            let result = client(&url).answer(&[Turn::user("Hello?")]).await;
            assert!(
                matches!(result, Err(AssistantError::Malformed(_))),
                "{body}: {result:?}"
            );
        }
        for body in [
            r#"{"choices": []}"#,
            r#"{"choices": [{"message": {"role": "assistant", "content": null}}]}"#,
            r#"{"choices": [{"message": {"role": "assistant", "content": "  "}}]}"#,
        ] {
            let (url, _received) = fake_api(Reply::With(200, body.to_owned())).await;
            let result = client(&url).answer(&[Turn::user("Hello?")]).await;
            assert!(
                matches!(result, Err(AssistantError::EmptyAnswer)),
                "{body}: {result:?}"
            );
        }
    }

    /// A server that never answers is `Timeout` (the clock is paused, so the test does not wait).
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let (url, _received) = fake_api(Reply::Hang).await;
        let result = client(&url).answer(&[Turn::user("Hello?")]).await;
        assert!(
            matches!(result, Err(AssistantError::Timeout { secs: 5 })),
            "{result:?}"
        );
    }

    /// Nothing listening is an `Http` error.
    #[tokio::test]
    async fn unreachable_server_is_an_http_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let result = client(&format!("http://{addr}/v1"))
            .answer(&[Turn::user("Hello?")])
            .await;
        assert!(matches!(result, Err(AssistantError::Http(_))), "{result:?}");
    }

    /// A conversation with no user turn is `NoUserTurn`, before any request.
    #[tokio::test]
    async fn no_user_turn_is_an_error() {
        let (url, mut received) = fake_api(Reply::With(200, completion("Hi", None))).await;
        let result = client(&url)
            .answer(&[Turn::new(Speaker::Operator, "Anyone there?")])
            .await;
        assert!(
            matches!(result, Err(AssistantError::NoUserTurn)),
            "{result:?}"
        );
        assert!(received.try_recv().is_err(), "the model was called");
    }

    /// Unusable configurations are refused at construction, each with its own error.
    #[test]
    fn bad_configurations_are_refused() {
        let refused = |config: AssistantConfig| OpenAiCompatible::new(&config).err();
        let base = config("http://127.0.0.1:9/v1");
        assert!(matches!(
            refused(AssistantConfig {
                openai_url: "not a url".to_owned(),
                ..base.clone()
            }),
            Some(AssistantError::InvalidUrl { .. })
        ));
        assert!(matches!(
            refused(AssistantConfig {
                openai_url: "ftp://example.com/v1".to_owned(),
                ..base.clone()
            }),
            Some(AssistantError::InvalidUrl { .. })
        ));
        assert!(matches!(
            refused(AssistantConfig {
                openai_api_key: Some("sk-\nbroken".to_owned()),
                ..base.clone()
            }),
            Some(AssistantError::InvalidApiKey)
        ));
        assert!(matches!(
            refused(AssistantConfig {
                openai_timeout_secs: 0,
                ..base.clone()
            }),
            Some(AssistantError::InvalidTimeout)
        ));
        let https = refused(AssistantConfig {
            openai_url: "https://api.openai.com/v1".to_owned(),
            ..base
        });
        if cfg!(feature = "tls") {
            assert!(https.is_none(), "{https:?}");
        } else {
            assert!(
                matches!(https, Some(AssistantError::TlsUnavailable { .. })),
                "{https:?}"
            );
        }
    }
}
