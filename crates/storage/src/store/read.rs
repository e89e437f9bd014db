//! Reads: entry ranges and terms, from the tail cache when it covers them, else the engine.
//! Every entry read from the engine is checksummed and checked against its key.

use raft::{Entry, Index, Term};

use super::{start_term, Store, ENTRIES_FILE};
use crate::codec;
use crate::error::StorageError;

impl Store {
    /// Checks that `[lo, hi]` is inside the stored log.
    fn check_range(&self, lo: Index, hi: Index) -> Result<(), StorageError> {
        if lo <= self.log_start.index {
            return Err(StorageError::Compacted {
                index: lo,
                snapshot_index: self.log_start.index,
            });
        }
        if hi > self.last_index {
            return Err(StorageError::Unavailable {
                index: hi,
                last_index: self.last_index,
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
        let cache_first = self.cache.first_index().unwrap_or(self.last_index.next());
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if lo < cache_first {
            let engine_hi = hi.min(cache_first.prev());
            let limited;
            (out, limited) = self.read_engine(lo, engine_hi, bytes_max)?;
            bytes = out.iter().map(Entry::size_bytes).sum();
            let expected = engine_hi.0 - lo.0 + 1;
            if (out.len() as u64) < expected && !limited {
                // The engine ran out of entries before the size limit: a hole in the log.
                let at = lo.plus(out.len() as u64);
                return Err(StorageError::corrupt(ENTRIES_FILE, at.0, "entry missing"));
            }
            if limited || engine_hi == hi {
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
        if let Some(t) = start_term(self.log_start, index) {
            return Ok(t);
        }
        self.check_range(index, index)?;
        if let Some(e) = self.cache.get(index) {
            return Ok(e.term);
        }
        let v = self
            .entries
            .get(codec::index_key(index))
            .map_err(|e| self.eng(e))?
            .ok_or_else(|| StorageError::corrupt(ENTRIES_FILE, index.0, "entry missing"))?;
        Ok(self.decode_at(index, &v)?.term)
    }

    fn decode_at(&self, index: Index, bytes: &[u8]) -> Result<Entry, StorageError> {
        let e = codec::decode_entry(bytes)
            .map_err(|r| StorageError::corrupt(ENTRIES_FILE, index.0, r))?;
        if e.index != index {
            return Err(StorageError::corrupt(
                ENTRIES_FILE,
                index.0,
                format!("key says {index}, entry says {}", e.index),
            ));
        }
        Ok(e)
    }

    /// Reads `lo..=hi` from the engine, stopping before `bytes_max` is passed (at least one
    /// entry); the flag says whether the limit stopped it. Entries missing at the end of the
    /// range are not reported here: callers check the count.
    pub(super) fn read_engine(
        &self,
        lo: Index,
        hi: Index,
        bytes_max: u64,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut expected = lo;
        for g in self
            .entries
            .range(codec::index_key(lo)..=codec::index_key(hi))
        {
            let (k, v) = g.into_inner().map_err(|e| self.eng(e))?;
            let index =
                codec::key_index(&k).map_err(|r| StorageError::corrupt(ENTRIES_FILE, lo.0, r))?;
            if index != expected {
                return Err(StorageError::corrupt(
                    ENTRIES_FILE,
                    expected.0,
                    "entry missing",
                ));
            }
            let e = self.decode_at(index, &v)?;
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                return Ok((out, true));
            }
            bytes += e.size_bytes();
            out.push(e);
            expected = expected.next();
        }
        Ok((out, false))
    }
}
