//! Handing a dialog to a human: detecting that the user asks for a person, the
//! model's handoff marker, and the canned texts that go with both.
//!
//! The detector is shared by every assistant so that "talk to a human" gives
//! the same result whichever one is configured. It looks for a request, not a
//! mention: "how does handoff to a human operator work?" is a question for
//! the FAQ, "can I speak to an operator?" is a request.

/// What the user is told when they asked for a person.
pub(crate) const REQUESTED_TEXT: &str = "Of course — I'm asking a human operator to join this \
     conversation. Someone will be with you shortly; you can keep writing in the meantime.";

/// What the user is told when the assistant has no good answer.
pub(crate) const NO_GOOD_ANSWER_TEXT: &str = "I'm not sure I have a good answer to that — let me \
     get a human operator to help you. Someone will be with you shortly.";

/// The reply the system prompt tells a model to give when it cannot answer
/// well. A reply containing it asks for a human ([`HumanReason::NoGoodAnswer`](crate::HumanReason::NoGoodAnswer)).
pub(crate) const HANDOFF_MARKER: &str = "[HANDOFF]";

/// Nouns for a person who could take over.
const PERSON: &[&str] = &[
    "human",
    "humans",
    "person",
    "people",
    "operator",
    "operators",
    "agent",
    "agents",
    "representative",
    "representatives",
    "rep",
    "staff",
    "employee",
    "manager",
    "supervisor",
    "handoff",
];

/// Pronouns that count as a person only right after a request verb
/// ("talk to someone", not "can someone see my chats").
const SOMEONE: &[&str] = &["someone", "somebody", "anyone", "anybody"];

/// Verbs that ask for something.
const ASK: &[&str] = &[
    "talk", "speak", "chat", "connect", "transfer", "escalate", "get", "want", "need", "reach",
    "contact", "call", "give", "put", "request",
];

/// Adjectives that make any noun after them a person ("real person", "live agent").
const REAL: &[&str] = &["real", "live", "actual"];

/// Words that may surround a bare noun without changing that the message is
/// only a request ("operator please", "a human, now!").
const FILLER: &[&str] = &[
    "a", "an", "the", "please", "pls", "plz", "now", "me", "i", "hi", "hello", "hey", "want",
    "need", "can", "could", "just", "ok", "okay", "asap", "thanks", "thank", "you", "help",
];

/// How many words after a request verb a person noun may come ("connect me
/// with a human" has three in between).
const ASK_WINDOW: usize = 4;

/// Whether `text` asks for a human.
pub(crate) fn asks_for_human(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let is = |set: &[&str], w: &str| set.contains(&w);

    // "real person", "a live human being", "actual operator".
    let real_person = words.windows(2).any(|pair| {
        is(REAL, pair[0]) && (is(PERSON, pair[1]) || is(SOMEONE, pair[1]) || pair[1] == "one")
    });
    // "talk to a human", "connect me with an operator", "I need someone".
    let asked = words.iter().enumerate().any(|(i, w)| {
        is(ASK, w)
            && words
                .iter()
                .skip(i + 1)
                .take(ASK_WINDOW)
                .enumerate()
                .any(|(gap, next)| is(PERSON, next) || (gap < 2 && is(SOMEONE, next)))
    });
    // "operator please", "human!", "agent".
    let content: Vec<&&str> = words.iter().filter(|w| !is(FILLER, w)).collect();
    let bare = !content.is_empty() && content.iter().all(|w| is(PERSON, w));

    real_person || asked || bare
}

/// Whether a model's reply is (or contains) the handoff marker; returns the
/// reply without the marker, trimmed.
pub(crate) fn strip_marker(reply: &str) -> Option<String> {
    reply
        .contains(HANDOFF_MARKER)
        .then(|| reply.replace(HANDOFF_MARKER, "").trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual ways of asking for a person are recognised.
    #[test]
    fn requests_for_a_person_are_detected() {
        for text in [
            "talk to a human",
            "I want to talk to a human please",
            "Operator please",
            "operator!",
            "HUMAN",
            "real person",
            "Can I speak to a real person?",
            "speak to an agent",
            "Could you connect me with an operator?",
            "I need a live agent now",
            "transfer me to a representative",
            "let me talk to someone",
            "get me a human asap",
            "I'd like to speak with your staff",
        ] {
            assert!(asks_for_human(text), "{text:?} should ask for a human");
        }
    }

    /// Questions that only mention operators, and ordinary questions, are not requests.
    #[test]
    fn mentions_are_not_requests() {
        for text in [
            "How does handoff to a human operator work?",
            "When are human operators available?",
            "What is an agent?",
            "Can someone see my chats?",
            "How do I reset my password?",
            "Can I get a refund?",
            "talk to me about pricing",
            "I need to change my email",
            "what's the weather on Mars",
        ] {
            assert!(!asks_for_human(text), "{text:?} should not ask for a human");
        }
    }

    /// The handoff marker is found anywhere in a reply and removed from the text.
    #[test]
    fn marker_is_found_and_stripped() {
        assert_eq!(strip_marker("[HANDOFF]").as_deref(), Some(""));
        assert_eq!(
            strip_marker("I can't help with that. [HANDOFF]").as_deref(),
            Some("I can't help with that.")
        );
        assert_eq!(strip_marker("Here is how to reset it."), None);
    }
}
