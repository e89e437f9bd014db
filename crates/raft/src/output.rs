//! What goes into and comes out of a node: the durable state it starts from, the numbered
//! output batches, and a status view.

use crate::message::Message;
use crate::types::{
    Entry, EntryId, HardState, Index, Membership, NodeId, ReadCtx, ReadState, Role, SnapshotChunk,
    SnapshotMeta, SoftState, Term,
};

/// Durable state a node starts from: what the storage recovered (or an empty log for a new
/// cluster).
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// The configuration as of `snapshot` (or the bootstrap configuration of a new cluster).
    /// Configuration entries in `entries` take precedence over it, in log order.
    pub membership: Membership,
    /// Id of the last entry covered by the snapshot the log starts after (default: none).
    pub snapshot: EntryId,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Where the application's state machine stands (at least `snapshot.index`).
    pub applied: Index,
}

impl InitialState {
    /// A brand-new node of a new cluster with these voters.
    pub fn new_cluster(voters: impl IntoIterator<Item = NodeId>) -> InitialState {
        InitialState {
            membership: Membership::new(voters),
            ..InitialState::default()
        }
    }
}

/// One numbered output batch. See the module docs for the order of handling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Acknowledge with [`RawNode::advance`](crate::RawNode::advance) once everything below is done.
    pub number: u64,
    /// Role, leader or term changed since the previous batch.
    pub soft_state: Option<SoftState>,
    /// Whether this batch's writes must be synced before `persisted_messages` leave and the
    /// batch is advanced. False when they change nothing but the commit index: then
    /// `hard_state` may be written without a sync, or kept until the next synced write (a
    /// crash that loses it only makes the node
    /// learn its commit index again; it is volatile state in the paper's Figure 2, and etcd's
    /// `MustSync` is the same rule). `entries`, `snapshot_chunks` and `snapshot` are empty
    /// then.
    pub must_sync: bool,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist. Any stored entries at or after `entries[0].index` must be replaced
    /// (the log was truncated there).
    pub entries: Vec<Entry>,
    /// Chunks of an incoming snapshot to stage durably, in order, before `persisted_messages`
    /// leave. A chunk at offset 0 replaces any previously staged snapshot.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// A fully staged snapshot to install: restore the state machine from it, keep it as the
    /// current snapshot, and drop stored entries it covers (keep entries after it only if the
    /// stored entry at `last.index` has term `last.term`). Before `entries` are persisted and
    /// `committed_entries` applied.
    pub snapshot: Option<SnapshotMeta>,
    /// Messages that may be sent at once, before persisting. `InstallSnapshot` messages need
    /// their `data` filled (see [`MessageBody::InstallSnapshot`](crate::MessageBody::InstallSnapshot)).
    pub messages: Vec<Message>,
    /// Messages that may be sent only after `hard_state` and `entries` are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed, durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads now safe to serve, after applying `committed_entries`.
    pub read_states: Vec<ReadState>,
    /// Reads that failed (leadership lost, or the leader did not answer in time); retry them.
    pub failed_reads: Vec<ReadCtx>,
}

/// A point-in-time view of a node, for tests, metrics and the simulator's checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Vote in `term`.
    pub vote: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Applied index.
    pub applied: Index,
    /// Durable index.
    pub persisted: Index,
    /// Last entry.
    pub last: EntryId,
}
