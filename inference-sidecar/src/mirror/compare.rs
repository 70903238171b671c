//! The distance between production's and the candidate's answers, in the comparison mode's own
//! measure, exactly as [`ComparisonMode`] documents it (`d` in `[0, 1]`, 0 identical; the pair
//! agrees when `d <= tolerance`, and for `Label` when the top labels are the same). A request
//! with several inputs (or choices) takes the largest distance among them; answers with a
//! different number of inputs are as far apart as can be (1).

use std::collections::HashSet;

use lexserve_contract::mirror::{ComparisonMode, MirrorComparison};
use thiserror::Error;

use super::answer::Answer;

/// The two answers cannot be compared in this mode (a mode for another task).
#[derive(Debug, Error, PartialEq)]
#[error("mode {mode:?} does not compare {what}")]
pub struct Incomparable {
    pub mode: ComparisonMode,
    pub what: &'static str,
}

/// One compared pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    pub distance: f64,
    pub agree: bool,
    /// Each input's top score, per side (classification modes only).
    pub production_top: Vec<f64>,
    pub candidate_top: Vec<f64>,
}

pub fn compare(
    comparison: &MirrorComparison,
    production: &Answer,
    candidate: &Answer,
) -> Result<Compared, Incomparable> {
    let mode = comparison.mode;
    let mut production_top = Vec::new();
    let mut candidate_top = Vec::new();
    let distance = match (mode, production, candidate) {
        (ComparisonMode::Label | ComparisonMode::TopK, Answer::Labels(p), Answer::Labels(c)) => {
            production_top = p.iter().filter_map(|l| l.first().map(|x| x.1)).collect();
            candidate_top = c.iter().filter_map(|l| l.first().map(|x| x.1)).collect();
            match mode {
                ComparisonMode::Label => largest(p, c, |p, c| label_distance(p, c)),
                _ => {
                    let k = comparison.k.unwrap_or(1).max(1) as usize;
                    largest(p, c, |p, c| top_k_distance(p, c, k))
                }
            }
        }
        (ComparisonMode::Cosine, Answer::Embeddings(p), Answer::Embeddings(c)) => {
            largest(p, c, |p, c| cosine_distance(p, c))
        }
        (ComparisonMode::Text, Answer::Texts(p), Answer::Texts(c)) => {
            largest(p, c, |p, c| text_distance(p, c))
        }
        (_, answer, _) => {
            return Err(Incomparable {
                mode,
                what: match answer {
                    Answer::Labels(_) => "classifications",
                    Answer::Embeddings(_) => "embeddings",
                    Answer::Texts(_) => "texts",
                },
            });
        }
    };
    let agree = match mode {
        // Labels agree or they do not: the tolerance is ignored.
        ComparisonMode::Label => distance == 0.0,
        _ => distance <= comparison.tolerance,
    };
    Ok(Compared {
        distance,
        agree,
        production_top,
        candidate_top,
    })
}

/// The largest distance over paired inputs; 1 when the answers hold different numbers of them.
fn largest<T>(p: &[T], c: &[T], distance: impl Fn(&T, &T) -> f64) -> f64 {
    if p.len() != c.len() {
        return 1.0;
    }
    p.iter()
        .zip(c)
        .map(|(p, c)| distance(p, c))
        .fold(0.0, f64::max)
}

/// 0 when both top labels are the same, 1 otherwise.
fn label_distance(p: &[(String, f64)], c: &[(String, f64)]) -> f64 {
    match (p.first(), c.first()) {
        (Some(p), Some(c)) if p.0 == c.0 => 0.0,
        (None, None) => 0.0,
        _ => 1.0,
    }
}

/// The share of production's top `k` labels missing from the candidate's top `k`.
fn top_k_distance(p: &[(String, f64)], c: &[(String, f64)], k: usize) -> f64 {
    let production: Vec<&str> = p.iter().take(k).map(|(l, _)| l.as_str()).collect();
    if production.is_empty() {
        return 0.0;
    }
    let candidate: HashSet<&str> = c.iter().take(k).map(|(l, _)| l.as_str()).collect();
    let missing = production
        .iter()
        .filter(|l| !candidate.contains(*l))
        .count();
    missing as f64 / production.len() as f64
}

