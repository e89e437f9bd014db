//! A bounded in-memory copy of the newest log entries. The leader reads recent entries for every
//! append it sends, so those reads should not touch the disk.
//!
//! ```text
//!   log:    first ......................... last
//!   cache:                  cache_first ... last     (always a suffix of the log, or empty)
//! ```

use std::collections::VecDeque;

use raft::{Entry, Index};

/// The newest entries of the log, bounded in count and bytes.
#[derive(Debug)]
pub struct TailCache {
    /// Contiguous entries ending at the log's last index.
    /// Invariant: `entries[i + 1].index == entries[i].index + 1`.
    entries: VecDeque<Entry>,
    /// Sum of `Entry::size_bytes` over `entries`.
    bytes: u64,
    /// At most this many entries are kept.
    entries_max: usize,
    /// At most this many bytes are kept (the newest entry is kept even if larger alone).
    bytes_max: u64,
}

impl TailCache {
    /// An empty cache with the given limits.
    pub fn new(entries_max: usize, bytes_max: u64) -> TailCache {
        TailCache {
            entries: VecDeque::new(),
            bytes: 0,
            entries_max,
            bytes_max,
        }
    }

    /// Index of the oldest cached entry, if any.
    pub fn first_index(&self) -> Option<Index> {
        self.entries.front().map(|e| e.index)
    }

    /// Index of the newest cached entry, if any.
    pub fn last_index(&self) -> Option<Index> {
        self.entries.back().map(|e| e.index)
    }

    /// The cached entry at `index`, if cached.
    pub fn get(&self, index: Index) -> Option<&Entry> {
        let first = self.first_index()?;
        let offset = index.0.checked_sub(first.0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Records entries just appended to the log, replacing cached entries at or after
    /// `entries[0].index` (the log was truncated there). `entries` must be contiguous.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.truncate_from(first.index);
        if self.last_index().is_some_and(|l| l.next() != first.index) {
            // The new entries do not continue the cached run: start over rather than leave a gap.
            self.clear();
        }
        for e in entries {
            self.bytes += e.size_bytes();
            self.entries.push_back(e.clone());
        }
        self.evict();
        // A walk of the whole cache: in this crate's tests and debug builds, not on the
        // leader's hot path (it was 1% of the leader's samples under put-c256).
        if cfg!(any(test, debug_assertions)) {
            self.check_invariants();
        }
    }

    /// Drops cached entries at or after `index`.
    pub fn truncate_from(&mut self, index: Index) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let e = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= e.size_bytes();
        }
    }

    /// Drops cached entries at or before `index` (compacted into a snapshot).
    pub fn compact_to(&mut self, index: Index) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            let e = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= e.size_bytes();
        }
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn evict(&mut self) {
        while self.entries.len() > 1
            && (self.entries.len() > self.entries_max || self.bytes > self.bytes_max)
        {
            let e = self.entries.pop_front().expect("len > 1");
            self.bytes -= e.size_bytes();
        }
        if self.entries_max == 0 {
            self.clear();
        }
    }

    /// Panics if the cache is not contiguous or its byte count is off.
    pub fn check_invariants(&self) {
        let mut bytes = 0;
        for (i, e) in self.entries.iter().enumerate() {
            bytes += e.size_bytes();
            if i > 0 {
                assert_eq!(e.index, self.entries[i - 1].index.next(), "cache gap");
            }
        }
        assert_eq!(bytes, self.bytes, "cache byte count");
        assert!(self.entries.len() <= self.entries_max.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{EntryKind, Term};

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: Index(index),
            kind: EntryKind::Normal,
            data: vec![0; 10],
        }
    }

    #[test]
    fn keeps_a_bounded_suffix() {
        let mut c = TailCache::new(3, u64::MAX);
        c.append(&[e(1, 1), e(2, 1), e(3, 1), e(4, 1)]);
        assert_eq!(c.first_index(), Some(Index(2)));
        assert_eq!(c.last_index(), Some(Index(4)));
        assert!(c.get(Index(1)).is_none());
        assert_eq!(c.get(Index(3)), Some(&e(3, 1)));
    }

    #[test]
    fn truncation_replaces_the_suffix() {
        let mut c = TailCache::new(10, u64::MAX);
        c.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        c.append(&[e(2, 2)]);
        assert_eq!(c.last_index(), Some(Index(2)));
        assert_eq!(c.get(Index(2)), Some(&e(2, 2)));
        assert_eq!(c.get(Index(1)), Some(&e(1, 1)));
    }

    #[test]
    fn byte_limit_keeps_at_least_the_newest() {
        let mut c = TailCache::new(10, 1);
        c.append(&[e(1, 1), e(2, 1)]);
        assert_eq!(c.first_index(), Some(Index(2)));
        c.compact_to(Index(2));
        assert_eq!(c.first_index(), None);
    }

    #[test]
    fn a_gap_restarts_the_cache() {
        let mut c = TailCache::new(10, u64::MAX);
        c.append(&[e(1, 1)]);
        c.append(&[e(5, 1)]);
        assert_eq!(c.first_index(), Some(Index(5)));
    }
}
