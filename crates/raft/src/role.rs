//! What each role holds (paper §5.2, Figure 2 "volatile state on leaders"): a leader's
//! follower progress, lease and transfer, a candidate's votes. Each exists only inside its role,
//! so "empty in other roles" holds by construction and every role change starts them afresh.

use std::collections::BTreeMap;

use crate::lease::Lease;
use crate::progress::Progress;
use crate::types::{NodeId, Role};

/// The role and the state only that role has.
#[derive(Clone, Debug)]
pub(crate) enum RoleState {
    /// Passive.
    Follower,
    /// Asking for pre-votes (thesis §9.6).
    PreCandidate(Campaign),
    /// Asking for votes in its own term.
    Candidate(Campaign),
    /// Leading its term (boxed: it is much larger than the other roles).
    Leader(Box<LeaderState>),
}

impl RoleState {
    /// The role's name.
    pub(crate) fn kind(&self) -> Role {
        match self {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }
}

/// A (pre-)campaign's votes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Campaign {
    /// Answers received in this campaign: granted or refused; one per voter (the first
    /// counts). Besides our own vote, only voters of the configuration in force are recorded;
    /// ours is recorded even when we are outside it (thesis §4.2.2), and the tally ignores it
    /// then.
    pub(crate) votes: BTreeMap<NodeId, bool>,
}

/// Volatile state on the leader, reset at every election (Figure 2) and dropped when it steps
/// down.
#[derive(Clone, Debug)]
pub(crate) struct LeaderState {
    /// Progress of every other member (voters and learners). Invariant: keys are exactly the
    /// members of the configuration in force other than this node.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Ticks since the last heartbeat broadcast. Invariant: below `heartbeat_ticks` between
    /// ticks.
    pub(crate) heartbeat_elapsed: u64,
    /// The voter leadership is being handed to (thesis §3.10). While set, proposals and
    /// configuration changes are refused (the automatic exit from a joint configuration is
    /// still appended) and lease reads are not served. Invariant: a voter other than this
    /// node.
    pub(crate) lead_transferee: Option<NodeId>,
    /// Ticks since the transfer started; it is abandoned after an election timeout.
    /// Invariant: 0 when no transfer is pending.
    pub(crate) transfer_elapsed: u64,
    /// Bytes of entries this leader appended that are not yet committed.
    pub(crate) uncommitted_bytes: u64,
    /// An entry of this term has been committed (thesis §6.4: reads need it, and it means the
    /// no-op is committed). Never goes back to false within the term.
    pub(crate) committed_in_term: bool,
    /// Send ticks of heartbeat rounds, for lease reads.
    pub(crate) lease: Lease,
}

impl LeaderState {
    /// A leader's state at election: progress is filled by `sync_progress`.
    pub(crate) fn new() -> LeaderState {
        LeaderState {
            progress: BTreeMap::new(),
            heartbeat_elapsed: 0,
            lead_transferee: None,
            transfer_elapsed: 0,
            uncommitted_bytes: 0,
            committed_in_term: false,
            lease: Lease::default(),
        }
    }

    /// Panics if an invariant that needs nothing outside this state is broken.
    pub(crate) fn check_invariants(&self, me: NodeId) {
        self.lease.check_invariants();
        assert!(!self.progress.contains_key(&me), "leader tracks itself");
        for pr in self.progress.values() {
            pr.check_invariants();
        }
        if self.lead_transferee.is_none() {
            assert_eq!(
                self.transfer_elapsed, 0,
                "transfer clock without a transfer"
            );
        }
        assert_ne!(self.lead_transferee, Some(me), "transfer to self");
    }
}
