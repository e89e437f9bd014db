//! How a store is opened: whose data dir it is and the limits of its caches and log files.

use crate::identity::Identity;

/// Options for [`crate::Store::open`]. Limits are named with the qualifier last.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster and node this server is. A new data dir records it; an existing one must
    /// match it or the open fails.
    pub identity: Identity,
    /// Most entries the in-memory tail cache holds. 0 disables the cache.
    pub cache_entries_max: usize,
    /// Most bytes (`Entry::size_bytes`) the tail cache holds; the newest entry is always kept.
    pub cache_bytes_max: u64,
    /// Size of a log segment file. Segments are zero-filled to this size before use (so that
    /// a sync writes data blocks only); a compaction deletes whole segments, so the disk holds
    /// up to one segment of compacted entries. Restart reads every remaining segment.
    pub segment_bytes: u64,
    /// Largest entry payload accepted, in bytes. At most 512 MiB (half a log record).
    pub entry_bytes_max: u64,
    /// Read and check every stored entry on open (checksums, contiguity, terms). Costs a full
    /// read of the log; without it, open checks the metadata, the log's ends and the cached
    /// tail, and every later read is still checksummed.
    pub verify_on_open: bool,
}

/// The smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

impl Options {
    /// Defaults sized for a server: 64 MiB segments (as etcd's WAL), a 4096-entry / 16 MiB
    /// tail cache.
    pub fn new(identity: Identity) -> Options {
        Options {
            identity,
            cache_entries_max: 4096,
            cache_bytes_max: 16 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            entry_bytes_max: 64 * 1024 * 1024,
            verify_on_open: false,
        }
    }

    /// Explains what is wrong with these options, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(format!(
                "segment_bytes {} is below the minimum {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            ));
        }
        if self.entry_bytes_max > crate::wal::RECORD_BYTES_MAX / 2 {
            return Err(format!(
                "entry_bytes_max must be at most {} (half the log's record limit)",
                crate::wal::RECORD_BYTES_MAX / 2
            ));
        }
        Ok(())
    }
}
