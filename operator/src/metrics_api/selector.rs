//! Kubernetes label selectors as they arrive in the `labelSelector` query parameter of an
//! external metric request (`a=b,c!=d,e in (f,g),h notin (i),j,!k`), parsed and matched.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed selector: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses the selector syntax of `kubectl -l` and the API's `labelSelector`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Selector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The single value `key` must equal (`key=v`, `key==v` or `key in (v)`), if the selector
    /// pins one.
    pub fn single_value(&self, key: &str) -> Option<&str> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::In(k, values) if k == key && values.len() == 1 => Some(values[0].as_str()),
            _ => None,
        })
    }

    /// The keys the selector mentions.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(Requirement::key)
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in label selector {text:?}"))?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in label selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key, part)?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(
            key_of(key, part)?,
            vec![value_of(value, part)?],
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(
            key_of(key, part)?,
            vec![value_of(value, part)?],
        ));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
            (true, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (false, list)
        } else {
            return Err(format!(
                "label selector requirement {part:?}: expected =, ==, !=, in or notin"
            ));
        };
        let list = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| {
                format!("label selector requirement {part:?}: the values must be in parentheses")
            })?;
        let values = list
            .split(',')
            .map(|v| value_of(v, part))
            .collect::<Result<Vec<_>, _>>()?;
        let key = key_of(words[0], part)?;
        return Ok(if negated {
            Requirement::NotIn(key, values)
        } else {
            Requirement::In(key, values)
        });
    }
    Ok(Requirement::Exists(key_of(part, part)?))
}

fn key_of(key: &str, part: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!(
            "label selector requirement {part:?}: {key:?} is not a valid label key"
        ))
    }
}

fn value_of(value: &str, part: &str) -> Result<String, String> {
    let value = value.trim();
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "label selector requirement {part:?}: {value:?} is not a valid label value"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_forms() {
        for text in [
            "lexserve.io/inference-service=minilm",
            "lexserve.io/inference-service==minilm",
            "lexserve.io/inference-service in (minilm)",
        ] {
            let s = Selector::parse(text).expect(text);
            assert_eq!(
                s.single_value("lexserve.io/inference-service"),
                Some("minilm"),
                "{text}"
            );
        }
    }

    #[test]
    fn set_based_and_existence() {
        let s = Selector::parse("a in (x,y), b notin (z),c,!d,e!=f").expect("parse");
        assert_eq!(s.requirements.len(), 5);
        assert!(s.matches(&labels(&[("a", "x"), ("b", "q"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "w"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "x"), ("b", "z"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "x"), ("c", ""), ("d", "1")])));
        assert!(!s.matches(&labels(&[("a", "x"), ("c", ""), ("e", "f")])));
        assert!(!s.matches(&labels(&[("a", "x")])));
        assert_eq!(s.single_value("a"), None);
    }

    #[test]
    fn empty_selects_everything() {
        let s = Selector::parse("").expect("parse");
        assert!(s.requirements.is_empty());
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn malformed_selectors_are_named() {
        for text in [
            "a in (b",
            "a in b",
            "a)",
            "a=b c",
            "a foo (b)",
            "=b",
            "a=b=c",
        ] {
            let err = Selector::parse(text).expect_err(text);
            assert!(err.contains("label selector"), "{text}: {err}");
        }
    }
}
