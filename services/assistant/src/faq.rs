//! The FAQ file format and the bundled FAQ (`faq.md`).
//!
//! The format is a small Markdown subset: each `## ` heading is a question,
//! the lines under it up to the next `## ` heading are its answer. Lines
//! within a paragraph are joined with a space; blank lines separate
//! paragraphs. Anything before the first question (a `# ` title, an
//! introduction) is ignored.

/// The FAQ compiled into the crate; [`KnowledgeBase::bundled`](crate::KnowledgeBase::bundled) uses it.
pub(crate) const BUNDLED: &str = include_str!("faq.md");

/// One question and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaqEntry {
    /// The question, as a user might ask it (several phrasings may share one entry).
    pub question: String,
    /// The answer given to the user.
    pub answer: String,
}

impl FaqEntry {
    /// An entry answering `question` with `answer`.
    pub fn new(question: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            question: question.into(),
            answer: answer.into(),
        }
    }
}

/// Why an FAQ file does not parse. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaqError {
    /// The file has no `## ` question at all.
    #[error("the FAQ has no `## ` question")]
    NoEntries,
    /// A `## ` heading with no text.
    #[error("line {line}: empty question")]
    EmptyQuestion {
        /// The heading's line.
        line: usize,
    },
    /// A question with no answer text under it.
    #[error("line {line}: the question has no answer")]
    EmptyAnswer {
        /// The question's line.
        line: usize,
    },
    /// The same question twice.
    #[error("line {line}: the question is already in the FAQ")]
    DuplicateQuestion {
        /// The second occurrence's line.
        line: usize,
    },
}

/// Parses an FAQ: each `## ` heading is a question, the lines under it up to
/// the next `## ` heading its answer (lines joined with spaces, blank lines
/// separating paragraphs); text before the first question is ignored.
pub fn parse_faq(text: &str) -> Result<Vec<FaqEntry>, FaqError> {
    /// The question being read: its line, text and answer paragraphs so far.
    struct Open {
        line: usize,
        question: String,
        paragraphs: Vec<String>,
        current: Vec<String>,
    }

    fn close(open: Open, entries: &mut Vec<FaqEntry>) -> Result<(), FaqError> {
        let Open {
            line,
            question,
            mut paragraphs,
            current,
        } = open;
        if !current.is_empty() {
            paragraphs.push(current.join(" "));
        }
        if paragraphs.is_empty() {
            return Err(FaqError::EmptyAnswer { line });
        }
        if entries.iter().any(|e| e.question == question) {
            return Err(FaqError::DuplicateQuestion { line });
        }
        entries.push(FaqEntry {
            question,
            answer: paragraphs.join("\n\n"),
        });
        Ok(())
    }

    let mut entries = Vec::new();
    let mut open: Option<Open> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if let Some(question) = trimmed
            .strip_prefix("##")
            .filter(|_| !trimmed.starts_with("###"))
        {
            if let Some(previous) = open.take() {
                close(previous, &mut entries)?;
            }
            let question = question.trim();
            if question.is_empty() {
                return Err(FaqError::EmptyQuestion { line });
            }
            open = Some(Open {
                line,
                question: question.to_owned(),
                paragraphs: Vec::new(),
                current: Vec::new(),
            });
        } else if let Some(entry) = open.as_mut() {
            if trimmed.is_empty() {
                if !entry.current.is_empty() {
                    let paragraph = std::mem::take(&mut entry.current).join(" ");
                    entry.paragraphs.push(paragraph);
                }
            } else {
                entry.current.push(trimmed.to_owned());
            }
        }
    }
    match open {
        Some(last) => close(last, &mut entries)?,
        None => return Err(FaqError::NoEntries),
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled `faq.md` parses, into 25–40 entries, each a question with a real answer.
    #[test]
    fn bundled_faq_parses() {
        let entries = parse_faq(BUNDLED).expect("the bundled FAQ parses");
        assert!(
            (25..=40).contains(&entries.len()),
            "{} entries",
            entries.len()
        );
        for entry in &entries {
            assert!(entry.question.contains('?'), "{:?}", entry.question);
            assert!(
                entry.answer.len() > 40,
                "short answer to {:?}",
                entry.question
            );
            assert!(!entry.answer.contains("##"), "{:?}", entry.question);
        }
    }

    /// The preamble is skipped, lines join into paragraphs, and blank lines separate them.
    #[test]
    fn parses_questions_and_paragraphs() {
        let text = "# Title\nIntro text.\n\n## First?\nLine one\nline two.\n\nSecond paragraph.\n\n##   Second?  \nAnswer.\n";
        let entries = parse_faq(text).expect("parses");
        assert_eq!(
            entries,
            vec![
                FaqEntry::new("First?", "Line one line two.\n\nSecond paragraph."),
                FaqEntry::new("Second?", "Answer."),
            ]
        );
    }

    /// Each malformed file gets its own error, with the line of the fault.
    #[test]
    fn malformed_files_are_typed_errors() {
        assert_eq!(parse_faq("# Only a title\n"), Err(FaqError::NoEntries));
        assert_eq!(
            parse_faq("## Q?\nA.\n##\nA.\n"),
            Err(FaqError::EmptyQuestion { line: 3 })
        );
        assert_eq!(
            parse_faq("## Q?\n\n## R?\nA.\n"),
            Err(FaqError::EmptyAnswer { line: 1 })
        );
        assert_eq!(
            parse_faq("## Q?\nA.\n## Q?\nB.\n"),
            Err(FaqError::DuplicateQuestion { line: 3 })
        );
    }
}