/// `1 - cosine similarity`, held to `[0, 1]` (opposed vectors are as far as can be). Vectors of
/// different sizes, or one of them zero, are 1 apart; two zero vectors are the same.
fn cosine_distance(p: &[f64], c: &[f64]) -> f64 {
    if p.len() != c.len() {
        return 1.0;
    }
    let dot: f64 = p.iter().zip(c).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (np, nc) = (norm(p), norm(c));
    if np == 0.0 && nc == 0.0 {
        return 0.0;
    }
    if np == 0.0 || nc == 0.0 {
        return 1.0;
    }
    let d = 1.0 - dot / (np * nc);
    if d.is_nan() { 1.0 } else { d.clamp(0.0, 1.0) }
}

/// Above this many cells the edit distance of the differing middles is not computed: their
/// longer length is used, an upper bound (the pair can only look further apart than it is).
const MAX_EDIT_CELLS: usize = 64 << 20;

/// Levenshtein distance between the two texts with Unicode whitespace runs collapsed to one
/// space and the ends trimmed, over the longer text's length in characters (0 when both are
/// empty).
fn text_distance(p: &str, c: &str) -> f64 {
    let p = normalize(p);
    let c = normalize(c);
    let longer = p.len().max(c.len());
    if longer == 0 {
        return 0.0;
    }
    levenshtein(&p, &c) as f64 / longer as f64
}

