//! The 6.5840 3D (log compaction) tests, ported with their structure and constants: the
//! service snapshots every `SnapShotInterval` = 10 applied entries, and the persisted Raft state
//! (hard state and log, not the snapshot) must stay under `MAXLOGSIZE` = 2000 bytes. Snapshots
//! travel in small chunks (512 bytes, 4 in flight) so that transfers span several messages and
//! exercise resume and abandonment; 6.5840 sends them whole.

use super::lab::{check_one_leader, cmd, crash1, lab, one, plus, rand_value, start1};
use crate::cluster::Cluster;

/// 6.5840's `SnapShotInterval`.
pub const SNAPSHOT_INTERVAL: u64 = 10;
/// 6.5840's `MAXLOGSIZE`, bytes of persisted Raft state.
pub const MAX_LOG_SIZE: u64 = 2000;
/// Chunk size the 3D ports use.
pub const CHUNK_BYTES: u64 = 512;

/// A 6.5840 3D cluster: snapshots every 10 entries, small chunks.
pub fn snap_cluster(seed: u64, name: &str, servers: usize, unreliable: bool) -> Cluster {
    let mut c = lab(seed, name, servers, unreliable);
    // `lab` built the nodes already; rebuild with the snapshot settings.
    let mut cfg = c.config().clone();
    cfg.snapshot_every = Some(SNAPSHOT_INTERVAL);
    cfg.snapshot_chunk_bytes = CHUNK_BYTES;
    cfg.snapshot_chunks_inflight_max = 4;
    c = Cluster::new(seed, name, cfg);
    c
}

fn check_log_size(c: &Cluster) {
    let size = c.raft_state_bytes_max();
    if size >= MAX_LOG_SIZE {
        c.fail(&format!(
            "Log size too large: {size} bytes of persisted Raft state (limit {MAX_LOG_SIZE})"
        ));
    }
}

/// `snapcommon`: 30 iterations; each optionally disconnects or crashes a victim (the leader
/// every third time), sends 5..15 commands to a sender (possibly a follower, which refuses),
/// checks the log stays small, then brings the victim back, which may need a snapshot.
fn snapcommon(seed: u64, name: &str, disconnect: bool, reliable: bool, crash: bool) -> Cluster {
    let iters = 30;
    let servers = 3;
    let mut c = snap_cluster(seed, name, servers, !reliable);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    let mut leader1 = check_one_leader(&mut c);
    for i in 0..iters {
        let mut victim = plus(&c, leader1, 1);
        let mut sender = leader1;
        if i % 3 == 1 {
            sender = plus(&c, leader1, 1);
            victim = leader1;
        }
        if disconnect {
            c.disconnect(victim);
            let v = rand_value(&mut c);
            one(&mut c, cmd(v), servers - 1, true);
        }
        if crash {
            crash1(&mut c, victim);
            let v = rand_value(&mut c);
            one(&mut c, cmd(v), servers - 1, true);
        }
        let nn = SNAPSHOT_INTERVAL / 2 + c.rng.below(SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            let v = rand_value(&mut c);
            c.propose(sender, cmd(v));
        }
        let v = rand_value(&mut c);
        if !disconnect && !crash {
            // All followers caught up: no InstallSnapshot needed in SnapshotBasic.
            one(&mut c, cmd(v), servers, true);
        } else {
            one(&mut c, cmd(v), servers - 1, true);
        }
        check_log_size(&c);
        if disconnect {
            c.connect(victim);
            let v = rand_value(&mut c);
            one(&mut c, cmd(v), servers, true);
            leader1 = check_one_leader(&mut c);
        }
        if crash {
            start1(&mut c, victim);
            c.connect(victim);
            let v = rand_value(&mut c);
            one(&mut c, cmd(v), servers, true);
            leader1 = check_one_leader(&mut c);
        }
    }
    check_log_size(&c);
    if c.snapshots_taken == 0 {
        c.fail("no snapshot was taken");
    }
    c
}

/// TestSnapshotBasic3D.
pub fn snapshot_basic(seed: u64) -> Cluster {
    let c = snapcommon(seed, "SnapshotBasic", false, true, false);
    if c.snapshots_installed > 0 {
        c.fail("SnapshotBasic needed an InstallSnapshot although every follower kept up");
    }
    c
}

/// TestSnapshotInstall3D.
pub fn snapshot_install(seed: u64) -> Cluster {
    snapcommon(seed, "SnapshotInstall", true, true, false)
}

/// TestSnapshotInstallUnreliable3D.
pub fn snapshot_install_unreliable(seed: u64) -> Cluster {
    snapcommon(seed, "SnapshotInstallUnreliable", true, false, false)
}

/// TestSnapshotInstallCrash3D.
pub fn snapshot_install_crash(seed: u64) -> Cluster {
    snapcommon(seed, "SnapshotInstallCrash", false, true, true)
}

