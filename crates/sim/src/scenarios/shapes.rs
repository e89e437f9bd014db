//! Fault shapes that open a window for a stale read (issue 12), shared by the scenarios that
//! run them on purpose (`MembershipShrink`, `KvLeaseTransfers`) and by the swarm. Each shape
//! builds the history of one of `crates/raft/tests/stale_reads.rs` inside a running cluster:
//! a second leader commits a write while the old one still believes it leads. A probe then
//! writes on the new side and reads at the old leader; the safety argument lives in the core
//! (a read needs a quorum round, a lease that no election can outrun, or a sole voter), and
//! the property is judged by the linearizability check of the whole history, not here.

use std::collections::BTreeSet;

use raft::{MembershipChange, Role};

use super::kv_tests::kv_do;
use super::membership::nid;
use crate::cluster::Cluster;
use crate::kv::KvOp;

/// How long a probe read is retried at the old leader before it is recorded as unknown, ms:
/// shorter than CheckQuorum's step-down, so the read is asked while the old leader still leads.
const PROBE_READ_GIVE_UP_MS: u64 = 500;

/// How long a probe write is retried on the new side, ms.
const PROBE_WRITE_GIVE_UP_MS: u64 = 1_000;

/// Two clients kept for probes: a writer and a reader, pointed at servers per probe.
#[derive(Clone, Copy, Debug)]
pub struct Probes {
    /// Client index of the writer.
    writer: usize,
    /// Client index of the reader.
    reader: usize,
    /// Probes run so far; makes every probe's appended value unique.
    count: u64,
}

impl Probes {
    /// Adds the two probe clients (idle until a probe queues an operation).
    pub fn new(c: &mut Cluster) -> Probes {
        let all = c.ids();
        let writer = c.add_client(all.clone());
        let reader = c.add_client(all);
        c.set_client_give_up(writer, PROBE_WRITE_GIVE_UP_MS);
        c.set_client_give_up(reader, PROBE_READ_GIVE_UP_MS);
        Probes {
            writer,
            reader,
            count: 0,
        }
    }

    /// Probes run so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends a unique value to a random key through `writers`; once that write completed,
    /// reads the key at `reader` (the old leader). A read answered without the value is a
    /// stale read, which the final linearizability check reports.
    pub fn stale_read(&mut self, c: &mut Cluster, writers: Vec<u64>, reader: u64) {
        self.count += 1;
        let key = c.keys[c.rng.below(c.keys.len() as u64) as usize].clone();
        c.set_client_servers(self.writer, writers);
        c.set_client_servers(self.reader, vec![reader]);
        let value = format!("probe{};", self.count);
        let wrote = kv_do(
            c,
            self.writer,
            &key,
            KvOp::Append(value),
            PROBE_WRITE_GIVE_UP_MS + 100,
        );
        if wrote.is_some() {
            kv_do(c, self.reader, &key, KvOp::Get, PROBE_READ_GIVE_UP_MS + 100);
        }
    }
}

fn is_leader(c: &Cluster, node: u64) -> bool {
    c.status(node).is_some_and(|s| s.role == Role::Leader)
}

/// Stops the clients and waits until their operations completed or gave up and the followers
/// caught up, so that a shape starts with every voter's log as up to date as the leader's
/// (otherwise the election restriction, not the property under test, stops the new leader).
pub fn quiesce(c: &mut Cluster, clients: &[usize]) {
    for &ci in clients {
        c.set_client_active(ci, false);
    }
    let t0 = c.now_ms();
    while clients.iter().any(|&ci| c.client_busy(ci))
        && c.now_ms() - t0 < crate::client::GIVE_UP_MS + 500
    {
        c.run_for(10);
    }
    c.run_for(50);
}

/// Restarts the clients stopped by [`quiesce`].
pub fn unquiesce(c: &mut Cluster, clients: &[usize]) {
    for &ci in clients {
        c.set_client_active(ci, true);
    }
}

/// Cuts every link into `node` (it still sends: its heartbeats and TimeoutNow go out, but it
/// hears no new term and no acknowledgement).
fn deafen(c: &mut Cluster, node: u64) {
    for x in c.ids() {
        if x != node {
            c.net.cut_link(x, node);
        }
    }
}

/// Cuts every link into and out of `node`; unlike `Cluster::disconnect`, clients still reach
/// it (a server cut off from its peers but not from every client).
fn cut_off(c: &mut Cluster, node: u64) {
    deafen(c, node);
    for x in c.ids() {
        if x != node {
            c.net.cut_link(node, x);
        }
    }
}

