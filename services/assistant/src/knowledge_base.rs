//! [`KnowledgeBase`]: the default assistant, answering from an FAQ found by BM25.

use std::collections::HashSet;

use crate::analysis::terms;
use crate::bm25::{Hit, Index};
use crate::faq::{BUNDLED, FaqEntry, parse_faq};
use crate::handoff::{NO_GOOD_ANSWER_TEXT, REQUESTED_TEXT, asks_for_human};
use crate::{Answer, Assistant, AssistantError, HumanReason, Turn, last_user_turn, tokens};

/// How many times an entry's question is indexed. The question is written to
/// match how people ask, the answer holds the detail; counting the question's
/// words twice lets "how do I change my password" prefer the entry *asking*
/// that over one whose answer merely mentions passwords.
const QUESTION_WEIGHT: usize = 2;

/// The relative BM25 score (see `bm25.rs`) the best entry needs to be the
/// answer. Relative scores run from 0 to k1 + 1 = 2.2; about 1 means "an
/// entry of average length holds every word of the question once".
///
/// The best entry must also share at least one word with its *question*: a
/// single word that happens to occur in some answer ("what *time* is it"
/// against "real-*time* chat", 1.02; "how *old* are you" against "if the
/// cursor is too *old*", 0.86) scores as high, relatively, as a real
/// match, and this second condition is what tells them apart.
///
/// How 0.65 was chosen: with the bundled FAQ and the question lists of the
/// tests below, every on-topic question scores at least 0.90, and every
/// off-topic one at most 0.40 (most share no word with the FAQ and score
/// nothing) except the two above-mentioned answer-only matches, which the
/// question-word condition rejects; 0.65 is midway. Known limit of a lexical
/// match: a question whose one known word is an FAQ topic ("how do I *reset*
/// my router", 0.66) can still match that entry.
pub(crate) const MIN_RELATIVE_SCORE: f64 = 0.65;

/// The default assistant: answers the last user turn with the best-matching
/// FAQ entry, or hands over to a human when none matches well.
///
/// Deterministic and offline. `tokens_used` is
/// [`estimate_tokens`](crate::estimate_tokens) of the question plus the answer.
pub struct KnowledgeBase {
    name: String,
    entries: Vec<FaqEntry>,
    /// The search terms of each entry's question, in entry order.
    question_terms: Vec<HashSet<String>>,
    index: Index,
}

/// What the knowledge base makes of a question.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lookup {
    /// The user asked for a person.
    HumanRequested,
    /// No searchable word at all ("hi!", "thanks"): greet.
    Greeting,
    /// The best entry passed the threshold.
    Entry(Hit),
    /// Nothing passed it; the best hit, if any, for the logs.
    NoMatch(Option<Hit>),
}

impl KnowledgeBase {
    /// The knowledge base over the FAQ bundled with this crate (`src/faq.md`).
    pub fn bundled(name: impl Into<String>) -> Self {
        // The file is compiled in and a test parses it, so failing here is a
        // bug in this crate, not bad input.
        #[allow(clippy::expect_used)]
        let entries = parse_faq(BUNDLED).expect("the bundled faq.md parses (tested)");
        Self::from_faq(name, entries)
    }

    /// A knowledge base over `entries` (for example from [`parse_faq`]).
    /// With no entries every question goes to a human.
    pub fn from_faq(name: impl Into<String>, entries: Vec<FaqEntry>) -> Self {
        let documents = entries
            .iter()
            .map(|entry| {
                let question = terms(&entry.question);
                let mut document = Vec::with_capacity(question.len() * QUESTION_WEIGHT);
                for _ in 0..QUESTION_WEIGHT {
                    document.extend(question.iter().cloned());
                }
                document.extend(terms(&entry.answer));
                document
            })
            .collect();
        let question_terms = entries
            .iter()
            .map(|entry| terms(&entry.question).into_iter().collect())
            .collect();
        Self {
            name: name.into(),
            index: Index::new(documents),
            question_terms,
            entries,
        }
    }

    /// The FAQ entries this knowledge base answers from.
    pub fn entries(&self) -> &[FaqEntry] {
        &self.entries
    }

    fn lookup(&self, question: &str) -> Lookup {
        if asks_for_human(question) {
            return Lookup::HumanRequested;
        }
        let query = terms(question);
        if query.is_empty() {
            return Lookup::Greeting;
        }
        match self.index.best(&query) {
            Some(hit)
                if hit.relative >= MIN_RELATIVE_SCORE
                    && self
                        .question_terms
                        .get(hit.doc)
                        .is_some_and(|question| query.iter().any(|t| question.contains(t))) =>
            {
                Lookup::Entry(hit)
            }
            best => Lookup::NoMatch(best),
        }
    }

    fn greeting(&self) -> String {
        format!(
            "Hello! I'm {}. What can I help you with? You can also ask for a human \
             operator at any time.",
            self.name
        )
    }
}

