//! The chat service's Prometheus metrics, defined once: the assistant's
//! latency and tokens, and the writer's group-commit batch sizes (its
//! statements' times are `chatai_kit::metrics::DB_STATEMENT_DURATION`,
//! recorded with [`chatai_kit::metrics::timed_statement`]). Every series
//! carries `service="chat"`.

use std::time::Duration;

/// The `service` label of every chat series.
pub const SERVICE: &str = "chat";

/// How long the assistant took to answer, by `outcome` (`ok`, `error`).
pub const ASSISTANT_DURATION: &str = "chatai_chat_assistant_duration_seconds";
/// Tokens the assistant's answers used (what users are charged).
pub const ASSISTANT_TOKENS: &str = "chatai_chat_assistant_tokens_total";
/// Write requests committed together in one transaction.
pub const COMMIT_BATCH_SIZE: &str = "chatai_chat_commit_batch_size";

/// Every metric this crate records.
pub const NAMES: &[&str] = &[ASSISTANT_DURATION, ASSISTANT_TOKENS, COMMIT_BATCH_SIZE];

/// The assistant answered (with `tokens`) or failed (`None`) after `took`.
pub fn assistant_answered(took: Duration, tokens: Option<u32>) {
    let outcome = if tokens.is_some() { "ok" } else { "error" };
    metrics::histogram!(ASSISTANT_DURATION, "service" => SERVICE, "outcome" => outcome)
        .record(took.as_secs_f64());
    if let Some(tokens) = tokens {
        metrics::counter!(ASSISTANT_TOKENS, "service" => SERVICE).increment(u64::from(tokens));
    }
}

/// The writer runs `requests` write requests in one transaction.
pub fn commit_batch(requests: usize) {
    metrics::histogram!(COMMIT_BATCH_SIZE, "service" => SERVICE).record(requests as f64);
}
