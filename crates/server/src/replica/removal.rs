//! Members removed from the cluster, as this member knows them: the state machine's removed
//! ids (see [`kv::members`]), kept in memory for the peer layer, which refuses their traffic
//! (etcd's `members_removed` check), and the signal that this member itself was removed.
//!
//! A member learns that it was removed in one of two ways: it applies the configuration entry
//! that leaves it out, or a peer refuses its messages as a removed member's (it was down when
//! it was removed, or the entry never reached it, as the leader stops replicating to it once
//! the entry is appended). Either way it stops with a clear error: it can never rejoin with
//! its data dir.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Instant;

use tokio::sync::watch;

/// Removed ids, and whether this member is one of them.
pub struct Removal {
    me: u64,
    /// Every removed id this member has applied (or loaded); only grows.
    removed: RwLock<BTreeSet<u64>>,
    /// Set once this member learns that it was removed.
    self_removed: watch::Sender<bool>,
    /// Last time each peer's messages arrived here (the leader's measure of which members
    /// are connected, for MemberRemove's quorum check, as etcd's `ActiveSince`).
    heard: RwLock<std::collections::HashMap<u64, Instant>>,
}

impl Removal {
    /// The removal state of member `me`, given the ids the state machine holds as removed.
    pub fn new(me: u64, removed: impl IntoIterator<Item = u64>) -> Removal {
        let removed: BTreeSet<u64> = removed.into_iter().collect();
        let (self_removed, _) = watch::channel(removed.contains(&me));
        Removal {
            me,
            removed: RwLock::new(removed),
            self_removed,
            heard: RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Records ids the state machine has just removed.
    pub fn record(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().copied());
        if ids.contains(&self.me) {
            self.self_removed.send_replace(true);
        }
    }

    /// A peer refused this member's messages as a removed member's.
    pub fn refused_by_peer(&self) {
        self.self_removed.send_replace(true);
    }

    /// Whether this member knows it was removed.
    pub fn self_removed(&self) -> bool {
        *self.self_removed.borrow()
    }

    /// Completes once this member learns that it was removed.
    pub async fn wait_self_removed(&self) {
        let mut rx = self.self_removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Notes that a message from `peer` arrived now.
    pub fn heard_from(&self, peer: u64) {
        self.heard
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    /// When a message from `peer` last arrived, if ever.
    pub fn last_heard(&self, peer: u64) -> Option<Instant> {
        self.heard
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_learns_its_own_removal_either_way() {
        let r = Removal::new(1, [7]);
        assert!(r.is_removed(7) && !r.is_removed(2) && !r.self_removed());
        r.record(&[2]);
        assert!(r.is_removed(2) && !r.self_removed());
        r.record(&[1]);
        assert!(r.self_removed());
        let r = Removal::new(1, []);
        r.refused_by_peer();
        assert!(r.self_removed());
        assert!(
            Removal::new(1, [1]).self_removed(),
            "removed before a restart"
        );
    }
}
