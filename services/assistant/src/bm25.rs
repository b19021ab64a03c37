//! A small in-memory BM25 index over pre-analysed documents.
//!
//! Okapi BM25 with Lucene's non-negative IDF:
//!
//! ```text
//! idf(t)      = ln(1 + (N − n(t) + 0.5) / (n(t) + 0.5))
//! score(d, q) = Σ_{t ∈ q} idf(t) · tf(t,d)·(k1 + 1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl))
//! ```
//!
//! Besides the raw score it gives a *relative* score: the raw score divided
//! by Σ idf(t) over the query's distinct terms, a term no document has
//! counting with the largest possible IDF (n = 0). That is close to 1 when a
//! document of average length holds every query term once, and falls towards
//! 0 as the weight of the query terms it lacks grows. Unlike the raw score it
//! does not depend on the size of the collection, so one threshold works for
//! the bundled FAQ and for a user's own.

use std::collections::{HashMap, HashSet};

/// Term-frequency saturation.
const K1: f64 = 1.2;
/// Length normalisation.
const B: f64 = 0.75;

/// The index: per-document term counts, lengths and the collection's IDFs.
#[derive(Debug)]
pub(crate) struct Index {
    docs: Vec<Doc>,
    /// Number of documents holding each term.
    doc_freq: HashMap<String, usize>,
    avg_len: f64,
}

#[derive(Debug)]
struct Doc {
    tf: HashMap<String, u32>,
    len: usize,
}

/// The best document for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hit {
    /// Position of the document in the order given to [`Index::new`].
    pub(crate) doc: usize,
    /// Its BM25 score.
    pub(crate) score: f64,
    /// The score relative to the query's total IDF (see the module docs).
    pub(crate) relative: f64,
}

impl Index {
    /// Indexes documents given as their terms.
    pub(crate) fn new(documents: Vec<Vec<String>>) -> Self {
        let mut doc_freq: HashMap<String, usize> = HashMap::new();
        let docs: Vec<Doc> = documents
            .into_iter()
            .map(|terms| {
                let mut tf: HashMap<String, u32> = HashMap::new();
                for term in &terms {
                    *tf.entry(term.clone()).or_default() += 1;
                }
                for term in tf.keys() {
                    *doc_freq.entry(term.clone()).or_default() += 1;
                }
                Doc {
                    tf,
                    len: terms.len(),
                }
            })
            .collect();
        let total: usize = docs.iter().map(|d| d.len).sum();
        let avg_len = if docs.is_empty() {
            0.0
        } else {
            total as f64 / docs.len() as f64
        };
        Self {
            docs,
            doc_freq,
            avg_len,
        }
    }

    fn idf(&self, term: &str) -> f64 {
        let n = self.docs.len() as f64;
        let df = self.doc_freq.get(term).copied().unwrap_or(0) as f64;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// BM25 score of document `doc` for the distinct `query` terms.
    fn score(&self, doc: &Doc, query: &HashSet<&str>) -> f64 {
        // `avg_len` is 0 only when every document is empty; then no term
        // matches and the length factor is never used.
        let len_ratio = if self.avg_len > 0.0 {
            doc.len as f64 / self.avg_len
        } else {
            1.0
        };
        query
            .iter()
            .filter_map(|term| doc.tf.get(*term).map(|&tf| (term, tf)))
            .map(|(term, tf)| {
                let tf = f64::from(tf);
                self.idf(term) * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len_ratio))
            })
            .sum()
    }

    /// The highest-scoring document for `query` (earliest on ties), or
    /// `None` when no document shares a term with it.
    pub(crate) fn best(&self, query: &[String]) -> Option<Hit> {
        let distinct: HashSet<&str> = query.iter().map(String::as_str).collect();
        let total_idf: f64 = distinct.iter().map(|t| self.idf(t)).sum();
        let mut best: Option<Hit> = None;
        for (index, doc) in self.docs.iter().enumerate() {
            let score = self.score(doc, &distinct);
            if score > 0.0 && best.is_none_or(|b| score > b.score) {
                best = Some(Hit {
                    doc: index,
                    score,
                    relative: score / total_idf,
                });
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    /// The document holding the rarer query term wins, and its score matches the formula by hand.
    #[test]
    fn rare_terms_weigh_more_and_scores_follow_the_formula() {
        let index = Index::new(vec![
            doc("balance alert low"),
            doc("balance top up"),
            doc("password reset"),
        ]);
        let hit = index.best(&doc("low balance")).expect("a match");
        assert_eq!(hit.doc, 0);

        // By hand: N = 3, avgdl = 8/3; "low" is in 1 document, "balance" in 2.
        let idf_low = (1.0f64 + (3.0 - 1.0 + 0.5) / 1.5).ln();
        let idf_balance = (1.0f64 + (3.0 - 2.0 + 0.5) / 2.5).ln();
        let norm = 1.0 + K1 * (1.0 - B + B * 3.0 / (8.0 / 3.0));
        let expected = (idf_low + idf_balance) * (K1 + 1.0) / norm;
        assert!(
            (hit.score - expected).abs() < 1e-9,
            "{} vs {expected}",
            hit.score
        );
        assert!((hit.relative - expected / (idf_low + idf_balance)).abs() < 1e-9);
    }

    /// A query sharing no term with any document finds nothing; an empty index finds nothing.
    #[test]
    fn no_shared_term_no_hit() {
        let index = Index::new(vec![doc("password reset")]);
        assert_eq!(index.best(&doc("weather mars")), None);
        assert_eq!(index.best(&[]), None);
        assert_eq!(Index::new(Vec::new()).best(&doc("anything")), None);
    }

    /// Query terms the collection lacks lower the relative score.
    #[test]
    fn unknown_terms_lower_the_relative_score() {
        let index = Index::new(vec![doc("password reset"), doc("refund money")]);
        let full = index.best(&doc("password reset")).expect("a match");
        let diluted = index
            .best(&doc("password reset weather mars"))
            .expect("a match");
        assert_eq!(full.doc, diluted.doc);
        assert!(diluted.relative < full.relative / 1.5);
    }
}
