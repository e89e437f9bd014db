//! The log vocabulary: newtypes for terms, indexes and node ids, log entries and the durable
//! hard state. Values are validated where they enter the core; inside, code relies on the type.

use std::collections::BTreeSet;
use std::fmt;

/// A Raft term (paper §5.1). Terms only grow on any one node; term 0 means "no term yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// A log index (paper §5.3). Index 0 is the empty prefix before the first entry; real entries
/// start at 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Index(pub u64);

/// The identity of a Raft node within a cluster. 0 is reserved as "none" on the wire, so valid
/// ids are non-zero; [`NodeId::new`] enforces it where ids enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u64);

impl NodeId {
    /// Returns `None` for 0, which is not a valid node id.
    pub fn new(id: u64) -> Option<NodeId> {
        (id != 0).then_some(NodeId(id))
    }

    /// The raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Term {
    /// The next term.
    pub fn next(self) -> Term {
        Term(self.0.checked_add(1).expect("term overflow"))
    }
}

impl Index {
    /// The next index.
    pub fn next(self) -> Index {
        Index(self.0.checked_add(1).expect("index overflow"))
    }

    /// The previous index. Panics on 0: there is nothing before the empty prefix.
    pub fn prev(self) -> Index {
        Index(self.0.checked_sub(1).expect("index underflow"))
    }

    /// `self + n`.
    pub fn plus(self, n: u64) -> Index {
        Index(self.0.checked_add(n).expect("index overflow"))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of an entry in the log: two entries with the same id hold the same command
/// (Log Matching, paper §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// The term in which a leader created the entry.
    pub term: Term,
    /// Where the entry sits in the log.
    pub index: Index,
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An application command, opaque to the core.
    Normal,
    /// The empty entry a new leader appends so that it can commit entries of earlier terms
    /// (paper §5.4.2, §8; thesis §6.4).
    Noop,
    /// A new cluster configuration. It takes effect on every node as soon as it is in the log,
    /// committed or not, and is undone if the entry is truncated (paper §6).
    Membership(Membership),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Term in which the entry was created by a leader.
    pub term: Term,
    /// Position in the log.
    pub index: Index,
    /// What the entry is.
    pub kind: EntryKind,
    /// The command for [`EntryKind::Normal`]; the application's context for
    /// [`EntryKind::Membership`] (see [`crate::RawNode::change_membership_with_context`]; empty
    /// for the changes the core makes itself); empty for a no-op.
    pub data: Vec<u8>,
}

impl Entry {
    /// The entry's position.
    pub fn id(&self) -> EntryId {
        EntryId {
            term: self.term,
            index: self.index,
        }
    }

    /// The bytes this entry is charged for in flow control and limits: its payload plus a fixed
    /// per-entry overhead, so that empty entries are not free.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// Fixed cost charged per entry (index, term and kind on the wire).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state a node must persist before it answers anyone (paper Figure 2, "persistent state on
/// all servers"). `commit` is persisted too, so that a restart can apply without waiting for a
/// leader; it is safe to lose (it is re-learned), but never to regress below what was applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate voted for in `term`, if any. At most one per term (paper §5.2).
    pub vote: Option<NodeId>,
    /// Highest index known committed when this state was written.
    pub commit: Index,
}

/// A cluster configuration (paper §6). Outside a change it is a set of voters plus learners;
/// during a joint-consensus change (`C_old,new`) `voters_outgoing` holds `C_old`, and
/// elections and commitment need a majority of both `voters` and `voters_outgoing`.
///
/// Invariants ([`Membership::validate`]): `voters` is not empty; no node is both a voter (of
/// either half) and a learner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Voting members (`C_new` during a joint change), sorted.
    pub voters: BTreeSet<NodeId>,
    /// `C_old` during a joint change; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log (thesis §4.2.1).
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration with the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Every member, voter or learner, sorted.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.voters.union(&self.voters_outgoing).copied().collect();
        all.extend(self.learners.iter().copied());
        all
    }

    /// Checks the invariants; the error says which one fails.
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("the configuration has no voters".to_string());
        }
        if let Some(id) = self.learners.iter().find(|&&l| self.is_voter(l)) {
            return Err(format!("node {id} is both a voter and a learner"));
        }
        Ok(())
    }
}

/// Describes a snapshot of the application's state machine (paper §7): the state after
/// applying every entry through `last`. The bytes themselves never enter the core: the
/// application stores them, and the edge copies them in and out of snapshot messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// Last entry the snapshot covers (paper Figure 13 `lastIncludedIndex`/`lastIncludedTerm`).
    pub last: EntryId,
    /// The configuration as of `last`.
    pub membership: Membership,
    /// Size of the snapshot's bytes, for chunked transfer.
    pub size_bytes: u64,
}

/// A piece of an incoming snapshot that the application must stage (write at `offset` of the
/// staging area for `meta`) before the batch's persisted messages leave. A chunk at offset 0
/// starts a new staging area, replacing any other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotChunk {
    /// Which snapshot this belongs to.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` within the snapshot.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A requested change of the cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Add a voter (single-server change, thesis §4.1). Add it as a learner first and promote it
    /// once caught up, so the cluster does not wait on a new, empty log.
    AddVoter(NodeId),
    /// Add a non-voting learner.
    AddLearner(NodeId),
    /// Make a learner a voter (single-server change).
    PromoteLearner(NodeId),
    /// Remove a voter or learner (single-server change). Removing the leader is allowed: it
    /// steps down once the new configuration commits (paper §6).
    Remove(NodeId),
    /// Move to an arbitrary set of voters and learners through joint consensus
    /// (`C_old` → `C_old,new` → `C_new`, paper §6); the joint configuration is left
    /// automatically once it commits.
    Replace {
        /// The new voters.
        voters: BTreeSet<NodeId>,
        /// The new learners.
        learners: BTreeSet<NodeId>,
    },
}

/// Role of a node (paper §5.1, plus the PreVote pre-candidate of thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asking for pre-votes without having raised its term (thesis §9.6).
    PreCandidate,
    /// Asking for votes in its own term.
    Candidate,
    /// Handles all client requests and replicates the log.
    Leader,
}

/// Volatile state an application may want to show: who leads and what this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader this node currently knows, if any.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: Term,
}

/// Opaque, application-chosen tag of a read request, returned with its [`ReadState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadCtx(pub u64);

/// A read that is now safe to serve: once the application has applied up to `index` (the core
/// only releases a read state when that is already so), a read of the state machine is
/// linearizable (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    /// The tag the application gave to [`crate::RawNode::read_index`].
    pub ctx: ReadCtx,
    /// The commit index the read must observe.
    pub index: Index,
}