/// TestSnapshotInstallUnCrash3D.
pub fn snapshot_install_uncrash(seed: u64) -> Cluster {
    snapcommon(seed, "SnapshotInstallUnCrash", false, false, true)
}

fn crash_all_and_revive(c: &mut Cluster) {
    for i in c.ids() {
        crash1(c, i);
    }
    for i in c.ids() {
        start1(c, i);
        c.connect(i);
    }
}

/// TestSnapshotAllCrash3D: whole-cluster crashes; the index keeps increasing.
pub fn snapshot_all_crash(seed: u64) -> Cluster {
    let servers = 3;
    let iters = 5;
    let mut c = snap_cluster(seed, "SnapshotAllCrash", servers, false);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    for _ in 0..iters {
        let nn = SNAPSHOT_INTERVAL / 2 + c.rng.below(SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            let v = rand_value(&mut c);
            one(&mut c, cmd(v), servers, true);
        }
        let v = rand_value(&mut c);
        let index1 = one(&mut c, cmd(v), servers, true);
        crash_all_and_revive(&mut c);
        let v = rand_value(&mut c);
        let index2 = one(&mut c, cmd(v), servers, true);
        if index2 < index1 + 1 {
            c.fail(&format!("index decreased from {index1} to {index2}"));
        }
        check_log_size(&c);
    }
    c
}

/// TestSnapshotInit3D: restart from a snapshot, write once, restart again.
pub fn snapshot_init(seed: u64) -> Cluster {
    let servers = 3;
    let mut c = snap_cluster(seed, "SnapshotInit", servers, false);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    for _ in 0..SNAPSHOT_INTERVAL + 1 {
        let v = rand_value(&mut c);
        one(&mut c, cmd(v), servers, true);
    }
    crash_all_and_revive(&mut c);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    crash_all_and_revive(&mut c);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    if (1..=servers as u64).all(|n| c.snapshot_index(n) == 0) {
        c.fail("no node restarted from a snapshot");
    }
    c
}

/// Issue 4's catch-up: a follower 5,000 entries behind (a ~100 KB snapshot in 1 KiB chunks, 4 in
/// flight) catches up by snapshot while 20% of the leader's messages to it are lost, and the
/// leader crashes in the middle of the transfer; the new leader resumes the transfer. The
/// figures are in `tests/snapshots.rs`.
pub fn snapshot_catch_up_far(seed: u64) -> Cluster {
    let mut cfg = crate::cluster::ClusterConfig::lab(3, false);
    cfg.snapshot_every = Some(1000);
    cfg.snapshot_chunk_bytes = 1024;
    cfg.snapshot_chunks_inflight_max = 4;
    let mut c = Cluster::new(seed, "SnapshotCatchUpFar", cfg);
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), 3, true);
    let leader = check_one_leader(&mut c);
    let lagger = plus(&c, leader, 1);
    crash1(&mut c, lagger);
    let mut last = 0;
    for _ in 0..50 {
        for _ in 0..100 {
            let v = rand_value(&mut c);
            if let Some(id) = c.propose(leader, cmd(v)) {
                last = id.index.0;
            }
        }
        c.run_for(50);
    }
    let v = rand_value(&mut c);
    last = last.max(one(&mut c, cmd(v), 2, true));
    for i in c.ids() {
        if i != lagger {
            c.net.set_link_loss(i, lagger, 200);
        }
    }
    start1(&mut c, lagger);
    c.connect(lagger);
    // Crash the leader once the lagger has staged part of the snapshot.
    let t0 = c.now_ms();
    let mut crashed = None;
    while c.now_ms() - t0 < 30_000 {
        c.run_for(10);
        if crashed.is_none() && c.staged_bytes(lagger) > 0 {
            let l = (1..=3).find(|&i| c.status(i).is_some_and(|s| s.role == raft::Role::Leader));
            if let Some(l) = l {
                crash1(&mut c, l);
                crashed = Some((l, c.now_ms()));
            }
        }
        if let Some((l, at)) = crashed {
            if c.now_ms() - at > 1_000 && !c.alive(l) {
                start1(&mut c, l);
                c.connect(l);
            }
        }
        if c.applied_index(lagger).0 >= last {
            break;
        }
    }
    if c.applied_index(lagger).0 < last {
        c.fail(&format!(
            "node {lagger} did not catch up to {last} within 30 s (applied {})",
            c.applied_index(lagger)
        ));
    }
    if c.snapshots_installed == 0 {
        c.fail("the lagger caught up without a snapshot");
    }
    c.net.clear_link_loss();
    for i in c.ids() {
        if !c.alive(i) {
            start1(&mut c, i);
        }
        c.connect(i);
    }
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), 3, true);
    c
}
