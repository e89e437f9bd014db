//! Quorum arithmetic, pure: which index a majority has acknowledged, and how an election stands.
//! A joint configuration (paper §6) needs a majority of *both* halves; membership changes build
//! on [`JointConfig`], a fixed cluster uses it with an empty outgoing half.
//!
//! Exposed for checkers and simulators that judge commits and elections the way the node
//! does; not needed to drive a node.

use std::collections::BTreeSet;

use crate::types::{Index, NodeId};

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided: more votes could still make either outcome.
    Pending,
    /// A quorum refused.
    Lost,
    /// A quorum granted.
    Won,
}

/// A set of voters that decides by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    /// A majority configuration over `voters`.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> MajorityConfig {
        MajorityConfig {
            voters: voters.into_iter().collect(),
        }
    }

    /// The voters, sorted.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// Number of votes that make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The highest index acknowledged by a majority, given each voter's acknowledged index
    /// (`None` counts as 0). An empty configuration imposes no constraint and returns
    /// `Index(u64::MAX)`, so that it is neutral inside a joint configuration.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        if self.voters.is_empty() {
            return Index(u64::MAX);
        }
        let mut indexes: Vec<Index> = self
            .voters
            .iter()
            .map(|&id| acked(id).unwrap_or(Index(0)))
            .collect();
        // Sorted descending, the quorum-th largest is held by at least a quorum of voters.
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let result = indexes[self.quorum() - 1];
        debug_assert!(indexes.iter().filter(|&&i| i >= result).count() >= self.quorum());
        result
    }

    /// Counts votes: `Some(true)` granted, `Some(false)` refused, `None` not yet heard. An empty
    /// configuration wins, for neutrality inside a joint configuration.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0usize, 0usize);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.quorum();
        if granted >= q {
            VoteResult::Won
        } else if granted + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// Two majority configurations that must both agree: `C_old,new` during a membership change
