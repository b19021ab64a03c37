//! The AI assistant that answers users' chat messages, behind one trait.
//!
//! The chat service holds an [`Arc<dyn Assistant>`](Assistant) built once from
//! [`AssistantConfig`] by [`build`], and for each user message calls
//! [`Assistant::answer`] with the dialog so far. The [`Answer`] carries the
//! text, the tokens it used (what the user's balance is charged) and whether a
//! human operator should take over ([`HumanReason`]).
//!
//! Two implementations:
//! - [`KnowledgeBase`] (the default): a built-in FAQ about ChatAI, searched
//!   with BM25. No network, no model; deterministic, so the whole system runs
//!   and is tested offline.
//! - [`OpenAiCompatible`]: any server speaking OpenAI's `POST
//!   /chat/completions` (OpenAI itself, vLLM, Ollama, llama.cpp, …).
//!
//! Both detect a user asking for a person ("talk to a human", "operator
//! please", …) with the same rules and answer it with
//! `needs_human: Some(HumanReason::Requested)` without consulting anything
//! else, so a handoff works even when the model API is down.
//!
//! HTTPS: the workspace's `reqwest` is built without TLS. This crate's `tls`
//! feature (off by default, to keep compile cost low) turns on rustls with the
//! ring provider and the bundled webpki roots — no aws-lc, no system
//! certificate store. Without it only `http://` model URLs are accepted and an
//! `https://` URL is refused by [`OpenAiCompatible::new`] with
//! [`AssistantError::TlsUnavailable`], so a misconfiguration shows at start-up
//! rather than on the first message.
//!
//! # Layout
//! - `lib.rs` — the [`Assistant`] trait, the conversation and answer types,
//!   [`build`].
//! - `config.rs` — [`AssistantConfig`], read from the environment via clap.
//! - `error.rs` — [`AssistantError`], the one error type of this crate.
//! - `knowledge_base.rs` — [`KnowledgeBase`]: FAQ retrieval and its answers.
//! - `faq.rs` + `faq.md` — the FAQ file format ([`parse_faq`]) and the bundled
//!   FAQ itself.
//! - `bm25.rs` — the BM25 index used by the knowledge base.
//! - `analysis.rs` — the retrieval tokenizer: lowercasing, stopwords, light
//!   stemming.
//! - `handoff.rs` — detecting a request for a person, the handoff marker and
//!   the canned handoff texts.
//! - `openai.rs` — [`OpenAiCompatible`], the chat-completions client.
//! - `tokens.rs` — [`estimate_tokens`], the token-count approximation used
//!   when no model reports usage.

mod analysis;
mod bm25;
mod config;
mod error;
mod faq;
mod handoff;
mod knowledge_base;
mod openai;
mod tokens;

use std::sync::Arc;

pub use config::{AssistantConfig, AssistantKind};
pub use error::AssistantError;
pub use faq::{FaqEntry, FaqError, parse_faq};
pub use knowledge_base::KnowledgeBase;
pub use openai::OpenAiCompatible;
pub use tokens::estimate_tokens;

/// Something that answers a user in a dialog.
#[async_trait::async_trait]
pub trait Assistant: Send + Sync + 'static {
    /// Display name sent to clients as `assistant_name`.
    fn name(&self) -> &str;

    /// Whether the answer depends on more than the question itself: when
    /// not, the caller passes only the question and reads no history.
    fn reads_history(&self) -> bool {
        true
    }

    /// Answers the last user turn of `conversation` (oldest first).
    ///
    /// Turns after the last user turn (an operator's or the assistant's) are
    /// ignored. A conversation with no user turn, or whose last user turn is
    /// blank, is an [`AssistantError::NoUserTurn`].
    async fn answer(&self, conversation: &[Turn]) -> Result<Answer, AssistantError>;
}

/// One message of a dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who wrote it.
    pub speaker: Speaker,
    /// What they wrote.
    pub text: String,
}

