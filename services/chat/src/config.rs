//! The chat service's configuration, read from the environment by the binary.

use chatai_assistant::AssistantConfig;

/// The chat service's own settings (the shared ones are in
/// [`chatai_kit::config::ServiceCommon`]). [`Default`] gives the same values
/// as the clap defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatConfig {
    /// Balance a user starts with, in currency units.
    #[arg(
        long = "starting-balance",
        env = "CHATAI_STARTING_BALANCE",
        default_value_t = 10.0
    )]
    pub starting_balance: f64,
    /// Price of 1 000 assistant tokens, in currency units.
    #[arg(
        long = "price-per-1k-tokens",
        env = "CHATAI_PRICE_PER_1K_TOKENS",
        default_value_t = 0.02
    )]
    pub price_per_1k_tokens: f64,
    /// A `balance_alert` is sent when a charge takes the balance below this.
    #[arg(
        long = "balance-threshold",
        env = "CHATAI_BALANCE_THRESHOLD",
        default_value_t = 5.0
    )]
    pub balance_threshold: f64,
    /// The longest message accepted, in characters.
    #[arg(
        long = "max-message-chars",
        env = "CHATAI_MAX_MESSAGE_CHARS",
        default_value_t = 8_000
    )]
    pub max_message_chars: usize,
    /// How many recent messages the assistant sees.
    #[arg(
        long = "assistant-context",
        env = "CHATAI_ASSISTANT_CONTEXT",
        default_value_t = 20
    )]
    pub assistant_context: u32,
    #[command(flatten)]
    pub assistant: AssistantConfig,
}

/// The clap defaults.
impl Default for ChatConfig {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}
