//! Chunked snapshot transfer (paper §7, Figure 13), pure bookkeeping for both ends.
//!
//! ```text
//!   leader (Transfer)                               follower (Incoming)
//!   [0 ........ acked ...... next ....... size]      [0 ........ received ...... size]
//!    durably staged | in flight | not yet sent        staged durably | expected next
//! ```
//! The leader pipelines chunks up to a byte window. The follower takes only the chunk at
//! `received`; a gap or another snapshot is rejected with the offset it wants, and the leader
//! resends from there. Duplicates are answered with `received`, so a leader that restarts the
//! transfer from 0 resumes where the follower is.
//!
//! Used by the node for [`crate::Ready::snapshot_chunks`] and `InstallSnapshot` messages;
//! exposed for checkers and tests, not needed to drive a node (see the guide's snapshot
//! section).

use crate::types::{SnapshotChunk, SnapshotMeta};

/// Heartbeat answers without progress before the leader resends from `acked`.
pub const SNAPSHOT_STALL_HEARTBEATS_MAX: u32 = 3;

/// The leader's transfer of one snapshot to one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The snapshot being sent.
    meta: SnapshotMeta,
    /// Bytes the follower reported durably staged. Invariant: `acked <= next <= size`.
    acked: u64,
    /// Next byte to send.
    next: u64,
    /// At least one chunk was sent (a zero-byte snapshot still takes one message).
    sent_any: bool,
    /// Heartbeat answers in a row without progress.
    stalled_heartbeats: u32,
}

impl Transfer {
    /// A transfer of `meta` from the start.
    pub fn new(meta: SnapshotMeta) -> Transfer {
        Transfer {
            meta,
            acked: 0,
            next: 0,
            sent_any: false,
            stalled_heartbeats: 0,
        }
    }

    /// The snapshot being sent.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes the follower reported durably staged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The next chunk to send, `(offset, len)`, if the window allows; marks it sent.
    pub fn next_chunk(&mut self, chunk_bytes: u64, window_bytes: u64) -> Option<(u64, u64)> {
        assert!(chunk_bytes > 0);
        let size = self.meta.size_bytes;
        if self.next >= size && self.sent_any {
            return None;
        }
        if self.next - self.acked >= window_bytes && self.sent_any {
            return None;
        }
        let len = chunk_bytes.min(size - self.next);
        let offset = self.next;
        self.next += len;
        self.sent_any = true;
        self.check_invariants();
        Some((offset, len))
    }

    /// The follower staged everything before `offset`.
    pub fn on_ack(&mut self, offset: u64) {
        let offset = offset.min(self.meta.size_bytes);
        if offset > self.acked {
            self.acked = offset;
            self.stalled_heartbeats = 0;
        }
        self.next = self.next.max(self.acked);
        self.check_invariants();
    }

    /// The follower wants the bytes from `offset` on (a gap, or it lost its staging).
    pub fn on_reject(&mut self, offset: u64) {
        let offset = offset.min(self.meta.size_bytes);
        // What it staged before is no longer certain if it asks for less than it acked.
        self.acked = self.acked.min(offset);
        self.next = offset;
        self.sent_any = offset > 0;
        self.stalled_heartbeats = 0;
        self.check_invariants();
    }

    /// A heartbeat answer arrived. Returns true if the transfer stalled (chunks or their
    /// answers were lost) and was rewound to resend from `acked`.
    pub fn on_heartbeat(&mut self) -> bool {
        // Progress (an ack) resets the count, so only a transfer that moved nothing for several
        // heartbeat rounds is rewound: its last chunks or their answers were lost, or the
        // final answer (the install) was.
        self.stalled_heartbeats += 1;
        if self.stalled_heartbeats < SNAPSHOT_STALL_HEARTBEATS_MAX {
            return false;
        }
        self.stalled_heartbeats = 0;
        self.next = self.acked;
        self.sent_any = self.acked > 0;
        true
    }

