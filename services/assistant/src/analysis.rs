//! The retrieval tokenizer: text to search terms (lowercase, stopwords, light stemming).
//!
//! The same function analyses the FAQ and the user's question, so whatever it
//! does to a word it does on both sides; the stemmer only has to map the
//! forms of one word to the same term, not to a real root.

/// Words too common to tell FAQ entries apart: function words, greetings and
/// politeness, the first halves of contractions ("doesn't" → `doesn`), and
/// verbs that frame a question rather than say what it is about ("how do I
/// *use*…", "I *want*…"). Kept small: a word that is here can never match.
#[rustfmt::skip] // one word a line would be 130 lines
const STOPWORDS: &[&str] = &[
    "a", "about", "all", "also", "am", "an", "and", "any", "anything", "are", "aren", "as", "at",
    "be", "been", "but", "by", "can", "could", "couldn", "did", "didn", "do", "does", "doesn",
    "doing", "don", "for", "from", "get", "gets", "got", "had", "has", "hasn", "have", "haven",
    "hello", "her", "here", "hey", "hi", "him", "his", "how", "if", "in", "into", "is", "isn",
    "it", "its", "just", "know", "let", "like", "ll", "many", "may", "me", "might", "mine", "much",
    "must", "my", "need", "needs", "no", "not", "of", "ok", "okay", "on", "or", "our", "please",
    "re", "she", "should", "shouldn", "so", "some", "something", "tell", "than", "thank", "thanks",
    "that", "the", "their", "them", "then", "there", "these", "they", "thing", "this", "those",
    "to", "too", "up", "us", "use", "used", "uses", "using", "ve", "very", "want", "wants", "was",
    "wasn", "way", "we", "were", "weren", "what", "when", "where", "which", "who", "whom", "why",
    "will", "with", "won", "work", "works", "would", "wouldn", "yes", "you", "your", "yours",
];

/// The search terms of `text`, in order, repeats kept.
///
/// Splits on anything not alphanumeric, lowercases, drops one-character
/// pieces and [stopwords](STOPWORDS), then [`stem`]s.
pub(crate) fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|piece| piece.chars().nth(1).is_some())
        .map(str::to_lowercase)
        .filter(|word| !STOPWORDS.contains(&word.as_str()))
        .map(|word| stem(&word))
        .collect()
}

/// A light suffix stripper: plural `-s`/`-ies`, `-ing`, `-ed`, a doubled
/// final consonant left behind (`resetting` → `reset`) and a final `-e`
/// (`charge`, `charged`, `charges`, `charging` → `charg`). Short words are
/// left alone.
fn stem(word: &str) -> String {
    let mut w = word.to_owned();
    let len = |s: &str| s.chars().count();

    if w.ends_with("ies") && len(&w) > 4 {
        w.truncate(w.len() - 3);
        w.push('y');
    } else if w.ends_with('s')
        && !(w.ends_with("ss") || w.ends_with("us") || w.ends_with("is"))
        && len(&w) > 3
    {
        w.pop();
    }

    let mut stripped = false;
    if w.ends_with("ing") && len(&w) >= 6 {
        w.truncate(w.len() - 3);
        stripped = true;
    } else if w.ends_with("ed") && !w.ends_with("eed") && len(&w) >= 5 {
        w.truncate(w.len() - 2);
        stripped = true;
    }
    if stripped {
        let mut tail = w.chars().rev();
        if let (Some(last), Some(before)) = (tail.next(), tail.next())
            && last == before
            && last.is_ascii_alphabetic()
            && !matches!(last, 'a' | 'e' | 'i' | 'o' | 'u' | 'l' | 's' | 'z')
        {
            w.pop();
        }
    }

    if w.ends_with('e') && len(&w) > 3 {
        w.pop();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text is lowercased, split on punctuation, and stopwords and single letters are dropped.
    #[test]
    fn terms_drop_stopwords_and_punctuation() {
        assert_eq!(
            terms("How do I reset my PASSWORD?"),
            vec!["reset", "password"]
        );
        assert_eq!(terms("What's the weather?"), vec!["weather"]);
        assert!(terms("Hi! Thanks :)").is_empty());
    }

    /// The forms of one word stem to the same term.
    #[test]
    fn word_forms_share_a_stem() {
        let same = |words: &[&str]| {
            let stems: Vec<String> = words.iter().map(|w| stem(w)).collect();
            assert!(
                stems.windows(2).all(|p| p[0] == p[1]),
                "{words:?} → {stems:?}"
            );
        };
        same(&["reset", "resets", "resetting"]);
        same(&["charge", "charged", "charges", "charging"]);
        same(&["alert", "alerts", "alerting", "alerted"]);
        same(&["policy", "policies"]);
        same(&["price", "prices", "pricing", "priced"]);
        same(&["language", "languages"]);
        same(&["bill", "billing", "billed"]);
        // Words that merely look like inflections are left alone.
        assert_eq!(stem("need"), "need");
        assert_eq!(stem("status"), "status");
        assert_eq!(stem("address"), "address");
        assert_eq!(stem("bring"), "bring");
    }
}
