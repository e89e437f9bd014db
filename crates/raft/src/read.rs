//! Read-index bookkeeping (thesis §6.4), pure: which reads wait for the leader's first commit in
//! its term, which wait for a heartbeat round to confirm leadership, and which wait to be
//! applied. The node decides *when* rounds are confirmed; this module only keeps order.
//!
//! ```text
//!   read_index --> waiting_commit --(leader commits in its term)--> round r (index = commit)
//!   round r --(quorum acks round >= r)--> local: ready (until applied >= index)
//!                                         forwarded: ReadIndexResp to the follower
//! ```
//!
//! Used by [`crate::RawNode::read_index`]; exposed for checkers and tests, not needed to drive
//! a node.

use std::collections::{BTreeMap, VecDeque};

use crate::types::{Index, NodeId, ReadCtx, ReadState};

/// One read request: local (`from == None`) or forwarded by a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The requester's tag.
    pub ctx: ReadCtx,
    /// The follower that forwarded it, if any.
    pub from: Option<NodeId>,
}

/// A batch of reads confirmed by one heartbeat round.
#[derive(Clone, Debug)]
struct Round {
    /// Round id, echoed by heartbeat responses. Increases strictly.
    id: u64,
    /// Tick at which the round was created, to fail it if it is never confirmed.
    created_tick: u64,
    /// Commit index when the last request joined: every request in the round arrived no later.
    index: Index,
    /// The reads waiting on this round.
    requests: Vec<ReadRequest>,
}

/// Pending reads at one node.
#[derive(Clone, Debug)]
pub struct ReadQueue {
    /// Leader: reads that arrived before it committed an entry of its own term; they cannot
    /// know the commit index yet (thesis §6.4 step 1). With the tick they arrived at.
    waiting_commit: Vec<(ReadRequest, u64)>,
    /// Leader: rounds sent and not yet confirmed, oldest first, ids increasing.
    rounds: VecDeque<Round>,
    /// Id of the last round created. Never decreases, across terms.
    last_round: u64,
    /// The newest round's heartbeats have not left yet, so requests may still join it.
    open: bool,
    /// Rounds created for reads (not plain heartbeats) since this queue was made: for
    /// operators, to tell rounds from requests (`requests / rounds` is the batching). Never
    /// decreases.
    read_rounds: u64,
    /// Follower: forwarded reads awaiting the leader's answer, by request id, with the
    /// application's tag and the tick count at which they expire. The id, not the tag, goes
    /// on the wire, so a late answer to an expired read never answers a retry of it.
    forwarded: BTreeMap<u64, (ReadCtx, u64)>,
    /// Follower: the id of the last forwarded read. Never reused (see `ReadQueue::new`).
    last_forward_id: u64,
    /// Confirmed reads waiting for `applied >= index`.
    confirmed: Vec<ReadState>,
}

impl Default for ReadQueue {
    fn default() -> ReadQueue {
        ReadQueue::new(0)
    }
}

impl ReadQueue {
    /// An empty queue whose forwarded-read ids start after `id_base`. A node passes a value
    /// that differs across its restarts (the PRNG stream of its seed, term and log), so that
    /// an answer addressed to a previous incarnation is not mistaken for a new read.
    pub fn new(id_base: u64) -> ReadQueue {
        ReadQueue {
            waiting_commit: Vec::new(),
            rounds: VecDeque::new(),
            last_round: 0,
            open: false,
            read_rounds: 0,
            forwarded: BTreeMap::new(),
            last_forward_id: id_base,
            confirmed: Vec::new(),
        }
    }

    /// A fresh round id for a heartbeat broadcast, larger than every earlier one, so that an
    /// acknowledgement of it confirms every round created before.
    pub fn new_round_id(&mut self) -> u64 {
        self.last_round += 1;
        // Requests may not join a round whose heartbeats already left.
        self.open = false;
        self.last_round
    }

    /// Rounds created for reads so far (see the field).
    pub fn read_rounds(&self) -> u64 {
        self.read_rounds
    }

