//! The documented bucket hash (§4.1).
//!
//! `bucket(p1, p2, …)` is the first 8 bytes of SHA-256 over the UTF-8 string
//! `p1:p2:…`, read as a big-endian `u64`, modulo 10 000. Analysts recompute it
//! outside allot, so this function must never change.

use sha2::{Digest, Sha256};

/// Number of buckets every layout divides.
pub const BUCKETS: u16 = 10_000;

/// The bucket of the parts joined by `:`.
///
/// The parts are fed to the hasher one after another instead of being joined
/// into a new string: same digest, no allocation on the assignment path.
pub fn bucket(parts: &[&str]) -> u16 {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 10 000, so it always fits a u16.
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bucket_is_in_range_and_deterministic(a in ".*", b in ".*") {
            let first = bucket(&[&a, &b]);
            prop_assert!(first < BUCKETS);
            prop_assert_eq!(first, bucket(&[&a, &b]));
        }

        #[test]
        fn parts_hash_as_their_joined_string(a in ".*", b in ".*", c in ".*") {
            let joined = format!("{a}:{b}:{c}");
            prop_assert_eq!(bucket(&[&a, &b, &c]), bucket(&[&joined]));
        }
    }
}
