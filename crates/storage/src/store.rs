//! The store: the Raft log and its metadata in our write-ahead log, snapshot files beside it.
//!
//! ```text
//!   <dir>/wal/        the write-ahead log (see [`crate::wal`]): segments of records holding
//!                     entries, hard state, membership, log start; identity in every header
//!   <dir>/snap/       snapshot files and the staging file of an incoming snapshot
//!   <dir>/LOCK        locked (flock) while a process has the store open
//!
//!   snapshot.index >= log_start.index,   commit <= last_index
//! ```
//!
//! Durability: [`Store::write`] puts the hard state and the new entries (which replace any
//! suffix from their first index) into one record and syncs it (`fdatasync`) before it
//! returns, so a crash shows either all of a write or none of it: the hard state is never
//! older than the entries written with it, and a truncated suffix never reappears.

use std::path::{Path, PathBuf};

use raft::{Entry, EntryId, HardState, Index, InitialState, Membership, Term};

use crate::cache::TailCache;
use crate::error::StorageError;
use crate::options::Options;
use crate::snapshot::{SnapshotDir, SnapshotMeta};
use crate::staging::{StagedProgress, Staging};
use crate::wal::Wal;

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
    /// The log and its metadata (log start, last index, hard state, membership). Invariants:
    /// `log_start.index <= last_index`, `hard_state.commit <= last_index`.
    wal: Wal,
    /// Recent entries, a suffix of the log.
    cache: TailCache,
    /// Snapshot files.
    snapshots: SnapshotDir,
    /// Incoming snapshot, if one is being received.
    staging: Option<Staging>,
    /// Options the store was opened with.
    options: Options,
    /// Set when a write failed: the file may hold a partial write and the kernel may have
    /// dropped dirty pages, so nothing more is written until a reopen recovers what is really
    /// on disk.
    failed: bool,
    /// A hard state that moved only the commit index since the last record
    /// ([`Store::write_commit`]): kept in memory and written with the next record. A crash
    /// loses it, which is safe (the commit index is volatile state, paper Figure 2); it is
    /// never written on its own unsynced, so no unsynced bytes can sit before synced ones in
    /// the log (a crash during the later sync could persist those and not these, leaving a
    /// hole recovery must refuse). Invariant: same term and vote as the stored hard state.
    pending_commit: Option<HardState>,
    /// `<dir>/LOCK`, locked for as long as the store is open: one process per data dir.
    _lock: std::fs::File,
}

