//! What each role holds (paper §5.2, Figure 2 "volatile state on leaders"): a leader's
//! follower progress, lease and transfer, a candidate's votes. Each exists only inside its role,
//! so "empty in other roles" holds by construction and every role change starts them afresh.

use std::collections::BTreeMap;

use crate::lease::Lease;
use crate::node::RawNode;
use crate::progress::Progress;
use crate::types::{Entry, EntryId, EntryKind, NodeId, Role, Term};

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

/// Role changes (paper §5.2; thesis §9.6 for the pre-vote).
impl RawNode {
    /// Common part of every role change: a new term forgets the vote; timers restart.
    fn reset(&mut self, term: Term) {
        if term != self.term {
            assert!(
                term > self.term,
                "term went back from {} to {term}",
                self.term
            );
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.reset_randomized_election_timeout();
        // Whatever the old role held goes with it; the caller sets the new role.
        self.role = RoleState::Follower;
        self.bcast_pending = false;
        for req in self.reads.take_unconfirmed() {
            self.fail_read(req);
        }
    }

    /// Becomes a follower of `leader` (if known) in `term` (paper §5.2).
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "follower of an older term {term}");
        assert_ne!(leader, Some(self.id()), "follower of itself");
        self.reset(term);
        self.role = RoleState::Follower;
        self.leader = leader;
    }

    /// Starts a pre-vote (thesis §9.6): no term change, so a node that cannot win does not
    /// disrupt the cluster.
    pub(crate) fn become_pre_candidate(&mut self) {
        assert!(!self.is_leader(), "leader cannot become pre-candidate");
        assert!(self.is_promotable(), "a non-voter campaigns");
        let term = self.term;
        self.reset(term);
        self.role = RoleState::PreCandidate(Campaign::default());
        // Postcondition (thesis §9.6): a pre-vote leaves term and vote as they were.
        assert_eq!(self.term, term);
    }

    /// Starts an election in a new term, voting for itself (paper §5.2).
    pub(crate) fn become_candidate(&mut self) {
        assert!(!self.is_leader(), "leader cannot become candidate");
        assert!(self.is_promotable(), "a non-voter campaigns");
        let term = self.term.next();
        self.reset(term);
        self.vote = Some(self.id());
        self.role = RoleState::Candidate(Campaign::default());
        // Postcondition (§5.2): a new term, our own vote in it, and no votes counted yet.
        assert_eq!(self.term, term);
        assert!(self.leader.is_none());
    }

    /// Becomes leader of the current term: fresh progress for every follower, and a no-op entry
    /// so that entries of earlier terms can commit (paper §5.4.2, §8).
    pub(crate) fn become_leader(&mut self) {
        assert_eq!(
            self.role(),
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(self.vote, Some(self.id()), "leader without its own vote");
        assert!(self.is_promotable(), "a non-voter becomes leader");
        let term = self.term;
        self.reset(term);
        self.role = RoleState::Leader(Box::new(LeaderState::new()));
        self.leader = Some(self.id());
        self.lost_campaign = false;
        self.sync_progress();
        let last = self.log.last_index();
        let noop = Entry {
            term: self.term,
            index: last.next(),
            kind: EntryKind::Noop,
            data: Vec::new(),
        };
        self.append_as_leader(vec![noop]);
        self.bcast_append();
        // Postcondition (§5.4.2, §8): the log ends with this term's no-op, nothing of the term
        // is committed yet, and every other member is tracked.
        assert_eq!(
            self.log.last_id(),
            EntryId {
                term,
                index: last.next()
            }
        );
        // (Its own acknowledgement comes with the batch's persistence, so even a sole voter
        // commits only on `advance`.)
        assert!(!self.leading().committed_in_term);
        let mut others = self.log.membership().members();
        others.remove(&self.id());
        assert!(self.leading().progress.keys().eq(others.iter()));
    }
}
