//! KV scenarios in the spirit of 6.5840's kvraft tests: concurrent clients under partitions,
//! crashes of every server, and a minority partition that must make no progress and catch up
//! after healing. Every run ends with a linearizability check of the clients' history.

use super::lab::{check_one_leader, ELECTION_TIMEOUT_MS};
use crate::cluster::{Cluster, ClusterConfig};
use crate::kv::KvOp;
use crate::linearizability::{check, Verdict};
use crate::property::Property;

/// Checks the history. A violation fails the run; so does a search that hit its bound, which
/// proves nothing and must not pass (it fails as `linearizability_inconclusive`, which no
/// mutation hunt counts as a catch).
pub fn check_linearizable(c: &Cluster) {
    match check(&c.history) {
        Verdict::Ok => {}
        Verdict::Violation(s) => c.fail_as(Property::Linearizability, &format!("violated: {s}")),
        Verdict::Inconclusive(s) => c.fail_as(
            Property::LinearizabilityInconclusive,
            &format!("the search hit its bound, nothing is proven: {s}"),
        ),
    }
}

fn clients(c: &mut Cluster, n: usize) -> Vec<usize> {
    let all = c.ids();
    (0..n).map(|_| c.add_client(all.clone())).collect()
}

/// Stops the clients, lets outstanding operations finish or give up, checks the history.
fn finish(c: &mut Cluster, cls: &[usize]) {
    for &ci in cls {
        c.set_client_active(ci, false);
    }
    c.run_for(crate::client::GIVE_UP_MS + 500);
    c.final_checks();
    check_linearizable(c);
}

/// Random partitions about every second while five clients run; then heal and require
/// progress.
pub fn kv_concurrent_partitions(seed: u64) -> Cluster {
    concurrent_partitions(Cluster::new(
        seed,
        "KvConcurrentPartitions",
        ClusterConfig::lab(5, false),
    ))
}

/// [`kv_concurrent_partitions`] with lease reads (`ReadOnlyOption::LeaseBased`): no pauses and
/// equal tick rates, so the lease's clock assumption holds.
pub fn kv_lease_partitions(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(5, false);
    cfg.lease_reads = true;
    concurrent_partitions(Cluster::new(seed, "KvLeasePartitions", cfg))
}

fn concurrent_partitions(mut c: Cluster) -> Cluster {
    let cls = clients(&mut c, 5);
    check_one_leader(&mut c);
    for round in 0..3 {
        for &ci in &cls {
            c.set_client_active(ci, true);
        }
        let t0 = c.now_ms();
        while c.now_ms() - t0 < 5_000 {
            let mut groups = vec![Vec::new(), Vec::new()];
            for i in c.ids() {
                groups[c.rng.below(2) as usize].push(i);
            }
            c.net.partition(&groups);
            let ms = ELECTION_TIMEOUT_MS + c.rng.below(200);
            c.run_for(ms);
        }
        c.net.heal();
        let before: Vec<u64> = cls.iter().map(|&ci| c.client_completed(ci)).collect();
        c.run_for(4_000);
        for (k, &ci) in cls.iter().enumerate() {
            if c.client_completed(ci) == before[k] {
                c.fail(&format!(
                    "round {round}: client {ci} made no progress within 4 s after healing"
                ));
            }
        }
    }
    finish(&mut c, &cls);
    c
}

/// Every server crashes and restarts between rounds of client traffic (6.5840
/// TestPersistConcurrent).
pub fn kv_crash_all(seed: u64) -> Cluster {
    crash_all(Cluster::new(
        seed,
        "KvCrashAll",
        ClusterConfig::lab(5, false),
    ))
}

/// The KV configuration with snapshots on: every 10 entries, 64-byte chunks (a KV snapshot
/// is a few hundred bytes, so transfers take several chunks), 2 in flight.
fn with_snapshots(mut cfg: ClusterConfig) -> ClusterConfig {
    cfg.snapshot_every = Some(10);
    cfg.snapshot_chunk_bytes = 64;
    cfg.snapshot_chunks_inflight_max = 2;
    cfg
}

