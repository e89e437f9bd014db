//! What the leader knows about each follower's log, and the flow control of appends to it.
//!
//! ```text
//!              reject / heartbeat-timeout probe
//!   +--------+  <----------------------------  +-----------+
//!   | Probe  |                                 | Replicate |
//!   +--------+  ---------------------------->  +-----------+
//!     |    ^     successful append response
//!     |    |  install acknowledged (append response at the snapshot index)
//!     v    |
//!   +----------+
//!   | Snapshot |   entries it needs were compacted: chunked InstallSnapshot (paper §7)
//!   +----------+
//! ```
//! In `Probe` the leader sends one append and waits for its answer (or the next heartbeat
//! round) before sending another; in `Replicate` it pipelines appends optimistically, up to a
//! bounded window of messages and bytes.
//!
//! The leader's bookkeeping; exposed for checkers and tests, not needed to drive a node.

use std::collections::VecDeque;

use crate::snapshot::Transfer;
use crate::types::{Index, SnapshotMeta};

/// Flow-control state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the point where the logs match; one append at a time.
    Probe,
    /// Logs match up to `matched`; appends are pipelined.
    Replicate,
    /// The follower needs entries the leader compacted; a snapshot is being sent.
    Snapshot,
}

/// The window of appends sent and not yet acknowledged, oldest first.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// `(last index of the message, bytes of entries)`, in send order. Invariant: indexes
    /// increase; length ≤ `msgs_max`; byte sum = `bytes`.
    queue: VecDeque<(Index, u64)>,
    /// Sum of bytes in `queue`.
    bytes: u64,
    /// Limit on messages in flight.
    msgs_max: usize,
    /// Limit on bytes in flight.
    bytes_max: u64,
}

impl Inflights {
    /// An empty window with these limits.
    pub fn new(msgs_max: usize, bytes_max: u64) -> Inflights {
        assert!(msgs_max > 0);
        Inflights {
            queue: VecDeque::new(),
            bytes: 0,
            msgs_max,
            bytes_max,
        }
    }

    /// Whether another message may be sent.
    pub fn full(&self) -> bool {
        self.queue.len() >= self.msgs_max || self.bytes >= self.bytes_max
    }

