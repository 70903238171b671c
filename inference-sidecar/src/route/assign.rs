//! Which variant a request goes to: the assignment key from the request (header, cookie, or a
//! JSON field of the body), its bucket, and the bucket's owner; or a random bucket.
//!
//! A request without a key goes to the control and is not counted as an assignment: counting it
//! would add control-only traffic to the sample ratio the analysis checks against the weights
//! (a mismatch that is not there), and a keyless request is no user the experiment could follow.
//! Such requests are counted on their own series.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use lexserve_contract::router::{AssignmentSource, BUCKETS, bucket_of};
use serde_json::Value;

use super::config::Routing;

/// Where a request goes and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// By the key's bucket.
    Keyed { variant: usize, key: String },
    /// By a random bucket (`random` assignment).
    Random { variant: usize },
    /// No key in the request: the control, not counted.
    Unkeyed { variant: usize },
}

impl Assignment {
    pub fn variant(&self) -> usize {
        match self {
            Self::Keyed { variant, .. } | Self::Random { variant } | Self::Unkeyed { variant } => {
                *variant
            }
        }
    }
}

/// Assigns a request. `body` is the request body parsed as JSON (only needed for `jsonField`);
/// `random` is a uniformly random number, used for `random` assignment only.
pub fn assign(
    routing: &Routing,
    headers: &HeaderMap,
    body: Option<&Value>,
    random: u64,
) -> Assignment {
    let assignment = &routing.config.assignment;
    if assignment.by == AssignmentSource::Random {
        let bucket = ((u128::from(random) * u128::from(BUCKETS)) >> 64) as u16;
        return Assignment::Random {
            variant: routing.owner(bucket),
        };
    }
    match assignment_key(assignment.by, assignment.key.as_deref(), headers, body) {
        Some(key) => Assignment::Keyed {
            variant: routing.owner(bucket_of(assignment.seed, key.as_bytes())),
            key,
        },
        None => Assignment::Unkeyed { variant: 0 },
    }
}

/// The variant owning `key`'s bucket.
pub fn owner_of_key(routing: &Routing, key: &str) -> usize {
    routing.owner(bucket_of(routing.config.assignment.seed, key.as_bytes()))
}

/// The assignment key of a request, if it has one (an empty value is none).
pub fn assignment_key(
    by: AssignmentSource,
    name: Option<&str>,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Option<String> {
    let name = name?;
    let key = match by {
        AssignmentSource::Header => headers.get(name)?.to_str().ok()?.trim().to_string(),
        AssignmentSource::Cookie => cookie(headers, name)?,
        AssignmentSource::JsonField => json_field(body?, name)?,
        AssignmentSource::Random => return None,
    };
    (!key.is_empty()).then_some(key)
}

/// A cookie's value from the `Cookie` headers (`a=1; b=2`, possibly several headers).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
}

/// The value at a dot path (`user.id`) of a JSON body: a string as it is, a number or a boolean
/// as written; objects, arrays and null are no key.
fn json_field(body: &Value, path: &str) -> Option<String> {
    let value = path
        .split('.')
        .try_fold(body, |value, part| value.as_object()?.get(part))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn keys_come_from_each_source() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static(" u-1 "));
        headers.append(COOKIE, HeaderValue::from_static("a=1; session=s-9"));
        headers.append(COOKIE, HeaderValue::from_static("other=\"q\""));
        let body = json!({"user": {"id": 42, "name": "n"}, "flag": true, "list": [1]});
        let key = |by, name: &str| assignment_key(by, Some(name), &headers, Some(&body));
        assert_eq!(
            key(AssignmentSource::Header, "x-user").as_deref(),
            Some("u-1")
        );
        assert_eq!(key(AssignmentSource::Header, "x-none"), None);
        assert_eq!(
            key(AssignmentSource::Cookie, "session").as_deref(),
            Some("s-9")
        );
        assert_eq!(key(AssignmentSource::Cookie, "other").as_deref(), Some("q"));
        assert_eq!(key(AssignmentSource::Cookie, "sess"), None);
        assert_eq!(
            key(AssignmentSource::JsonField, "user.id").as_deref(),
            Some("42")
        );
        assert_eq!(
            key(AssignmentSource::JsonField, "user.name").as_deref(),
            Some("n")
        );
        assert_eq!(
            key(AssignmentSource::JsonField, "flag").as_deref(),
            Some("true")
        );
        assert_eq!(key(AssignmentSource::JsonField, "user"), None);
        assert_eq!(key(AssignmentSource::JsonField, "list.0"), None);
        assert_eq!(key(AssignmentSource::JsonField, "user.id.x"), None);
        assert_eq!(
            assignment_key(AssignmentSource::JsonField, Some("user.id"), &headers, None),
            None
        );
    }
}
