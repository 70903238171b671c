//! Redaction: what is masked in a request body before its copy leaves the pod. JSON fields by
//! dot path (`user.email`, `messages.*.content`: a `*` matches every element of an array or member
//! of an object) become [`REDACTED`] whole; then every match of a pattern inside any string value
//! becomes [`REDACTED`]. A body that is not JSON gets the patterns over its text.

use lexserve_contract::mirror::{REDACTED, Redaction};
use regex::NoExpand;
use serde_json::Value;

/// A redaction that does not compile, naming the field of `Redaction` at fault.
#[derive(Debug, PartialEq)]
pub struct RedactionError {
    pub field: &'static str,
    pub message: String,
}

/// A compiled [`Redaction`].
#[derive(Debug, Default)]
pub struct Redactor {
    fields: Vec<Vec<String>>,
    patterns: Vec<regex::Regex>,
    /// The same patterns for a body that is not UTF-8 text.
    byte_patterns: Vec<regex::bytes::Regex>,
}

impl Redactor {
    pub fn compile(redaction: &Redaction) -> Result<Self, RedactionError> {
        let mut fields = Vec::with_capacity(redaction.fields.len());
        for field in &redaction.fields {
            let path: Vec<String> = field.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(RedactionError {
                    field: "redaction.fields",
                    message: format!("{field:?} is not a dot path (an empty segment)"),
                });
            }
            fields.push(path);
        }
        let mut patterns = Vec::with_capacity(redaction.patterns.len());
        let mut byte_patterns = Vec::with_capacity(redaction.patterns.len());
        for pattern in &redaction.patterns {
            let bad = |e: regex::Error| RedactionError {
                field: "redaction.patterns",
                message: format!("{pattern:?} does not compile: {e}"),
            };
            patterns.push(regex::Regex::new(pattern).map_err(bad)?);
            byte_patterns.push(regex::bytes::Regex::new(pattern).map_err(bad)?);
        }
        Ok(Self {
            fields,
            patterns,
            byte_patterns,
        })
    }

    /// Whether this redaction changes anything at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.patterns.is_empty()
    }

    /// The body with the redaction applied; None when it leaves the body as it is (no
    /// redaction configured).
    pub fn redact(&self, body: &[u8]) -> Option<Vec<u8>> {
        if self.is_empty() {
            return None;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut json) => {
                for path in &self.fields {
                    mask_path(&mut json, path);
                }
                if !self.patterns.is_empty() {
                    self.mask_strings(&mut json);
                }
                // A Value always serializes.
                Some(serde_json::to_vec(&json).unwrap_or_default())
            }
            Err(_) => Some(
                self.byte_patterns
                    .iter()
                    .fold(body.to_vec(), |text, pattern| {
                        pattern
                            .replace_all(&text, regex::bytes::NoExpand(REDACTED.as_bytes()))
                            .into_owned()
                    }),
            ),
        }
    }

    fn mask_strings(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                for pattern in &self.patterns {
                    if let std::borrow::Cow::Owned(masked) =
                        pattern.replace_all(text, NoExpand(REDACTED))
                    {
                        *text = masked;
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_strings(v)),
            Value::Object(members) => members.values_mut().for_each(|v| self.mask_strings(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Replaces the value(s) at `path` with [`REDACTED`]; a path that is not there masks nothing.
fn mask_path(value: &mut Value, path: &[String]) {
    let Some((segment, rest)) = path.split_first() else {
        *value = Value::String(REDACTED.to_string());
        return;
    };
    match value {
        Value::Object(members) if segment == "*" => {
            members.values_mut().for_each(|v| mask_path(v, rest));
        }
        Value::Array(items) if segment == "*" => items.iter_mut().for_each(|v| mask_path(v, rest)),
        Value::Object(members) => {
            if let Some(child) = members.get_mut(segment.as_str()) {
                mask_path(child, rest);
            }
        }
        Value::Array(items) => {
            if let Some(child) = segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                mask_path(child, rest);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor(fields: &[&str], patterns: &[&str]) -> Redactor {
        Redactor::compile(&Redaction {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn redact_json(r: &Redactor, body: Value) -> Value {
        serde_json::from_slice(&r.redact(body.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn fields_by_path_with_wildcards_are_masked_whole() {
        let r = redactor(
            &["user.email", "messages.*.content", "meta.*", "list.1"],
            &[],
        );
        let body = json!({
            "user": {"email": "a@b.c", "id": 7},
            "messages": [{"role": "user", "content": "hi"}, {"role": "x", "content": {"deep": 1}}],
            "meta": {"a": 1, "b": [2]},
            "list": ["keep", "mask"],
            "model": "m"
        });
        assert_eq!(
            redact_json(&r, body),
            json!({
                "user": {"email": REDACTED, "id": 7},
                "messages": [{"role": "user", "content": REDACTED}, {"role": "x", "content": REDACTED}],
                "meta": {"a": REDACTED, "b": REDACTED},
                "list": ["keep", REDACTED],
                "model": "m"
            })
        );
        // Paths that are not there, or go through a scalar, mask nothing.
        let r = redactor(&["nope.x", "model.x", "user.*.y"], &[]);
        let body = json!({"model": "m", "user": {"a": 1}});
        assert_eq!(redact_json(&r, body.clone()), body);
    }

    #[test]
    fn patterns_mask_matches_in_every_string_after_fields() {
        let r = redactor(&["secret"], &[r"\d{3}-\d{4}", "[a-z]+@[a-z]+\\.com"]);
        let body = json!({
            "inputs": "call 555-1234 or mail bob@ex.com",
            "nested": [{"t": "x 111-2222 y 333-4444"}],
            "n": 5551234,
            "secret": "555-1234"
        });
        assert_eq!(
            redact_json(&r, body),
            json!({
                "inputs": format!("call {REDACTED} or mail {REDACTED}"),
                "nested": [{"t": format!("x {REDACTED} y {REDACTED}")}],
                "n": 5551234,
                "secret": REDACTED
            })
        );
        // `$` in the replacement is never expanded.
        let r = redactor(&[], &["(a)"]);
        assert_eq!(
            redact_json(&r, json!("bab")),
            json!(format!("b{REDACTED}b"))
        );
    }

    #[test]
    fn a_body_that_is_not_json_gets_the_patterns_over_its_text() {
        let r = redactor(&["a.b"], &[r"\d+"]);
        assert_eq!(
            r.redact(b"id 42, \xff 7").unwrap(),
            [
                b"id ".as_slice(),
                REDACTED.as_bytes(),
                b", \xff ",
                REDACTED.as_bytes()
            ]
            .concat()
        );
        assert_eq!(redactor(&[], &[]).redact(b"{}"), None);
    }

    #[test]
    fn bad_redactions_name_their_field() {
        let error = |fields: &[&str], patterns: &[&str]| {
            Redactor::compile(&Redaction {
                fields: fields.iter().map(|s| s.to_string()).collect(),
                patterns: patterns.iter().map(|s| s.to_string()).collect(),
            })
            .unwrap_err()
            .field
        };
        assert_eq!(error(&["a..b"], &[]), "redaction.fields");
        assert_eq!(error(&[""], &[]), "redaction.fields");
        assert_eq!(error(&[], &["(x"]), "redaction.patterns");
    }
}