impl Turn {
    /// A turn by `speaker` saying `text`.
    pub fn new(speaker: Speaker, text: impl Into<String>) -> Self {
        Self {
            speaker,
            text: text.into(),
        }
    }

    /// A user's turn.
    pub fn user(text: impl Into<String>) -> Self {
        Self::new(Speaker::User, text)
    }
}

/// Who wrote a [`Turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The customer.
    User,
    /// This assistant (an earlier answer).
    Assistant,
    /// A human operator who held the dialog.
    Operator,
}

/// The assistant's reply to one user turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The reply, shown to the user as the `ai_response` message.
    pub text: String,
    /// Tokens this exchange used: reported by the model, or
    /// [`estimate_tokens`] of the question plus the answer. At least 1.
    pub tokens_used: u32,
    /// `Some` when a human operator should take the dialog over.
    pub needs_human: Option<HumanReason>,
}

/// Why an [`Answer`] asks for a human operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumanReason {
    /// The user asked for a person.
    Requested,
    /// The assistant has no good answer (nothing in the knowledge base
    /// matched well, or the model replied with the handoff marker).
    NoGoodAnswer,
}

/// Builds the assistant `config` selects.
///
/// Fails only for the OpenAI-compatible client, on a configuration it cannot
/// use (see [`OpenAiCompatible::new`]); the knowledge base always builds.
pub fn build(config: &AssistantConfig) -> Result<Arc<dyn Assistant>, AssistantError> {
    Ok(match config.kind {
        AssistantKind::KnowledgeBase => Arc::new(KnowledgeBase::bundled(config.name.clone())),
        AssistantKind::Openai => Arc::new(OpenAiCompatible::new(config)?),
    })
}

/// The index and trimmed text of the last user turn; `NoUserTurn` when there
/// is none or its text is blank.
fn last_user_turn(conversation: &[Turn]) -> Result<(usize, &str), AssistantError> {
    conversation
        .iter()
        .enumerate()
        .rev()
        .find(|(_, turn)| turn.speaker == Speaker::User)
        .map(|(index, turn)| (index, turn.text.trim()))
        .filter(|(_, text)| !text.is_empty())
        .ok_or(AssistantError::NoUserTurn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default configuration builds the knowledge base under the configured name.
    #[test]
    fn build_defaults_to_the_knowledge_base() {
        let config = AssistantConfig {
            name: "Helper".to_owned(),
            ..AssistantConfig::default()
        };
        let assistant = build(&config).expect("knowledge base builds");
        assert_eq!(assistant.name(), "Helper");
    }

    /// `build` with `openai` and a plain-HTTP URL gives a client under the configured name.
    #[test]
    fn build_selects_the_openai_client() {
        let config = AssistantConfig {
            kind: AssistantKind::Openai,
            openai_url: "http://127.0.0.1:9/v1".to_owned(),
            ..AssistantConfig::default()
        };
        let assistant = build(&config).expect("client builds");
        assert_eq!(assistant.name(), "Support Assistant");
    }

    /// The last user turn is found behind later operator turns; none, or a blank one, is `NoUserTurn`.
    #[test]
    fn last_user_turn_rules() {
        let conversation = [
            Turn::user("first"),
            Turn::new(Speaker::Assistant, "reply"),
            Turn::user("  second  "),
            Turn::new(Speaker::Operator, "operator note"),
        ];
        let (index, text) = last_user_turn(&conversation).expect("has a user turn");
        assert_eq!((index, text), (2, "second"));

        assert!(matches!(
            last_user_turn(&[]),
            Err(AssistantError::NoUserTurn)
        ));
        assert!(matches!(
            last_user_turn(&[Turn::new(Speaker::Operator, "hello")]),
            Err(AssistantError::NoUserTurn)
        ));
        assert!(matches!(
            last_user_turn(&[Turn::user("   ")]),
            Err(AssistantError::NoUserTurn)
        ));
    }
}
