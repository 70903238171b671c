//! Kubernetes resource quantities (`512Mi`, `1G`, `1e9`, `2048`), as the apiserver admits them in an
//! int-or-string field and as `resource.Quantity` reads them.
//!
//! The CRD can only check a pattern: [`QUANTITY_PATTERN`] is Kubernetes' own quantity grammar
//! without the minus sign (a negative amount of memory is never meant). Every string that matches it
//! parses with [`parse_quantity`]: that is the contract, tested below on the grammar's corners.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Kubernetes' quantity grammar (`resource.Quantity`), less the `-` sign:
/// a number (`1`, `1.5`, `.5`, `1.`), then a binary suffix (`Ki`…`Ei`), a decimal suffix
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e9`, `E+3`, `e-3`).
pub const QUANTITY_PATTERN: &str =
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[mkMGTPE]|([eE][+-]?[0-9]+))?$";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error(
        "invalid quantity {0:?}: expected a Kubernetes quantity such as \"256Mi\", \"1Gi\", \"500M\" or \"1e9\""
    )]
    Syntax(String),
    #[error("invalid quantity {0:?}: must not be negative")]
    Negative(String),
}

/// An amount as written in a manifest: a string (`"512Mi"`) or a plain integer (`1048576`), kept
/// as written so that the ConfigMap the operator writes says what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl Quantity {
    /// The amount in whole units (bytes for memory), rounded up as `resource.Quantity.Value()`
    /// rounds; amounts beyond `u64::MAX` saturate.
    pub fn value(&self) -> Result<u64, QuantityError> {
        parse_quantity(&self.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// Accepts what an int-or-string field can hold; the value itself is checked by
    /// [`Quantity::value`], so that one bad object never breaks a watch of many.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum IntOrString {
            Int(i64),
            Uint(u64),
            Float(f64),
            String(String),
        }
        Ok(Self(match IntOrString::deserialize(deserializer)? {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::Uint(n) => n.to_string(),
            IntOrString::Float(n) => n.to_string(),
            IntOrString::String(s) => s,
        }))
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// An integer or a string matching the grammar, as the apiserver checks `resource.Quantity`
    /// fields of CRDs: `minimum` bounds integers, `pattern` strings (each applies only to its type).
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "minimum": 0,
            "pattern": QUANTITY_PATTERN,
        })
    }
}

/// Parses a quantity into whole units, rounding a fraction up (`0.5` → 1, `100m` → 1, `1e-3` → 1),
/// as Kubernetes does when it asks a quantity for its integer value.
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int_digits, frac_digits) = number.split_once('.').unwrap_or((number, ""));
    if (int_digits.is_empty() && frac_digits.is_empty())
        || !int_digits.bytes().all(|b| b.is_ascii_digit())
        || !frac_digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(syntax());
    }
    // value = digits × 2^binary × 10^decimal, with digits = int_digits ++ frac_digits.
    let (binary_exp, mut decimal_exp): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E']).ok_or_else(syntax)?;
            let (sign, digits) = match digits.as_bytes().first() {
                Some(b'+') => (1, &digits[1..]),
                Some(b'-') => (-1, &digits[1..]),
                _ => (1, digits),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            // Anything past 10^±999 is saturated or zero anyway.
            let magnitude: i64 = digits
                .trim_start_matches('0')
                .parse::<i64>()
                .unwrap_or(if digits.trim_start_matches('0').is_empty() {
                    0
                } else {
                    999
                })
                .min(999);
            (0, sign * magnitude)
        }
    };
    let all_digits = format!("{int_digits}{frac_digits}");
    let all_digits = all_digits.trim_start_matches('0');
    if all_digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(text.to_string()));
    }
    decimal_exp -= frac_digits.len() as i64;
    // Exact integer arithmetic: digits × 2^binary × 10^decimal, rounded up. Digits beyond what
    // u128 holds only matter for rounding up, so they are dropped and remembered.
    const MAX_DIGITS: usize = 38;
    let (kept, dropped) = all_digits.split_at(all_digits.len().min(MAX_DIGITS));
    decimal_exp += dropped.len() as i64;
    let mut inexact = dropped.bytes().any(|b| b != b'0');
    let mut value: u128 = kept.bytes().fold(0, |v, b| v * 10 + u128::from(b - b'0'));
    let saturated = || Ok(u64::MAX);
    if binary_exp > 0 {
        if value.leading_zeros() < binary_exp {
            return saturated();
        }
        value <<= binary_exp;
    }
    while decimal_exp > 0 {
        match value.checked_mul(10) {
            Some(v) => value = v,
            None => return saturated(),
        }
        decimal_exp -= 1;
    }
    while decimal_exp < 0 && value > 0 {
        inexact |= !value.is_multiple_of(10);
        value /= 10;
        decimal_exp += 1;
    }
    if inexact {
        value += 1;
    }
    Ok(u64::try_from(value).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_form_kubernetes_reads() {
        let cases: &[(&str, u64)] = &[
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("500M", 500_000_000),
            ("1024", 1024),
            ("1e9", 1_000_000_000),
            ("1E9", 1_000_000_000),
            ("1e+9", 1_000_000_000),
            ("2.5e3", 2500),
            ("1e-3", 1),
            ("100m", 1),
            ("1500m", 2),
            ("0.5", 1),
            (".5Ki", 512),
            ("1.", 1),
            ("+4k", 4000),
            ("0", 0),
            ("0.000", 0),
            ("0Mi", 0),
            ("16Ei", u64::MAX),
            ("1e99", u64::MAX),
            ("99999999999999999999999999999E", u64::MAX),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_quantity(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "Mi", "12XB", "1e", "1e1.5", "1.2.3", "1 Mi", "ki", "1ki", "e9", ".",
        ] {
            assert!(
                matches!(parse_quantity(bad), Err(QuantityError::Syntax(_))),
                "{bad:?} should be a syntax error"
            );
        }
        assert_eq!(
            parse_quantity("-1Mi"),
            Err(QuantityError::Negative("-1Mi".into()))
        );
    }

    /// The contract: what the CRD's pattern admits, the parser reads.
    #[test]
    fn everything_the_pattern_admits_parses() {
        let numbers = ["0", "7", "12", "1.", "1.5", ".5", "007.250"];
        let suffixes = [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "e0", "e9",
            "E+3", "e-3", "e-12", "e999999",
        ];
        for sign in ["", "+"] {
            for n in numbers {
                for s in suffixes {
                    let text = format!("{sign}{n}{s}");
                    assert!(pattern_matches(&text), "{text} should match the pattern");
                    assert!(parse_quantity(&text).is_ok(), "{text} should parse");
                }
            }
        }
        for refused in ["-1", "1e1.5", "1ki", "1 Mi", ""] {
            assert!(!pattern_matches(refused), "{refused:?} should not match");
        }
    }

    #[test]
    fn integers_and_strings_deserialize_as_written() {
        let q: Quantity = serde_json::from_str("1048576").unwrap();
        assert_eq!(q, Quantity("1048576".into()));
        assert_eq!(q.value(), Ok(1 << 20));
        let q: Quantity = serde_yaml::from_str("512Mi").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"512Mi\"");
    }

    fn pattern_matches(text: &str) -> bool {
        regex::Regex::new(QUANTITY_PATTERN)
            .expect("the pattern compiles")
            .is_match(text)
    }
}
