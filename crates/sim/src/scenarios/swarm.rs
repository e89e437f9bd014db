//! Swarm testing (Groce et al., "Swarm Testing", ISSTA 2012; TigerBeetle's VOPR): the seed picks
//! the cluster size, the network and disk behaviour and the fault mix, so that different seeds
//! stress different combinations. A safety phase runs KV clients under faults; a liveness phase
//! then heals a majority and requires a leader and a commit within a bounded time.

use std::collections::BTreeMap;

use super::kv_tests::check_linearizable;
use super::lab::{cmd, n_committed};
use crate::cluster::{Cluster, ClusterConfig, DiskConfig, TICK_MS};
use crate::net::NetConfig;
use crate::rng::Rng;

/// Every parameter the seed chose; printed with every failure.
#[derive(Clone, Debug)]
pub struct SwarmParams {
    /// Servers.
    pub nodes: usize,
    /// Network.
    pub net: NetConfig,
    /// Disk.
    pub disk: DiskConfig,
    /// Mean ms between fault actions.
    pub fault_interval_ms: u64,
    /// Relative weights of fault kinds: crash, partition, one-way cut, isolate, pause, link
    /// loss, heal.
    pub weights: [u64; 7],
    /// KV clients.
    pub clients: usize,
    /// Length of the safety phase, ms.
    pub safety_ms: u64,
    /// Core PreVote.
    pub pre_vote: bool,
    /// Core CheckQuorum.
    pub check_quorum: bool,
    /// Core entry bytes per append (100: one KV command per append).
    pub msg_bytes_max: u64,
    /// Core appends in flight per follower.
    pub inflight_msgs_max: usize,
    /// Lease reads instead of ReadIndex. Only drawn when the lease's clock assumption holds:
    /// CheckQuorum on and no pauses (a paused leader's clock stops, which the lease forbids).
    pub lease_reads: bool,
}

impl SwarmParams {
    /// Draws the parameters from the seed.
    pub fn from_seed(seed: u64) -> SwarmParams {
        let mut r = Rng::new(seed ^ 0x5157_A12D);
        let delay_ms_max = r.pick(&[2, 10, 30, 100]);
        let net = NetConfig {
            delay_ms_min: r.below(delay_ms_max / 2 + 1),
            delay_ms_max,
            request_loss_per_mille: r.pick(&[0, 0, 20, 100, 200]),
            reply_loss_per_mille: r.pick(&[0, 0, 20, 100, 200]),
            duplicate_per_mille: r.pick(&[0, 0, 20, 100]),
            long_reordering: r.chance(100),
        };
        let sync_ms_max = r.pick(&[0, 5, 20, 60]);
        let disk = DiskConfig {
            sync_ms_min: if sync_ms_max > 0 {
                r.below(sync_ms_max)
            } else {
                0
            },
            sync_ms_max,
            unsynced_survives_per_mille: r.pick(&[0, 0, 500]),
        };
        let mut weights = [0u64; 7];
        for w in weights.iter_mut() {
            *w = r.pick(&[0, 1, 3]);
        }
        // Crashes are the point of the disk model: always some.
        weights[0] = weights[0].max(1);
        weights[6] = weights[6].max(1);
        let check_quorum = r.chance(700);
        let lease_reads = check_quorum && weights[4] == 0 && r.chance(300);
        SwarmParams {
            nodes: r.pick(&[3, 3, 5, 5, 7]),
            net,
            disk,
            fault_interval_ms: r.pick(&[100, 300, 1000]),
            weights,
            clients: r.range(1, 4) as usize,
            safety_ms: 8_000,
            pre_vote: r.chance(700),
            check_quorum,
            lease_reads,
            msg_bytes_max: r.pick(&[1024 * 1024, 1024 * 1024, 100]),
            inflight_msgs_max: r.pick(&[256, 256, 1, 4]) as usize,
        }
    }
}

