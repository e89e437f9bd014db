//! How a store is opened: whose data dir it is and the limits of its caches and engine.

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
    /// Upper bound on the engine's journal (write-ahead log) size. Restart replays at most this
    /// much, so it bounds restart time. fjall's default is 512 MiB; its minimum is 64 MiB.
    pub journal_bytes_max: u64,
    /// Size at which the entries memtable is flushed to a table.
    pub memtable_bytes_max: u64,
    /// The engine's block cache.
    pub engine_cache_bytes: u64,
    /// Largest entry payload accepted, in bytes. Must be below 4 GiB (the codec's length field).
    pub entry_bytes_max: u64,
    /// Read and check every stored entry on open (checksums, contiguity, terms). Costs a full
    /// read of the log; without it, open checks the metadata, the log's ends and the cached
    /// tail, and every later read is still checksummed.
    pub verify_on_open: bool,
}

/// fjall refuses journals under 64 MiB.
pub const JOURNAL_BYTES_MIN: u64 = 64 * 1024 * 1024;

impl Options {
    /// Defaults sized for a server: a 64 MiB journal (fjall's minimum, down from its 512 MiB
    /// default, so restarts replay little), a 4096-entry / 16 MiB tail cache.
    pub fn new(identity: Identity) -> Options {
        Options {
            identity,
            cache_entries_max: 4096,
            cache_bytes_max: 16 * 1024 * 1024,
            journal_bytes_max: JOURNAL_BYTES_MIN,
            memtable_bytes_max: 16 * 1024 * 1024,
            engine_cache_bytes: 32 * 1024 * 1024,
            entry_bytes_max: 64 * 1024 * 1024,
            verify_on_open: false,
        }
    }

    /// Explains what is wrong with these options, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.journal_bytes_max < JOURNAL_BYTES_MIN {
            return Err(format!(
                "journal_bytes_max {} is below fjall's minimum {JOURNAL_BYTES_MIN}",
                self.journal_bytes_max
            ));
        }
        if self.entry_bytes_max >= u64::from(u32::MAX) {
            return Err("entry_bytes_max must be below 4 GiB".to_string());
        }
        if self.memtable_bytes_max < 1024 * 1024 {
            return Err("memtable_bytes_max must be at least 1 MiB".to_string());
        }
        Ok(())
    }
}
