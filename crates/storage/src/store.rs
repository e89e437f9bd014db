//! The store: the Raft log and its metadata in fjall, snapshot files beside it.
//!
//! ```text
//!   <dir>/log/        fjall database: keyspace "entries" (index BE -> entry),
//!                     keyspace "meta" (identity, hard state, membership, log start)
//!   <dir>/snap/       snapshot files and the staging file of an incoming snapshot
//!
//!   snapshot.index < first_index <= last_index + 1,   commit <= max(last_index, snapshot.index)
//! ```
//!
//! Durability: [`Store::write`] puts the hard state, the new entries and the removal of a
//! truncated suffix into one fjall batch and syncs it (`fdatasync` of the journal) before it
//! returns, so a crash shows either all of a write or none of it: the hard state is never older
//! than the entries written with it, and a truncated suffix never reappears.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use raft::{Entry, EntryId, HardState, Index, InitialState, Membership, Term};

use crate::cache::TailCache;
use crate::codec;
use crate::error::StorageError;
use crate::options::Options;
use crate::snapshot::{SnapshotDir, SnapshotMeta};
use crate::staging::{StagedProgress, Staging};

/// Keys of the meta keyspace.
const KEY_IDENTITY: &[u8] = b"identity";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The id of the last entry compacted away (the log starts after it).
const KEY_LOG_START: &[u8] = b"log_start";
/// Removals per batch when compacting a long prefix.
const COMPACT_BATCH_KEYS_MAX: u64 = 16 * 1024;
/// Name used in errors about log entries.
const ENTRIES_FILE: &str = "log/entries (offset = entry index)";

/// What [`Store::open`] found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// True if the data dir was empty and has just been initialised.
    pub created: bool,
    /// The last durable hard state (default for a new dir).
    pub hard_state: HardState,
    /// The last durable membership (empty for a new dir: bootstrap sets it).
    pub membership: Membership,
    /// The last entry compacted away; the log starts right after it.
    pub log_start: EntryId,
    /// Index of the last stored entry (`log_start.index` if the log is empty).
    pub last_index: Index,
    /// The newest durable snapshot file, if any. Covers at least `log_start`.
    pub snapshot: Option<SnapshotMeta>,
    /// A snapshot being received when the server stopped, if any.
    pub staged: Option<StagedProgress>,
}