    /// Panics if an invariant in the field docs does not hold.
    pub fn check_invariants(&self) {
        assert!(self.acked <= self.next, "acked beyond next");
        assert!(
            self.next <= self.meta.size_bytes,
            "next beyond snapshot size"
        );
    }
}

/// A follower's partly received snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The snapshot being received.
    pub meta: SnapshotMeta,
    /// Bytes staged so far. Invariant: `received <= meta.size_bytes`.
    pub received: u64,
}

/// What a follower does with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Stage it; `complete` if it was the last one, and the snapshot is ready to install.
    Accept {
        /// The snapshot is now whole.
        complete: bool,
    },
    /// Already staged: answer with the offset expected next.
    Duplicate(u64),
    /// Does not fit: answer with the offset wanted instead.
    Reject(u64),
}

/// Decides about a chunk `(offset, len)` of `meta` given what is staged, and updates it.
pub fn on_chunk(
    incoming: &mut Option<Incoming>,
    meta: &SnapshotMeta,
    offset: u64,
    len: u64,
) -> ChunkVerdict {
    if offset
        .checked_add(len)
        .is_none_or(|end| end > meta.size_bytes)
    {
        return ChunkVerdict::Reject(0);
    }
    let same = incoming.as_ref().is_some_and(|i| &i.meta == meta);
    if !same {
        if offset != 0 {
            return ChunkVerdict::Reject(0);
        }
        // A new snapshot replaces whatever was staged (the chunk at 0 tells the edge).
        *incoming = Some(Incoming {
            meta: meta.clone(),
            received: 0,
        });
    }
    let inc = incoming.as_mut().expect("set above");
    if offset < inc.received {
        return ChunkVerdict::Duplicate(inc.received);
    }
    if offset > inc.received {
        return ChunkVerdict::Reject(inc.received);
    }
    inc.received += len;
    assert!(inc.received <= inc.meta.size_bytes);
    ChunkVerdict::Accept {
        complete: inc.received == inc.meta.size_bytes,
    }
}

