//! Lease expiry deadlines, kept by the leader only (etcd's lessor).
//!
//! The state machine records which leases exist and their granted TTL; when they expire is
//! not replicated. The leader keeps one deadline per lease in memory and proposes a revoke
//! through the log when a deadline passes; a keep-alive pushes the deadline out by the full
//! TTL. A member that becomes leader does not know the old leader's deadlines, so it gives
//! every lease a full TTL again ("promotion", as etcd does): a lease may live up to one TTL
//! longer across a leader change, never shorter.
//!
//! ```text
//!   follower --promote(term, leases)--> primary(term) --demote--> follower
//!                                        grant / renew / revoke / expired(now)
//! ```
//!
//! Pure: no clock, no IO. Callers pass `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Longest deadline kept; longer TTLs (etcd allows 9e9 s) are capped so that `Instant`
/// arithmetic cannot overflow. Ten years is forever for a lease.
const DEADLINE_AHEAD_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// One tracked lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tracked {
    /// Granted time to live, seconds (as stored in the state machine).
    ttl_secs: i64,
    /// When the lease expires unless renewed.
    expires_at: Instant,
}

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Deadline pushed out; the lease lives `ttl_secs` from now.
    Renewed {
        /// Granted TTL, seconds.
        ttl_secs: i64,
    },
    /// The deadline had passed; a revoke is (or will be) proposed. Answered as "not found".
    Expired,
    /// Not tracked here: the caller looks the lease up in the state machine and, if it
    /// exists, calls [`Lessor::grant`].
    Untracked,
}

/// Deadlines of the leases this member expires while it leads.
///
/// Invariants: `deadlines` is empty unless `primary_term` is set; `by_deadline` holds exactly
/// one `(expires_at, id)` per entry of `deadlines`.
#[derive(Debug, Default)]
pub struct Lessor {
    /// The term in which this member leads and keeps deadlines; `None` on followers.
    primary_term: Option<u64>,
    /// Lease id -> TTL and deadline.
    deadlines: BTreeMap<i64, Tracked>,
    /// The same leases ordered by deadline, so that finding the expired ones costs what
    /// they are, not what all leases are.
    by_deadline: BTreeSet<(Instant, i64)>,
}

fn deadline(now: Instant, ttl_secs: i64) -> Instant {
    let ahead = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0)).min(DEADLINE_AHEAD_MAX);
    now.checked_add(ahead).unwrap_or(now)
}

impl Lessor {
    /// The term this member keeps deadlines for, if it is primary.
    pub fn primary_term(&self) -> Option<u64> {
        self.primary_term
    }

    /// Becomes primary in `term`: every lease of the state machine gets a full TTL from now.
    pub fn promote(&mut self, term: u64, leases: &[kv::Lease], now: Instant) {
        self.primary_term = Some(term);
        self.deadlines.clear();
        self.by_deadline.clear();
        for l in leases {
            self.set(l.id, l.ttl, deadline(now, l.ttl));
        }
        self.check_invariants();
    }

    /// Stops being primary: deadlines are forgotten (the next leader sets its own).
    pub fn demote(&mut self) {
        self.primary_term = None;
        self.deadlines.clear();
        self.by_deadline.clear();
        self.check_invariants();
    }

    /// Tracks a lease that now exists in the state machine, with a full TTL from `now`.
    /// Ignored unless primary (a later promotion loads it from the state machine).
    pub fn grant(&mut self, id: i64, ttl_secs: i64, now: Instant) {
        if self.primary_term.is_none() {
            return;
        }
        self.set(id, ttl_secs, deadline(now, ttl_secs));
    }

    /// Tracks `id` with `expires_at`, replacing an earlier deadline.
    fn set(&mut self, id: i64, ttl_secs: i64, expires_at: Instant) {
        let t = Tracked {
            ttl_secs,
            expires_at,
        };
        if let Some(old) = self.deadlines.insert(id, t) {
            self.by_deadline.remove(&(old.expires_at, id));
        }
        self.by_deadline.insert((expires_at, id));
    }

    /// Forgets a revoked lease.
    pub fn revoke(&mut self, id: i64) {
        if let Some(old) = self.deadlines.remove(&id) {
            self.by_deadline.remove(&(old.expires_at, id));
        }
    }

    /// A keep-alive for `id` at `now`.
    pub fn renew(&mut self, id: i64, now: Instant) -> Renewal {
        let Some(t) = self.deadlines.get(&id).copied() else {
            return Renewal::Untracked;
        };
        if t.expires_at <= now {
            return Renewal::Expired;
        }
        self.set(id, t.ttl_secs, deadline(now, t.ttl_secs));
        Renewal::Renewed {
            ttl_secs: t.ttl_secs,
        }
    }

