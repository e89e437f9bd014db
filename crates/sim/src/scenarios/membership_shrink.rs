//! Small and moving configurations (issue 12): clusters shrunk to two voters and to one
//! (the leader removing itself included), grown back, a sole voter handed over to a new
//! machine ({a} -> {a,x} -> {x}), and 3 -> 5 -> 3 replacements onto a disjoint set of
//! machines, with KV clients (ReadIndex, lease reads in a third of the seeds) under message
//! loss, link cuts, crashes and the shape of `shapes::remove_self_cut_off`.

use std::collections::BTreeSet;

use raft::MembershipChange;

use super::membership::{
    finish, kv_clients, leader, nid, request, start_all, wait_leader, wait_settled,
};
use super::shapes::{self, Probes};
use crate::cluster::{Cluster, ClusterConfig};

/// Machines: three initial voters and three spares, enough to replace three voters by three
/// others through a five-voter joint step.
const MACHINES: u64 = 6;

/// Moves tried per lap, and laps per seed.
const LAPS: usize = 2;

/// Attempts per move; attempts after the first run on a healed network with every server up.
const ATTEMPTS_MAX: usize = 3;

/// The voters of the leader's configuration, if there is a leader and it is not joint.
fn voters_now(c: &Cluster) -> Option<BTreeSet<u64>> {
    let l = leader(c)?;
    let m = c.membership(l)?;
    if m.is_joint() {
        return None;
    }
    Some(m.voters.iter().map(|i| i.get()).collect())
}

fn is_learner(c: &Cluster, x: u64) -> bool {
    leader(c)
        .and_then(|l| c.membership(l))
        .is_some_and(|m| m.learners.contains(&nid(x)))
}

/// Random faults while a change runs: per-link loss, a crash, a partition, the leader cut off
/// right after proposing, or its acknowledgements lost for a while. Returns whether to cut the
/// leader off after the proposal.
fn faults(c: &mut Cluster) -> bool {
    let all = c.ids();
    match c.rng.below(7) {
        0 => {
            for _ in 0..3 {
                let (a, b) = (c.rng.pick(&all), c.rng.pick(&all));
                if a != b {
                    let loss = c.rng.pick(&[300, 700, 1000]);
                    c.net.set_link_loss(a, b, loss);
                }
            }
        }
        1 => {
            let victim = c.rng.pick(&all);
            c.crash(victim);
        }
        2 => {
            let mut groups = vec![Vec::new(), Vec::new()];
            for &i in &all {
                groups[c.rng.below(2) as usize].push(i);
            }
            c.net.partition(&groups);
        }
        3 => return true,
        4 => {
            if let Some(l) = leader(c) {
                for &x in &all {
                    if x != l {
                        c.net.cut_link(x, l);
                    }
                }
            }
        }
        _ => {}
    }
    false
}

/// Asks for `change` under [`faults`] (cutting the leader off right after, if drawn).
fn request_under_faults(c: &mut Cluster, change: MembershipChange) -> Result<(), String> {
    let cut_leader = faults(c);
    let before = leader(c);
    if !request(c, change.clone(), 2_000) {
        return Err(format!("{change:?} was not accepted within 2 s"));
    }
    if let (true, Some(l)) = (cut_leader, before) {
        let ms = c.rng.below(20);
        c.run_for(ms);
        c.disconnect(l);
    }
    Ok(())
}

/// Tries to move the voters to `target` (one change, or a learner added then promoted, or a
/// joint replacement); succeeds once the leader's settled configuration has exactly those
/// voters. An error says why the move did not take effect.
fn move_to(c: &mut Cluster, p: &mut Probes, target: &BTreeSet<u64>) -> Result<(), String> {
    if !wait_settled(c, 5_000) {
        return Err("the configuration did not settle before the move".into());
    }
    let cur = voters_now(c).ok_or("no leader before the move")?;
    if &cur == target {
        return Ok(());
    }
    let added: Vec<u64> = target.difference(&cur).copied().collect();
    let removed: Vec<u64> = cur.difference(target).copied().collect();
    for &x in &added {
        if !c.alive(x) {
            c.start(x);
        }
    }
    match (added.as_slice(), removed.as_slice()) {
        (&[x], &[]) => {
            if !is_learner(c, x) {
                if !request(c, MembershipChange::AddLearner(nid(x)), 2_000) {
                    return Err(format!("learner {x} was not accepted within 2 s"));
                }
                if !wait_settled(c, 5_000) {
                    return Err(format!("learner {x} was not committed within 5 s"));
                }
            }
            request_under_faults(c, MembershipChange::PromoteLearner(nid(x)))?;
        }
        (&[], &[x]) => {
            let l = leader(c).ok_or("no leader")?;
            if x == l && cur.len() == 2 && c.rng.chance(600) {
                let other = *target.iter().next().expect("one voter left");
                if !shapes::remove_self_cut_off(c, p, l, other) {
                    return Err(format!("leader {l} refused to remove itself"));
                }
            } else {
                request_under_faults(c, MembershipChange::Remove(nid(x)))?;
            }
        }
        _ => request_under_faults(
            c,
            MembershipChange::Replace {
                voters: target.iter().map(|&i| nid(i)).collect(),
                learners: BTreeSet::new(),
            },
        )?,
    }
    let ms = 300 + c.rng.below(1_200);
    c.run_for(ms);
    c.net.heal();
    c.net.clear_link_loss();
    start_all(c);
    if !wait_settled(c, 10_000) {
        return Err("the configuration did not settle within 10 s after healing".into());
    }
    match voters_now(c) {
        Some(v) if &v == target => Ok(()),
        v => Err(format!("voters are {v:?} after the move, not {target:?}")),
    }
}

