//! A stable hash of a desired object, stored on the child so that the next reconcile can tell
//! whether anything changed without writing.

use serde::Serialize;

/// 64-bit FNV-1a over the object's JSON. Stable across Rust versions and processes (unlike
/// `DefaultHasher`), so an operator restart does not re-apply every child.
pub fn stable_hash<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_hash_equal_and_different_values_differ() {
        assert_eq!(stable_hash(&json!({"a": 1})), stable_hash(&json!({"a": 1})));
        assert_ne!(stable_hash(&json!({"a": 1})), stable_hash(&json!({"a": 2})));
        assert_eq!(stable_hash(&json!({"a": 1})).len(), 16);
    }
}
