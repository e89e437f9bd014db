//! State Machine Safety (paper Figure 3, §5.4.3): if a server has applied a log entry at a given
//! index to its state machine, no other server will ever apply a different log entry for the
//! same index. Checked at two points: whenever any node's commit index covers an entry (no two
//! different entries are ever known committed at one index), and whenever an entry is applied
//! (each node applies in index order without gaps, and only the committed entry).

use std::collections::BTreeMap;

use raft::{Entry, RawNode, Term};

use super::{entry_hash, violation, Check};

/// What is known committed, and how far each node applied.
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    /// `index -> (term, content hash, term of the node that first saw it committed, node)`.
    committed: BTreeMap<u64, (Term, u64, Term, u64)>,
    /// `node -> (incarnation, last applied index)`.
    applied: BTreeMap<u64, (u64, u64)>,
}

const NAME: &str = "State Machine Safety (§5.4.3)";

impl StateMachineSafety {
    /// `node`, in `node_term`, holds `entries` at or below its commit index.
    pub fn record_committed(&mut self, node: u64, node_term: Term, entries: &[Entry]) -> Check {
        for e in entries {
            self.record(node, node_term, e)?;
        }
        Ok(())
    }

    fn record(&mut self, node: u64, node_term: Term, e: &Entry) -> Check {
        let hash = entry_hash(e);
        match self.committed.get(&e.index.0) {
            Some(&(term, h, _, other)) if (term, h) != (e.term, hash) => violation(
                crate::property::Property::StateMachineSafety,
                NAME,
                format!(
                    "index {} committed as {}@{term} (hash {h:x}) on node {other} but as \
                     {}@{} (hash {hash:x}) on node {node}",
                    e.index, e.index, e.index, e.term
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.committed
                    .insert(e.index.0, (e.term, hash, node_term, node));
                Ok(())
            }
        }
    }

    /// `node` applies `entry`.
    pub fn on_apply(&mut self, node: u64, incarnation: u64, term: Term, entry: &Entry) -> Check {
        let (inc, last) = self.applied.get(&node).copied().unwrap_or((incarnation, 0));
        // A restarted node rebuilds its state machine from index 1.
        let last = if inc == incarnation { last } else { 0 };
        if entry.index.0 != last + 1 {
            return violation(
                crate::property::Property::StateMachineSafety,
                NAME,
                format!(
                    "node {node} applied index {} right after index {last} (out of order, a \
                     gap, or twice)",
                    entry.index
                ),
            );
        }
        self.applied.insert(node, (incarnation, entry.index.0));
        self.record(node, term, entry)
    }

    /// Every entry known committed at or below `node`'s commit index is in its log.
    /// A node restored its state machine from a snapshot ending at `last`: that must not move
    /// it backwards within an incarnation, and `last` must be the committed entry at its index.
    pub fn on_restore(&mut self, node: u64, incarnation: u64, last: raft::EntryId) -> Check {
        let (inc, applied) = self.applied.get(&node).copied().unwrap_or((incarnation, 0));
        let applied = if inc == incarnation { applied } else { 0 };
        if last.index.0 < applied {
            return violation(
                crate::property::Property::StateMachineSafety,
                NAME,
                format!(
                    "node {node} restored a snapshot ending at {}@{} after applying index \
                     {applied}: its state machine went backwards",
                    last.index, last.term
                ),
            );
        }
        if let Some(&(term, _, _, other)) = self.committed.get(&last.index.0) {
            if term != last.term {
                return violation(
                    crate::property::Property::StateMachineSafety,
                    NAME,
                    format!(
                        "node {node} restored a snapshot ending at {}@{}, but node {other} \
                         committed term {term} there",
                        last.index, last.term
                    ),
                );
            }
        }
        self.applied.insert(node, (incarnation, last.index.0));
        Ok(())
    }

    pub fn check_committed_prefix(&self, node: u64, raft: &RawNode) -> Check {
        let log = raft.log();
        for (&index, &(term, _, _, other)) in self.committed.range(..=log.committed().0) {
            if index < log.first_index().0 {
                continue;
            }
            if log.term(raft::Index(index)) != Some(term) {
                return violation(
                    crate::property::Property::StateMachineSafety,
                    NAME,
                    format!(
                        "node {node} has {:?} at committed index {index}, node {other} \
                         committed term {term}",
                        log.term(raft::Index(index))
                    ),
                );
            }
        }
        Ok(())
    }

    /// Entries known committed, with the term in which they were first seen committed.
    pub fn committed(&self) -> impl Iterator<Item = (u64, Term, Term)> + '_ {
        self.committed
            .iter()
            .map(|(&i, &(term, _, seen_in, _))| (i, term, seen_in))
    }

    /// Number of indexes known committed.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    /// `(term, hash)` known committed at `index`.
    pub fn committed_at(&self, index: u64) -> Option<(Term, u64)> {
        self.committed.get(&index).map(|&(t, h, _, _)| (t, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{EntryKind, Index};

    fn e(i: u64, t: u64, d: u8) -> Entry {
        Entry {
            term: Term(t),
            index: Index(i),
            kind: EntryKind::Normal,
            data: vec![d],
        }
    }

    #[test]
    fn different_commits_and_bad_apply_order_are_caught() {
        let mut s = StateMachineSafety::default();
        assert!(s.record_committed(1, Term(1), &[e(1, 1, 0)]).is_ok());
        assert!(s.record_committed(2, Term(2), &[e(1, 2, 0)]).is_err());
        assert!(s.on_apply(1, 0, Term(1), &e(1, 1, 0)).is_ok());
        assert!(s.on_apply(1, 0, Term(1), &e(1, 1, 0)).is_err());
        assert!(s.on_apply(1, 1, Term(1), &e(1, 1, 0)).is_ok());
        assert!(s.on_apply(1, 1, Term(1), &e(3, 1, 0)).is_err());
    }
}
