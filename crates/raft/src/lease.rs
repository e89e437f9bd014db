//! The leader's read lease (thesis §6.4.1), pure bookkeeping. Every heartbeat broadcast gets a
//! fresh round id; followers echo it. A follower that received round `r` refuses every
//! non-transfer vote for the next `election_ticks` ticks of its clock, whatever its term or
//! role meanwhile (`in_lease`), so once a quorum acknowledged a round sent at tick `t`, no
//! other leader can be elected before `t + election_ticks` on clocks that tick at the same
//! rate. The leader serves lease reads only until `t + election_ticks - drift`, where the
//! margin absorbs tick phase and bounded drift between tick rates. Transfer votes set the
//! followers' refusal aside, so a leader that may have a transfer under way has no lease
//! (`lease_holds`).
//!
//! Used by the node for lease reads; exposed for checkers and tests, not needed to drive a node.

use std::collections::VecDeque;

/// Rounds remembered at most; older ones could not extend a lease anyway once newer ones are
/// acknowledged.
pub const LEASE_ROUNDS_MAX: usize = 4096;

/// Send ticks of recent heartbeat rounds, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Lease {
    /// `(round id, tick sent)`. Invariant: ids strictly increasing, ticks non-decreasing;
    /// length at most [`LEASE_ROUNDS_MAX`].
    sent: VecDeque<(u64, u64)>,
    /// No lease for the rest of the term: this leader sent TimeoutNow, and the target may
    /// campaign with votes that ignore the followers' leases whenever it arrives. Never
    /// cleared: a new term starts with a new leader state and a new `Lease`. Invariant: if
    /// set, `sent` is empty.
    revoked: bool,
}

impl Lease {
    /// Round `id` was broadcast at tick `now`. Rounds that can no longer extend the lease
    /// (sent more than `election_ticks` ago) are forgotten, keeping the newest of them.
    pub fn record(&mut self, id: u64, now: u64, election_ticks: u64) {
        if self.revoked {
            return;
        }
        if let Some(&(last_id, last_tick)) = self.sent.back() {
            assert!(id > last_id, "round ids must increase");
            assert!(now >= last_tick, "ticks went back");
        }
        self.sent.push_back((id, now));
        while self.sent.len() > 1
            && (self.sent.len() > LEASE_ROUNDS_MAX
                || self.sent[1].1.saturating_add(election_ticks) <= now)
        {
            self.sent.pop_front();
        }
    }

    /// The tick at which the newest round at or below `acked_id` was sent: the lease starts
    /// there.
    pub fn start_tick(&self, acked_id: u64) -> Option<u64> {
        self.sent
            .iter()
            .rev()
            .find(|&&(id, _)| id <= acked_id)
            .map(|&(_, t)| t)
    }

    /// Whether a lease confirmed by a quorum acknowledging `acked_id` still holds at `now`.
    pub fn holds(&self, acked_id: u64, now: u64, election_ticks: u64) -> bool {
        let drift = lease_drift_ticks(election_ticks);
        self.start_tick(acked_id)
            .is_some_and(|t| now + drift < t + election_ticks)
    }

    /// Forgets every round sent so far: only rounds sent from now on can start a lease (a
    /// leader transfer was aborted).
    pub fn forget_rounds(&mut self) {
        self.sent.clear();
    }

    /// Gives up the lease for good: rounds sent from now on do not count.
    pub fn revoke(&mut self) {
        self.sent.clear();
        self.revoked = true;
    }

    /// Whether [`Lease::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// Panics if an invariant is broken.
    pub fn check_invariants(&self) {
        assert!(
            !self.revoked || self.sent.is_empty(),
            "a revoked lease records no rounds"
        );
        assert!(
            self.sent.len() <= LEASE_ROUNDS_MAX,
            "lease rounds unbounded"
        );
        for pair in self.sent.iter().zip(self.sent.iter().skip(1)) {
            assert!(pair.0 .0 < pair.1 .0, "round ids must increase");
            assert!(pair.0 .1 <= pair.1 .1, "round ticks went back");
        }
    }
}

/// The safety margin: one tick for tick phase, plus a tenth of the election timeout for drift
/// between tick rates. A follower may vote `election_ticks` of its ticks after it received a
/// round, and its first tick can come right after the receipt, so (E - 1) tick periods later;
/// the leader's lease, counted from the send, must end before that, with room to spare for a
/// faster follower clock. (With only `max(E / 10, 1)`, E = 10 left no room at all: found in
/// review.) Every node must use the same `election_ticks`.
pub fn lease_drift_ticks(election_ticks: u64) -> u64 {
    election_ticks / 10 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_runs_from_the_acknowledged_round_send_tick() {
        let mut l = Lease::default();
        l.record(1, 0, 10);
        l.record(2, 5, 10);
        assert!(!l.holds(0, 1, 10), "nothing acknowledged");
        // Round 1 (sent at 0) acknowledged: the lease holds until 10 - drift 2.
        assert!(l.holds(1, 7, 10));
        assert!(!l.holds(1, 8, 10));
        // Round 2 (sent at 5) extends it.
        assert!(l.holds(2, 12, 10));
        assert!(!l.holds(2, 13, 10));
    }

    #[test]
    fn a_revoked_lease_holds_no_more() {
        let mut l = Lease::default();
        l.record(1, 0, 10);
        assert!(l.holds(1, 1, 10));
        l.revoke();
        assert!(!l.holds(1, 1, 10));
        l.record(2, 2, 10);
        assert!(!l.holds(2, 3, 10), "rounds after a revocation do not count");
        l.check_invariants();
    }

    #[test]
    fn forgotten_rounds_cannot_start_a_lease() {
        let mut l = Lease::default();
        l.record(1, 0, 10);
        l.forget_rounds();
        assert!(!l.holds(1, 1, 10), "round 1 was sent before");
        l.record(2, 1, 10);
        assert!(l.holds(2, 2, 10));
    }

    #[test]
    fn old_rounds_are_forgotten() {
        let mut l = Lease::default();
        for i in 1..100 {
            l.record(i, i, 10);
        }
        assert!(l.sent.len() <= 11);
        assert_eq!(l.start_tick(99), Some(99));
    }
}
