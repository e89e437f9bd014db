//! Messages between Raft nodes. Plain Rust types: the wire codec lives at the edge (server).

use crate::types::{Entry, EntryId, Index, NodeId, ReadCtx, SnapshotMeta, Term};

/// One message. `term` is the sender's current term, except for pre-vote traffic where it is the
/// term the pre-candidate *would* campaign in (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// See the type doc.
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// A conflict hint a follower returns with a rejected append, so the leader can skip a whole
/// term per round trip instead of one entry (paper §5.3, the optimisation at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejectHint {
    /// The follower's term at the rejected `prev_index`, or `None` when its log is too short to
    /// have an entry there.
    pub conflict_term: Option<Term>,
    /// With a term: the follower's first index of `conflict_term`. Without: the follower's last
    /// index + 1.
    pub conflict_index: Index,
}

/// The payloads. Field names follow paper Figure 2 where there is one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageBody {
    /// PreVote request (thesis §9.6): would you vote for me in `Message::term`?
    PreVote {
        /// Index of the candidate's last entry.
        last_log_index: Index,
        /// Term of the candidate's last entry.
        last_log_term: Term,
    },
    /// Answer to a [`MessageBody::PreVote`].
    PreVoteResp {
        /// True if the pre-vote was refused.
        reject: bool,
    },
    /// RequestVote RPC (Figure 2).
    Vote {
        /// Index of the candidate's last entry.
        last_log_index: Index,
        /// Term of the candidate's last entry.
        last_log_term: Term,
        /// The election follows a leader transfer: voters grant it even while they hear
        /// from the (handing-over) leader (thesis §3.10).
        leader_transfer: bool,
    },
    /// RequestVote reply (Figure 2, "voteGranted" is `!reject`).
    VoteResp {
        /// True if the vote was refused.
        reject: bool,
    },
    /// AppendEntries RPC (Figure 2).
    Append {
        /// Index of the entry immediately preceding `entries`.
        prev_index: Index,
        /// Term of that entry.
        prev_term: Term,
        /// Entries to store; may be empty.
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: Index,
    },
    /// AppendEntries reply.
    AppendResp {
        /// On success: the highest index the follower now holds that matches the leader's log.
        /// On rejection: the rejected `prev_index`.
        index: Index,
        /// `Some` when the consistency check failed.
        reject: Option<RejectHint>,
    },
    /// Heartbeat: an empty AppendEntries that only carries commit, and optionally a read round
    /// the leader wants acknowledged (thesis §6.4). `commit` is at most what the receiver is
    /// known to hold, so it is safe without a consistency check.
    Heartbeat {
        /// `min(leader commit, receiver's match)`.
        commit: Index,
        /// Read round to echo back, 0 if none.
        read_round: u64,
    },
    /// Heartbeat reply.
    HeartbeatResp {
        /// The read round echoed back.
        read_round: u64,
    },
    /// Leader transfer: the leader tells the target, now holding the whole log, to campaign
    /// at once (thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client (follower reads).
    ReadIndex {
        /// The follower's tag for the read.
        ctx: ReadCtx,
    },
    /// One chunk of a snapshot (paper Figure 13, InstallSnapshot, with `offset` and `done`
    /// replaced by `offset` + `len` against `meta.size_bytes`). The core produces it with
    /// `data` empty: the edge fills `data` with bytes `[offset, offset + len)` of the
    /// snapshot `meta` describes before sending it, and drops the message if it no longer has
    /// that snapshot (the leader then restarts the transfer with its newest one).
    InstallSnapshot {
        /// The snapshot being sent.
        meta: SnapshotMeta,
        /// Where this chunk starts.
        offset: u64,
        /// How many bytes it carries.
        len: u64,
        /// The bytes (see above).
        data: Vec<u8>,
    },
    /// A follower's answer to a chunk it did not install the snapshot with.
    SnapshotResp {
        /// The snapshot the answer is about.
        last: EntryId,
        /// The offset the follower expects next.
        offset: u64,
        /// True if the chunk did not fit (a gap, or another snapshot): resend from `offset`.
        /// False: every byte before `offset` is staged durably.
        reject: bool,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResp {
        /// The follower's tag.
        ctx: ReadCtx,
        /// The index the read must observe, or `None` if the leader could not serve it (it
        /// stepped down, or its read queue was full); the follower reports the failure.
        index: Option<Index>,
    },
}

impl MessageBody {
    /// A short name for traces and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResp { .. } => "PreVoteResp",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResp { .. } => "VoteResp",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResp { .. } => "AppendResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResp { .. } => "HeartbeatResp",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResp { .. } => "ReadIndexResp",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::SnapshotResp { .. } => "SnapshotResp",
        }
    }

    /// Whether this message may only leave after the hard state and entries of the output batch
    /// that carries it are durable. A vote (granted or asked for) and an append acknowledgement
    /// are promises about durable state (Figure 2: "respond to RPCs only after updating stable
    /// storage"); the rest promise nothing about this node's disk.
    pub fn needs_persistence(&self) -> bool {
        if cfg!(feature = "mut-send-before-persist") {
            return false;
        }
        matches!(
            self,
            MessageBody::Vote { .. }
                | MessageBody::VoteResp { .. }
                | MessageBody::AppendResp { .. }
                | MessageBody::SnapshotResp { .. }
        )
    }

    /// Approximate wire size, for flow control and message-count tests.
    pub fn size_bytes(&self) -> u64 {
        const HEADER: u64 = 32;
        match self {
            MessageBody::Append { entries, .. } => {
                HEADER + 24 + entries.iter().map(Entry::size_bytes).sum::<u64>()
            }
            MessageBody::InstallSnapshot { len, .. } => HEADER + 48 + len,
            _ => HEADER + 16,
        }
    }
}
