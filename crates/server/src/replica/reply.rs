//! What the replica answers: the outcome of a write or a linearizable read, and where the
//! answer goes. Owned by the replica; the layers above map these to etcd's errors.

use raft::NodeId;
use tokio::sync::oneshot;

/// Why a write did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// Queues or the uncommitted log are full: nothing was proposed.
    #[error("too many requests")]
    Busy,
    /// The request was not answered before its deadline; it may still be applied.
    #[error("request timed out")]
    Timeout,
    /// The request exceeds the entry size limit.
    #[error("request is too large")]
    TooLarge,
    /// Another entry was committed where this one was proposed (leadership changed).
    #[error("leader changed")]
    LeaderChanged,
    /// The state machine refused the request (etcd's error message).
    #[error(transparent)]
    Kv(#[from] kv::KvError),
    /// The node task stopped.
    #[error("node stopped")]
    Stopped,
}

/// Why a linearizable read could not be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    /// No leader is known.
    #[error("no leader")]
    NoLeader,
    /// Too many reads pending.
    #[error("busy")]
    Busy,
    /// The leader changed or did not answer in time; retry.
    #[error("retry")]
    Retry,
    /// The node task stopped.
    #[error("node stopped")]
    Stopped,
}

/// Where the answer to a write goes.
pub type WriteReply = oneshot::Sender<Result<kv::Response, WriteError>>;
/// Where the answer to a read goes.
pub type ReadReply = oneshot::Sender<Result<(), ReadFailure>>;

/// A writer waiting for the entry at `index`, proposed in `term`.
pub struct Waiter {
    /// Index the proposal got.
    pub index: u64,
    /// Term it was proposed in: if the entry applied at `index` has another term, the
    /// proposal was lost to another leader.
    pub term: u64,
    /// The answer.
    pub reply: WriteReply,
}
