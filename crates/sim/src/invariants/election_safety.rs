//! Election Safety (paper Figure 3, §5.2): at most one leader can be elected in a given term.
//! Also checked at its root: a server grants at most one vote per term (Figure 2, RequestVote
//! receiver rule 2, `votedFor`), observed on the granted votes that actually leave a node, so a
//! vote forgotten by a crash before it was durable does not count, but one forgotten after it was
//! sent does.

use std::collections::BTreeMap;

use raft::Term;

use super::{violation, Check};

/// Leaders and granted votes seen so far.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    /// The leader observed in each term.
    leaders: BTreeMap<Term, u64>,
    /// `(voter, term) -> candidate` for every granted vote that was sent.
    votes: BTreeMap<(u64, Term), u64>,
}

impl ElectionSafety {
    /// `node` is leader in `term`.
    pub fn observe_leader(&mut self, node: u64, term: Term) -> Check {
        match self.leaders.get(&term) {
            Some(&other) if other != node => violation(
                crate::property::Property::ElectionSafety,
                "Election Safety (§5.2)",
                format!("nodes {other} and {node} both lead term {term}"),
            ),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
                Ok(())
            }
        }
    }

    /// `voter` sent a granted vote for `candidate` in `term`.
    /// The voters seen granting `candidate` their vote in `term`.
    pub fn votes_for(&self, term: Term, candidate: u64) -> std::collections::BTreeSet<u64> {
        self.votes
            .iter()
            .filter(|(&(_, t), &c)| t == term && c == candidate)
            .map(|(&(v, _), _)| v)
            .collect()
    }

    pub fn observe_vote(&mut self, voter: u64, term: Term, candidate: u64) -> Check {
        match self.votes.get(&(voter, term)) {
            Some(&other) if other != candidate => violation(
                crate::property::Property::ElectionSafety,
                "Election Safety: one vote per term (§5.2, Figure 2 votedFor)",
                format!("node {voter} voted for {other} and for {candidate} in term {term}"),
            ),
            Some(_) => Ok(()),
            None => {
                self.votes.insert((voter, term), candidate);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_is_caught() {
        let mut e = ElectionSafety::default();
        assert!(e.observe_leader(1, Term(2)).is_ok());
        assert!(e.observe_leader(1, Term(2)).is_ok());
        assert!(e.observe_leader(2, Term(3)).is_ok());
        assert!(e.observe_leader(2, Term(2)).is_err());
    }

    #[test]
    fn two_votes_in_one_term_is_caught() {
        let mut e = ElectionSafety::default();
        assert!(e.observe_vote(1, Term(2), 3).is_ok());
        assert!(e.observe_vote(1, Term(2), 3).is_ok());
        assert!(e.observe_vote(1, Term(2), 2).is_err());
    }
}
