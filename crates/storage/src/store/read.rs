//! Reads: entry ranges and terms, from the tail cache when it covers them, else the log files.
//! Every entry read from a file is checksummed and checked against its index.

use raft::{Entry, Index, Term};

use super::{start_term, Store};
use crate::error::StorageError;

impl Store {
    /// Checks that `[lo, hi]` is inside the stored log.
    fn check_range(&self, lo: Index, hi: Index) -> Result<(), StorageError> {
        let start = self.log_start().index;
        if lo <= start {
            return Err(StorageError::Compacted {
                index: lo,
                snapshot_index: start,
            });
        }
        if hi > self.last_index() {
            return Err(StorageError::Unavailable {
                index: hi,
                last_index: self.last_index(),
            });
        }
        Ok(())
    }

    /// Entries `lo..=hi`, stopping once their total `size_bytes` would pass `bytes_max`, but
    /// always at least one entry when the range is not empty (so a huge entry still moves).
    pub fn entries(
        &self,
        lo: Index,
        hi: Index,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if lo > hi {
            return Ok(Vec::new());
        }
        self.check_range(lo, hi)?;
        let cache_first = self.cache.first_index().unwrap_or(self.last_index().next());
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if lo < cache_first {
            let file_hi = hi.min(cache_first.prev());
            let limited;
            (out, limited) = self.wal.read(lo, file_hi, bytes_max)?;
            bytes = out.iter().map(Entry::size_bytes).sum();
            if limited || file_hi == hi {
                return Ok(out);
            }
        }
        let mut i = lo.max(cache_first);
        while i <= hi {
            let e = self.cache.get(i).expect("cache covers cache_first..=last");
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
            i = i.next();
        }
        Ok(out)
    }

    /// The term of the entry at `index`; the log start's term for `index == log_start.index`.
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if let Some(t) = start_term(self.log_start(), index) {
            return Ok(t);
        }
        self.check_range(index, index)?;
        if let Some(e) = self.cache.get(index) {
            return Ok(e.term);
        }
        let (e, _) = self.wal.read(index, index, u64::MAX)?;
        Ok(e[0].term)
    }
}