#[async_trait::async_trait]
impl Assistant for KnowledgeBase {
    fn name(&self) -> &str {
        &self.name
    }

    /// Only the last user turn counts, and that is the question.
    fn reads_history(&self) -> bool {
        false
    }

    async fn answer(&self, conversation: &[Turn]) -> Result<Answer, AssistantError> {
        let (_, question) = last_user_turn(conversation)?;
        let (text, needs_human) = match self.lookup(question) {
            Lookup::HumanRequested => (REQUESTED_TEXT.to_owned(), Some(HumanReason::Requested)),
            Lookup::Greeting => (self.greeting(), None),
            Lookup::Entry(hit) => match self.entries.get(hit.doc) {
                Some(entry) => {
                    tracing::debug!(
                        faq = %entry.question,
                        score = hit.score,
                        relative = hit.relative,
                        "knowledge base match"
                    );
                    (entry.answer.clone(), None)
                }
                // The index holds exactly one document per entry.
                None => (
                    NO_GOOD_ANSWER_TEXT.to_owned(),
                    Some(HumanReason::NoGoodAnswer),
                ),
            },
            Lookup::NoMatch(best) => {
                tracing::debug!(
                    relative = best.map(|hit| hit.relative),
                    "no knowledge base entry matched well"
                );
                (
                    NO_GOOD_ANSWER_TEXT.to_owned(),
                    Some(HumanReason::NoGoodAnswer),
                )
            }
        };
        let tokens_used = tokens::exchange(question, &text);
        Ok(Answer {
            text,
            tokens_used,
            needs_human,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Speaker;

    fn kb() -> KnowledgeBase {
        KnowledgeBase::bundled("Support Assistant")
    }

    /// The entry whose question contains `needle`.
    fn entry_index(kb: &KnowledgeBase, needle: &str) -> usize {
        kb.entries()
            .iter()
            .position(|e| e.question.contains(needle))
            .unwrap_or_else(|| panic!("no FAQ question contains {needle:?}"))
    }

    /// The knowledge base never awaits anything, so a bare runtime is enough.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn ask(kb: &KnowledgeBase, question: &str) -> Answer {
        let conversation = [Turn::user(question)];
        block_on(kb.answer(&conversation)).expect("answers")
    }

    /// On-topic questions, phrased as users phrase them, find the FAQ entry that answers them
    /// (the entry named by a piece of its question), above the threshold.
    #[test]
    fn on_topic_questions_match() {
        let kb = kb();
        for (question, expected) in [
            ("How do I reset my password?", "reset my password"),
            ("I forgot my password", "reset my password"),
            ("my password doesn't work", "reset my password"),
            ("how much does it cost", "How much does ChatAI cost"),
            ("What is the price?", "How much does ChatAI cost"),
            ("what does it cost per token", "How much does ChatAI cost"),
            ("what happens when my balance is low", "my balance is low"),
            ("how do low balance alerts work", "my balance is low"),
            ("what happens when I run out of balance", "balance runs out"),
            ("how do I add money to my balance", "top up my balance"),
            ("how are tokens counted", "What is a token"),
            ("Can I get my money back?", "refund"),
            ("I want a refund", "refund"),
            ("can I pay with paypal", "payment methods"),
            ("do you support German?", "languages"),
            ("which languages do you speak", "languages"),
            ("how do I delete my account", "delete my account"),
            ("how do i change my email", "email address"),
            ("how do i turn on 2fa", "two-factor"),
            ("my connection dropped, how do I resume?", "cursor"),
            ("how do I use the websocket api", "WebSocket API"),
            ("my jwt expired", "authenticate"),
            ("how do I connect a bot", "bot"),
            ("is there a free trial", "free trial"),
            ("how long do you keep my data", "retention"),
            ("do you train on my chats", "training"),
            ("when are operators available", "operators available"),
            ("how long do I have to wait for an operator", "wait"),
            ("what does chatai do", "What is ChatAI"),
            ("where is my invoice", "invoices"),
            ("where do I see my usage", "billing"),
            ("is the service down", "status"),
            ("can i export my conversations", "export"),
            ("do you have an iphone app", "mobile app"),
            ("rate limit", "rate limits"),
            ("do you have business plans", "businesses"),
        ] {
            let want = entry_index(&kb, expected);
            match kb.lookup(question) {
                Lookup::Entry(hit) => assert_eq!(
                    hit.doc,
                    want,
                    "{question:?} matched {:?}",
                    kb.entries()[hit.doc].question
                ),
                other => panic!("{question:?} found no entry: {other:?}"),
            }
            let answer = ask(&kb, question);
            assert_eq!(answer.text, kb.entries()[want].answer);
            assert_eq!(answer.needs_human, None);
        }
    }

    /// Off-topic questions get the polite "let me get a human" answer and `NoGoodAnswer`.
    #[test]
    fn off_topic_questions_go_to_a_human() {
        let kb = kb();
        for question in [
            "what's the weather on Mars",
            "who won the football game last night",
            "write me a poem about the ocean",
            "what is the capital of France",
            "tell me a joke",
            "what time is it",
            "how old are you",
            "I like turtles",
            "translate hello into french",
            "how do I fix my car engine",
            "recommend a good movie",
            "what is the best programming language",
            "can you help me with my homework",
            "my account on facebook was hacked",
        ] {
            assert!(
                matches!(kb.lookup(question), Lookup::NoMatch(_)),
                "{question:?} should match nothing, got {:?}",
                kb.lookup(question)
            );
            let answer = ask(&kb, question);
            assert_eq!(answer.needs_human, Some(HumanReason::NoGoodAnswer));
            assert_eq!(answer.text, NO_GOOD_ANSWER_TEXT);
        }
    }

    /// Asking for a person is `Requested`, even with words that would match an FAQ entry.
    #[test]
    fn asking_for_a_person_is_requested() {
        let kb = kb();
        for question in [
            "talk to a human",
            "operator please",
            "I want a real person",
            "speak to an agent",
            "How do I talk to a human operator?",
            "connect me with an operator about my refund",
        ] {
            let answer = ask(&kb, question);
            assert_eq!(
                answer.needs_human,
                Some(HumanReason::Requested),
                "{question:?}"
            );
            assert_eq!(answer.text, REQUESTED_TEXT);
        }
        // Asking *about* operators is a question for the FAQ.
        let about = ask(&kb, "How does handoff to a human operator work?");
        assert_eq!(about.needs_human, None);
    }

    /// Only the last user turn counts: earlier turns, and operator or assistant turns after it,
    /// are ignored.
    #[test]
    fn answers_the_last_user_turn_only() {
        let kb = kb();
        let conversation = [
            Turn::user("How do I reset my password?"),
            Turn::new(Speaker::Assistant, "Use the link on the sign-in page."),
            Turn::user("how much does it cost"),
            Turn::new(Speaker::Operator, "what's the weather on Mars"),
        ];
        let answer = block_on(kb.answer(&conversation)).expect("answers");
        assert_eq!(
            answer.text,
            kb.entries()[entry_index(&kb, "How much does ChatAI cost")].answer
        );
    }

    /// No user turn, or a blank one, is the typed `NoUserTurn` error.
    #[test]
    fn no_user_turn_is_an_error() {
        let kb = kb();
        for conversation in [
            vec![],
            vec![Turn::new(Speaker::Operator, "Hello, how can I help?")],
            vec![Turn::user("  \n ")],
        ] {
            let result = block_on(kb.answer(&conversation));
            assert!(
                matches!(result, Err(AssistantError::NoUserTurn)),
                "{conversation:?}: {result:?}"
            );
        }
    }

    /// A message with no searchable word ("hi!") gets a greeting naming the assistant, not a handoff.
    #[test]
    fn greetings_are_greeted() {
        let kb = KnowledgeBase::bundled("Ada");
        for question in ["Hi!", "hello :)", "thanks"] {
            let answer = ask(&kb, question);
            assert_eq!(answer.needs_human, None, "{question:?}");
            assert!(answer.text.contains("Ada"), "{}", answer.text);
        }
    }

    /// `tokens_used` is the estimate of question plus answer, so never 0.
    #[test]
    fn tokens_are_the_estimate_of_the_exchange() {
        let kb = kb();
        for question in [
            "How do I reset my password?",
            "what's the weather on Mars",
            "hi",
            "?",
        ] {
            let answer = ask(&kb, question);
            assert_eq!(
                answer.tokens_used,
                crate::estimate_tokens(question) + crate::estimate_tokens(&answer.text),
                "{question:?}"
            );
            assert!(answer.tokens_used > 0);
        }
    }

    /// A knowledge base over a user's own small FAQ works with the same threshold, and one with
    /// no entries hands every question to a human.
    #[test]
    fn custom_faqs_work() {
        let kb = KnowledgeBase::from_faq(
            "Vet",
            vec![
                FaqEntry::new("How often do I feed my cat?", "Twice a day."),
                FaqEntry::new("How do I trim my dog's claws?", "Carefully, with clippers."),
                FaqEntry::new("When is the clinic open?", "Weekdays 9 to 5."),
            ],
        );
        assert_eq!(kb.name(), "Vet");
        assert_eq!(ask(&kb, "feeding the cat").text, "Twice a day.");
        assert_eq!(
            ask(&kb, "is the clinic open on weekdays").text,
            "Weekdays 9 to 5."
        );
        assert_eq!(
            ask(&kb, "what's the weather on Mars").needs_human,
            Some(HumanReason::NoGoodAnswer)
        );

        let empty = KnowledgeBase::from_faq("Nobody", Vec::new());
        assert_eq!(
            ask(&empty, "How do I reset my password?").needs_human,
            Some(HumanReason::NoGoodAnswer)
        );
    }
}
