//! Writes: the synced append (group commit), compaction, snapshot install and membership.

use std::path::Path;

use raft::{Entry, EntryId, HardState, Index, Membership};

use super::Store;
use crate::error::StorageError;
use crate::snapshot::SnapshotMeta;
use crate::staging::Staging;
use crate::wal::Wal;

impl Store {
    fn ensure_ok(&self) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Failed);
        }
        Ok(())
    }

    /// Marks the store failed if a write failed (a failed sync is not retryable).
    fn fail_on_err<T>(&mut self, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Persists one output batch of the core: the hard state (if any) and entries (if any),
    /// replacing stored entries at and after `entries[0].index`. Durable when it returns:
    /// everything goes into one log record with one `fdatasync`, so the caller group-commits
    /// by passing many entries at once.
    pub fn write(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.ensure_ok()?;
        self.validate_append(hard_state, entries)?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        // A pending commit index rides along (a new hard state supersedes it).
        let hard_state = hard_state.copied().or(self.pending_commit);
        let r = self.wal.append(hard_state.as_ref(), entries);
        self.fail_on_err(r)?;
        self.pending_commit = None;
        if !entries.is_empty() {
            self.cache.append(entries);
        }
        self.check_invariants_if_debug();
        Ok(())
    }

    /// Takes a hard state that changes only the commit index (a batch whose
    /// `Ready::must_sync` is false) without writing it: it goes to disk with the next record
    /// ([`Store::write`], [`Store::sync`], a compaction). A crash before that loses it: the
    /// node restarts with an older commit index and learns the newer one from the leader,
    /// which is safe because the commit index is volatile state (paper Figure 2).
    pub fn write_commit(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.ensure_ok()?;
        let stored = self.hard_state();
        if (hard_state.term, hard_state.vote) != (stored.term, stored.vote) {
            return Err(StorageError::InvalidRequest(format!(
                "a hard state kept unsynced may change only the commit index: term {} vote {:?}, \
                 stored term {} vote {:?}",
                hard_state.term, hard_state.vote, stored.term, stored.vote
            )));
        }
        self.validate_append(Some(hard_state), &[])?;
        if *hard_state != self.wal.state().hard_state {
            self.pending_commit = Some(*hard_state);
        }
        Ok(())
    }

    /// Writes the pending commit index, synced (before records that must not get ahead of
    /// it, and for [`Store::sync`]).
    fn flush_pending_commit(&mut self) -> Result<(), StorageError> {
        if let Some(hs) = self.pending_commit {
            let r = self.wal.append(Some(&hs), &[]);
            self.fail_on_err(r)?;
            self.pending_commit = None;
        }
        Ok(())
    }

    fn validate_append(
        &self,
        hs: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::InvalidRequest(m));
        let stored = self.hard_state();
        let (start, last) = (self.log_start().index, self.last_index());
        if let Some(hs) = hs {
            if hs.term < stored.term {
                return bad(format!(
                    "hard state term {} < stored {}",
                    hs.term, stored.term
                ));
            }
        }
        let commit = hs.map_or(stored.commit, |h| h.commit);
        let Some(first) = entries.first() else {
            if commit > last {
                return bad(format!("commit {commit} past the last entry {last}"));
            }
            return Ok(());
        };
        if first.index <= start {
            return bad(format!("entry {} is in the compacted prefix", first.index));
        }
        if first.index > last.next() {
            return bad(format!("entry {} leaves a gap after {last}", first.index));
        }
        if first.index <= stored.commit {
            return bad(format!(
                "entry {} would replace a committed entry (commit {})",
                first.index, stored.commit
            ));
        }
        // Terms never go back along the log (a leader only appends entries of its own term
        // after entries of earlier terms).
        let prev_term = self.term(first.index.prev())?;
        if first.term < prev_term {
            return bad(format!(
                "entry {:?} follows an entry of term {prev_term}",
                first.id()
            ));
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index.next() || w[1].term < w[0].term {
                return bad(format!(
                    "entries {:?} and {:?} are out of order",
                    w[0].id(),
                    w[1].id()
                ));
            }
        }
        for e in entries {
            if e.data.len() as u64 > self.options.entry_bytes_max {
                return bad(format!("entry {} has {} bytes", e.index, e.data.len()));
            }
        }
        let new_last = entries.last().expect("non-empty").index;
        if commit > new_last {
            return bad(format!(
                "commit {commit} past the new last entry {new_last}"
            ));
        }
        Wal::check_append_size(entries)
    }

    /// Drops the log prefix up to and including `to`, which a durable snapshot must cover and
    /// which must be committed. Idempotent for `to` at or before the current start.
    pub fn compact(&mut self, to: EntryId) -> Result<(), StorageError> {
        self.ensure_ok()?;
        if to.index <= self.log_start().index {
            return Ok(());
        }
        let bad = |m: String| Err(StorageError::InvalidRequest(m));
        let commit = self.hard_state().commit;
        if to.index > commit {
            return bad(format!("compact to {} past commit {commit}", to.index));
        }
        let covered = self.snapshots.latest().map_or(Index(0), |s| s.last.index);
        if to.index > covered {
            return bad(format!(
                "compact to {} past the durable snapshot at {covered}",
                to.index
            ));
        }
        let term = self.term(to.index)?;
        if term != to.term {
            return bad(format!("compact to {to:?} but the entry's term is {term}"));
        }
        // The commit index the compaction was checked against goes first.
        self.flush_pending_commit()?;
        // One synced record; whole segments of compacted entries are then deleted.
        let r = self.wal.compact(to);
        self.fail_on_err(r)?;
        self.cache.compact_to(to.index);
        self.check_invariants_if_debug();
        Ok(())
    }

    /// Installs a snapshot received from the leader (paper §7; the core's `Ready::snapshot`):
    /// the log restarts after `to`, and `hard_state` and the snapshot's membership are written
    /// in the same synced batch. If the log holds the entry `to` itself (same index and term),
    /// the entries after it are consistent with the snapshot and are kept, as the core expects
    /// (they may already be acknowledged to the leader); otherwise every entry goes. A durable
    /// snapshot at `to` must exist (save or stage it first).
    pub fn reset_to_snapshot(
        &mut self,
        to: EntryId,
        hard_state: &HardState,
    ) -> Result<(), StorageError> {
        self.ensure_ok()?;
        let Some(snapshot) = self.snapshots.latest().filter(|s| s.last == to).cloned() else {
            return Err(StorageError::InvalidRequest(format!(
                "reset to {to:?} but the durable snapshot is {:?}",
                self.snapshots.latest().map(|s| s.last)
            )));
        };
        let (start, last) = (self.log_start().index, self.last_index());
        let keep_suffix = to.index > start && to.index <= last && self.term(to.index)? == to.term;
        let new_last = if keep_suffix { last } else { to.index };
        if hard_state.commit > new_last || hard_state.term < self.hard_state().term {
            return Err(StorageError::InvalidRequest(format!(
                "hard state {hard_state:?} does not fit a reset to {to:?} (last index {new_last})"
            )));
        }
        // The membership as of the snapshot replaces ours, in the same synced record. Kept
        // entries after `to` may carry newer configurations; the core reads those from the log.
        let r = self
            .wal
            .reset(to, hard_state, &snapshot.membership, keep_suffix);
        self.fail_on_err(r)?;
        // The reset's hard state supersedes a pending commit index.
        self.pending_commit = None;
        if keep_suffix {
            self.cache.compact_to(to.index);
        } else {
            self.cache.clear();
        }
        self.check_invariants_if_debug();
        Ok(())
    }

    /// Persists the voting configuration (synced).
    pub fn set_membership(&mut self, membership: &Membership) -> Result<(), StorageError> {
        self.ensure_ok()?;
        let r = self.wal.set_membership(membership);
        self.fail_on_err(r)
    }

    /// Saves a snapshot file atomically and durably; older snapshot files are then removed.
    /// The log is not touched: call [`Store::compact`] afterwards.
    pub fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.snapshots.save(meta, data)
    }

    /// The snapshot directory, for [`crate::write_snapshot_file`] on another thread.
    pub fn snapshot_dir(&self) -> &Path {
        self.snapshots.dir()
    }

    /// Makes a snapshot file written by [`crate::write_snapshot_file`] the latest snapshot
    /// (older files are removed). The log is not touched: call [`Store::compact`] afterwards.
    pub fn adopt_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.snapshots.adopt(meta)
    }

    /// The newest snapshot file's metadata and data size, from its header (no data read).
    pub fn latest_snapshot(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        self.snapshots.latest_sized()
    }

    /// Checks the newest snapshot file's data checksum in bounded slices; returns its
    /// metadata and data size.
    pub fn verify_snapshot(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        self.snapshots.verify_latest()
    }

    /// `len` bytes of the newest snapshot's data from `offset`, read from its file, to send
    /// it to a follower in chunks. `last` must name the newest snapshot.
    pub fn snapshot_chunk(
        &self,
        last: EntryId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.snapshots.read_chunk(last, offset, len)
    }

    /// Reads and verifies the newest snapshot file.
    pub fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        self.snapshots.load_latest()
    }

    /// Starts receiving a snapshot in chunks, discarding any staged one.
    pub fn stage_begin(
        &mut self,
        meta: &SnapshotMeta,
        total_bytes: u64,
    ) -> Result<(), StorageError> {
        if let Some(old) = self.staging.take() {
            old.discard()?;
        }
        self.staging = Some(Staging::begin(self.snapshots.dir(), meta, total_bytes)?);
        Ok(())
    }

    /// Durably appends a chunk of the snapshot being received; `offset` must be the number of
    /// bytes received so far. Returns the new number of bytes received.
    pub fn stage_chunk(&mut self, offset: u64, chunk: &[u8]) -> Result<u64, StorageError> {
        let staging = self
            .staging
            .as_mut()
            .ok_or_else(|| StorageError::InvalidRequest("no snapshot is being staged".into()))?;
        staging.write_chunk(offset, chunk)?;
        Ok(staging.progress().received_bytes)
    }

    /// The bytes of the fully received staged snapshot, to check before
    /// [`Store::stage_finish`] makes it the snapshot (and drops the previous one).
    pub fn staged_reader(&self) -> Result<crate::staging::StagedReader, StorageError> {
        self.staging
            .as_ref()
            .ok_or_else(|| StorageError::InvalidRequest("no snapshot is being staged".into()))?
            .reader()
    }

    /// Progress of the snapshot being received, if any.
    pub fn staged(&self) -> Option<&crate::staging::StagedProgress> {
        self.staging.as_ref().map(|s| s.progress())
    }

    /// Turns a fully received staged snapshot into the durable snapshot file (streamed, never
    /// whole in memory) and removes the staging file. Returns its metadata; read its data with
    /// [`Store::open_snapshot`] to restore the state machine.
    pub fn stage_finish(&mut self) -> Result<SnapshotMeta, StorageError> {
        let staging = self
            .staging
            .as_ref()
            .ok_or_else(|| StorageError::InvalidRequest("no snapshot is being staged".into()))?;
        let meta = staging.progress().meta.clone();
        self.snapshots.check_newer(&meta)?;
        let mut w = crate::snapshot::SnapshotWriter::create(self.snapshots.dir(), &meta)?;
        staging.copy_into(&mut w)?;
        w.finish()?;
        self.snapshots.adopt(&meta)?;
        if let Some(s) = self.staging.take() {
            s.discard()?;
        }
        Ok(meta)
    }

    /// The newest snapshot's data as a stream (checked against the file's CRC when fully
    /// read), with its metadata and size.
    pub fn open_snapshot(
        &self,
    ) -> Result<Option<(SnapshotMeta, u64, crate::snapshot::SnapshotReader)>, StorageError> {
        self.snapshots.open_latest()
    }

    /// Abandons the snapshot being received, if any.
    pub fn stage_discard(&mut self) -> Result<(), StorageError> {
        match self.staging.take() {
            Some(s) => s.discard(),
            None => Ok(()),
        }
    }

    /// Syncs the log, writing a commit index kept by [`Store::write_commit`] first. Every
    /// other write is already synced when it returns.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.ensure_ok()?;
        self.flush_pending_commit()?;
        let r = self.wal.sync();
        self.fail_on_err(r)
    }

    /// Panics if the in-memory view breaks an invariant. Cheap: no IO.
    pub fn check_invariants(&self) {
        let (start, last) = (self.log_start().index, self.last_index());
        assert!(start <= last, "log start past last index");
        assert!(self.hard_state().commit <= last, "commit past last index");
        if let Some(l) = self.cache.last_index() {
            assert_eq!(l, last, "cache is not a suffix of the log");
        }
        if let Some(f) = self.cache.first_index() {
            assert!(f > start, "cache holds compacted entries");
        }
        if let Some(s) = self.snapshots.latest() {
            assert!(s.last.index >= start, "log compacted past snapshot");
        }
        self.cache.check_invariants();
    }

    pub(super) fn check_invariants_if_debug(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }
}
