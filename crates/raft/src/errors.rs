//! Error values of the driving API: faults and refusals, never panics.

use crate::config::ConfigError;
use crate::types::{EntryId, Index, NodeId};

/// Why a node could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The configuration is inconsistent.
    Config(ConfigError),
    /// The recovered durable state does not hold together (corruption or a bad restore).
    CorruptState(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::CorruptState(s) => write!(f, "recovered raft state is inconsistent: {s}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a proposal was refused. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this node knows, if any.
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// Too many uncommitted bytes; retry later.
    Busy,
    /// Leadership is being handed to another node; retry there shortly.
    LeadershipTransfer {
        /// The node taking over.
        to: NodeId,
    },
    /// The entry is larger than `msg_bytes_max` allows.
    TooLarge {
        /// Size of the proposed entry.
        size_bytes: u64,
        /// The limit.
        size_bytes_max: u64,
    },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader; leader is {l}")
            }
            ProposeError::NotLeader { leader: None } => {
                write!(f, "not the leader; no leader known")
            }
            ProposeError::Busy => write!(f, "too many uncommitted entries; busy"),
            ProposeError::LeadershipTransfer { to } => {
                write!(f, "leadership is being transferred to {to}")
            }
            ProposeError::TooLarge {
                size_bytes,
                size_bytes_max,
            } => write!(
                f,
                "entry of {size_bytes} bytes exceeds the limit of {size_bytes_max}"
            ),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a read could not be started. A read that was started and later fails is reported in
/// [`Ready::failed_reads`](crate::Ready::failed_reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No leader is known to confirm the read.
    NoLeader,
    /// Too many reads pending; retry later.
    Busy,
    /// A read with this tag is already pending here.
    DuplicateCtx,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NoLeader => write!(f, "no leader"),
            ReadError::Busy => write!(f, "too many pending reads; busy"),
            ReadError::DuplicateCtx => write!(f, "a read with this context is already pending"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why [`RawNode::compact`](crate::RawNode::compact) refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactError {
    /// The snapshot covers entries not applied yet.
    NotApplied {
        /// The snapshot's last index.
        index: Index,
        /// What is applied.
        applied: Index,
    },
    /// The snapshot is older than the log's current start.
    Stale {
        /// The snapshot's last index.
        index: Index,
        /// Where the log starts.
        first_index: Index,
    },
    /// The snapshot's last entry id is not in the log.
    Mismatch {
        /// The snapshot's last entry.
        last: EntryId,
    },
}

impl std::fmt::Display for CompactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompactError::NotApplied { index, applied } => {
                write!(
                    f,
                    "snapshot at {index} is beyond the applied index {applied}"
                )
            }
            CompactError::Stale { index, first_index } => {
                write!(
                    f,
                    "snapshot at {index} is older than the log start {first_index}"
                )
            }
            CompactError::Mismatch { last } => {
                write!(
                    f,
                    "snapshot's last entry {}/{} is not in the log",
                    last.index, last.term
                )
            }
        }
    }
}

impl std::error::Error for CompactError {}

/// A message that cannot be taken at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The message is addressed to another node.
    WrongRecipient {
        /// Who it was for.
        to: NodeId,
    },
    /// The message claims to come from this node.
    FromSelf,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::WrongRecipient { to } => write!(f, "message addressed to node {to}"),
            StepError::FromSelf => write!(f, "message claims to come from this node"),
        }
    }
}

impl std::error::Error for StepError {}