/// Whether staging `chunks` in order ends with `meta` whole: the chunks after the last one at
/// offset 0 (which restarts the staging), or all of them if none is, belong to `meta`, follow
/// each other without a gap, and the last one ends at `meta.size_bytes`. A batch that installs
/// `meta` must satisfy this, or the store would be asked to install bytes it does not hold
/// (Figure 13: the snapshot is adopted only once its last chunk arrived after all others).
pub fn chunks_end_staged(chunks: &[SnapshotChunk], meta: &SnapshotMeta) -> bool {
    let start = chunks.iter().rposition(|c| c.offset == 0).unwrap_or(0);
    let tail = &chunks[start..];
    let Some(last) = tail.last() else {
        return false;
    };
    let contiguous = tail
        .windows(2)
        .all(|w| w[0].offset + w[0].data.len() as u64 == w[1].offset);
    tail.iter().all(|c| &c.meta == meta)
        && contiguous
        && last.offset + last.data.len() as u64 == meta.size_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryId, Index, Term};

    fn meta(size: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last: EntryId {
                term: Term(1),
                index: Index(index),
            },
            membership: Default::default(),
            size_bytes: size,
        }
    }

    #[test]
    fn leader_pipelines_within_the_window_and_resumes_after_loss() {
        let mut t = Transfer::new(meta(10, 5));
        assert_eq!(t.next_chunk(3, 6), Some((0, 3)));
        assert_eq!(t.next_chunk(3, 6), Some((3, 3)));
        assert_eq!(t.next_chunk(3, 6), None, "window of 6 bytes is full");
        t.on_ack(3);
        assert_eq!(t.next_chunk(3, 6), Some((6, 3)));
        // The chunk at 3 was lost: the follower rejects 6 and asks for 3.
        t.on_reject(3);
        assert_eq!(t.next_chunk(3, 6), Some((3, 3)));
        t.on_ack(6);
        assert_eq!(t.next_chunk(3, 6), Some((6, 3)));
        assert_eq!(t.next_chunk(3, 6), Some((9, 1)));
        assert_eq!(t.next_chunk(3, 6), None, "all sent");
    }

    #[test]
    fn a_stalled_transfer_rewinds_to_acked() {
        let mut t = Transfer::new(meta(10, 5));
        t.next_chunk(4, 100);
        t.next_chunk(4, 100);
        t.on_ack(4);
        assert!(!t.on_heartbeat());
        assert!(!t.on_heartbeat());
        assert!(t.on_heartbeat());
        assert_eq!(t.next_chunk(4, 100), Some((4, 4)));
    }

    #[test]
    fn zero_byte_snapshot_takes_one_message() {
        let mut t = Transfer::new(meta(0, 5));
        assert_eq!(t.next_chunk(4, 100), Some((0, 0)));
        assert_eq!(t.next_chunk(4, 100), None);
        let mut inc = None;
        assert_eq!(
            on_chunk(&mut inc, &meta(0, 5), 0, 0),
            ChunkVerdict::Accept { complete: true }
        );
    }

    #[test]
    fn follower_takes_chunks_in_order_only() {
        let m = meta(10, 5);
        let mut inc = None;
        assert_eq!(
            on_chunk(&mut inc, &m, 3, 3),
            ChunkVerdict::Reject(0),
            "must start at 0"
        );
        assert_eq!(
            on_chunk(&mut inc, &m, 0, 3),
            ChunkVerdict::Accept { complete: false }
        );
        assert_eq!(on_chunk(&mut inc, &m, 6, 3), ChunkVerdict::Reject(3), "gap");
        assert_eq!(on_chunk(&mut inc, &m, 0, 3), ChunkVerdict::Duplicate(3));
        assert_eq!(
            on_chunk(&mut inc, &m, 3, 7),
            ChunkVerdict::Accept { complete: true }
        );
        assert_eq!(
            on_chunk(&mut inc, &m, 9, 3),
            ChunkVerdict::Reject(0),
            "beyond the end"
        );
    }

    fn chunk(m: &SnapshotMeta, offset: u64, len: usize) -> SnapshotChunk {
        SnapshotChunk {
            meta: m.clone(),
            offset,
            data: vec![0; len],
        }
    }

    #[test]
    fn a_batch_ends_staged_only_with_the_whole_snapshot_last() {
        let (a, b) = (meta(10, 5), meta(20, 9));
        let whole_a = [chunk(&a, 0, 4), chunk(&a, 4, 6)];
        assert!(chunks_end_staged(&whole_a, &a));
        // The rest of a snapshot staged in earlier batches.
        assert!(chunks_end_staged(&[chunk(&a, 4, 6)], &a));
        // B restarted the staging after A was whole (Swarm seed 102635).
        let b_after = [chunk(&a, 0, 4), chunk(&a, 4, 6), chunk(&b, 0, 4)];
        assert!(!chunks_end_staged(&b_after, &a));
        // A restarted after B: only A's run counts.
        let a_after = [chunk(&b, 0, 4), chunk(&a, 0, 4), chunk(&a, 4, 6)];
        assert!(chunks_end_staged(&a_after, &a));
        assert!(!chunks_end_staged(&[chunk(&a, 0, 4)], &a), "incomplete");
        assert!(
            !chunks_end_staged(&[chunk(&a, 0, 4), chunk(&a, 5, 5)], &a),
            "gap"
        );
        assert!(!chunks_end_staged(&[], &a), "nothing staged in the batch");
    }

    #[test]
    fn a_new_snapshot_replaces_the_staged_one() {
        let mut inc = None;
        on_chunk(&mut inc, &meta(10, 5), 0, 4);
        assert_eq!(
            on_chunk(&mut inc, &meta(20, 9), 4, 4),
            ChunkVerdict::Reject(0)
        );
        assert_eq!(
            inc.as_ref().map(|i| i.received),
            Some(4),
            "old staging kept until a new start"
        );
        assert_eq!(
            on_chunk(&mut inc, &meta(20, 9), 0, 4),
            ChunkVerdict::Accept { complete: false }
        );
        assert_eq!(inc.map(|i| i.meta.last.index), Some(Index(9)));
    }
}