/// The lap of moves from `voters` (three of them, `{d,a,b}`, spares `{x,y,z}`): down to two
/// and one voter, hand the sole vote to a new machine, back to three, then 3 -> 5 -> 3 onto
/// the three machines outside the configuration:
///
/// ```text
/// {d,a,b} -> {a,b} -> {a} -> {a,x} -> {x} -> {x,y} -> {x,y,d} -> {x,y,a,b,z} -> {a,b,z}
/// ```
fn plan(c: &mut Cluster, voters: &BTreeSet<u64>) -> Vec<BTreeSet<u64>> {
    let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
    let mut v: Vec<u64> = voters.iter().copied().collect();
    // Remove the leader first in half the seeds' steps, another voter otherwise.
    let l = leader(c).unwrap_or(v[0]);
    if c.rng.chance(500) {
        if let Some(k) = v.iter().position(|&x| x == l) {
            v.swap(0, k);
        }
    }
    let spare: Vec<u64> = (1..=MACHINES).filter(|x| !voters.contains(x)).collect();
    let (a, b, d) = (v[1], v[2], v[0]);
    let (x, y, z) = (spare[0], spare[1], spare[2]);
    vec![
        set(&[a, b]),
        set(&[a]),
        set(&[a, x]),
        set(&[x]),
        set(&[x, y]),
        set(&[x, y, d]),
        set(&[x, y, a, b, z]),
        set(&[a, b, z]),
    ]
}

/// `MembershipShrink`: laps of `plan` (the moves above) under faults with KV clients; each move is retried
/// (healed) when it fails and counted when it takes effect. Fails if fewer than half the moves
/// took effect (a scenario that does nothing must not pass).
pub fn membership_shrink(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(3, seed % 4 == 3);
    cfg.lease_reads = seed % 3 == 1;
    let mut c = Cluster::new(seed, "MembershipShrink", cfg);
    for _ in 3..MACHINES {
        c.add_host();
    }
    let cls = kv_clients(&mut c, 3);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    let mut probes = Probes::new(&mut c);
    if wait_leader(&mut c, 5_000).is_none() {
        c.fail("MembershipShrink: no leader within 5 s");
    }
    let (mut tried, mut done) = (0, 0);
    for _lap in 0..LAPS {
        wait_settled(&mut c, 10_000);
        let Some(voters) = voters_now(&c).filter(|v| v.len() == 3) else {
            continue;
        };
        for target in plan(&mut c, &voters) {
            tried += 1;
            for attempt in 0..ATTEMPTS_MAX {
                if attempt > 0 {
                    c.net.heal();
                    c.net.clear_link_loss();
                    start_all(&mut c);
                }
                let r = move_to(&mut c, &mut probes, &target);
                match r {
                    Ok(()) => {
                        done += 1;
                        break;
                    }
                    Err(why) if c.verbose => {
                        eprintln!("{:>7} move to {target:?} failed: {why}", c.now_ms());
                    }
                    Err(_) => {}
                }
            }
        }
    }
    c.context = format!("MembershipShrink: {done} of {tried} moves took effect");
    if 2 * done < tried || done == 0 {
        c.fail(&format!(
            "only {done} of {tried} moves took effect (each tried {ATTEMPTS_MAX} times)"
        ));
    }
    c.net.heal();
    start_all(&mut c);
    wait_settled(&mut c, 20_000);
    finish(&mut c, &cls, "MembershipShrink");
    c
}
