//! The Raft replica: the node task that owns the core ([`raft::RawNode`]) and the durable log,
//! the apply task that applies committed entries to the state machine, snapshots (taken,
//! installed, recovered at start), and the replies writers and readers wait for.
//!
//! ```text
//!   NodeHandle --bounded channels--> node task --Ready--> Outbox (peer messages)
//!   (propose, read_index, status)       |   persist + sync (storage)
//!                                       `--> apply task --> kv::Store; answers waiters
//! ```
//!
//! It depends only on the core, the storage and the state machine: messages leave through the
//! [`Outbox`] trait, which the peer layer implements, so nothing here knows about gRPC.

mod apply;
mod handle;
pub mod member_file;
mod node;
pub mod open;
mod removal;
mod reply;
pub mod session_waiters;
mod snapshot;

use raft::Message;

pub use apply::APPLY_QUEUE_MAX;
pub use handle::{AdminError, AppliedReceiver, NodeHandle, NodeStatus, PendingMember};
pub use node::{NodeTask, INBOUND_QUEUE_MAX, PROPOSALS_QUEUE_MAX, READS_QUEUE_MAX};
pub use open::{open, OpenOptions, Opened, SESSIONS_MAX};
pub use removal::Removal;
pub use reply::{ReadFailure, WriteError};
pub use session_waiters::{SessionWait, SESSION_WAITERS_MAX};

/// The snapshot a node holds: its description. Its bytes stay in the snapshot file, from
/// which outgoing chunks are read, so a member never keeps a copy of its state in memory.
pub type CurrentSnapshot = raft::SnapshotMeta;

/// Where the replica's messages to other members go; the peer layer implements it. Sending
/// never waits: a message that cannot be queued is dropped, and Raft sends it again.
pub trait Outbox: Send + Sync + 'static {
    /// Queues `m` for member `m.to`.
    fn send(&self, m: Message);
}