/// (paper §6). With an empty `outgoing`, it is the plain majority of `incoming`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The configuration being moved to (or the only one).
    pub incoming: MajorityConfig,
    /// The configuration being left; empty outside a change.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// A plain, non-joint configuration.
    pub fn simple(voters: impl IntoIterator<Item = NodeId>) -> JointConfig {
        JointConfig {
            incoming: MajorityConfig::new(voters),
            outgoing: MajorityConfig::default(),
        }
    }

    /// Every voter of either half, sorted and without repeats.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters()
            .union(self.outgoing.voters())
            .copied()
            .collect()
    }

    /// Whether `id` votes in either half.
    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters().contains(&id) || self.outgoing.voters().contains(&id)
    }

    /// The highest index both halves have acknowledged.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        let a = self.incoming.committed_index(&acked);
        if cfg!(feature = "mut-joint-one-majority") {
            // Mutation: count the new configuration's majority only.
            return a;
        }
        let b = self.outgoing.committed_index(&acked);
        a.min(b)
    }

    /// Won only if both halves won; lost if either lost.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = self.incoming.vote_result(&vote);
        if cfg!(feature = "mut-joint-one-majority") {
            return a;
        }
        let b = self.outgoing.vote_result(&vote);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(|i| NodeId::new(i).unwrap()).collect()
    }

    #[test]
    fn committed_index_examples() {
        let c = MajorityConfig::new(ids(3));
        let acked: BTreeMap<u64, u64> = [(1, 5), (2, 3), (3, 9)].into();
        assert_eq!(
            c.committed_index(|id| acked.get(&id.get()).map(|&i| Index(i))),
            Index(5)
        );
        let c = MajorityConfig::new(ids(4));
        // 4 voters need 3: the third largest of {5,3,9,0} is 3.
        assert_eq!(
            c.committed_index(|id| acked.get(&id.get()).map(|&i| Index(i))),
            Index(3)
        );
        assert_eq!(
            MajorityConfig::default().committed_index(|_| None),
            Index(u64::MAX)
        );
    }

    #[test]
    fn vote_result_examples() {
        let c = MajorityConfig::new(ids(5));
        assert_eq!(c.vote_result(|_| None), VoteResult::Pending);
        assert_eq!(
            c.vote_result(|id| (id.get() <= 3).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            c.vote_result(|id| (id.get() <= 3).then_some(false)),
            VoteResult::Lost
        );
        assert_eq!(
            c.vote_result(|id| Some(id.get() <= 2)),
            VoteResult::Lost,
            "2 of 5 granted, all answered"
        );
    }

    #[test]
    fn joint_needs_both_halves() {
        let j = JointConfig {
            incoming: MajorityConfig::new(ids(3)),
            outgoing: MajorityConfig::new([4, 5, 6].map(|i| NodeId::new(i).unwrap())),
        };
        // Majority of the incoming half only.
        assert_eq!(
            j.vote_result(|id| (id.get() <= 3).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            j.vote_result(|id| Some(id.get() <= 3)),
            VoteResult::Lost,
            "outgoing half refused"
        );
        assert_eq!(
            j.vote_result(|id| Some(id.get() != 3 && id.get() != 6)),
            VoteResult::Won
        );
        let acked = |id: NodeId| Some(Index(id.get() * 10));
        // incoming {10,20,30} -> 20, outgoing {40,50,60} -> 50.
        assert_eq!(j.committed_index(acked), Index(20));
    }

    /// Reference: the largest index such that a majority acknowledged at least it.
    fn reference_committed(acks: &[u64]) -> u64 {
        let q = acks.len() / 2 + 1;
        let mut best = 0;
        for &cand in acks {
            if acks.iter().filter(|&&a| a >= cand).count() >= q {
                best = best.max(cand);
            }
        }
        best
    }

    /// Reference: count votes by brute force over all completions of the missing votes.
    fn reference_vote(votes: &[Option<bool>]) -> VoteResult {
        let q = votes.len() / 2 + 1;
        let granted = votes.iter().filter(|v| **v == Some(true)).count();
        let missing = votes.iter().filter(|v| v.is_none()).count();
        if granted >= q {
            VoteResult::Won
        } else if granted + missing < q {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    proptest! {
        #[test]
        fn committed_index_matches_reference(acks in prop::collection::vec(0u64..20, 1..9)) {
            let c = MajorityConfig::new(ids(acks.len() as u64));
            let got = c.committed_index(|id| Some(Index(acks[(id.get() - 1) as usize])));
            prop_assert_eq!(got, Index(reference_committed(&acks)));
        }

        #[test]
        fn vote_result_matches_reference(
            votes in prop::collection::vec(prop::option::of(any::<bool>()), 1..9)
        ) {
            let c = MajorityConfig::new(ids(votes.len() as u64));
            let got = c.vote_result(|id| votes[(id.get() - 1) as usize]);
            prop_assert_eq!(got, reference_vote(&votes));
        }

        #[test]
        fn joint_is_the_meet_of_halves(
            a in prop::collection::vec(0u64..20, 1..6),
            b in prop::collection::vec(0u64..20, 0..6),
        ) {
            let n = a.len() as u64;
            let inc = ids(n);
            let out: Vec<NodeId> = (0..b.len() as u64).map(|i| NodeId::new(100 + i).unwrap()).collect();
            let j = JointConfig { incoming: MajorityConfig::new(inc), outgoing: MajorityConfig::new(out) };
            let acked = |id: NodeId| {
                let i = id.get();
                Some(Index(if i >= 100 { b[(i - 100) as usize] } else { a[(i - 1) as usize] }))
            };
            let expect = if b.is_empty() {
                reference_committed(&a)
            } else {
                reference_committed(&a).min(reference_committed(&b))
            };
            prop_assert_eq!(j.committed_index(acked), Index(expect));
        }
    }
}
