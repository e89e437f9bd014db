//! Lease reads with leader transfers, aborted transfers and restarts (issue 12): the lease
//! (`ReadOnlyOption::LeaseBased` with CheckQuorum) is only sound while no election can outrun
//! it, and a transfer's TimeoutNow and a restarted voter are two ways an election can.

use super::membership::{finish, kv_clients, leader, start_all, wait_leader};
use super::shapes::{self, Probes};
use crate::cluster::{Cluster, ClusterConfig};
use crate::net::NetConfig;

/// Rounds of one shape or fault each.
const ROUNDS: usize = 10;

/// Kinds of round (see [`kv_lease_transfers`]).
const KINDS: usize = 6;
const _: () = assert!(KINDS <= ROUNDS, "every kind runs at least once");

/// `KvLeaseTransfers`: three or five voters with lease reads and three KV clients; each round
/// picks a transfer to a random voter whose old leader is then deafened, a transfer that
/// aborts because TimeoutNow is slowed past the abort, a follower restarted right after each
/// acknowledgement while other voters are cut from the leader, a plain transfer under load, a
/// transfer to a crashed or cut-off target (aborts), or a random partition. Half the seeds run
/// on a network with 0-10 ms delays and 2% loss. Fails if no transfer ever took effect.
pub fn kv_lease_transfers(seed: u64) -> Cluster {
    let n = if seed % 2 == 0 { 3 } else { 5 };
    let mut cfg = ClusterConfig::lab(n, false);
    cfg.lease_reads = true;
    cfg.check_quorum = true;
    if seed % 4 >= 2 {
        cfg.net = NetConfig {
            delay_ms_min: 0,
            delay_ms_max: 10,
            request_loss_per_mille: 20,
            reply_loss_per_mille: 20,
            ..NetConfig::reliable()
        };
    }
    let mut c = Cluster::new(seed, "KvLeaseTransfers", cfg);
    let cls = kv_clients(&mut c, 3);
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    let mut probes = Probes::new(&mut c);
    let mut transfers = 0;
    let mut order: Vec<usize> = (0..KINDS).collect();
    for i in (1..KINDS).rev() {
        order.swap(i, c.rng.below(i as u64 + 1) as usize);
    }
    for round in 0..ROUNDS {
        c.net.heal();
        c.net.clear_kind_delay();
        start_all(&mut c);
        if wait_leader(&mut c, 5_000).is_none() {
            c.fail(&format!("round {round}: no leader within 5 s of healing"));
        }
        let ms = c.rng.below(300);
        c.run_for(ms);
        let Some(l) = leader(&c) else {
            continue;
        };
        let others: Vec<u64> = c.ids().into_iter().filter(|&x| x != l).collect();
        let to = c.rng.pick(&others);
        let term = c.status(l).expect("leader runs").term;
        // Every kind once in the first rounds (in a seed-drawn order), then random kinds.
        let kind = match order.get(round) {
            Some(&k) => k,
            None => c.rng.below(KINDS as u64) as usize,
        };
        match kind {
            0 => {
                shapes::quiesce(&mut c, &cls);
                if leader(&c) == Some(l) {
                    shapes::transfer_then_deafen(&mut c, &mut probes, l, to);
                }
                shapes::unquiesce(&mut c, &cls);
            }
            1 => {
                shapes::quiesce(&mut c, &cls);
                let election_ms = c.config().election_ticks * crate::TICK_MS;
                let slow_ms = election_ms + 50 + c.rng.below(election_ms);
                if leader(&c) == Some(l) {
                    shapes::late_timeout_now(&mut c, &mut probes, l, to, slow_ms);
                }
                shapes::unquiesce(&mut c, &cls);
            }
            2 => {
                shapes::quiesce(&mut c, &cls);
                // A minority that can win with one more vote: the restarted follower's.
                let mut rest: Vec<u64> = others.iter().copied().filter(|&x| x != to).collect();
                rest.truncate((n - 1) / 2);
                if leader(&c) == Some(l) {
                    shapes::restart_after_ack(&mut c, &mut probes, l, &rest, to);
                }
                shapes::unquiesce(&mut c, &cls);
            }
            3 => {
                let _ = c.transfer_leader(l, to);
                let ms = 200 + c.rng.below(1_000);
                c.run_for(ms);
            }
            4 => {
                if c.rng.chance(500) {
                    c.crash(to);
                } else {
                    c.disconnect(to);
                }
                let _ = c.transfer_leader(l, to);
                let ms = 600 + c.rng.below(600);
                c.run_for(ms);
            }
            _ => {
                let mut groups = vec![Vec::new(), Vec::new()];
                for i in c.ids() {
                    groups[c.rng.below(2) as usize].push(i);
                }
                c.net.partition(&groups);
                let ms = 300 + c.rng.below(1_200);
                c.run_for(ms);
            }
        }
        if c.status(to)
            .is_some_and(|s| s.role == raft::Role::Leader && s.term > term)
        {
            transfers += 1;
        }
    }
    c.net.clear_kind_delay();
    c.context = format!(
        "KvLeaseTransfers: {transfers} rounds ended with the target leading, {} probes",
        probes.count()
    );
    if transfers == 0 {
        c.fail("no round ended with the transfer target leading");
    }
    finish(&mut c, &cls, "KvLeaseTransfers");
    c
}