/// Creates `dir` if needed and takes its lock.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io("lock", &path, e)),
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start())
            .field("last_index", &self.last_index())
            .field("hard_state", &self.hard_state())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Has `observe` told the duration of every log append's `fdatasync` from now on (for
    /// metrics).
    pub fn observe_syncs(&mut self, observe: crate::wal::SyncObserver) {
        self.wal.observe_syncs(observe);
    }

    /// Whether `dir` holds no log and no snapshot (missing counts as empty): a member
    /// starting there has no state yet.
    pub fn is_empty(dir: &Path) -> Result<bool, StorageError> {
        let listed = |sub: &str| -> Result<Vec<String>, StorageError> {
            let d = dir.join(sub);
            match std::fs::read_dir(&d) {
                Ok(entries) => entries
                    .map(|e| {
                        e.map(|e| e.file_name().to_string_lossy().into_owned())
                            .map_err(|e| StorageError::io("list", &d, e))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(StorageError::io("list", &d, e)),
            }
        };
        let segments = listed("wal")?
            .iter()
            .any(|n| crate::wal::segment::parse_name(n).is_some());
        Ok(!segments && listed("snap")?.is_empty())
    }

    /// Opens the data dir `dir`, creating it if empty, and recovers its state. Refuses a dir of
    /// another cluster or node, a dir another process has open, and any corruption other than
    /// a torn write at the end of the log (which is truncated with a warning).
    pub fn open(dir: &Path, options: Options) -> Result<(Store, Recovered), StorageError> {
        options.validate().map_err(StorageError::InvalidRequest)?;
        let old_engine = dir.join("log");
        if old_engine.is_dir() {
            return Err(StorageError::corrupt(
                old_engine.display().to_string(),
                0,
                "this data dir holds a log in the old fjall format, which this version cannot \
                 read; remove the data dir and let the member catch up from the cluster",
            ));
        }
        // The lock first: nothing in the dir may change while another process has it.
        let lock = lock_dir(dir)?;
        let snapshots = SnapshotDir::open(&dir.join("snap"))?;
        let staging = Staging::recover(snapshots.dir())?;
        let fresh = snapshots.latest().is_none() && staging.is_none();
        let (wal, created) = Wal::open(
            &dir.join("wal"),
            options.identity,
            options.segment_bytes,
            fresh,
        )?;
        if created {
            // Make the new directories themselves durable.
            crate::snapshot::sync_dir(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                crate::snapshot::sync_dir(parent)?;
            }
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            wal,
            cache: TailCache::new(options.cache_entries_max, options.cache_bytes_max),
            snapshots,
            staging,
            options,
            failed: false,
            pending_commit: None,
            _lock: lock,
        };
        store.check_snapshot_covers_start()?;
        store.recover_log()?;
        store.check_invariants();
        let recovered = Recovered {
            created,
            hard_state: store.hard_state(),
            membership: store.membership().clone(),
            log_start: store.log_start(),
            last_index: store.last_index(),
            snapshot: store.snapshots.latest().cloned(),
            staged: store.staging.as_ref().map(|s| s.progress().clone()),
        };
        Ok((store, recovered))
    }

    /// A log compacted past every snapshot file means the snapshot it needs is gone.
    fn check_snapshot_covers_start(&self) -> Result<(), StorageError> {
        let covered = self.snapshots.latest().map_or(Index(0), |s| s.last.index);
        let start = self.log_start().index;
        if start > covered {
            return Err(StorageError::corrupt(
                self.snapshots.dir().display().to_string(),
                0,
                format!(
                    "log was compacted to {start} but no snapshot file covers it (newest covers {covered})"
                ),
            ));
        }
        Ok(())
    }

    /// Loads (and so checks) the tail into the cache, checks terms and commit, and reads the
    /// whole log if `verify_on_open`.
    fn recover_log(&mut self) -> Result<(), StorageError> {
        let (first, last) = (self.first_index(), self.last_index());
        if last >= first {
            let cache_n = (self.options.cache_entries_max as u64).max(1);
            let lo = Index(last.0.saturating_sub(cache_n - 1).max(first.0));
            let (tail, _) = self.wal.read(lo, last, u64::MAX)?;
            self.check_terms(&tail)?;
            if self.options.verify_on_open {
                self.verify_all()?;
            }
            self.cache.append(&tail);
        }
        self.check_commit()
    }

    /// A hard state whose commit is past the stored log means entries the node acknowledged
    /// as committed are gone.
    fn check_commit(&self) -> Result<(), StorageError> {
        let (commit, last) = (self.hard_state().commit, self.last_index());
        if commit > last {
            return Err(StorageError::corrupt(
                self.wal_dir().display().to_string(),
                0,
                format!("hard state commits {commit} but the log ends at {last}"),
            ));
        }
        Ok(())
    }

    fn check_terms(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut prev = self.log_start().term;
        for e in entries {
            if e.term < prev {
                return Err(StorageError::corrupt(
                    self.wal_dir().display().to_string(),
                    0,
                    format!("entry {}: term {} goes back from {prev}", e.index, e.term),
                ));
            }
            prev = e.term;
        }
        Ok(())
    }

    /// Reads every entry in bounded chunks, checking checksums, indexes and terms.
    fn verify_all(&self) -> Result<(), StorageError> {
        let mut lo = self.first_index();
        let mut prev = self.log_start().term;
        while lo <= self.last_index() {
            let hi = Index((lo.0 + 4095).min(self.last_index().0));
            let (chunk, _) = self.wal.read(lo, hi, u64::MAX)?;
            for e in &chunk {
                if e.term < prev {
                    return Err(StorageError::corrupt(
                        self.wal_dir().display().to_string(),
                        0,
                        format!("entry {}: term {} goes back from {prev}", e.index, e.term),
                    ));
                }
                prev = e.term;
            }
            lo = hi.next();
        }
        Ok(())
    }

    fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// Index of the first entry still in the log.
    pub fn first_index(&self) -> Index {
        self.log_start().index.next()
    }

    /// Index of the last entry (`log_start.index` if the log is empty).
    pub fn last_index(&self) -> Index {
        self.wal.state().last_index
    }

    /// The last compacted entry; the log starts right after it.
    pub fn log_start(&self) -> EntryId {
        self.wal.state().log_start
    }

    /// The last durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.pending_commit.unwrap_or(self.wal.state().hard_state)
    }

    /// The last durable membership.
    pub fn membership(&self) -> &Membership {
        &self.wal.state().membership
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
    if applied < store.log_start().index {
        return Err(StorageError::InvalidRequest(format!(
            "applied {applied} is before the snapshot at {}",
            store.log_start().index
        )));
    }
    let entries = if store.last_index() >= store.first_index() {
        store.entries(store.first_index(), store.last_index(), u64::MAX)?
    } else {
        Vec::new()
    };
    Ok(InitialState {
        hard_state: store.hard_state(),
        membership: store.membership().clone(),
        snapshot: store.log_start(),
        entries,
        applied,
    })
}

/// The term of the entry before `index` when it is the log start, else `None`.
fn start_term(start: EntryId, index: Index) -> Option<Term> {
    (index == start.index).then_some(start.term)
}