    /// Records a message carrying entries through `last` and `bytes` of them.
    pub fn add(&mut self, last: Index, bytes: u64) {
        assert!(!self.full(), "inflights overflow");
        if let Some(&(prev, _)) = self.queue.back() {
            assert!(last > prev, "inflight indexes must increase");
        }
        self.queue.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged by `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Forgets everything in flight (on a state change).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    /// Messages in flight.
    pub fn count(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of entries in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn check_invariants(&self) {
        assert!(self.queue.len() <= self.msgs_max);
        assert_eq!(self.bytes, self.queue.iter().map(|&(_, b)| b).sum::<u64>());
        assert!(self
            .queue
            .iter()
            .zip(self.queue.iter().skip(1))
            .all(|(a, b)| a.0 < b.0));
    }
}

/// What the leader knows of one follower, for operators (metrics, dashboards): a copy, taken
/// by [`crate::RawNode::followers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerView {
    /// The follower (a voter or a learner).
    pub id: crate::NodeId,
    /// Whether it is a learner.
    pub learner: bool,
    /// Highest index known replicated on it (`matchIndex`).
    pub matched: Index,
    /// Next index the leader will send it (`nextIndex`).
    pub next: Index,
    /// Flow-control state.
    pub state: ProgressState,
    /// Appends sent and not acknowledged.
    pub inflight_msgs: usize,
    /// Entry bytes of those appends.
    pub inflight_bytes: u64,
    /// Bytes of the leader's entries after `matched` ([`crate::log::RaftLog::bytes_after`]): the
    /// replication lag in bytes, beside the lag in entries (`last index - matched`).
    pub lag_bytes: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// In `Snapshot`: the snapshot's size and the bytes the follower acknowledged.
    pub snapshot: Option<(u64, u64)>,
}

/// The leader's view of one follower (paper Figure 2 `nextIndex[]`, `matchIndex[]`).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known replicated on the follower (`matchIndex`). Never decreases within a
    /// term. Invariant: `matched < next`.
    pub(crate) matched: Index,
    /// Index of the next entry to send (`nextIndex`).
    pub(crate) next: Index,
    /// Flow-control state.
    pub(crate) state: ProgressState,
    /// In `Probe`: an append was sent and is unanswered; wait before sending another.
    pub(crate) probe_sent: bool,
    /// Appends in flight (used in `Replicate`; empty otherwise).
    pub(crate) inflights: Inflights,
    /// The snapshot transfer. Invariant: `Some` iff `state == Snapshot`.
    pub(crate) snapshot: Option<Transfer>,
    /// Heard from this node since the last CheckQuorum round (thesis §6.2).
    pub(crate) recent_active: bool,
    /// Latest read round this follower acknowledged in this term (thesis §6.4).
    pub(crate) read_round_acked: u64,
    /// In `Replicate`: heartbeat answers received in a row while entries were outstanding and
    /// `matched` did not move. An append may have been lost; past [`STALL_HEARTBEATS_MAX`] the
    /// leader falls back to probing, which resends from `matched + 1`.
    pub(crate) stalled_heartbeats: u32,
}

/// Heartbeat rounds without progress before a pipelined follower is probed again. More than one,
/// so that a follower that is merely slow to sync is not sent everything twice.
pub const STALL_HEARTBEATS_MAX: u32 = 3;

impl Progress {
    /// A fresh progress for a new leader whose last index is `last` (Figure 2: nextIndex
    /// initialised to leader last log index + 1, matchIndex to 0).
    pub fn new(last: Index, msgs_max: usize, bytes_max: u64) -> Progress {
        Progress {
            matched: Index(0),
            next: last.next(),
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(msgs_max, bytes_max),
            snapshot: None,
            recent_active: false,
            read_round_acked: 0,
            stalled_heartbeats: 0,
        }
    }

    /// Whether the leader must hold back appends to this follower now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Starts sending `meta` because the entries from `next` on were compacted.
    pub fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.stalled_heartbeats = 0;
        self.inflights.reset();
        self.snapshot = Some(Transfer::new(meta));
    }

