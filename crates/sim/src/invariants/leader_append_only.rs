//! Leader Append-Only (paper Figure 3, §5.3): a leader never overwrites or deletes entries in
//! its log; it only appends new entries. Checked for as long as a node stays leader of one term:
//! its last entry never moves back and the entry it had last is still there, unchanged in term.

use std::collections::BTreeMap;

use raft::{EntryId, RawNode};

use super::{violation, Check};

/// The last entry of each current leader, as last seen.
#[derive(Debug, Default)]
pub struct LeaderAppendOnly {
    last: BTreeMap<u64, EntryId>,
}

impl LeaderAppendOnly {
    /// `node` just became leader (or was first seen leading this term).
    pub fn start_term(&mut self, node: u64, raft: &RawNode) {
        self.last.insert(node, raft.log().last_id());
    }

    /// `node` is still leader of the same term.
    pub fn check(&mut self, node: u64, raft: &RawNode) -> Check {
        let log = raft.log();
        if let Some(prev) = self.last.get(&node) {
            if log.last_index() < prev.index || log.term(prev.index) != Some(prev.term) {
                return violation(
                    crate::property::Property::LeaderAppendOnly,
                    "Leader Append-Only (§5.3)",
                    format!(
                        "leader {node} had entry {}@{} and now has last {}@{} (term at {} is {:?})",
                        prev.index,
                        prev.term,
                        log.last_index(),
                        log.last_term(),
                        prev.index,
                        log.term(prev.index)
                    ),
                );
            }
        }
        self.last.insert(node, log.last_id());
        Ok(())
    }
}
