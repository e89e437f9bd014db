//! Trace hashing: every event the simulator processes is folded into a 64-bit FNV-1a digest, so
//! two runs of one seed can be compared by a single number.

use std::hash::{Hash, Hasher};

/// 64-bit FNV-1a; unlike `DefaultHasher` its output is fixed forever.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xCBF2_9CE4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01B3);
        }
    }
}

/// The running digest of a simulation.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    h: Fnv,
    /// Events folded in.
    pub events: u64,
}

impl Trace {
    /// Folds one event in.
    pub fn record(&mut self, event: impl Hash) {
        event.hash(&mut self.h);
        self.events += 1;
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        self.h.finish()
    }
}
