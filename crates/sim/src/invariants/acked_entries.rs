//! Acknowledged entries stay (paper Figure 2, "respond to RPCs only after updating stable
//! storage", and §5.3): once a follower has told the leader of its term that it holds the
//! leader's entries through index `i`, it keeps them for the rest of that term, across crashes.
//! Within one term all appends come from one leader (Election Safety) whose log only grows
//! (Leader Append-Only), so they never conflict with what the follower acknowledged; only a
//! leader of a later term may replace them. The leader counts these acknowledgements toward
//! commitment, so losing one can lose a committed entry.

use std::collections::BTreeMap;

use raft::{Index, RawNode, Term};

use super::{violation, Check};

/// The latest acknowledgement each node sent: `(term, index, term of the entry at index)`.
#[derive(Debug, Default)]
pub struct AckedEntries {
    acked: BTreeMap<u64, (Term, Index, Term)>,
}

impl AckedEntries {
    /// `node` (in the state `raft`) sent a successful append response for `index` to `to`.
    pub fn on_ack(&mut self, node: u64, raft: &RawNode, msg_term: Term, to: u64, index: Index) {
        let s = raft.status();
        // Only an answer to the leader of the node's own term is a promise about that leader's
        // log (a stale leader is answered only to tell it the newer term).
        if s.term != msg_term || s.leader.map(|l| l.get()) != Some(to) {
            return;
        }
        let Some(entry_term) = raft.log().term(index) else {
            return;
        };
        let keep = match self.acked.get(&node) {
            Some(&(t, i, _)) => t < msg_term || i < index,
            None => true,
        };
        if keep {
            self.acked.insert(node, (msg_term, index, entry_term));
        }
    }

    /// Checks `node` after a step.
    pub fn check(&self, node: u64, raft: &RawNode) -> Check {
        let Some(&(term, index, entry_term)) = self.acked.get(&node) else {
            return Ok(());
        };
        if raft.status().term != term || index < raft.log().first_index() {
            return Ok(());
        }
        let have = raft.log().term(index);
        if have != Some(entry_term) {
            return violation(
                crate::property::Property::AckedEntries,
                "acknowledged entries are kept within the term (Figure 2, §5.3)",
                format!(
                    "node {node} acknowledged index {index} (term {entry_term}) to the leader of \
                     term {term} and now has {have:?} there"
                ),
            );
        }
        Ok(())
    }
}
