//! Go-style durations (`2ms`, `1m30s`), as Kubernetes CEL's `duration()` reads them and as the
//! sidecar reads them from its config.

use std::time::Duration;

use thiserror::Error;

/// A Go-style duration as CEL's `duration()` parses it ("30s", "10m", "1h30m"). Days are not
/// accepted because `duration()` does not accept them either.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid duration {0:?}: expected a Go-style duration such as \"2ms\", \"500us\", \"1s\" or \"1m30s\""
)]
pub struct DurationError(pub String);

/// Parses a Go `time.ParseDuration` string. Negative durations are rejected: every duration in the
/// spec is a wait or a timeout, where a negative value is always a mistake. Durations too long for
/// [`Duration`] are rejected too (CEL's `duration()` refuses them as well).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || s.starts_with('-') {
        return Err(err());
    }
    let mut total_seconds: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if number_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total_seconds += value * seconds_per_unit;
    }
    // Round to whole nanoseconds, as Go does.
    let nanos = (total_seconds * 1e9).round();
    if !nanos.is_finite() || nanos >= u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go_syntax() {
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "2",
            "ms",
            "-1s",
            "2 ms",
            "1x",
            "1.2.3s",
            "s1",
            "99999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