    /// Time left for `id` (zero once expired), if tracked.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|t| t.expires_at.saturating_duration_since(now))
    }

    /// Up to `max` expired leases, earliest deadline first.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Brings the tracked set in line with the state machine's `leases`: leases missing here
    /// (a grant whose answer was lost) get a full TTL from `now`; tracked leases that no
    /// longer exist are dropped. Deadlines of the others are kept. Ignored unless primary.
    pub fn reconcile(&mut self, leases: &[kv::Lease], now: Instant) {
        if self.primary_term.is_none() {
            return;
        }
        let old = std::mem::take(&mut self.deadlines);
        self.by_deadline.clear();
        for l in leases {
            let expires_at = old
                .get(&l.id)
                .map_or_else(|| deadline(now, l.ttl), |t| t.expires_at);
            self.set(l.id, l.ttl, expires_at);
        }
        self.check_invariants();
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Panics if the invariant on [`Lessor`] is broken.
    pub fn check_invariants(&self) {
        assert!(
            self.primary_term.is_some() || self.deadlines.is_empty(),
            "a follower keeps no lease deadlines"
        );
        assert_eq!(
            self.deadlines.len(),
            self.by_deadline.len(),
            "deadline index out of step"
        );
    }
}

/// etcd's minimum lease TTL for an election timeout: leases must outlive a leader change
/// (`ceil(1.5 * election timeout)` seconds, at least 1).
pub fn min_ttl_secs(election: Duration) -> i64 {
    let ms = election.as_millis().saturating_mul(3) / 2;
    let secs = ms.div_ceil(1000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, ttl: i64) -> kv::Lease {
        kv::Lease { id, ttl }
    }

    #[test]
    fn min_ttl_follows_etcd() {
        assert_eq!(min_ttl_secs(Duration::from_millis(500)), 1);
        assert_eq!(min_ttl_secs(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(min_ttl_secs(Duration::from_millis(2000)), 3);
    }

    #[test]
    fn a_follower_tracks_nothing() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.grant(1, 5, now);
        assert!(l.is_empty());
        assert_eq!(l.renew(1, now), Renewal::Untracked);
        l.reconcile(&[lease(1, 5)], now);
        assert!(l.is_empty());
    }

    #[test]
    fn promotion_gives_every_lease_a_full_ttl() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.promote(3, &[lease(1, 5), lease(2, 10)], now);
        assert_eq!(l.primary_term(), Some(3));
        assert_eq!(l.remaining(1, now), Some(Duration::from_secs(5)));
        assert_eq!(l.remaining(2, now), Some(Duration::from_secs(10)));
        assert!(l.expired(now + Duration::from_secs(4), 10).is_empty());
        assert_eq!(l.expired(now + Duration::from_secs(5), 10), vec![1]);
        assert_eq!(l.expired(now + Duration::from_secs(11), 10), vec![1, 2]);
        assert_eq!(l.expired(now + Duration::from_secs(11), 1), vec![1]);
        l.demote();
        assert!(l.is_empty());
        assert_eq!(l.primary_term(), None);
    }

    #[test]
    fn renewal_pushes_the_deadline_until_it_passed() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.promote(1, &[], now);
        l.grant(7, 2, now);
        let later = now + Duration::from_secs(1);
        assert_eq!(l.renew(7, later), Renewal::Renewed { ttl_secs: 2 });
        assert_eq!(l.remaining(7, later), Some(Duration::from_secs(2)));
        assert!(l.expired(now + Duration::from_secs(2), 10).is_empty());
        let past = later + Duration::from_secs(2);
        assert_eq!(l.expired(past, 10), vec![7]);
        assert_eq!(l.renew(7, past), Renewal::Expired);
        assert_eq!(l.remaining(7, past), Some(Duration::ZERO));
        l.revoke(7);
        assert_eq!(l.renew(7, past), Renewal::Untracked);
        l.check_invariants();
    }

    #[test]
    fn expired_leases_come_earliest_deadline_first() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.promote(1, &[lease(10, 3), lease(20, 1), lease(30, 2)], now);
        let late = now + Duration::from_secs(5);
        assert_eq!(l.expired(late, 10), vec![20, 30, 10]);
        assert_eq!(l.expired(late, 2), vec![20, 30]);
        // A renewal moves a lease back in the queue.
        let soon = now + Duration::from_millis(500);
        assert_eq!(l.renew(20, soon), Renewal::Renewed { ttl_secs: 1 });
        assert_eq!(l.expired(now + Duration::from_secs(2), 10), vec![20, 30]);
        l.check_invariants();
    }

    #[test]
    fn reconcile_adds_missing_drops_gone_and_keeps_deadlines() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.promote(1, &[lease(1, 5), lease(2, 5)], now);
        let later = now + Duration::from_secs(3);
        l.reconcile(&[lease(1, 5), lease(3, 5)], later);
        assert_eq!(l.remaining(1, later), Some(Duration::from_secs(2)));
        assert_eq!(l.remaining(2, later), None);
        assert_eq!(l.remaining(3, later), Some(Duration::from_secs(5)));
    }

    #[test]
    fn huge_ttls_do_not_overflow() {
        let now = Instant::now();
        let mut l = Lessor::default();
        l.promote(1, &[lease(1, kv::LEASE_TTL_MAX)], now);
        assert_eq!(l.remaining(1, now), Some(DEADLINE_AHEAD_MAX));
        l.grant(2, -5, now);
        assert_eq!(l.expired(now, 10), vec![2]);
    }
}