    /// Requests held, in every stage.
    pub fn len(&self) -> usize {
        self.waiting_commit.len()
            + self.rounds.iter().map(|r| r.requests.len()).sum::<usize>()
            + self.forwarded.len()
            + self.confirmed.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leader: a read before the first commit of its term waits.
    pub fn wait_for_commit(&mut self, req: ReadRequest, now: u64) {
        self.waiting_commit.push((req, now));
    }

    /// Leader: adds reads to a round at `commit`. Returns the id of a *new* round whose
    /// heartbeats the caller must send, or `None` if they joined the open round.
    pub fn add_to_round(&mut self, reqs: Vec<ReadRequest>, commit: Index, now: u64) -> Option<u64> {
        if reqs.is_empty() {
            return None;
        }
        if self.open {
            let round = self.rounds.back_mut().expect("open round exists");
            assert!(commit >= round.index, "commit index went back");
            round.index = commit;
            round.requests.extend(reqs);
            return None;
        }
        let id = self.new_round_id();
        self.read_rounds += 1;
        self.rounds.push_back(Round {
            id,
            created_tick: now,
            index: commit,
            requests: reqs,
        });
        self.open = true;
        Some(id)
    }

    /// Leader: the first commit of its term happened; returns the reads that were waiting.
    pub fn take_waiting_commit(&mut self) -> Vec<ReadRequest> {
        std::mem::take(&mut self.waiting_commit)
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// Leader: reads waiting since before `now - age_max` (for the first commit or for a round
    /// that a quorum never confirmed) fail, rather than hang while the leader is cut off.
    pub fn expire_leader_reads(&mut self, now: u64, age_max: u64) -> Vec<ReadRequest> {
        let old = |t: u64| now.saturating_sub(t) >= age_max;
        let mut out = Vec::new();
        self.waiting_commit.retain(|&(r, t)| {
            if old(t) {
                out.push(r);
                false
            } else {
                true
            }
        });
        while self.rounds.front().is_some_and(|r| old(r.created_tick)) {
            let round = self.rounds.pop_front().expect("checked");
            out.extend(round.requests);
        }
        if self.rounds.is_empty() {
            self.open = false;
        }
        out
    }

    /// The open round's heartbeats are leaving now: later requests need a new round.
    pub fn close_open_round(&mut self) {
        self.open = false;
    }

    /// Leader: confirms the newest round for which `confirmed(id)` holds, and with it every
    /// older round (a later round proves leadership at a later time). Returns the confirmed
    /// requests with their indexes.
    pub fn confirm(&mut self, confirmed: impl Fn(u64) -> bool) -> Vec<(ReadRequest, Index)> {
        let Some(pos) = self.rounds.iter().rposition(|r| confirmed(r.id)) else {
            return Vec::new();
        };
        if self.open && pos + 1 == self.rounds.len() {
            // Acks can only be for heartbeats already sent; a round still open is sent
            // together with its acks only in a one-node cluster, where this is fine.
            self.open = false;
        }
        let mut out = Vec::new();
        for round in self.rounds.drain(..=pos) {
            out.extend(round.requests.into_iter().map(|r| (r, round.index)));
        }
        out
    }

    /// A local read is confirmed at `index`; it is released once applied.
    pub fn push_confirmed(&mut self, state: ReadState) {
        self.confirmed.push(state);
    }

    /// Releases confirmed reads with `index <= applied`, in the order they were confirmed.
    pub fn release(&mut self, applied: Index) -> Vec<ReadState> {
        let mut out = Vec::new();
        self.confirmed.retain(|s| {
            if s.index <= applied {
                out.push(*s);
                false
            } else {
                true
            }
        });
        out
    }

    /// Whether some confirmed read has `index <= applied`.
    pub fn has_releasable(&self, applied: Index) -> bool {
        self.confirmed.iter().any(|s| s.index <= applied)
    }

    /// Follower: a read forwarded to the leader, expiring at tick `expires_at`. Returns the
    /// request id to send, or `None` if a read with this tag is already pending.
    pub fn forward(&mut self, ctx: ReadCtx, expires_at: u64) -> Option<u64> {
        if self.forwarded.values().any(|&(c, _)| c == ctx) {
            return None;
        }
        self.last_forward_id = self.last_forward_id.wrapping_add(1);
        self.forwarded
            .insert(self.last_forward_id, (ctx, expires_at));
        Some(self.last_forward_id)
    }

    /// Follower: the leader answered forwarded read `id`. Returns its tag if it was pending.
    pub fn answer_forwarded(&mut self, id: u64) -> Option<ReadCtx> {
        self.forwarded.remove(&id).map(|(ctx, _)| ctx)
    }

    /// Follower: forwarded reads whose answer did not come by tick `now`.
    pub fn expire_forwarded(&mut self, now: u64) -> Vec<ReadCtx> {
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, &(_, t))| t <= now)
            .map(|(&id, _)| id)
            .collect();
        expired
            .iter()
            .filter_map(|id| self.forwarded.remove(id).map(|(ctx, _)| ctx))
            .collect()
    }

