//! Which requests a target copies: a random draw per request, or the bucket of the request's
//! assignment key (read exactly as the experiment router reads it), so that one user's requests
//! are all mirrored or none are. A request without the key is not copied.

use axum::http::HeaderMap;
use lexserve_contract::mirror::MirrorSampling;
use lexserve_contract::router::{AssignmentSource, BUCKETS, bucket_of};
use serde_json::Value;

use crate::route::assign::assignment_key;

/// Whether a request is copied to a target taking `percent` of the traffic. `body` is the request
/// body parsed as JSON (only needed for `jsonField`); `random` a uniformly random number (only
/// used for `random`).
pub fn sampled(
    sampling: &MirrorSampling,
    percent: u32,
    headers: &HeaderMap,
    body: Option<&Value>,
    random: u64,
) -> bool {
    let bucket = match sampling.by {
        AssignmentSource::Random => ((u128::from(random) * u128::from(BUCKETS)) >> 64) as u16,
        by => match assignment_key(by, sampling.key.as_deref(), headers, body) {
            Some(key) => bucket_of(sampling.seed, key.as_bytes()),
            None => return false,
        },
    };
    u64::from(bucket) < u64::from(percent) * u64::from(BUCKETS) / 100
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn sampling(by: AssignmentSource, key: Option<&str>) -> MirrorSampling {
        MirrorSampling {
            by,
            key: key.map(str::to_string),
            seed: 11,
        }
    }

    #[test]
    fn random_sampling_takes_the_share_of_draws() {
        let random = sampling(AssignmentSource::Random, None);
        let headers = HeaderMap::new();
        let draws = |percent| {
            (0..10_000u64)
                .filter(|i| {
                    let draw = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    sampled(&random, percent, &headers, None, draw)
                })
                .count()
        };
        assert_eq!(draws(0), 0);
        assert_eq!(draws(100), 10_000);
        assert!((2_000..3_000).contains(&draws(25)), "{}", draws(25));
        assert!(sampled(&random, 100, &headers, None, u64::MAX));
        assert!(!sampled(&random, 0, &headers, None, 0));
    }

    #[test]
    fn keyed_sampling_follows_the_keys_bucket_and_skips_keyless_requests() {
        let by_header = sampling(AssignmentSource::Header, Some("x-user"));
        let mut headers = HeaderMap::new();
        assert!(!sampled(&by_header, 100, &headers, None, 0));
        for user in ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6"] {
            headers.insert("x-user", HeaderValue::from_static(user));
            let bucket = bucket_of(11, user.as_bytes());
            let expected = u64::from(bucket) < 40 * u64::from(BUCKETS) / 100;
            // The same key, whatever the draw: all or none of a user's requests.
            for draw in [0, 1, u64::MAX] {
                assert_eq!(
                    sampled(&by_header, 40, &headers, None, draw),
                    expected,
                    "{user}"
                );
            }
        }
        let by_field = sampling(AssignmentSource::JsonField, Some("user.id"));
        let body = json!({"user": {"id": "u-1"}});
        assert!(sampled(&by_field, 100, &HeaderMap::new(), Some(&body), 0));
        assert!(!sampled(&by_field, 0, &HeaderMap::new(), Some(&body), 0));
        assert!(!sampled(&by_field, 100, &HeaderMap::new(), None, 0));
    }
}
