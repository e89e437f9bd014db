//! Membership scenarios (issue 5): configuration churn (learners added and promoted, voters
//! removed, 3 -> 5 -> 3 through joint consensus) under partitions and crashes with KV clients
//! checked for linearizability; a joint configuration under a partition that leaves only one
//! of its majorities; a removed node with a higher term that must not depose the leader; and
//! leader transfer under faults. The quorum checkers (`invariants::quorum`) judge every commit
//! and election against the node's configuration (joint = both majorities) and every
//! configuration entry against the one before it.

use std::collections::BTreeSet;

use raft::{MembershipChange, MembershipError, NodeId, ProposeError, Role};

use super::kv_tests::check_linearizable;
use super::lab::{cmd, ELECTION_TIMEOUT_MS};
use crate::cluster::{Cluster, ClusterConfig};

pub(crate) fn nid(i: u64) -> NodeId {
    NodeId::new(i).expect("ids start at 1")
}

fn ids(s: &BTreeSet<NodeId>) -> Vec<u64> {
    s.iter().map(|i| i.get()).collect()
}

/// The running leader with the highest term, if any.
pub fn leader(c: &Cluster) -> Option<u64> {
    c.ids()
        .into_iter()
        .filter_map(|i| c.status(i).map(|s| (i, s)))
        .filter(|(_, s)| s.role == Role::Leader)
        .max_by_key(|(_, s)| s.term)
        .map(|(i, _)| i)
}

/// Waits up to `ms` for a leader.
pub(crate) fn wait_leader(c: &mut Cluster, ms: u64) -> Option<u64> {
    let t0 = c.now_ms();
    loop {
        if let Some(l) = leader(c) {
            return Some(l);
        }
        if c.now_ms() - t0 >= ms {
            return None;
        }
        c.run_for(50);
    }
}

/// Asks the leader for `change`, retrying while the leader is busy (NotReady,
/// ChangeInProgress) or changing, for up to `ms`. Returns whether it was accepted.
pub(crate) fn request(c: &mut Cluster, change: MembershipChange, ms: u64) -> bool {
    let t0 = c.now_ms();
    while c.now_ms() - t0 < ms {
        if let Some(l) = leader(c) {
            match c.change_membership(l, change.clone()) {
                Some(Ok(_)) => return true,
                Some(Err(MembershipError::Invalid(_))) => return false,
                _ => {}
            }
        }
        c.run_for(100);
    }
    false
}

/// Starts every server that is down.
pub(crate) fn start_all(c: &mut Cluster) {
    for i in c.ids() {
        if !c.alive(i) {
            c.start(i);
        }
    }
}

/// Waits until the leader's configuration is not joint and its last configuration entry is
/// committed, for up to `ms`.
pub(crate) fn wait_settled(c: &mut Cluster, ms: u64) -> bool {
    let t0 = c.now_ms();
    while c.now_ms() - t0 < ms {
        if let Some(l) = leader(c) {
            let m = c.membership(l).expect("leader runs");
            let s = c.status(l).expect("leader runs");
            let at = c.membership_index(l).expect("leader runs");
            if !m.is_joint() && at <= s.commit {
                return true;
            }
        }
        c.run_for(100);
    }
    false
}

pub(crate) fn kv_clients(c: &mut Cluster, n: usize) -> Vec<usize> {
    let all = c.ids();
    (0..n).map(|_| c.add_client(all.clone())).collect()
}

pub(crate) fn finish(c: &mut Cluster, cls: &[usize], what: &str) {
    c.net.heal();
    start_all(c);
    if !wait_settled(c, 20_000) {
        c.fail(&format!(
            "{what}: configuration did not settle within 20 s after healing"
        ));
    }
    let before: Vec<u64> = cls.iter().map(|&ci| c.client_completed(ci)).collect();
    c.run_for(5_000);
    if cls
        .iter()
        .zip(&before)
        .all(|(&ci, &b)| c.client_completed(ci) == b)
    {
        c.fail(&format!(
            "{what}: no client made progress within 5 s after healing"
        ));
    }
    for &ci in cls {
        c.set_client_active(ci, false);
    }
    c.run_for(crate::client::GIVE_UP_MS + 500);
    c.final_checks();
    check_linearizable(c);
}