fn normalize(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars());
    }
    out
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    // The common ends cost nothing: most pairs differ in a small middle, or not at all.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suffix], &b[..b.len() - suffix]);
    if a.is_empty() || b.is_empty() || a.len().saturating_mul(b.len()) > MAX_EDIT_CELLS {
        return a.len().max(b.len());
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(x != y);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(mode: ComparisonMode, tolerance: f64, k: Option<u32>) -> MirrorComparison {
        MirrorComparison { mode, tolerance, k }
    }

    fn labels(inputs: &[&[(&str, f64)]]) -> Answer {
        Answer::Labels(
            inputs
                .iter()
                .map(|l| l.iter().map(|(n, s)| (n.to_string(), *s)).collect())
                .collect(),
        )
    }

    #[test]
    fn labels_agree_on_the_top_label_whatever_the_tolerance() {
        let p = labels(&[&[("pos", 0.9), ("neg", 0.1)], &[("neg", 0.6), ("pos", 0.4)]]);
        let same = labels(&[
            &[("pos", 0.6), ("neg", 0.4)],
            &[("neg", 0.99), ("pos", 0.01)],
        ]);
        let one_off = labels(&[
            &[("pos", 0.6), ("neg", 0.4)],
            &[("pos", 0.51), ("neg", 0.49)],
        ]);
        let c = comparison(ComparisonMode::Label, 0.0, None);
        let agreed = compare(&c, &p, &same).unwrap();
        assert_eq!((agreed.distance, agreed.agree), (0.0, true));
        assert_eq!(agreed.production_top, vec![0.9, 0.6]);
        assert_eq!(agreed.candidate_top, vec![0.6, 0.99]);
        let differed = compare(&c, &p, &one_off).unwrap();
        assert_eq!((differed.distance, differed.agree), (1.0, false));
        // The tolerance is ignored: labels agree or they do not.
        let lax = comparison(ComparisonMode::Label, 1.0, None);
        assert!(!compare(&lax, &p, &one_off).unwrap().agree);
        // A different number of inputs is as far as can be.
        let fewer = labels(&[&[("pos", 0.9)]]);
        assert_eq!(compare(&c, &p, &fewer).unwrap().distance, 1.0);
        // No inputs on either side: nothing differs.
        assert!(compare(&c, &labels(&[]), &labels(&[])).unwrap().agree);
    }

    #[test]
    fn top_k_is_the_share_of_productions_top_k_missing_order_ignored() {
        let p = labels(&[&[("a", 0.5), ("b", 0.3), ("c", 0.15), ("d", 0.05)]]);
        let reordered = labels(&[&[("b", 0.5), ("a", 0.3), ("d", 0.15), ("c", 0.05)]]);
        let one_missing = labels(&[&[("a", 0.5), ("c", 0.3), ("b", 0.15), ("d", 0.05)]]);
        let k2 = comparison(ComparisonMode::TopK, 0.0, Some(2));
        assert_eq!(compare(&k2, &p, &reordered).unwrap().distance, 0.0);
        let half = compare(&k2, &p, &one_missing).unwrap();
        assert_eq!((half.distance, half.agree), (0.5, false));
        let tolerant = comparison(ComparisonMode::TopK, 0.5, Some(2));
        assert!(compare(&tolerant, &p, &one_missing).unwrap().agree);
        // k above the number of labels compares all of them.
        let k9 = comparison(ComparisonMode::TopK, 0.0, Some(9));
        assert_eq!(compare(&k9, &p, &one_missing).unwrap().distance, 0.0);
    }

    #[test]
    fn cosine_is_one_minus_the_similarity_largest_over_inputs() {
        let c = comparison(ComparisonMode::Cosine, 1e-3, None);
        let e = |v: &[&[f64]]| Answer::Embeddings(v.iter().map(|x| x.to_vec()).collect());
        let same = compare(&c, &e(&[&[1.0, 0.0]]), &e(&[&[2.0, 0.0]])).unwrap();
        assert_eq!((same.distance, same.agree), (0.0, true));
        assert!(same.production_top.is_empty());
        let near = compare(&c, &e(&[&[1.0, 0.0]]), &e(&[&[1.0, 0.01]])).unwrap();
        assert!(
            near.distance > 0.0 && near.distance < 1e-3 && near.agree,
            "{near:?}"
        );
        let both = compare(
            &c,
            &e(&[&[1.0, 0.0], &[1.0, 0.0]]),
            &e(&[&[1.0, 0.0], &[0.0, 1.0]]),
        )
        .unwrap();
        assert_eq!((both.distance, both.agree), (1.0, false));
        // Opposed vectors are held to 1; a zero vector is 1 from anything but zero.
        assert_eq!(
            compare(&c, &e(&[&[1.0]]), &e(&[&[-1.0]])).unwrap().distance,
            1.0
        );
        assert_eq!(
            compare(&c, &e(&[&[0.0]]), &e(&[&[1.0]])).unwrap().distance,
            1.0
        );
        assert_eq!(
            compare(&c, &e(&[&[0.0]]), &e(&[&[0.0]])).unwrap().distance,
            0.0
        );
        assert_eq!(
            compare(&c, &e(&[&[1.0]]), &e(&[&[1.0, 0.0]]))
                .unwrap()
                .distance,
            1.0
        );
        assert_eq!(
            compare(&c, &e(&[&[f64::NAN]]), &e(&[&[1.0]]))
                .unwrap()
                .distance,
            1.0
        );
    }

    #[test]
    fn text_is_the_normalized_edit_distance_after_whitespace_collapse() {
        let c = comparison(ComparisonMode::Text, 0.0, None);
        let t = |v: &[&str]| Answer::Texts(v.iter().map(|s| s.to_string()).collect());
        let ws = compare(&c, &t(&["  hello\u{2003}\n world "]), &t(&["hello world"])).unwrap();
        assert_eq!((ws.distance, ws.agree), (0.0, true));
        // kitten -> sitting: 3 edits over 7 characters.
        let d = compare(&c, &t(&["kitten"]), &t(&["sitting"]))
            .unwrap()
            .distance;
        assert!((d - 3.0 / 7.0).abs() < 1e-12, "{d}");
        // Characters, not bytes: one substitution in five characters.
        let d = compare(&c, &t(&["héllo"]), &t(&["hallo"]))
            .unwrap()
            .distance;
        assert!((d - 0.2).abs() < 1e-12, "{d}");
        assert_eq!(compare(&c, &t(&[""]), &t(&["  "])).unwrap().distance, 0.0);
        assert_eq!(compare(&c, &t(&[""]), &t(&["abc"])).unwrap().distance, 1.0);
        let tolerant = comparison(ComparisonMode::Text, 0.5, None);
        assert!(
            compare(&tolerant, &t(&["kitten"]), &t(&["sitting"]))
                .unwrap()
                .agree
        );
        assert_eq!(levenshtein(&normalize("abc"), &normalize("xabcx")), 2);
        assert_eq!(levenshtein(&normalize("ab"), &normalize("ba")), 2);
    }

    #[test]
    fn a_mode_for_another_task_is_incomparable() {
        let c = comparison(ComparisonMode::Cosine, 0.1, None);
        let error = compare(&c, &Answer::Texts(vec![]), &Answer::Texts(vec![])).unwrap_err();
        assert_eq!(error.what, "texts");
        let c = comparison(ComparisonMode::Label, 0.0, None);
        assert!(compare(&c, &Answer::Embeddings(vec![]), &Answer::Embeddings(vec![])).is_err());
        // Production's answer fits the mode but the candidate's does not.
        assert!(compare(&c, &labels(&[]), &Answer::Texts(vec![])).is_err());
    }
}
