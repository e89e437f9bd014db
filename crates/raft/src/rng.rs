//! A tiny seeded PRNG (SplitMix64) for election jitter. The core never touches global
//! randomness: the same seed gives the same timeouts, so runs replay exactly.

/// SplitMix64 state.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The SplitMix64 finalizer: a bijective scramble of 64 bits. Seeds derived from related
    /// inputs (node ids 1, 2, 3 under one cluster seed) go through it so that their streams are
    /// unrelated, not shifted copies of one stream.
    pub fn mix(x: u64) -> u64 {
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value uniform in `[lo, hi)`. Panics if the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "empty range {lo}..{hi}");
        // The modulo bias is below 2^-40 for the ranges used here (tick counts).
        lo + self.next_u64() % (hi - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.range(10, 20);
            assert_eq!(x, b.range(10, 20));
            assert!((10..20).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn node_streams_are_not_shifted_copies() {
        // Found by the simulator (Swarm seed 387): seeding node i with `seed ^ i * step`, a
        // multiple of SplitMix64's own increment, made node j's stream node i's shifted by
        // j - i draws, so two candidates could draw identical timeouts every round.
        let stream = |id: u64| {
            let cluster_seed = 0;
            let mut r = Rng::new(Rng::mix(cluster_seed ^ Rng::mix(id)));
            (0..64).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        let (a, b) = (stream(1), stream(5));
        for shift in 0..32 {
            assert_ne!(a[shift..shift + 32], b[..32], "shifted by {shift}");
            assert_ne!(b[shift..shift + 32], a[..32], "shifted by {shift}");
        }
    }
}
