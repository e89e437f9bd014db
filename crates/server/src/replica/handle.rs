//! The replica's handle for the layers above: propose a write, wait for a linearizable read,
//! watch the applied index and the node's status. Every request goes to the node task through
//! a bounded channel; a full one is "busy" at once, never a queue that grows.

use std::sync::Arc;

use raft::{NodeId, Role};
use tokio::sync::{mpsc, oneshot, watch};

use super::reply::{ReadFailure, ReadReply, WriteError, WriteReply};
use super::session_waiters::{SessionWait, SessionWaiters};

/// A write on its way to the node task.
pub(super) struct Proposal {
    pub(super) data: Vec<u8>,
    pub(super) reply: WriteReply,
}

/// An operator's request to the node task (few, never on a hot path).
pub(super) enum AdminOp {
    /// Start handing leadership to a voter (`raft::RawNode::transfer_leader`).
    TransferLeader {
        to: NodeId,
        reply: oneshot::Sender<Result<(), raft::TransferError>>,
    },
    /// Propose a configuration change (`raft::RawNode::change_membership`): `reply` says
    /// whether the core took it, `applied` answers once its entry is applied (as a write's).
    ChangeMembership {
        change: raft::MembershipChange,
        /// Stored in the configuration entry (`raft::RawNode::change_membership_with_context`).
        context: Vec<u8>,
        reply: oneshot::Sender<Result<raft::EntryId, raft::MembershipError>>,
        applied: super::reply::WriteReply,
    },
    /// The leader's view of how far `id`'s log is (`raft::RawNode::match_index`), with its
    /// own: `None` off the leader.
    MatchIndex {
        id: NodeId,
        reply: oneshot::Sender<Option<(u64, Option<u64>)>>,
    },
}

/// Answers when a configuration entry is applied, as a write's answer.
pub type AppliedReceiver = oneshot::Receiver<Result<kv::Response, WriteError>>;

/// A member added by a configuration entry in the log that is not applied yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMember {
    /// Its id.
    pub id: NodeId,
    /// Its peer URLs, from the entry's context.
    pub peer_urls: Vec<String>,
    /// The voters of the configuration before the entry.
    pub voters_before: std::collections::BTreeSet<NodeId>,
}

/// Why an operator's request did not reach the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminError {
    /// The node task's queue of such requests is full.
    Busy,
    /// The node task has stopped.
    Stopped,
}

/// What the API can see of the node, updated after every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Index of the last entry in the log (`commit <= last`).
    pub last: u64,
    /// Index of the entry of the configuration in force (0: the initial configuration).
    pub membership_index: u64,
}

/// The API's side of the node task. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) proposals: mpsc::Sender<Proposal>,
    pub(super) reads: mpsc::Sender<ReadReply>,
    pub(super) admin: mpsc::Sender<AdminOp>,
    pub(super) status: watch::Receiver<NodeStatus>,
    /// The configuration in force (paper §6: from the moment it is appended).
    pub(super) membership: watch::Receiver<Arc<raft::Membership>>,
    /// Members added by entries not applied yet.
    pub(super) pending_members: watch::Receiver<Arc<Vec<PendingMember>>>,
    /// The state machine, for reads (writes go through the log).
    pub kv: Arc<kv::Store>,
    /// The applied index, updated after every apply: watch streams wait on it.
    pub(super) applied_changes: watch::Receiver<u64>,
    /// Writers waiting for their session's entry to be applied here.
    pub(super) session_waiters: Arc<SessionWaiters>,
    /// The member's metrics (shared with the node and apply tasks).
    pub(super) metrics: Arc<crate::metrics::Metrics>,
}

