//! The token-count approximation used when no model reports usage.

/// Approximate number of model tokens in `text`: one token per four
/// characters (Unicode scalar values), rounded up — OpenAI's rule of thumb for
/// English text (about ¾ of a word per token).
///
/// It is 0 only for an empty string, so an exchange with a non-empty question
/// or answer is never free. The knowledge base charges
/// `estimate_tokens(question) + estimate_tokens(answer)`; the OpenAI-compatible
/// client does the same only when the server sends no `usage`.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens of one exchange: the question plus the answer, at least 1.
pub(crate) fn exchange(question: &str, answer: &str) -> u32 {
    estimate_tokens(question)
        .saturating_add(estimate_tokens(answer))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate is ceil(chars / 4), counting characters rather than bytes, and 0 only when empty.
    #[test]
    fn estimate_is_chars_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("How do I reset my password?"), 7);
        // Four two-byte characters are one token, not two.
        assert_eq!(estimate_tokens("éééé"), 1);
    }

    /// An exchange costs the sum of both sides and never 0.
    #[test]
    fn exchange_sums_and_is_never_zero() {
        assert_eq!(exchange("abcd", "abcdefgh"), 3);
        assert_eq!(exchange("", ""), 1);
    }
}
