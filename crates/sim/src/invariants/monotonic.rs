//! Monotonic state (paper Figure 2): `currentTerm` "increases monotonically", `commitIndex`
//! "increases monotonically", a committed entry is never removed (§5.4), and `votedFor` is
//! persistent state: a restart comes back with the durable term and vote, and once a vote is
//! durable for a term no different vote is ever made durable for that term.

use std::collections::BTreeMap;

use raft::{HardState, Index, RawNode, Status};

use super::{violation, Check, Shadow};

/// Durable hard state last seen per node.
#[derive(Debug, Default)]
pub struct Monotonic {
    durable: BTreeMap<u64, HardState>,
}

impl Monotonic {
    /// Checks a step against the node's previous observation in the same incarnation.
    pub fn check_step(
        &mut self,
        node: u64,
        shadow: &Shadow,
        status: &Status,
        changed_from: Index,
        shadow_len: u64,
    ) -> Check {
        if shadow.role.is_none() {
            return Ok(());
        }
        if status.term < shadow.term {
            return violation(
                crate::property::Property::Monotonic,
                "currentTerm monotonic (Figure 2)",
                format!(
                    "node {node} went from term {} to {}",
                    shadow.term, status.term
                ),
            );
        }
        if status.commit < shadow.commit {
            return violation(
                crate::property::Property::Monotonic,
                "commitIndex monotonic (Figure 2)",
                format!(
                    "node {node} went from commit {} to {}",
                    shadow.commit, status.commit
                ),
            );
        }
        if changed_from <= shadow.commit && changed_from.0 <= shadow_len {
            return violation(
                crate::property::Property::Monotonic,
                "committed entries are never removed (§5.4)",
                format!(
                    "node {node} changed or dropped its log from index {changed_from} while its \
                     commit index was {}",
                    shadow.commit
                ),
            );
        }
        Ok(())
    }

    /// `hs` just became durable on `node`.
    pub fn on_durable(&mut self, node: u64, hs: &HardState) -> Check {
        if let Some(prev) = self.durable.get(&node) {
            if hs.term < prev.term {
                return violation(
                    crate::property::Property::Monotonic,
                    "durable currentTerm monotonic (Figure 2)",
                    format!("node {node} persisted term {} after {}", hs.term, prev.term),
                );
            }
            if hs.term == prev.term && prev.vote.is_some() && hs.vote != prev.vote {
                return violation(
                    crate::property::Property::Monotonic,
                    "durable votedFor (Figure 2)",
                    format!(
                        "node {node} persisted vote {:?} after {:?} in term {}",
                        hs.vote, prev.vote, hs.term
                    ),
                );
            }
        }
        self.durable.insert(node, *hs);
        Ok(())
    }

    /// `raft` was just rebuilt from `durable`.
    pub fn on_restart(&mut self, node: u64, raft: &RawNode, durable: &HardState) -> Check {
        let s = raft.status();
        if s.term != durable.term || s.vote != durable.vote {
            return violation(
                crate::property::Property::Monotonic,
                "persistent state survives restart (Figure 2)",
                format!(
                    "node {node} restarted with term {} vote {:?}, durable term {} vote {:?}",
                    s.term, s.vote, durable.term, durable.vote
                ),
            );
        }
        Ok(())
    }
}