/// Waits up to `ms` for `new` to lead while `old` still leads (in its older term); then probes.
/// Returns whether the window opened.
fn probe_when_two_leaders(
    c: &mut Cluster,
    p: &mut Probes,
    old: u64,
    new: &[u64],
    writers: Vec<u64>,
    ms: u64,
) -> bool {
    let t0 = c.now_ms();
    while c.now_ms() - t0 < ms {
        c.run_for(5);
        if !is_leader(c, old) {
            return false;
        }
        if new.iter().any(|&n| is_leader(c, n)) {
            p.stale_read(c, writers, old);
            return true;
        }
    }
    false
}

/// Hole 1 (`mut-read-skip-round-removing`): voters `{leader, other}`; the leader removes
/// itself. `other` appends `C_new = {other}` but its acknowledgement is lost, then the leader is
/// cut off: `other` elects itself alone and commits while the leader, whose configuration in
/// force has one voter that is not itself, still leads until CheckQuorum fires. Returns
/// whether the removal was accepted.
pub fn remove_self_cut_off(c: &mut Cluster, p: &mut Probes, leader: u64, other: u64) -> bool {
    c.net.cut_link(other, leader);
    if !matches!(
        c.change_membership(leader, MembershipChange::Remove(nid(leader))),
        Some(Ok(_))
    ) {
        return false;
    }
    let alone: BTreeSet<_> = [nid(other)].into_iter().collect();
    let t0 = c.now_ms();
    while c.now_ms() - t0 < 200 && c.membership(other).is_some_and(|m| m.voters != alone) {
        c.run_for(1);
    }
    cut_off(c, leader);
    probe_when_two_leaders(c, p, leader, &[other], vec![other], 1_500);
    true
}

/// Hole 2, pending (`mut-lease-during-transfer`): the leader sends TimeoutNow to `to` (caught
/// up) and then hears nothing more; `to` wins with votes that set the followers' leases
/// aside and commits, while the old leader may only serve reads with a quorum round.
pub fn transfer_then_deafen(c: &mut Cluster, p: &mut Probes, leader: u64, to: u64) -> bool {
    if !matches!(c.transfer_leader(leader, to), Some(Ok(()))) {
        return false;
    }
    deafen(c, leader);
    let rest: Vec<u64> = c.ids().into_iter().filter(|&x| x != leader).collect();
    probe_when_two_leaders(c, p, leader, &[to], rest, 1_000);
    true
}

/// Hole 2, aborted (`mut-lease-during-transfer`): TimeoutNow is held back on its way to `to`
/// and arrives `slow_ms` later, after the transfer aborted (one election timeout) and heartbeat
/// rounds renewed the lease; the leader is deafened just before it arrives.
pub fn late_timeout_now(
    c: &mut Cluster,
    p: &mut Probes,
    leader: u64,
    to: u64,
    slow_ms: u64,
) -> bool {
    c.net.set_kind_delay(leader, to, "TimeoutNow", slow_ms);
    if !matches!(c.transfer_leader(leader, to), Some(Ok(()))) {
        c.net.clear_kind_delay();
        return false;
    }
    c.run_for(slow_ms.saturating_sub(3));
    deafen(c, leader);
    let rest: Vec<u64> = c.ids().into_iter().filter(|&x| x != leader).collect();
    probe_when_two_leaders(c, p, leader, &[to], rest, 1_000);
    c.net.clear_kind_delay();
    true
}

/// Hole 3 (`mut-restart-forgets-lease`): `cut` (a minority, at most half the voters minus
/// one) is partitioned from the leader and campaigns; follower `f` crashes and restarts each
/// time right after acknowledging a heartbeat, so the leader's lease counts an
/// acknowledgement from a node that, restarted, no longer knows it. A restarted node must not
/// vote for one election timeout.
pub fn restart_after_ack(c: &mut Cluster, p: &mut Probes, leader: u64, cut: &[u64], f: u64) {
    for &x in cut {
        c.net.cut_link(leader, x);
        c.net.cut_link(x, leader);
    }
    let t0 = c.now_ms();
    let mut writers = cut.to_vec();
    writers.push(f);
    while c.now_ms() - t0 < 2_000 && is_leader(c, leader) {
        if cut.iter().any(|&x| is_leader(c, x)) {
            p.stale_read(c, writers, leader);
            return;
        }
        let acked = c
            .status(f)
            .is_some_and(|s| s.leader.map(|l| l.get()) == Some(leader));
        if acked {
            // The acknowledgement is on its way; crash once it has arrived.
            c.run_for(3);
            c.restart(f);
        }
        c.run_for(1);
    }
}
