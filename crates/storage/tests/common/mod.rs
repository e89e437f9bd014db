//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use raft::{Entry, EntryKind, HardState, Index, NodeId, Term};
use skiff_storage::{Identity, Options, Recovered, StorageError, Store};

/// The identity every test store uses.
pub fn identity() -> Identity {
    Identity {
        cluster_id: 0x5eed,
        node_id: NodeId::new(1).unwrap(),
    }
}

/// Small limits so that tests exercise cache misses and many segments.
pub fn options() -> Options {
    let mut o = Options::new(identity());
    o.cache_entries_max = 8;
    o.cache_bytes_max = 4096;
    o.segment_bytes = 256 * 1024;
    o
}

pub fn open(dir: &Path) -> Result<(Store, Recovered), StorageError> {
    Store::open(dir, options())
}

/// A deterministic payload for (index, term), so any reader can check an entry's bytes.
pub fn entry(index: u64, term: u64, len: usize) -> Entry {
    let mut data = Vec::with_capacity(len);
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push(x as u8);
    }
    Entry {
        term: Term(term),
        index: Index(index),
        kind: if len == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Normal
        },
        data,
    }
}

pub fn hard_state(term: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: NodeId::new(1),
        commit: Index(commit),
    }
}

/// Every entry of the store.
pub fn all_entries(store: &Store) -> Result<Vec<Entry>, StorageError> {
    if store.last_index() < store.first_index() {
        return Ok(Vec::new());
    }
    store.entries(store.first_index(), store.last_index(), u64::MAX)
}

/// Copies a directory tree (a data dir, to damage a copy of it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// A tiny xorshift PRNG so that tests replay from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
