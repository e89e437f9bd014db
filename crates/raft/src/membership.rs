//! Membership changes (paper §6; thesis §4) and leader transfer (thesis §3.10).
//!
//! ```text
//!   single-server:   C_old ──(one voter more or less)──> C_new
//!   joint:           C_old ──> C_old,new ──(committed: automatic)──> C_new
//! ```
//! A configuration takes effect on each node when its entry is appended, and rolls back if the
//! entry is truncated (the log tracks this, `RaftLog::membership`). The leader accepts a change
//! only once an entry of its term committed and no other configuration is uncommitted, so at
//! most one change is ever in flight. Changes are computed on a copy and validated before
//! they are appended.
//!
//! Drive changes through [`crate::RawNode::change_membership`] and
//! [`crate::RawNode::transfer_leader`]; the crate docs' guide has an example.

use std::collections::BTreeSet;

use crate::message::MessageBody;
use crate::node::RawNode;
use crate::progress::Progress;
use crate::types::{Entry, EntryId, EntryKind, Membership, MembershipChange, NodeId};

/// Why a membership change was refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the configuration.
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// The leader has not committed an entry of its term yet (thesis §4.1: a new leader must
    /// not change the configuration before then); retry shortly.
    NotReady,
    /// Another configuration change is not committed yet (or a joint configuration is not
    /// left yet); retry when it is.
    ChangeInProgress,
    /// A leader transfer is pending (thesis §3.10): proposals and configuration changes are
    /// refused until it completes or aborts, so the target stays caught up (etcd refuses the
    /// same way). Only the automatic exit from a joint configuration is still appended; a
    /// target that misses it loses its election and the transfer aborts.
    LeadershipTransfer {
        /// The transfer target.
        to: NodeId,
    },
    /// The request does not make sense for the current configuration.
    Invalid(String),
}

impl std::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader; leader is {l}")
            }
            MembershipError::NotLeader { leader: None } => {
                write!(f, "not the leader; no leader known")
            }
            MembershipError::NotReady => write!(f, "the leader has not committed in its term yet"),
            MembershipError::ChangeInProgress => {
                write!(f, "another membership change is in progress")
            }
            MembershipError::LeadershipTransfer { to } => {
                write!(f, "leadership is being transferred to {to}")
            }
            MembershipError::Invalid(why) => write!(f, "invalid membership change: {why}"),
        }
    }
}

impl std::error::Error for MembershipError {}

/// Why a leader transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader transfers leadership.
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// The target is not a voter (or is this node).
    InvalidTarget(NodeId),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader; leader is {l}")
            }
            TransferError::NotLeader { leader: None } => {
                write!(f, "not the leader; no leader known")
            }
            TransferError::InvalidTarget(id) => {
                write!(f, "node {id} is not another voter of the cluster")
            }
        }
    }
}

impl std::error::Error for TransferError {}

/// Computes the configuration `change` leads to from `current`, on a copy, and checks it.
pub fn apply_change(
    current: &Membership,
    change: &MembershipChange,
) -> Result<Membership, MembershipError> {
    let invalid = |s: String| Err(MembershipError::Invalid(s));
    if current.is_joint() {
        return Err(MembershipError::ChangeInProgress);
    }
    let mut next = current.clone();
    match change {
        MembershipChange::AddVoter(id) => {
            if current.voters.contains(id) {
                return invalid(format!("node {id} is already a voter"));
            }
            next.learners.remove(id);
            next.voters.insert(*id);
        }
        MembershipChange::AddLearner(id) => {
            if current.members().contains(id) {
                return invalid(format!("node {id} is already a member"));
            }
            next.learners.insert(*id);
        }
        MembershipChange::PromoteLearner(id) => {
            if !current.learners.contains(id) {
                return invalid(format!("node {id} is not a learner"));
            }
            next.learners.remove(id);
            next.voters.insert(*id);
        }
        MembershipChange::Remove(id) => {
            if !current.members().contains(id) {
                return invalid(format!("node {id} is not a member"));
            }
            next.voters.remove(id);
            next.learners.remove(id);
        }
        MembershipChange::Replace { voters, learners } => {
            if voters == &current.voters && learners == &current.learners {
                return invalid("the configuration would not change".to_string());
            }
            next = Membership {
                voters: voters.clone(),
                voters_outgoing: BTreeSet::new(),
                learners: learners.clone(),
            };
            next.validate().map_err(MembershipError::Invalid)?;
            // More than one voter added or removed at once needs joint consensus: two
            // majorities of C_old and C_new could otherwise be disjoint (paper §6, Figure 10).
            if voters.symmetric_difference(&current.voters).count() > 1
                && !cfg!(feature = "mut-skip-joint")
            {
                next.voters_outgoing = current.voters.clone();
            }
        }
    }
    next.validate().map_err(MembershipError::Invalid)?;
    let changed_voters = next.voters.symmetric_difference(&current.voters).count();
    assert!(
        next.is_joint() || changed_voters <= 1 || cfg!(feature = "mut-skip-joint"),
        "a simple change moves at most one voter"
    );
    Ok(next)
}

