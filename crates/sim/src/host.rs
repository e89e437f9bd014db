//! One simulated server: the real `raft::RawNode`, a simulated disk, and the application state
//! (the applied log of the 6.5840 tests and the KV state machine).
//!
//! The disk model: a [`raft::Ready`]'s hard state and entries are *pending* from the moment the
//! batch is taken until its sync completes (possibly much later, in virtual time). A crash loses
//! every pending write (or, when the seed says so, lets it survive: written but not yet
//! acknowledged data may or may not reach the platter). A restart rebuilds the node from what is
//! durable, and nothing else.

use std::collections::BTreeMap;

use raft::{Entry, HardState, Index, Message, RawNode, Ready};

use crate::kv::KvState;

/// Durable state of one node.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The synced hard state.
    pub hard_state: HardState,
    /// The synced log, from index 1, contiguous.
    pub entries: Vec<Entry>,
}

impl Disk {
    /// Applies a batch's writes: the hard state, and entries that replace everything from
    /// `entries[0].index` on.
    pub fn write(&mut self, hard_state: Option<HardState>, entries: &[Entry]) {
        if let Some(hs) = hard_state {
            self.hard_state = hs;
        }
        if let Some(first) = entries.first() {
            let keep = (first.index.0 - 1) as usize;
            assert!(
                keep <= self.entries.len(),
                "write at {} leaves a gap after {}",
                first.index,
                self.entries.len()
            );
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
    }
}

/// One server.
#[derive(Debug)]
pub struct Host {
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
    /// The KV state machine (rebuilt after a restart by re-applying the log).
    pub kv: KvState,
}

impl Host {
    /// A node that has not started yet.
    pub fn new(id: u64) -> Host {
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
            kv: KvState::default(),
        }
    }

    /// Whether the node is running (it may be paused).
    pub fn alive(&self) -> bool {
        self.raft.is_some()
    }
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
        d.write(None, &[e(1, 1), e(2, 1), e(3, 1)]);
        d.write(None, &[e(2, 2)]);
        assert_eq!(d.entries, vec![e(1, 1), e(2, 2)]);
    }
}
