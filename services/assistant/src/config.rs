//! The assistant's configuration: which assistant answers and how to reach a model.

use std::fmt;

/// Configuration, read from the environment by the binary through clap.
///
/// Flatten it into the process's own clap struct (`#[command(flatten)]`).
/// [`Default`] gives the same values as the clap defaults.
#[derive(clap::Args, Clone)]
pub struct AssistantConfig {
    /// Which assistant answers: `knowledge-base` (built in, default) or `openai`.
    #[arg(
        long = "assistant",
        env = "CHATAI_ASSISTANT",
        value_enum,
        default_value = "knowledge-base"
    )]
    pub kind: AssistantKind,

    /// Display name, sent to clients as `assistant_name`.
    #[arg(
        long = "assistant-name",
        env = "CHATAI_ASSISTANT_NAME",
        default_value = "Support Assistant"
    )]
    pub name: String,

    /// Base URL of the OpenAI-compatible API; the client POSTs to
    /// `{url}/chat/completions`. `https://` needs this crate's `tls` feature.
    #[arg(
        long = "openai-url",
        env = "CHATAI_OPENAI_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_url: String,

    /// Model name sent in each request.
    #[arg(
        long = "openai-model",
        env = "CHATAI_OPENAI_MODEL",
        default_value = "gpt-4o-mini"
    )]
    pub openai_model: String,

    /// API key, sent as `Authorization: Bearer {key}`; unset = no header.
    #[arg(
        long = "openai-api-key",
        env = "CHATAI_OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<String>,

    /// Whole-request timeout for the model API, in seconds (at least 1).
    #[arg(
        long = "openai-timeout-secs",
        env = "CHATAI_OPENAI_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub openai_timeout_secs: u64,
}

/// Which [`Assistant`](crate::Assistant) [`build`](crate::build) makes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssistantKind {
    /// The built-in FAQ knowledge base ([`KnowledgeBase`](crate::KnowledgeBase)).
    #[default]
    KnowledgeBase,
    /// An OpenAI-compatible chat-completions API ([`OpenAiCompatible`](crate::OpenAiCompatible)).
    Openai,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        Self {
            kind: AssistantKind::KnowledgeBase,
            name: "Support Assistant".to_owned(),
            openai_url: "https://api.openai.com/v1".to_owned(),
            openai_model: "gpt-4o-mini".to_owned(),
            openai_api_key: None,
            openai_timeout_secs: 30,
        }
    }
}

/// Written by hand so the API key never reaches a log line.
impl fmt::Debug for AssistantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssistantConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("openai_url", &self.openai_url)
            .field("openai_model", &self.openai_model)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("openai_timeout_secs", &self.openai_timeout_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        assistant: AssistantConfig,
    }

    /// Flags parse into the config, a zero timeout is refused, and the clap defaults equal `Default`.
    #[test]
    fn flags_parse_and_defaults_match() {
        let cli = Cli::try_parse_from([
            "chatai",
            "--assistant",
            "openai",
            "--assistant-name",
            "Ada",
            "--openai-url",
            "http://localhost:11434/v1",
            "--openai-model",
            "llama3",
            "--openai-api-key",
            "sk-test",
            "--openai-timeout-secs",
            "5",
        ])
        .expect("parses");
        let config = cli.assistant;
        assert_eq!(config.kind, AssistantKind::Openai);
        assert_eq!(config.name, "Ada");
        assert_eq!(config.openai_url, "http://localhost:11434/v1");
        assert_eq!(config.openai_model, "llama3");
        assert_eq!(config.openai_api_key.as_deref(), Some("sk-test"));
        assert_eq!(config.openai_timeout_secs, 5);

        let zero = Cli::try_parse_from(["chatai", "--openai-timeout-secs", "0"]);
        assert!(zero.is_err(), "a zero timeout is refused");

        // The clap defaults, given back as flags so that environment
        // variables of the machine running the tests cannot interfere.
        let mut args = vec!["chatai".to_owned()];
        for arg in Cli::command().get_arguments() {
            if let (Some(long), [value]) = (arg.get_long(), arg.get_default_values()) {
                args.push(format!("--{long}"));
                args.push(value.to_string_lossy().into_owned());
            }
        }
        let from_clap = Cli::try_parse_from(args).expect("parses").assistant;
        let default = AssistantConfig::default();
        assert_eq!(from_clap.kind, default.kind);
        assert_eq!(from_clap.name, default.name);
        assert_eq!(from_clap.openai_url, default.openai_url);
        assert_eq!(from_clap.openai_model, default.openai_model);
        assert_eq!(from_clap.openai_timeout_secs, default.openai_timeout_secs);
    }

    /// Debug output never shows the API key.
    #[test]
    fn debug_redacts_the_key() {
        let config = AssistantConfig {
            openai_api_key: Some("sk-very-secret".to_owned()),
            ..AssistantConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