/// The durable Raft log, hard state, membership and snapshots of one node.
pub struct Store {
    /// Root data dir.
    dir: PathBuf,
    /// The fjall directory, for error messages.
    log_path: PathBuf,
    /// The engine.
    db: Database,
    /// Index (big-endian) -> encoded entry.
    entries: Keyspace,
    /// Metadata records.
    meta: Keyspace,
    /// Last compacted entry. Invariant: `log_start.index <= last_index`.
    log_start: EntryId,
    /// Last stored index.
    last_index: Index,
    /// Last durable hard state. Invariant: `hard_state.commit <= last_index`.
    hard_state: HardState,
    /// Last durable membership.
    membership: Membership,
    /// Recent entries, a suffix of the log.
    cache: TailCache,
    /// Snapshot files.
    snapshots: SnapshotDir,
    /// Incoming snapshot, if one is being received.
    staging: Option<Staging>,
    /// Options the store was opened with.
    options: Options,
    /// Set when a write failed: the engine may have lost buffered data, so nothing more is
    /// written until a reopen recovers what is really on disk.
    failed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start)
            .field("last_index", &self.last_index)
            .field("hard_state", &self.hard_state)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the data dir `dir`, creating it if empty, and recovers its state. Refuses a dir of
    /// another cluster or node, and any corruption other than a torn journal tail (which fjall
    /// truncates on recovery).
    pub fn open(dir: &Path, options: Options) -> Result<(Store, Recovered), StorageError> {
        options.validate().map_err(StorageError::InvalidRequest)?;
        let log_path = dir.join("log");
        std::fs::create_dir_all(&log_path)
            .map_err(|e| StorageError::io("create directory", &log_path, e))?;
        let eng = |e| StorageError::engine(&log_path, e);
        let db = Database::builder(&log_path)
            .max_journaling_size(options.journal_bytes_max)
            .cache_size(options.engine_cache_bytes)
            .open()
            .map_err(eng)?;
        let memtable = options.memtable_bytes_max;
        let entries = db
            .keyspace("entries", || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(eng)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(eng)?;
        let snapshots = SnapshotDir::open(&dir.join("snap"))?;
        let staging = Staging::recover(snapshots.dir())?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            log_path: log_path.clone(),
            db,
            entries,
            meta,
            log_start: EntryId::default(),
            last_index: Index(0),
            hard_state: HardState::default(),
            membership: Membership::default(),
            cache: TailCache::new(options.cache_entries_max, options.cache_bytes_max),
            snapshots,
            staging,
            options,
            failed: false,
        };
        let created = store.recover_meta()?;
        store.recover_log()?;
        store.check_invariants();
        let recovered = Recovered {
            created,
            hard_state: store.hard_state,
            membership: store.membership.clone(),
            log_start: store.log_start,
            last_index: store.last_index,
            snapshot: store.snapshots.latest().cloned(),
            staged: store.staging.as_ref().map(|s| s.progress().clone()),
        };
        Ok((store, recovered))
    }

    fn eng(&self, e: fjall::Error) -> StorageError {
        StorageError::engine(&self.log_path, e)
    }

    fn get_meta<T>(
        &self,
        key: &[u8],
        decode: fn(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StorageError> {
        let Some(v) = self.meta.get(key).map_err(|e| self.eng(e))? else {
            return Ok(None);
        };
        decode(&v).map(Some).map_err(|reason| {
            StorageError::corrupt(
                format!("log/meta record {:?}", String::from_utf8_lossy(key)),
                0,
                reason,
            )
        })
    }

    /// Reads identity, hard state, membership and log start. Returns whether the dir is new.
    fn recover_meta(&mut self) -> Result<bool, StorageError> {
        let expected = self.options.identity;
        let created = match self.get_meta(KEY_IDENTITY, codec::decode_identity)? {
            Some(found) if found != expected => {
                return Err(StorageError::IdentityMismatch { expected, found })
            }
            Some(_) => false,
            None => {
                let empty = self.meta.first_key_value().is_none()
                    && self.entries.first_key_value().is_none();
                if !empty {
                    return Err(StorageError::corrupt(
                        "log/meta record \"identity\"",
                        0,
                        "identity record missing from a non-empty data dir",
                    ));
                }
                let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(&self.meta, KEY_IDENTITY, codec::encode_identity(&expected));
                b.commit().map_err(|e| self.eng(e))?;
                true
            }
        };
        self.hard_state = self
            .get_meta(KEY_HARD_STATE, codec::decode_hard_state)?
            .unwrap_or_default();
        self.membership = self
            .get_meta(KEY_MEMBERSHIP, codec::decode_membership)?
            .unwrap_or_default();
        self.log_start = self
            .get_meta(KEY_LOG_START, codec::decode_entry_id)?
            .unwrap_or_default();
        let covered = self.snapshots.latest().map_or(Index(0), |s| s.last.index);
        if self.log_start.index > covered {
            return Err(StorageError::corrupt(
                self.snapshots.dir().display().to_string(),
                0,
                format!(
                    "log was compacted to {} but no snapshot file covers it (newest covers {covered})",
                    self.log_start.index
                ),
            ));
        }
        Ok(created)
    }

    /// Finds the log's ends, removes leftovers of an interrupted compaction, checks contiguity
    /// at the ends and loads the tail cache.
    fn recover_log(&mut self) -> Result<(), StorageError> {
        self.remove_compacted_leftovers()?;
        let first = self.entries.first_key_value();
        let last = self.entries.last_key_value();
        let (Some(first), Some(last)) = (first, last) else {
            self.last_index = self.log_start.index;
            return self.check_commit();
        };
        let first = self.key_of(first)?;
        let last = self.key_of(last)?;
        if first != self.log_start.index.next() {
            return Err(StorageError::corrupt(
                ENTRIES_FILE,
                self.log_start.index.next().0,
                format!(
                    "log should start at {} but its first entry is {first}",
                    self.log_start.index.next()
                ),
            ));
        }
        self.last_index = last;
        // Load the tail; this decodes and checks the newest entries.
        let cache_n = (self.options.cache_entries_max as u64).max(1);
        let lo = Index(last.0.saturating_sub(cache_n - 1).max(first.0));
        let (tail, _) = self.read_engine(lo, last, u64::MAX)?;
        if tail.len() as u64 != last.0 - lo.0 + 1 {
            return Err(StorageError::corrupt(ENTRIES_FILE, lo.0, "gap in log tail"));
        }
        self.check_terms(&tail)?;
        if self.options.verify_on_open {
            self.verify_all()?;
        }
        self.cache.append(&tail);
        self.check_commit()
    }

    fn key_of(&self, g: fjall::Guard) -> Result<Index, StorageError> {
        let (k, _) = g.into_inner().map_err(|e| self.eng(e))?;
        codec::key_index(&k).map_err(|r| StorageError::corrupt(ENTRIES_FILE, 0, r))
    }

    /// A hard state whose commit is past the stored log means entries the node acknowledged
    /// as committed are gone.
    fn check_commit(&self) -> Result<(), StorageError> {
        if self.hard_state.commit > self.last_index {
            return Err(StorageError::corrupt(
                ENTRIES_FILE,
                self.last_index.0,
                format!(
                    "hard state commits {} but the log ends at {}",
                    self.hard_state.commit, self.last_index
                ),
            ));
        }
        Ok(())
    }

    fn check_terms(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut prev = self.log_start.term;
        for e in entries {
            if e.term < prev {
                return Err(StorageError::corrupt(
                    ENTRIES_FILE,
                    e.index.0,
                    format!("term {} goes back from {prev}", e.term),
                ));
            }
            prev = e.term;
        }
        Ok(())
    }

    /// Reads every entry in bounded chunks, checking checksums, contiguity and terms.
    fn verify_all(&self) -> Result<(), StorageError> {
        let mut lo = self.log_start.index.next();
        let mut prev = self.log_start.term;
        while lo <= self.last_index {
            let hi = Index((lo.0 + 4095).min(self.last_index.0));
            let (chunk, _) = self.read_engine(lo, hi, u64::MAX)?;
            if chunk.len() as u64 != hi.0 - lo.0 + 1 {
                return Err(StorageError::corrupt(ENTRIES_FILE, lo.0, "gap in log"));
            }
            for e in &chunk {
                if e.term < prev {
                    return Err(StorageError::corrupt(
                        ENTRIES_FILE,
                        e.index.0,
                        "term goes back",
                    ));
                }
                prev = e.term;
            }
            lo = hi.next();
        }
        Ok(())
    }

    /// Deletes entries at or before `log_start` left by a compaction interrupted by a crash.
    fn remove_compacted_leftovers(&mut self) -> Result<(), StorageError> {
        let end = codec::index_key(self.log_start.index.next());
        let mut n = 0u64;
        let mut batch = self.db.batch();
        for g in self.entries.range(..end) {
            let (k, _) = g.into_inner().map_err(|e| self.eng(e))?;
            batch.remove(&self.entries, k);
            n += 1;
        }
        if n > 0 {
            tracing::info!(entries = n, "finishing an interrupted log compaction");
            batch.commit().map_err(|e| self.eng(e))?;
        }
        Ok(())
    }

    /// Index of the first entry still in the log.
    pub fn first_index(&self) -> Index {
        self.log_start.index.next()
    }

    /// Index of the last entry (`log_start.index` if the log is empty).
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// The last compacted entry; the log starts right after it.
    pub fn log_start(&self) -> EntryId {
        self.log_start
    }

    /// The last durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The last durable membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

mod read;
mod write;

/// Builds the core's start state from a recovered store (reads every stored entry).
pub fn initial_state(store: &Store, applied: Index) -> Result<InitialState, StorageError> {
    if applied < store.log_start.index {
        return Err(StorageError::InvalidRequest(format!(
            "applied {applied} is before the snapshot at {}",
            store.log_start.index
        )));
    }
    let entries = if store.last_index >= store.first_index() {
        store.entries(store.first_index(), store.last_index, u64::MAX)?
    } else {
        Vec::new()
    };
    Ok(InitialState {
        hard_state: store.hard_state,
        membership: store.membership.clone(),
        snapshot: store.log_start,
        entries,
        applied,
    })
}

/// The term of the entry before `index` when it is the log start, else `None`.
fn start_term(start: EntryId, index: Index) -> Option<Term> {
    (index == start.index).then_some(start.term)
}