    /// Switches to probing from `matched + 1`.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.snapshot = None;
        self.stalled_heartbeats = 0;
        self.probe_sent = false;
        self.next = self.matched.next();
        self.inflights.reset();
    }

    /// Switches to pipelined replication after a successful append.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.snapshot = None;
        self.stalled_heartbeats = 0;
        self.probe_sent = false;
        self.next = self.matched.next();
        self.inflights.reset();
    }

    /// Records an append carrying entries through `last` (or none) with `bytes` of entries.
    pub fn sent_append(&mut self, last: Option<Index>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last.next();
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("appends are paused while sending a snapshot"),
        }
    }

    /// A successful append response up to `index`. Returns whether `matched` moved.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let moved = index > self.matched;
        if moved {
            self.matched = index;
            self.probe_sent = false;
            self.stalled_heartbeats = 0;
        }
        self.next = self.next.max(index.next());
        self.inflights.free_to(index);
        moved
    }

    /// A rejected append at `rejected` with the follower's hint already turned into a next
    /// index. Stale rejections (from before a later success) are ignored. Returns whether the
    /// rejection was taken.
    pub fn maybe_decr_to(&mut self, rejected: Index, next_hint: Index) -> bool {
        // The follower acknowledged everything through `matched` durably, and only a leader of
        // this term writes to it, so it never rejects there legitimately: a rejection at or
        // below `matched` answers an older append (reordered or duplicated) and is stale.
        if rejected <= self.matched {
            return false;
        }
        if self.state == ProgressState::Snapshot {
            // Answers to appends sent before the transfer started are stale.
            return false;
        }
        if self.state == ProgressState::Replicate {
            self.next = next_hint.max(self.matched.next());
            self.become_probe_keep_next();
            return true;
        }
        // In Probe, only the answer to the append we sent last (at next - 1) counts.
        if rejected != self.next.prev() {
            return false;
        }
        self.next = next_hint.max(self.matched.next()).min(rejected);
        self.probe_sent = false;
        true
    }

    /// A heartbeat answer arrived; `last` is the leader's last index. Resumes a probe whose
    /// append may have been lost, and returns a pipelined follower that stopped making progress
    /// to probing. Returns whether an append should be sent now.
    pub fn on_heartbeat_response(&mut self, last: Index) -> bool {
        match self.state {
            ProgressState::Probe => {
                self.probe_sent = false;
                self.matched < last
            }
            ProgressState::Replicate => {
                if self.matched >= last || self.inflights.count() == 0 {
                    self.stalled_heartbeats = 0;
                    return self.matched < last;
                }
                self.stalled_heartbeats += 1;
                if self.stalled_heartbeats >= STALL_HEARTBEATS_MAX {
                    self.become_probe();
                    return true;
                }
                false
            }
            ProgressState::Snapshot => {
                let transfer = self.snapshot.as_mut().expect("transfer in snapshot state");
                transfer.on_heartbeat()
            }
        }
    }

    fn become_probe_keep_next(&mut self) {
        let next = self.next;
        self.become_probe();
        self.next = next;
    }

    /// Panics if an invariant in the field docs does not hold.
    pub fn check_invariants(&self) {
        assert!(
            self.matched < self.next,
            "match {} >= next {}",
            self.matched,
            self.next
        );
        if self.state != ProgressState::Replicate {
            assert_eq!(
                self.inflights.count(),
                0,
                "inflights outside the replicate state"
            );
        }
        assert_eq!(
            self.snapshot.is_some(),
            self.state == ProgressState::Snapshot,
            "snapshot transfer iff snapshot state"
        );
        if let Some(t) = &self.snapshot {
            t.check_invariants();
        }
        self.inflights.check_invariants();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_bound_messages_and_bytes() {
        let mut w = Inflights::new(3, 100);
        w.add(Index(1), 10);
        w.add(Index(2), 10);
        assert!(!w.full());
        w.add(Index(5), 10);
        assert!(w.full(), "message limit");
        w.free_to(Index(2));
        assert_eq!(w.count(), 1);
        assert!(!w.full());
        w.add(Index(6), 90);
        assert!(w.full(), "byte limit");
        w.free_to(Index(6));
        assert_eq!(w.count(), 0);
        w.check_invariants();
    }

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(Index(10), 4, 1000);
        assert!(!p.is_paused());
        p.sent_append(Some(Index(11)), 10);
        assert!(p.is_paused());
        // A rejection of the probe at 10 with a hint moves next back and unpauses.
        assert!(p.maybe_decr_to(Index(10), Index(4)));
        assert_eq!(p.next, Index(4));
        assert!(!p.is_paused());
        // A stale rejection for another index is ignored.
        assert!(!p.maybe_decr_to(Index(9), Index(2)));
        // So is a late rejection at or below what the follower acknowledged since (found by
        // the simulator: it used to set next to matched).
        assert!(p.maybe_update(Index(3)));
        p.become_probe();
        assert_eq!(p.next, Index(4));
        assert!(!p.maybe_decr_to(Index(3), Index(1)));
        assert_eq!(p.next, Index(4));
        p.check_invariants();
    }

    #[test]
    fn replicate_pipelines_until_window_full() {
        let mut p = Progress::new(Index(0), 2, 1000);
        assert!(!p.maybe_update(Index(0)));
        p.become_replicate();
        p.sent_append(Some(Index(3)), 10);
        p.sent_append(Some(Index(6)), 10);
        assert!(p.is_paused());
        assert_eq!(p.next, Index(7));
        assert!(p.maybe_update(Index(3)));
        assert!(!p.is_paused());
        // A rejection above match sends it back to probing.
        assert!(p.maybe_decr_to(Index(6), Index(5)));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next, Index(5));
        p.check_invariants();
    }
}