/// Membership churn: three voters and two spare servers; the seed draws a sequence of changes
/// (add a learner, promote it, remove a voter or learner, replace the voters by a random set of
/// three or five through joint consensus, transfer leadership) while partitions and crashes
/// come and go; KV clients run throughout.
pub fn membership_churn(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(3, seed % 2 == 1);
    cfg.snapshot_every = if seed % 4 < 2 { Some(20) } else { None };
    cfg.snapshot_chunk_bytes = 256;
    let mut c = Cluster::new(seed, "MembershipChurn", cfg);
    c.add_host();
    c.add_host();
    let cls = kv_clients(&mut c, 3);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    wait_leader(&mut c, 5_000);
    let all: Vec<u64> = c.ids();
    for _round in 0..12 {
        // Faults first, so changes run under them.
        match c.rng.below(6) {
            0 | 1 => {
                let mut groups = vec![Vec::new(), Vec::new()];
                for &i in &all {
                    groups[c.rng.below(2) as usize].push(i);
                }
                c.net.partition(&groups);
            }
            2 => {
                let victim = all[c.rng.below(all.len() as u64) as usize];
                c.crash(victim);
            }
            3 => start_all(&mut c),
            _ => c.net.heal(),
        }
        let Some(l) = leader(&c) else {
            c.run_for(ELECTION_TIMEOUT_MS);
            continue;
        };
        let m = c.membership(l).expect("leader runs");
        let members: BTreeSet<u64> = ids(&m.voters).into_iter().chain(ids(&m.learners)).collect();
        let spare: Vec<u64> = all
            .iter()
            .copied()
            .filter(|i| !members.contains(i))
            .collect();
        let learners = ids(&m.learners);
        let voters = ids(&m.voters);
        let change = match c.rng.below(6) {
            0 if !spare.is_empty() => {
                let x = spare[c.rng.below(spare.len() as u64) as usize];
                if !c.alive(x) {
                    c.start(x);
                }
                MembershipChange::AddLearner(nid(x))
            }
            1 if !learners.is_empty() => MembershipChange::PromoteLearner(nid(
                learners[c.rng.below(learners.len() as u64) as usize]
            )),
            2 if voters.len() > 3 || !learners.is_empty() => {
                let pool: Vec<u64> = if voters.len() > 3 {
                    voters.clone()
                } else {
                    learners.clone()
                };
                MembershipChange::Remove(nid(pool[c.rng.below(pool.len() as u64) as usize]))
            }
            3 => {
                let tv = if voters.len() >= 5 { 3 } else { 5 };
                let mut pool = all.clone();
                let mut pick = Vec::new();
                while pick.len() < tv {
                    let k = c.rng.below(pool.len() as u64) as usize;
                    pick.push(pool.remove(k));
                }
                for &x in &pick {
                    if !c.alive(x) {
                        c.start(x);
                    }
                }
                MembershipChange::Replace {
                    voters: pick.iter().map(|&i| nid(i)).collect(),
                    learners: BTreeSet::new(),
                }
            }
            4 => {
                let others: Vec<u64> = voters.iter().copied().filter(|&v| v != l).collect();
                if let Some(&to) = others.get(c.rng.below(others.len().max(1) as u64) as usize) {
                    let _ = c.transfer_leader(l, to);
                }
                let ms = 500 + c.rng.below(1000);
                c.run_for(ms);
                continue;
            }
            _ => {
                let ms = 500 + c.rng.below(1000);
                c.run_for(ms);
                continue;
            }
        };
        request(&mut c, change, 2_000);
        let ms = 500 + c.rng.below(1500);
        c.run_for(ms);
    }
    finish(&mut c, &cls, "MembershipChurn");
    c
}