/// [`kv_concurrent_partitions`] with snapshots on: partitioned nodes catch up by snapshot.
pub fn kv_snapshot_partitions(seed: u64) -> Cluster {
    let cfg = with_snapshots(ClusterConfig::lab(5, false));
    let c = concurrent_partitions(Cluster::new(seed, "KvSnapshotPartitions", cfg));
    if c.snapshots_taken == 0 {
        c.fail("no snapshot was taken");
    }
    c
}

/// [`kv_crash_all`] with snapshots on and slow syncs: restarts go through snapshots, staged
/// chunks and resumed transfers.
pub fn kv_snapshot_crash_all(seed: u64) -> Cluster {
    let mut cfg = with_snapshots(ClusterConfig::lab(5, seed % 2 == 1));
    cfg.disk = crate::cluster::DiskConfig {
        sync_ms_min: 0,
        sync_ms_max: 20,
        unsynced_survives_per_mille: 300,
    };
    crash_all(Cluster::new(seed, "KvSnapshotCrashAll", cfg))
}

fn crash_all(mut c: Cluster) -> Cluster {
    let cls = clients(&mut c, 5);
    for _ in 0..3 {
        for &ci in &cls {
            c.set_client_active(ci, true);
        }
        c.run_for(3_000);
        for i in c.ids() {
            c.crash(i);
        }
        c.run_for(ELECTION_TIMEOUT_MS);
        for i in c.ids() {
            c.start(i);
        }
    }
    c.run_for(3_000);
    let total: u64 = cls.iter().map(|&ci| c.client_completed(ci)).sum();
    if total == 0 {
        c.fail("no client operation completed");
    }
    finish(&mut c, &cls);
    c
}

/// Runs one operation on a client to completion or until `timeout_ms`; returns the history
/// entry's output (`Some(None)` for a completed write) or `None` if it did not complete.
pub(crate) fn kv_do(
    c: &mut Cluster,
    ci: usize,
    key: &str,
    op: KvOp,
    timeout_ms: u64,
) -> Option<Option<String>> {
    let n = c.history.ops.len();
    c.client_queue(ci, key, op);
    let t0 = c.now_ms();
    while c.client_busy(ci) && c.now_ms() - t0 < timeout_ms {
        c.run_for(10);
    }
    let op = c.history.ops[n..]
        .iter()
        .find(|o| o.client == ci as u64 + 1)?;
    op.ret.map(|_| op.output.clone())
}

fn check_get(c: &mut Cluster, ci: usize, key: &str, want: &str) {
    match kv_do(c, ci, key, KvOp::Get, 10_000) {
        Some(Some(v)) if v == want => {}
        other => c.fail(&format!("Get({key:?}) gave {other:?}, expected {want:?}")),
    }
}

