//! One simulated server: the real `raft::RawNode`, a simulated disk, and the application state
//! (the applied log of the 6.5840 tests and the replicated state machine: the built-in KV
//! store, or yours, see [`crate::machine`]).
//!
//! The disk model: a [`raft::Ready`]'s writes (hard state, entries, staged snapshot chunks and a
//! snapshot to install) are *pending* from the moment the batch is taken until its sync
//! completes (possibly much later, in virtual time). A crash loses every pending write (or, when
//! the seed says so, lets the whole batch survive: written but not yet acknowledged data may or
//! may not reach the platter). A restart rebuilds the node from what is durable, and nothing
//! else. A batch that needs no sync (`Ready::must_sync` false: only the commit index moved) is
//! done at once, its hard state left in the page cache until the next synced write; a crash
//! before that keeps or loses it, as the seed says.
//!
//! Snapshots the application takes itself are written atomically and synced before the core is
//! told to compact (write to a temporary file, fsync, rename), so they are never pending: a
//! crash keeps either the old snapshot and the full log, or the new snapshot and the log after
//! it. An installed snapshot (from the leader) is part of its batch and follows the batch rules.

use std::collections::BTreeMap;
use std::rc::Rc;

use raft::{Entry, EntryId, HardState, Index, Message, RawNode, Ready, SnapshotMeta};

use crate::kv::{put_bytes, take_bytes, take_u32, take_u64, KvState, TAG_RAW};
use crate::machine::StateMachine;

/// A stored snapshot: its meta and bytes (shared, never modified once written).
pub type StoredSnapshot = (SnapshotMeta, Rc<Vec<u8>>);

/// Integer commands by index, as a snapshot carries them.
pub type RawCommands = Vec<(u64, Vec<u8>)>;

/// Durable state of one node.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The synced hard state.
    pub hard_state: HardState,
    /// The synced log after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The current snapshot and its bytes.
    pub snapshot: Option<StoredSnapshot>,
    /// An incoming snapshot being staged: its meta and the bytes received so far, in order.
    pub staging: Option<(SnapshotMeta, Vec<u8>)>,
    /// A hard state written by a batch that did not need a sync (`Ready::must_sync` false:
    /// only the commit index changed): in the page cache, not on the platter. The next synced
    /// write makes it durable with itself; a crash may lose it.
    pub unsynced_hard_state: Option<HardState>,
}

impl Disk {
    /// The last entry the snapshot covers (zero without a snapshot).
    pub fn offset(&self) -> EntryId {
        self.snapshot
            .as_ref()
            .map_or(EntryId::default(), |(m, _)| m.last)
    }