    /// Everything not yet confirmed, on a change of role or term: these reads fail. Confirmed
    /// reads stay: their index was confirmed and remains valid once applied.
    pub fn take_unconfirmed(&mut self) -> Vec<ReadRequest> {
        let mut out = self.take_waiting_commit();
        for round in self.rounds.drain(..) {
            out.extend(round.requests);
        }
        self.open = false;
        out.extend(
            std::mem::take(&mut self.forwarded)
                .into_values()
                .map(|(ctx, _)| ReadRequest { ctx, from: None }),
        );
        out
    }

    /// Panics if an invariant in the field docs does not hold.
    pub fn check_invariants(&self) {
        assert!(self.rounds.iter().all(|r| r.id <= self.last_round));
        assert!(self
            .rounds
            .iter()
            .zip(self.rounds.iter().skip(1))
            .all(|(a, b)| a.id < b.id && a.index <= b.index));
        assert!(!self.open || !self.rounds.is_empty(), "open round missing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(c: u64) -> ReadRequest {
        ReadRequest {
            ctx: ReadCtx(c),
            from: None,
        }
    }

    #[test]
    fn requests_join_the_open_round_at_the_latest_commit() {
        let mut q = ReadQueue::default();
        assert_eq!(q.add_to_round(vec![local(1)], Index(5), 0), Some(1));
        assert_eq!(q.add_to_round(vec![local(2)], Index(6), 0), None);
        q.close_open_round();
        assert_eq!(q.add_to_round(vec![local(3)], Index(7), 0), Some(2));
        q.check_invariants();
        // Confirming round 2 confirms round 1 too.
        let got = q.confirm(|id| id == 2);
        assert_eq!(
            got,
            vec![
                (local(1), Index(6)),
                (local(2), Index(6)),
                (local(3), Index(7))
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn unconfirmed_rounds_stay() {
        let mut q = ReadQueue::default();
        q.add_to_round(vec![local(1)], Index(5), 0);
        q.close_open_round();
        assert!(q.confirm(|_| false).is_empty());
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_unconfirmed(), vec![local(1)]);
    }

    #[test]
    fn release_waits_for_apply() {
        let mut q = ReadQueue::default();
        q.push_confirmed(ReadState {
            ctx: ReadCtx(1),
            index: Index(9),
        });
        q.push_confirmed(ReadState {
            ctx: ReadCtx(2),
            index: Index(3),
        });
        assert_eq!(q.release(Index(5)).len(), 1);
        assert_eq!(q.release(Index(9))[0].ctx, ReadCtx(1));
    }

    #[test]
    fn forwarded_reads_expire() {
        let mut q = ReadQueue::default();
        let first = q.forward(ReadCtx(1), 10).expect("new");
        assert_eq!(q.forward(ReadCtx(1), 10), None, "same tag pending");
        let second = q.forward(ReadCtx(2), 20).expect("new");
        assert_eq!(q.expire_forwarded(15), vec![ReadCtx(1)]);
        // A retry of the expired read gets a new id; a late answer to the old id is ignored
        // (found by review: it used to answer the retry with a stale index).
        let retry = q.forward(ReadCtx(1), 30).expect("retry");
        assert_ne!(retry, first);
        assert_eq!(q.answer_forwarded(first), None);
        assert_eq!(q.answer_forwarded(second), Some(ReadCtx(2)));
        assert_eq!(q.answer_forwarded(retry), Some(ReadCtx(1)));
        assert!(q.is_empty());
    }

    #[test]
    fn leader_reads_expire_instead_of_hanging() {
        let mut q = ReadQueue::default();
        q.wait_for_commit(local(1), 0);
        q.add_to_round(vec![local(2)], Index(5), 3);
        q.close_open_round();
        assert!(q.expire_leader_reads(10, 20).is_empty());
        assert_eq!(q.expire_leader_reads(20, 20), vec![local(1)]);
        assert_eq!(q.expire_leader_reads(23, 20), vec![local(2)]);
        assert!(q.is_empty());
    }
}