/// 6.5840 TestOnePartition: the minority makes no progress; after healing, its pending
/// operations complete within 3 s.
pub fn kv_one_partition(seed: u64) -> Cluster {
    let mut c = Cluster::new(seed, "KvOnePartition", ClusterConfig::lab(5, false));
    let all = c.ids();
    let ck = c.add_client(all.clone());
    c.set_client_give_up(ck, u64::MAX / 4);
    if kv_do(&mut c, ck, "1", KvOp::Put("13".into()), 10_000).is_none() {
        c.fail("Put did not complete on a healthy cluster");
    }
    let leader = check_one_leader(&mut c);
    let mut p1 = vec![leader];
    let mut p2 = Vec::new();
    for i in all.iter().copied().filter(|&i| i != leader) {
        if p1.len() < 3 {
            p1.push(i);
        } else {
            p2.push(i);
        }
    }
    c.net.partition(&[p1.clone(), p2.clone()]);
    let ckp1 = c.add_client(p1.clone());
    let ckp2a = c.add_client(p2.clone());
    let ckp2b = c.add_client(p2.clone());
    for ci in [ckp1, ckp2a, ckp2b] {
        c.set_client_give_up(ci, u64::MAX / 4);
    }
    if kv_do(&mut c, ckp1, "1", KvOp::Put("14".into()), 10_000).is_none() {
        c.fail("Put in majority did not complete");
    }
    check_get(&mut c, ckp1, "1", "14");
    c.client_queue(ckp2a, "1", KvOp::Put("15".into()));
    c.client_queue(ckp2b, "1", KvOp::Get);
    c.run_for(ELECTION_TIMEOUT_MS);
    if c.client_completed(ckp2a) > 0 {
        c.fail("Put in minority completed");
    }
    if c.client_completed(ckp2b) > 0 {
        c.fail("Get in minority completed");
    }
    check_get(&mut c, ckp1, "1", "14");
    if kv_do(&mut c, ckp1, "1", KvOp::Put("16".into()), 10_000).is_none() {
        c.fail("Put in majority did not complete");
    }
    check_get(&mut c, ckp1, "1", "16");
    c.net.heal();
    c.set_client_servers(ckp2a, all.clone());
    c.set_client_servers(ckp2b, all.clone());
    c.run_for(ELECTION_TIMEOUT_MS);
    let t0 = c.now_ms();
    while (c.client_busy(ckp2a) || c.client_busy(ckp2b)) && c.now_ms() - t0 < 3_000 {
        c.run_for(10);
    }
    if c.client_busy(ckp2a) {
        c.fail("Put did not complete within 3 s of healing");
    }
    if c.client_busy(ckp2b) {
        c.fail("Get did not complete within 3 s of healing");
    }
    check_get(&mut c, ck, "1", "15");
    c.final_checks();
    check_linearizable(&c);
    c
}

/// A leader cut off with one follower must not serve reads that miss what the majority
/// committed after the cut (thesis §6.4). Three rounds: partition the leader away, complete a
/// write on the majority side, then read at the old leader.
pub fn kv_stale_leader(seed: u64) -> Cluster {
    stale_leader(Cluster::new(
        seed,
        "KvStaleLeader",
        ClusterConfig::lab(5, false),
    ))
}

/// [`kv_stale_leader`] with lease reads.
pub fn kv_stale_leader_lease(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(5, false);
    cfg.lease_reads = true;
    stale_leader(Cluster::new(seed, "KvStaleLeaderLease", cfg))
}

fn stale_leader(mut c: Cluster) -> Cluster {
    let all = c.ids();
    for round in 0..3 {
        let leader = check_one_leader(&mut c);
        let k = 1 + c.rng.below(4);
        let buddy = super::lab::plus(&c, leader, k);
        // Cut at a random point of the leader's CheckQuorum round.
        let ms = c.rng.below(3 * c.config().election_ticks * crate::TICK_MS);
        c.run_for(ms);
        if c.status(leader).map(|s| s.role) != Some(raft::Role::Leader) {
            continue;
        }
        let majority: Vec<u64> = all
            .iter()
            .copied()
            .filter(|&i| i != leader && i != buddy)
            .collect();
        c.net.partition(&[vec![leader, buddy], majority.clone()]);
        let writer = c.add_client(majority.clone());
        c.set_client_give_up(writer, u64::MAX / 4);
        let key = format!("r{round}");
        let value = format!("w{round};");
        if kv_do(&mut c, writer, &key, KvOp::Append(value), 10_000).is_none() {
            c.fail("the majority side did not complete a write within 10 s");
        }
        let reader = c.add_client(vec![leader]);
        c.set_client_give_up(reader, ELECTION_TIMEOUT_MS);
        kv_do(&mut c, reader, &key, KvOp::Get, 2 * ELECTION_TIMEOUT_MS);
        c.net.heal();
        c.run_for(ELECTION_TIMEOUT_MS);
    }
    c.final_checks();
    check_linearizable(&c);
    c
}
