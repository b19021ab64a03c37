//! [`AssistantError`], the one error type of this crate.

/// Why an assistant could not be built or could not answer.
///
/// The first group are configuration errors, reported by
/// [`build`](crate::build) at start-up; the rest happen per answer. Callers
/// map them to the wire in one place; the `Display` text is for logs.
#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    /// The model API URL does not parse, or is not `http://` or `https://`.
    #[error("invalid model API URL {url:?}: expected an http:// or https:// URL")]
    InvalidUrl {
        /// The configured URL.
        url: String,
    },
    /// An `https://` URL was configured but the crate was built without its
    /// `tls` feature.
    #[error(
        "model API URL {url:?} needs HTTPS, but chatai-assistant was built without its `tls` feature"
    )]
    TlsUnavailable {
        /// The configured URL.
        url: String,
    },
    /// The API key cannot be sent in an HTTP header (control characters).
    #[error("the model API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    /// A timeout of zero seconds was configured.
    #[error("the model API timeout must be at least one second")]
    InvalidTimeout,
    /// The HTTP client could not be set up.
    #[error("could not set up the HTTP client")]
    ClientBuild(#[source] reqwest::Error),

    /// The conversation has no user turn, or its last user turn is blank.
    #[error("the conversation has no user turn to answer")]
    NoUserTurn,
    /// The model API could not be reached, or the connection failed.
    #[error("request to the model API failed")]
    Http(#[source] reqwest::Error),
    /// The model API did not answer within the configured timeout.
    #[error("the model API did not answer within {secs} s")]
    Timeout {
        /// The configured timeout.
        secs: u64,
    },
    /// The model API answered with a non-2xx HTTP status.
    #[error("the model API answered with HTTP status {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The model API's body is not a chat completion.
    #[error("the model API's response is not a chat completion")]
    Malformed(#[source] serde_json::Error),
    /// The model API returned no choice, or a choice without text.
    #[error("the model API returned no answer text")]
    EmptyAnswer,
}