impl NodeHandle {
    /// Proposes an encoded command and waits until it is applied. Errors at once when the
    /// queue is full or this node does not lead.
    pub async fn propose(&self, data: Vec<u8>) -> Result<kv::Response, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .try_send(Proposal { data, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Busy,
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        rx.await.unwrap_or(Err(WriteError::Stopped))
    }

    /// [`NodeHandle::propose`] that waits for room in the queue instead of failing when it is
    /// full: for writes a follower forwarded in a batch, which the forwarding stream already
    /// bounds (so a burst of them is queued, not refused as "too many requests").
    pub async fn propose_queued(&self, data: Vec<u8>) -> Result<kv::Response, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { data, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.unwrap_or(Err(WriteError::Stopped))
    }

    /// Waits until a linearizable read may be served from the local state machine.
    pub async fn read_index(&self) -> Result<(), ReadFailure> {
        let (reply, rx) = oneshot::channel();
        self.reads.try_send(reply).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReadFailure::Busy,
            mpsc::error::TrySendError::Closed(_) => ReadFailure::Stopped,
        })?;
        rx.await.unwrap_or(Err(ReadFailure::Stopped))
    }

    /// Registers for the result of this member's apply of session `client_id`'s next entry
    /// (see [`super::session_waiters`]); before the entry can be proposed.
    pub fn await_session(&self, client_id: u64) -> Result<SessionWait, WriteError> {
        self.session_waiters.register(client_id)
    }

    /// A receiver that wakes whenever the state machine has applied more entries.
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.applied_changes.clone()
    }

    /// The member's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        *self.status.borrow()
    }

    /// The configuration in force: which members vote, which learn.
    pub fn membership(&self) -> Arc<raft::Membership> {
        self.membership.borrow().clone()
    }

    /// Members added by configuration entries not applied yet, with their addresses.
    pub fn pending_members(&self) -> Arc<Vec<PendingMember>> {
        self.pending_members.borrow().clone()
    }

    /// A receiver that wakes when the configuration in force changes.
    pub fn membership_changes(&self) -> watch::Receiver<Arc<raft::Membership>> {
        self.membership.clone()
    }

    /// Proposes a configuration change; once the core took it, returns where its entry is and
    /// a receiver that answers when the entry is applied (or lost to another leader, as a
    /// write's).
    pub async fn change_membership(
        &self,
        change: raft::MembershipChange,
        context: Vec<u8>,
    ) -> Result<Result<(raft::EntryId, AppliedReceiver), raft::MembershipError>, AdminError> {
        let (reply, rx) = oneshot::channel();
        let (applied, applied_rx) = oneshot::channel();
        self.admin
            .try_send(AdminOp::ChangeMembership {
                change,
                context,
                reply,
                applied,
            })
            .map_err(admin_error)?;
        Ok(rx
            .await
            .map_err(|_| AdminError::Stopped)?
            .map(|id| (id, applied_rx)))
    }

    /// On the leader: (its own durable index, how far `id`'s log is known to match), as etcd's
    /// `Progress.Match`; `None` when this member does not lead.
    pub async fn match_index(&self, id: NodeId) -> Result<Option<(u64, Option<u64>)>, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .try_send(AdminOp::MatchIndex { id, reply })
            .map_err(admin_error)?;
        rx.await.map_err(|_| AdminError::Stopped)
    }

    /// A receiver that wakes whenever the status changes (a new leader, term or role, more
    /// committed or applied).
    pub fn status_changes(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Asks the core to hand leadership to `to` (thesis §3.10); returns once the transfer
    /// has started (or was refused), not when `to` leads: watch [`NodeHandle::status`].
    pub async fn transfer_leader(
        &self,
        to: NodeId,
    ) -> Result<Result<(), raft::TransferError>, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .try_send(AdminOp::TransferLeader { to, reply })
            .map_err(admin_error)?;
        rx.await.map_err(|_| AdminError::Stopped)
    }
}

/// Why an operator's request could not be queued for the node task.
fn admin_error(e: mpsc::error::TrySendError<AdminOp>) -> AdminError {
    match e {
        mpsc::error::TrySendError::Full(_) => AdminError::Busy,
        mpsc::error::TrySendError::Closed(_) => AdminError::Stopped,
    }
}
