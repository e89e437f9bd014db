//! # Skiff's Raft core
//!
//! A deterministic, sans-IO implementation of the Raft consensus algorithm (Ongaro and
//! Ousterhout, "In Search of an Understandable Consensus Algorithm", extended version; and
//! Ongaro's thesis). The core has no clock, thread, socket, file, async or global randomness:
//! ticks, messages, proposals and read requests go in through [`RawNode`]; a numbered
//! [`Ready`] batch comes out, saying what to persist, which messages may go now and which only
//! after persistence, which committed entries to apply and which reads are safe to serve.
//! The same inputs give the same outputs, byte for byte.
//!
//! Implemented: randomized elections, PreVote, CheckQuorum, replication with flow control and
//! fast conflict backtracking, the current-term commit rule (Figure 8), a no-op entry on
//! election, persistence before replying, ReadIndex (with follower reads), lease reads, and log
//! compaction with chunked, resumable snapshot transfer.
#![deny(missing_docs)]

mod config;
mod election;
mod errors;
mod follower;
pub mod lease;
pub mod log;
pub mod membership;
mod message;
mod node;
mod output;
pub mod progress;
pub mod quorum;
pub mod read;
mod reads;
mod replication;
mod rng;
mod role;
pub mod snapshot;
mod types;

pub use config::{Config, ConfigError, ReadOnlyOption};
pub use errors::{CompactError, ProposeError, ReadError, StartError, StepError};
pub use membership::{MembershipError, TransferError};
pub use message::{Message, MessageBody, RejectHint};
pub use node::RawNode;
pub use output::{InitialState, Ready, Status};
pub use types::{
    Entry, EntryId, EntryKind, HardState, Index, Membership, MembershipChange, NodeId, ReadCtx,
    ReadState, Role, SnapshotChunk, SnapshotMeta, SoftState, Term, ENTRY_OVERHEAD_BYTES,
};