/// A joint configuration under a partition that leaves the leader only one of its majorities
/// (half the seeds C_new's, half C_old's): the joint entry must not commit until the partition
/// heals, then the change completes and clients progress.
pub fn joint_partition(seed: u64) -> Cluster {
    let cfg = ClusterConfig::lab(3, false);
    let mut c = Cluster::new(seed, "JointPartition", cfg);
    c.add_host();
    c.add_host();
    let cls = kv_clients(&mut c, 2);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    let Some(l) = wait_leader(&mut c, 5_000) else {
        c.fail("no leader");
    };
    for x in [4, 5] {
        c.start(x);
        if !request(&mut c, MembershipChange::AddLearner(nid(x)), 5_000) {
            c.fail(&format!("could not add learner {x}"));
        }
        wait_settled(&mut c, 5_000);
    }
    c.run_for(1_000);
    let l = leader(&c).unwrap_or(l);
    let old: Vec<u64> = vec![1, 2, 3];
    let others: Vec<u64> = old.iter().copied().filter(|&i| i != l).collect();
    // New voters: the leader and the two learners (two voters added, two removed: joint).
    let new_voters = [l, 4, 5];
    let groups = if seed % 2 == 0 {
        // Only C_new's majority is reachable.
        vec![vec![l, 4, 5], others.clone()]
    } else {
        // Only C_old's majority is reachable.
        vec![vec![l, others[0]], vec![others[1], 4, 5]]
    };
    c.net.partition(&groups);
    let accepted = c.change_membership(
        l,
        MembershipChange::Replace {
            voters: new_voters.iter().map(|&i| nid(i)).collect(),
            learners: BTreeSet::new(),
        },
    );
    if !matches!(accepted, Some(Ok(_))) {
        // Leadership moved in the meantime; nothing to check in this seed but safety.
        finish(&mut c, &cls, "JointPartition");
        return c;
    }
    c.run_for(3 * ELECTION_TIMEOUT_MS);
    finish(&mut c, &cls, "JointPartition");
    let l2 = leader(&c).expect("settled");
    let m = c.membership(l2).expect("leader runs");
    if m.is_joint() {
        c.fail("still joint after healing");
    }
    c
}

/// A voter is removed while cut off, campaigns on its own (raising its term, PreVote off in
/// half the seeds), then the partition heals: it must not depose the leader.
pub fn removed_node_disruption(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(4, false);
    cfg.pre_vote = seed % 2 == 0;
    let mut c = Cluster::new(seed, "RemovedNodeDisruption", cfg);
    let cls = kv_clients(&mut c, 2);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    let Some(l) = wait_leader(&mut c, 5_000) else {
        c.fail("no leader");
    };
    let victim = (l % 4) + 1;
    c.disconnect(victim);
    if !request(&mut c, MembershipChange::Remove(nid(victim)), 5_000) {
        c.fail("could not remove the victim");
    }
    if !wait_settled(&mut c, 5_000) {
        c.fail("removal did not commit");
    }
    c.run_for(5 * ELECTION_TIMEOUT_MS);
    let Some(l) = leader(&c) else {
        c.fail("no leader after the removal");
    };
    let term = c.status(l).expect("leader").term;
    c.connect(victim);
    for _ in 0..30 {
        c.run_for(100);
        let s = c.status(l).expect("leader runs");
        if s.role != Role::Leader || s.term != term {
            c.fail(&format!(
                "removed node {victim} (term {}) deposed leader {l} of term {term}: it is now \
                 {:?} in term {}",
                c.status(victim).map(|s| s.term.0).unwrap_or(0),
                s.role,
                s.term
            ));
        }
    }
    finish(&mut c, &cls, "RemovedNodeDisruption");
    c
}

/// Leader transfer under faults (unreliable network in half the seeds, the target crashed or
/// cut off sometimes): either the target leads soon, or the transfer aborts and the old leader
/// takes proposals again within two election timeouts.
pub fn leader_transfer_faults(seed: u64) -> Cluster {
    let cfg = ClusterConfig::lab(5, seed % 2 == 1);
    let mut c = Cluster::new(seed, "LeaderTransferFaults", cfg);
    let cls = kv_clients(&mut c, 2);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    for round in 0..8 {
        c.net.heal();
        start_all(&mut c);
        let Some(l) = wait_leader(&mut c, 5_000) else {
            c.fail(&format!("round {round}: no leader"));
        };
        c.run_for(200);
        let Some(l) = leader(&c).or(Some(l)) else {
            continue;
        };
        let to = (l + c.rng.below(4)) % 5 + 1;
        match c.rng.below(4) {
            0 => c.crash(to),
            1 => c.disconnect(to),
            _ => {}
        }
        let term = c.status(l).expect("leader").term;
        if !matches!(c.transfer_leader(l, to), Some(Ok(()))) {
            continue;
        }
        c.run_for(2 * 600 + 100);
        let s = c.status(l).expect("old leader runs");
        if s.role == Role::Leader && s.term == term {
            // Aborted (or still trying): it must take proposals again by now.
            if let Some(Err(ProposeError::LeadershipTransfer { .. })) = c.try_propose(l, cmd(round))
            {
                c.fail(&format!(
                    "round {round}: leader {l} still refuses proposals for a transfer to {to} \
                     two election timeouts later"
                ));
            }
        }
    }
    finish(&mut c, &cls, "LeaderTransferFaults");
    c
}
