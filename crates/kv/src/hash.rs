//! A hasher for maps keyed by ids the store itself hands out (session client ids), where
//! SipHash's protection against chosen keys buys nothing: no client picks these ids, members
//! do. One multiply per key instead of SipHash's rounds; the sessions' map is touched three
//! or four times per write.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from an id to `V`, hashed with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A folded multiply of `u64` ids (as foldhash and ahash do): the 128-bit product's high
/// half depends on every bit of the id, and folding it onto the low half puts that into the
/// low bits the table indexes with.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let p = u128::from(self.0 ^ n) * u128::from(K);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_and_strided_ids_spread_over_buckets() {
        // The low bits pick the bucket: consecutive ids (one member's sessions) and ids that
        // differ only in high bits must both land in many buckets of a small table.
        for stride in [1u64, 1 << 32, 1 << 54] {
            let mut buckets = std::collections::HashSet::new();
            for i in 0..1024u64 {
                let mut h = IdHasher::default();
                h.write_u64(0x1234_5678_9abc_def0u64.wrapping_add(i.wrapping_mul(stride)));
                buckets.insert(h.finish() & 1023);
            }
            assert!(
                buckets.len() > 600,
                "stride {stride}: {} buckets",
                buckets.len()
            );
        }
    }
}