/// The swarm scenario.
pub fn swarm(seed: u64) -> Cluster {
    let p = SwarmParams::from_seed(seed);
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!("swarm seed {seed}: {p:?}");
    }
    let mut cfg = ClusterConfig::lab(p.nodes, false);
    cfg.net = p.net.clone();
    cfg.disk = p.disk.clone();
    cfg.pre_vote = p.pre_vote;
    cfg.check_quorum = p.check_quorum;
    cfg.msg_bytes_max = p.msg_bytes_max;
    cfg.inflight_msgs_max = p.inflight_msgs_max;
    cfg.lease_reads = p.lease_reads;
    let mut c = Cluster::new(seed, "Swarm", cfg);
    c.context = format!("swarm parameters: {p:?}");
    let all = c.ids();
    let cls: Vec<usize> = (0..p.clients).map(|_| c.add_client(all.clone())).collect();
    for &ci in &cls {
        c.set_client_active(ci, true);
    }
    // Safety phase.
    let mut restart_at: BTreeMap<u64, u64> = BTreeMap::new();
    let mut resume_at: BTreeMap<u64, u64> = BTreeMap::new();
    let total: u64 = p.weights.iter().sum();
    let end = c.now_ms() + p.safety_ms;
    while c.now_ms() < end {
        let ms = 1 + c.rng.below(2 * p.fault_interval_ms);
        c.run_for(ms);
        let now = c.now_ms();
        for (&node, &at) in restart_at.clone().iter() {
            if at <= now {
                c.start(node);
                restart_at.remove(&node);
            }
        }
        for (&node, &at) in resume_at.clone().iter() {
            if at <= now {
                c.resume(node);
                resume_at.remove(&node);
            }
        }
        let mut pick = c.rng.below(total);
        let mut kind = 0;
        while pick >= p.weights[kind] {
            pick -= p.weights[kind];
            kind += 1;
        }
        let n = p.nodes as u64;
        let node = c.rng.below(n) + 1;
        match kind {
            0 => {
                // Half the time, crash a node in the window between a write and its sync.
                let node = match c
                    .ids()
                    .into_iter()
                    .filter(|&i| c.has_pending(i))
                    .collect::<Vec<_>>()
                {
                    mid_sync if !mid_sync.is_empty() && c.rng.chance(500) => c.rng.pick(&mid_sync),
                    _ => node,
                };
                if c.alive(node) {
                    c.crash(node);
                    let down = 50 + c.rng.below(3_000);
                    restart_at.insert(node, now + down);
                }
            }
            1 => {
                let mut groups = vec![Vec::new(), Vec::new()];
                for i in c.ids() {
                    groups[c.rng.below(2) as usize].push(i);
                }
                c.net.partition(&groups);
            }
            2 => {
                let to = c.rng.below(n) + 1;
                if to != node {
                    c.net.cut_link(node, to);
                }
            }
            3 => c.disconnect(node),
            4 => {
                if c.alive(node) && !c.paused(node) {
                    c.pause(node);
                    let ms = 10 + c.rng.below(20 * TICK_MS * 10);
                    resume_at.insert(node, now + ms);
                }
            }
            5 => {
                let to = c.rng.below(n) + 1;
                if to != node {
                    let loss = c.rng.pick(&[300, 700, 1000]);
                    c.net.set_link_loss(node, to, loss);
                }
            }
            _ => {
                c.net.heal();
                c.net.clear_link_loss();
            }
        }
    }
    // Liveness phase: heal a majority; the rest stay away.
    let majority = p.nodes / 2 + 1;
    let mut order = c.ids();
    for i in (1..order.len()).rev() {
        let j = c.rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let (core, rest) = order.split_at(majority);
    c.net.heal();
    c.net.clear_link_loss();
    // Raft's timing requirement (§5.6: broadcast time << election timeout) is restored too;
    // liveness is only promised under it.
    c.net.config = NetConfig {
        delay_ms_min: 1,
        delay_ms_max: c.net.config.delay_ms_max.min(10),
        request_loss_per_mille: 0,
        reply_loss_per_mille: 0,
        duplicate_per_mille: 0,
        long_reordering: false,
    };
    c.disk.sync_ms_max = c.disk.sync_ms_max.min(5);
    c.disk.sync_ms_min = c.disk.sync_ms_min.min(c.disk.sync_ms_max);
    for &i in core {
        if !c.alive(i) {
            c.start(i);
        }
        c.resume(i);
    }
    for &i in rest {
        c.disconnect(i);
    }
    let core: Vec<u64> = core.to_vec();
    // Bounded: a leader and a commit on every healed node within 10 s (1000 ticks).
    let marker = cmd(c.rng.next_u64() >> 2);
    let t0 = c.now_ms();
    let mut index = None;
    loop {
        if c.now_ms() - t0 > 10_000 {
            c.fail(&format!(
                "liveness: healed majority {core:?} did not elect a leader and commit within 10 s"
            ));
        }
        if index.is_none() {
            for &i in &core {
                if let Some(id) = c.propose(i, marker.clone()) {
                    index = Some(id.index.0);
                }
            }
        }
        if let Some(ix) = index {
            let on_core = core
                .iter()
                .filter(|&&i| c.applied_at(i, ix) == Some(&marker))
                .count();
            if on_core == core.len() {
                break;
            }
            let (nd, got) = n_committed(&c, ix);
            if nd > 0 && got.as_ref() != Some(&marker) {
                index = None;
            }
        }
        c.run_for(20);
    }
    for &ci in &cls {
        c.set_client_servers(ci, core.clone());
        c.set_client_active(ci, false);
    }
    c.run_for(crate::client::GIVE_UP_MS + 500);
    c.final_checks();
    check_linearizable(&c);
    c
}