    /// Applies a batch's writes in the documented order: staged chunks, the snapshot to
    /// install, the hard state, then entries that replace everything from `entries[0].index`
    /// on. Returns the installed snapshot, if any. `Err` when the core asks for something the
    /// disk cannot do (a chunk out of order, installing an incomplete snapshot): the disk
    /// guard. With `guard_off` (mutation hunts only) the disk does what a plain file would
    /// instead: chunks are written at their offsets (zeros in gaps) and an install takes the
    /// staged bytes, padded with zeros or cut to the announced size, so the damage reaches the
    /// state machine. A batch whose `must_sync` is false may change only the commit index (the
    /// guard refuses anything else): its hard state stays in the page cache
    /// (`unsynced_hard_state`) until the next synced write; unguarded, any hard state does.
    pub fn write(&mut self, rd: &Ready, guard_off: bool) -> Result<Option<StoredSnapshot>, String> {
        if !rd.must_sync {
            // The disk guard: a batch that skips the sync may change nothing but the commit
            // index (anything else would be lost by a crash after the batch was advanced).
            let commit_only = rd.entries.is_empty()
                && rd.snapshot_chunks.is_empty()
                && rd.snapshot.is_none()
                && rd.hard_state.is_none_or(|hs| {
                    let durable = self.unsynced_hard_state.unwrap_or(self.hard_state);
                    (hs.term, hs.vote) == (durable.term, durable.vote)
                });
            if !commit_only && !guard_off {
                return Err(format!(
                    "an unsynced batch changes more than the commit index: hard state {:?} \
                     (durable {:?}), {} entries, {} chunks, install {}",
                    rd.hard_state,
                    self.hard_state,
                    rd.entries.len(),
                    rd.snapshot_chunks.len(),
                    rd.snapshot.is_some()
                ));
            }
            if let Some(hs) = rd.hard_state {
                // Unguarded, a hard state that changes more is kept unsynced too, as a plain
                // file would keep it, so that a crash can lose it.
                self.unsynced_hard_state = Some(hs);
            }
            if commit_only {
                return Ok(None);
            }
            let mut rest = rd.clone();
            rest.hard_state = None;
            return self.write_unguarded(&rest);
        }
        // A sync flushes what was written before it too.
        self.sync_unsynced();
        if guard_off {
            return self.write_unguarded(rd);
        }
        for chunk in &rd.snapshot_chunks {
            if chunk.offset == 0 {
                self.staging = Some((chunk.meta.clone(), Vec::new()));
            }
            let Some((meta, bytes)) = self.staging.as_mut() else {
                return Err(format!(
                    "chunk at offset {} of snapshot {:?} with nothing staged",
                    chunk.offset, chunk.meta.last
                ));
            };
            if meta != &chunk.meta || bytes.len() as u64 != chunk.offset {
                return Err(format!(
                    "chunk at offset {} of snapshot {:?} does not continue the staged snapshot \
                     {:?} ({} bytes staged)",
                    chunk.offset,
                    chunk.meta.last,
                    meta.last,
                    bytes.len()
                ));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let mut installed = None;
        if let Some(meta) = &rd.snapshot {
            let staged = self.staging.take();
            // The disk guard: refuse to install anything but the complete staged snapshot.
            let Some((staged_meta, bytes)) = staged else {
                return Err(format!(
                    "install of snapshot {:?} with nothing staged",
                    meta.last
                ));
            };
            if &staged_meta != meta || bytes.len() as u64 != meta.size_bytes {
                return Err(format!(
                    "install of snapshot {:?} ({} bytes) but staged {:?} has {} bytes: a \
                     partially received snapshot",
                    meta.last,
                    meta.size_bytes,
                    staged_meta.last,
                    bytes.len()
                ));
            }
            installed = Some(self.install(meta, bytes));
        }
        self.write_state(rd)?;
        Ok(installed)
    }

    /// [`Disk::write`] without the disk guard.
    fn write_unguarded(&mut self, rd: &Ready) -> Result<Option<StoredSnapshot>, String> {
        for chunk in &rd.snapshot_chunks {
            let fresh =
                chunk.offset == 0 || self.staging.as_ref().is_none_or(|(m, _)| m != &chunk.meta);
            if fresh {
                self.staging = Some((chunk.meta.clone(), Vec::new()));
            }
            let (_, bytes) = self.staging.as_mut().expect("staged above");
            let lo = chunk.offset as usize;
            let hi = lo + chunk.data.len();
            if bytes.len() < hi {
                bytes.resize(hi, 0);
            }
            bytes[lo..hi].copy_from_slice(&chunk.data);
        }
        let mut installed = None;
        if let Some(meta) = &rd.snapshot {
            let mut bytes = self.staging.take().map(|(_, b)| b).unwrap_or_default();
            bytes.resize(meta.size_bytes as usize, 0);
            installed = Some(self.install(meta, bytes));
        }
        self.write_state(rd)?;
        Ok(installed)
    }

    /// Makes an unsynced hard state durable (a sync, or a crash that happened to keep it).
    pub fn sync_unsynced(&mut self) {
        if let Some(hs) = self.unsynced_hard_state.take() {
            self.hard_state = hs;
        }
    }

    /// Makes `bytes` the snapshot `meta` and drops the log it covers (keeping a matching
    /// suffix).
    fn install(&mut self, meta: &SnapshotMeta, bytes: Vec<u8>) -> StoredSnapshot {
        let last = meta.last;
        let keep_suffix = self
            .entries
            .iter()
            .any(|e| e.index == last.index && e.term == last.term);
        if keep_suffix {
            self.entries.retain(|e| e.index > last.index);
        } else {
            self.entries.clear();
        }
        let bytes = Rc::new(bytes);
        self.snapshot = Some((meta.clone(), bytes.clone()));
        (meta.clone(), bytes)
    }

    /// The hard state, then entries that replace the log from `entries[0].index` on.
    fn write_state(&mut self, rd: &Ready) -> Result<(), String> {
        if let Some(hs) = rd.hard_state {
            self.hard_state = hs;
        }
        if let Some(first) = rd.entries.first() {
            let offset = self.offset().index.0;
            if first.index.0 <= offset {
                return Err(format!(
                    "write of entry {} inside the snapshot (up to {offset})",
                    first.index
                ));
            }
            let keep = (first.index.0 - offset - 1) as usize;
            if keep > self.entries.len() {
                return Err(format!(
                    "write at {} leaves a gap after {}",
                    first.index,
                    offset + self.entries.len() as u64
                ));
            }
            self.entries.truncate(keep);
            self.entries.extend_from_slice(&rd.entries);
        }
        Ok(())
    }

    /// Stores a snapshot the application took (atomically, synced) and drops the entries it
    /// covers.
    pub fn compact(&mut self, meta: SnapshotMeta, bytes: Vec<u8>) {
        self.entries.retain(|e| e.index > meta.last.index);
        self.snapshot = Some((meta, Rc::new(bytes)));
    }

    /// Whether the durable state holds entry `id`: in the log, or covered by the snapshot
    /// (which holds committed entries only).
    pub fn holds(&self, id: EntryId) -> bool {
        if id.index <= self.offset().index {
            return true;
        }
        self.entries
            .iter()
            .rev()
            .find(|e| e.index == id.index)
            .is_some_and(|e| e.term == id.term)
    }

    /// Bytes of persisted Raft state (6.5840's `RaftStateSize`): hard state and log, not the
    /// snapshot.
    pub fn raft_state_bytes(&self) -> u64 {
        24 + self
            .entries
            .iter()
            .map(|e| 24 + e.data.len() as u64)
            .sum::<u64>()
    }
}

/// One server.
#[derive(Debug)]
pub struct Host<M: StateMachine = KvState> {
    /// Node id (1-based).
    pub id: u64,
    /// The running core; `None` while crashed.
    pub raft: Option<RawNode>,
    /// Durable state.
    pub disk: Disk,
    /// The batch taken from the core whose writes are not yet synced.
    pub pending: Option<Ready>,
    /// Bumped on every crash: events of an earlier life are ignored.
    pub incarnation: u64,
    /// Paused: no ticks, deliveries and syncs are held until resumed.
    pub paused: bool,
    /// Messages that arrived while paused, in arrival order.
    pub held: Vec<Message>,
    /// A sync completed while paused.
    pub sync_held: bool,
    /// Every command applied, by index (kept across restarts, like 6.5840's `cfg.logs`).
    pub applied: BTreeMap<u64, Vec<u8>>,
    /// Highest index applied in this incarnation.
    pub applied_index: Index,
    /// The replicated state machine (rebuilt after a restart from the snapshot and the log).
    pub machine: M,
    /// Bytes of snapshot chunks this node sent (filled `InstallSnapshot` requests).
    pub snapshot_bytes_sent: u64,
    /// `InstallSnapshot` requests this node sent.
    pub snapshot_chunks_sent: u64,
    /// `InstallSnapshot` requests dropped at the edge because their snapshot was replaced.
    pub snapshot_chunks_dropped: u64,
}

impl<M: StateMachine> Host<M> {
    /// A node that has not started yet.
    pub fn new(id: u64) -> Host<M> {
        Host {
            id,
            raft: None,
            disk: Disk::default(),
            pending: None,
            incarnation: 0,
            paused: false,
            held: Vec::new(),
            sync_held: false,
            applied: BTreeMap::new(),
            applied_index: Index(0),
            machine: M::default(),
            snapshot_bytes_sent: 0,
            snapshot_chunks_sent: 0,
            snapshot_chunks_dropped: 0,
        }
    }

    /// The application's snapshot at `index`: the 6.5840 integer commands applied up to it
    /// (like the lab's `xlog`) and the state machine.
    pub fn encode_app_state(&self, index: Index) -> Vec<u8> {
        let mut out = Vec::new();
        let raw: Vec<(&u64, &Vec<u8>)> = self
            .applied
            .range(..=index.0)
            .filter(|(_, d)| d.first() == Some(&TAG_RAW))
            .collect();
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        for (i, d) in raw {
            out.extend_from_slice(&i.to_le_bytes());
            put_bytes(&mut out, d);
        }
        self.machine.snapshot(&mut out);
        out
    }

    /// Whether the node is running (it may be paused).
    pub fn alive(&self) -> bool {
        self.raft.is_some()
    }
}

/// Parses [`Host::encode_app_state`]'s output: the integer commands by index, and the state
/// machine. Like an application without checksums, it keeps whatever decodes: a damaged
/// snapshot gives a damaged state machine (State Machine Safety then catches it on restore).
pub fn decode_app_state<M: StateMachine>(mut b: &[u8]) -> (RawCommands, M) {
    let b = &mut b;
    let mut raw = Vec::new();
    let count = take_u32(b).unwrap_or(0);
    for _ in 0..count {
        let Some(i) = take_u64(b) else { break };
        let Some(d) = take_bytes(b) else { break };
        raw.push((i, d));
    }
    (raw, M::restore(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{EntryKind, Term};

    fn e(i: u64, t: u64) -> Entry {
        Entry {
            term: Term(t),
            index: Index(i),
            kind: EntryKind::Normal,
            data: vec![],
        }
    }

    #[test]
    fn writes_replace_the_suffix() {
        let mut d = Disk::default();
        let rd = |entries| Ready {
            entries,
            must_sync: true,
            ..Ready::default()
        };
        d.write(&rd(vec![e(1, 1), e(2, 1), e(3, 1)]), false)
            .unwrap();
        d.write(&rd(vec![e(2, 2)]), false).unwrap();
        assert_eq!(d.entries, vec![e(1, 1), e(2, 2)]);
    }
}