impl RawNode {
    /// Proposes a configuration change. On success the new configuration is in force at once
    /// on this leader (and on each follower when it appends the entry); the returned id says
    /// where its entry is, to tell when it commits.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<EntryId, MembershipError> {
        self.change_membership_with_context(change, Vec::new())
    }

    /// [`RawNode::change_membership`] with `context`: opaque bytes the application stores in
    /// the configuration entry's `data` and reads back when the entry commits (etcd's
    /// `ConfChange.Context`), e.g. a new member's address, so that the description and the
    /// configuration are replicated in one entry.
    pub fn change_membership_with_context(
        &mut self,
        change: MembershipChange,
        context: Vec<u8>,
    ) -> Result<EntryId, MembershipError> {
        let Some(ls) = self.leader_state() else {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        };
        if !ls.committed_in_term {
            return Err(MembershipError::NotReady);
        }
        if let Some(to) = ls.lead_transferee {
            return Err(MembershipError::LeadershipTransfer { to });
        }
        if self.log.membership_index() > self.log.committed() {
            return Err(MembershipError::ChangeInProgress);
        }
        if context.len() as u64 > self.config.msg_bytes_max {
            return Err(MembershipError::Invalid(format!(
                "a context of {} bytes is over the {}-byte entry limit",
                context.len(),
                self.config.msg_bytes_max
            )));
        }
        let next = apply_change(self.log.membership(), &change)?;
        let id = self.append_membership(next, context);
        self.check_invariants_if_debug();
        Ok(id)
    }

    /// Appends a configuration entry as leader, carrying `context`, and puts it in force.
    fn append_membership(&mut self, next: Membership, context: Vec<u8>) -> EntryId {
        debug_assert!(self.is_leader());
        let entry = Entry {
            term: self.term,
            index: self.log.last_index().next(),
            kind: EntryKind::Membership(next),
            data: context,
        };
        let id = entry.id();
        self.append_as_leader(vec![entry]);
        // To the members of the old configuration first (a member it removes learns of its
        // removal), then to those the new one adds.
        self.bcast_append();
        self.sync_progress();
        self.bcast_append();
        id
    }

    /// Leader: tracks progress for exactly the members of the configuration in force.
    pub(crate) fn sync_progress(&mut self) {
        let me = self.id();
        let members = self.log.membership().members();
        let last = self.log.last_index();
        let (msgs_max, bytes_max) = (
            self.config.inflight_msgs_max,
            self.config.inflight_bytes_max,
        );
        let ls = self.leading_mut();
        ls.progress.retain(|id, _| members.contains(id));
        for &id in &members {
            if id != me && !ls.progress.contains_key(&id) {
                ls.progress
                    .insert(id, Progress::new(last, msgs_max, bytes_max));
            }
        }
        if let Some(to) = ls.lead_transferee {
            if !self.log.membership().is_voter(to) {
                self.abort_transfer();
            }
        }
    }

    /// Leader: gives up a pending transfer and takes proposals again. Heartbeat rounds sent
    /// before now may have been acknowledged by voters about to elect the target, so only
    /// rounds sent from now on can renew the lease (and none, for the rest of the term, if
    /// TimeoutNow went out: see `lease_holds`).
    pub(crate) fn abort_transfer(&mut self) {
        let ls = self.leading_mut();
        debug_assert!(ls.lead_transferee.is_some(), "no transfer to abort");
        ls.lead_transferee = None;
        ls.transfer_elapsed = 0;
        if !cfg!(feature = "mut-lease-during-transfer") {
            ls.lease.forget_rounds();
        }
        // Postcondition: no round sent before the abort counts (off under the mutation that
        // reopens the hole, so that the simulator, not this guard, must catch it).
        debug_assert!(
            cfg!(feature = "mut-lease-during-transfer") || !self.lease_holds(),
            "lease survived an abort"
        );
    }

    /// Leader, after the commit index moved: leave a committed joint configuration, and step
    /// down if a committed configuration no longer includes this node (paper §6).
    pub(crate) fn on_commit_membership(&mut self) {
        if !self.is_leader() || self.log.membership_index() > self.log.committed() {
            return;
        }
        let current = self.log.membership().clone();
        if current.is_joint() {
            let leave = Membership {
                voters_outgoing: BTreeSet::new(),
                ..current
            };
            self.append_membership(leave, Vec::new());
            return;
        }
        if !current.voters.contains(&self.id()) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Starts handing leadership to `to` (thesis §3.10): proposals are refused meanwhile;
    /// once `to` has the whole log it is told to campaign at once. Aborted after an election
    /// timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if !self.is_leader() {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id() || !self.log.membership().is_voter(to) {
            return Err(TransferError::InvalidTarget(to));
        }
        let ls = self.leading_mut();
        // A repeat for the same target does not restart the transfer's clock (as etcd-raft):
        // an operator retrying a transfer to a lagging or dead target must not hold off
        // proposals past the abort.
        if ls.lead_transferee != Some(to) {
            ls.lead_transferee = Some(to);
            ls.transfer_elapsed = 0;
        }
        self.maybe_send_timeout_now(to);
        self.check_invariants_if_debug();
        Ok(())
    }

    /// Sends TimeoutNow to the transfer target once it holds the whole log; until then, makes
    /// sure it is being caught up.
    pub(crate) fn maybe_send_timeout_now(&mut self, to: NodeId) {
        let last = self.log.last_index();
        let ls = self.leading_mut();
        if ls.lead_transferee != Some(to) {
            return;
        }
        let caught_up = ls.progress.get(&to).is_some_and(|pr| pr.matched == last);
        if caught_up {
            // From here the target may campaign at any time, with votes that bypass the
            // followers' leases: this leader's lease is void for the rest of its term.
            if !cfg!(feature = "mut-lease-during-transfer") {
                ls.lease.revoke();
            }
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&i| NodeId::new(i).unwrap()).collect()
    }

    fn m(voters: &[u64], learners: &[u64]) -> Membership {
        Membership {
            voters: ids(voters),
            voters_outgoing: BTreeSet::new(),
            learners: ids(learners),
        }
    }

    fn n(i: u64) -> NodeId {
        NodeId::new(i).unwrap()
    }

    #[test]
    fn single_server_changes() {
        let c = m(&[1, 2, 3], &[]);
        assert_eq!(
            apply_change(&c, &MembershipChange::AddLearner(n(4))),
            Ok(m(&[1, 2, 3], &[4]))
        );
        let with_learner = m(&[1, 2, 3], &[4]);
        assert_eq!(
            apply_change(&with_learner, &MembershipChange::PromoteLearner(n(4))),
            Ok(m(&[1, 2, 3, 4], &[]))
        );
        assert_eq!(
            apply_change(&c, &MembershipChange::Remove(n(3))),
            Ok(m(&[1, 2], &[]))
        );
        assert_eq!(
            apply_change(&c, &MembershipChange::AddVoter(n(4))),
            Ok(m(&[1, 2, 3, 4], &[]))
        );
    }

    #[test]
    fn invalid_changes_are_refused_with_a_reason() {
        let c = m(&[1, 2, 3], &[4]);
        for (change, why) in [
            (MembershipChange::AddVoter(n(1)), "already a voter"),
            (MembershipChange::AddLearner(n(4)), "already a member"),
            (MembershipChange::PromoteLearner(n(2)), "not a learner"),
            (MembershipChange::Remove(n(9)), "not a member"),
        ] {
            match apply_change(&c, &change) {
                Err(MembershipError::Invalid(s)) => assert!(s.contains(why), "{s}"),
                other => panic!("{change:?}: {other:?}"),
            }
        }
        let only = m(&[1], &[]);
        assert!(matches!(
            apply_change(&only, &MembershipChange::Remove(n(1))),
            Err(MembershipError::Invalid(s)) if s.contains("no voters")
        ));
        let overlap = MembershipChange::Replace {
            voters: ids(&[1, 2]),
            learners: ids(&[2]),
        };
        assert!(matches!(
            apply_change(&c, &overlap),
            Err(MembershipError::Invalid(s)) if s.contains("both a voter and a learner")
        ));
    }

    #[test]
    fn replacing_more_than_one_voter_goes_through_a_joint_configuration() {
        let c = m(&[1, 2, 3], &[]);
        let change = MembershipChange::Replace {
            voters: ids(&[1, 4, 5]),
            learners: BTreeSet::new(),
        };
        let joint = apply_change(&c, &change).unwrap();
        assert!(joint.is_joint());
        assert_eq!(joint.voters, ids(&[1, 4, 5]));
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        // Nothing more can change until the joint configuration is left.
        assert_eq!(
            apply_change(&joint, &MembershipChange::AddLearner(n(9))),
            Err(MembershipError::ChangeInProgress)
        );
        // One voter more is a simple change even through Replace.
        let one = MembershipChange::Replace {
            voters: ids(&[1, 2, 3, 4]),
            learners: BTreeSet::new(),
        };
        assert!(!apply_change(&c, &one).unwrap().is_joint());
    }
}
