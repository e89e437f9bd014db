//! Log compaction and snapshot transfer (paper §7, Figure 13) through the harness cluster.

mod harness;

use harness::{decode_state, nid, Cluster};
use skiff_raft::{CompactError, EntryId, Index, MessageBody, Role, SnapshotMeta, Term};

/// A 3-node cluster; node 1 leads and every node has applied `n` proposals.
fn cluster_with_entries(n: usize, chunk_bytes: u64) -> Cluster {
    let mut c = Cluster::new(3, |cfg| {
        cfg.snapshot_chunk_bytes = chunk_bytes;
        cfg.snapshot_chunks_inflight_max = 4;
    });
    c.verbose = false;
    assert!(c.elect(1));
    propose_many(&mut c, 1, 0, n);
    c
}

fn propose_many(c: &mut Cluster, leader: u64, from: usize, n: usize) {
    for chunk_start in (from..from + n).step_by(1000) {
        for i in chunk_start..(chunk_start + 1000).min(from + n) {
            c.node(leader)
                .propose(format!("v{i}").into_bytes())
                .expect("leader takes it");
        }
        c.stabilize();
    }
    c.tick_all();
}

fn snapshot_bytes_sent(c: &Cluster) -> u64 {
    c.delivered.get("InstallSnapshot").copied().unwrap_or(0)
}

#[test]
fn follower_far_behind_catches_up_by_snapshot_despite_loss_and_a_leader_change() {
    // The scenario: a follower 100,000 entries behind, chunks lost, and the leader
    // replaced in the middle of the transfer.
    let mut c = cluster_with_entries(10, 4096);
    c.crash(3);
    propose_many(&mut c, 1, 10, 100_000);
    let m1 = c.compact(1);
    let m2 = c.compact(2);
    assert_eq!(m1, m2, "same state, same snapshot");
    assert_eq!(c.nodes[&1].log().first_index(), m1.last.index.next());
    c.restart(3);
    let size = m1.size_bytes;
    let chunks_total = size.div_ceil(4096);
    // Deliver with every fifth snapshot chunk lost, until half the chunks have arrived.
    let mut sent = 0u64;
    let mut lost = 0u64;
    let mut rounds = 0;
    while c.nodes[&3].status().commit < m1.last.index && sent < chunks_total / 2 {
        rounds += 1;
        assert!(rounds < 10_000, "transfer made no progress");
        c.tick(1, 1);
        c.tick(2, 1);
        c.tick(3, 1);
        for id in 1..=3 {
            while c.process_ready(id) {}
        }
        let mut kept = Vec::new();
        for m in std::mem::take(&mut c.queue) {
            if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                sent += 1;
                if sent % 5 == 0 {
                    lost += 1;
                    continue;
                }
            }
            kept.push(m);
        }
        c.queue = kept;
        c.deliver(None);
    }
    assert!(lost > 0);
    // The leader crashes mid-transfer; node 2 takes over with the same snapshot, and node 3
    // resumes from what it staged instead of starting over.
    let staged_before = c.nodes[&3].status().commit;
    assert!(staged_before < m1.last.index, "still transferring");
    c.crash(1);
    for _ in 0..200 {
        c.tick_all();
        if c.nodes[&3].status().applied >= m1.last.index && c.leader() == Some(2) {
            break;
        }
    }
    assert_eq!(c.leader(), Some(2));
    let s3 = c.nodes[&3].status();
    assert!(s3.applied >= m1.last.index, "node 3 caught up: {s3:?}");
    propose_many(&mut c, 2, 100_010, 10);
    for _ in 0..3 {
        c.tick_all();
    }
    assert_eq!(c.applied_data(3), c.applied_data(2), "same state machine");
    assert_eq!(c.applied_data(3).len(), 100_020);
    let total_chunks = snapshot_bytes_sent(&c);
    eprintln!(
        "snapshot of {size} bytes ({chunks_total} chunks of 4 KiB): {total_chunks} chunks \
         delivered in all, {lost} lost before the leader change"
    );
    // Resuming means the new leader did not resend everything node 3 had staged.
    assert!(
        total_chunks < chunks_total * 2,
        "resume should avoid a full resend: {total_chunks} of {chunks_total}"
    );
}

#[test]
fn snapshot_at_or_below_commit_is_acknowledged_without_install() {
    let mut c = cluster_with_entries(5, 1 << 20);
    let meta = c.compact(1);
    let before = c.nodes[&2].status();
    let msg = skiff_raft::Message {
        from: nid(1),
        to: nid(2),
        term: before.term,
        body: MessageBody::InstallSnapshot {
            len: meta.size_bytes,
            data: vec![0; meta.size_bytes as usize],
            offset: 0,
            meta,
        },
    };
    c.node(2).step(msg).unwrap();
    let rd = c.node(2).ready();
    assert!(rd.snapshot.is_none() && rd.snapshot_chunks.is_empty());
    assert!(rd.persisted_messages.iter().any(|m| matches!(
        m.body,
        MessageBody::AppendResp { index, reject: None } if index == before.commit
    )));
    c.node(2).advance(rd.number);
}

#[test]
fn compact_refuses_what_it_cannot_cover() {
    let mut c = cluster_with_entries(5, 1 << 20);
    let applied = c.nodes[&1].status().applied;
    let membership = c.membership.clone();
    let meta = |index: u64, term: u64| SnapshotMeta {
        last: EntryId {
            term: Term(term),
            index: Index(index),
        },
        membership: membership.clone(),
        size_bytes: 0,
    };
    let beyond = meta(applied.0 + 1, 1);
    assert!(matches!(
        c.node(1).compact(beyond),
        Err(CompactError::NotApplied { .. })
    ));
    let wrong_term = meta(applied.0, 9);
    assert!(matches!(
        c.node(1).compact(wrong_term),
        Err(CompactError::Mismatch { .. })
    ));
    c.compact(1);
    let err = c.node(1).compact(meta(1, 1)).unwrap_err();
    assert!(matches!(err, CompactError::Stale { .. }), "{err}");
}

#[test]
fn restart_from_snapshot_and_log_reproduces_the_state_machine() {
    let mut c = cluster_with_entries(50, 1 << 20);
    c.compact(2);
    propose_many(&mut c, 1, 50, 20);
    let expected = c.applied_data(2);
    // Node 2 loses its in-memory state machine: it restarts from the snapshot bytes and
    // replays the log after it.
    c.crash(2);
    let (_, bytes) = c.disks[&2].snapshot.clone().expect("snapshot on disk");
    c.applied.insert(2, decode_state(&bytes));
    c.restart(2);
    for _ in 0..3 {
        c.tick_all();
    }
    assert_eq!(c.applied_data(2), expected);
    assert_eq!(c.nodes[&2].status().role, Role::Follower);
}

#[test]
fn follower_restart_mid_transfer_resumes_from_staged_bytes() {
    let mut c = cluster_with_entries(10, 64);
    c.crash(3);
    propose_many(&mut c, 1, 10, 200);
    let meta = c.compact(1);
    c.restart(3);
    // Let a few chunks through, then crash node 3 with them staged.
    let staged_enough = |c: &Cluster| {
        c.disks[&3]
            .staging
            .as_ref()
            .is_some_and(|(m, b)| b.len() as u64 > m.size_bytes / 2)
    };
    'outer: for _ in 0..40 {
        for id in 1..=3 {
            c.tick(id, 1);
        }
        // One delivery round at a time, so the transfer can be cut in the middle.
        for _ in 0..50 {
            for id in 1..=3 {
                while c.process_ready(id) {}
            }
            if staged_enough(&c) {
                break 'outer;
            }
            if c.deliver(None) == 0 {
                break;
            }
        }
    }
    let (staged_meta, staged) = c.disks[&3].staging.clone().expect("some chunks staged");
    assert_eq!(staged_meta, meta);
    assert!((staged.len() as u64) < meta.size_bytes);
    c.crash(3);
    c.restart(3);
    c.node(3)
        .resume_staged_snapshot(staged_meta, staged.len() as u64);
    let before = snapshot_bytes_sent(&c);
    for _ in 0..100 {
        c.tick_all();
        if c.nodes[&3].status().applied >= meta.last.index {
            break;
        }
    }
    assert!(c.nodes[&3].status().applied >= meta.last.index);
    let chunks_after = snapshot_bytes_sent(&c) - before;
    let remaining = (meta.size_bytes - staged.len() as u64).div_ceil(64);
    // One window of duplicates at most; a restart from zero would send every chunk again.
    assert!(
        chunks_after <= remaining + 4,
        "resumed: {chunks_after} chunks for {remaining} remaining of {}",
        meta.size_bytes.div_ceil(64)
    );
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

/// `InstallSnapshot` chunk `offset..offset + len` of `meta` from `from`, with the bytes.
fn chunk_msg(
    from: u64,
    to: u64,
    term: Term,
    meta: &SnapshotMeta,
    bytes: &[u8],
    offset: u64,
    len: u64,
) -> skiff_raft::Message {
    skiff_raft::Message {
        from: nid(from),
        to: nid(to),
        term,
        body: MessageBody::InstallSnapshot {
            meta: meta.clone(),
            offset,
            len,
            data: bytes[offset as usize..(offset + len) as usize].to_vec(),
        },
    }
}

#[test]
fn newer_snapshot_chunks_behind_a_completed_one_wait_for_the_next_batch() {
    // Found by the simulator (Swarm seed 102635): a paused follower receives, in one batch,
    // every chunk of snapshot A and then the first chunks of a newer snapshot B. The batch must
    // not stage B's chunks in front of A's install (the store stages chunks, then installs).
    let mut c = cluster_with_entries(10, 64);
    c.crash(3);
    propose_many(&mut c, 1, 10, 20);
    let a = c.compact(1);
    let a_bytes = c.disks[&1].snapshot.clone().expect("snapshot A").1;
    propose_many(&mut c, 1, 30, 20);
    let b = c.compact(1);
    let b_bytes = c.disks[&1].snapshot.clone().expect("snapshot B").1;
    assert!(a.last.index < b.last.index);
    assert!(b.size_bytes > 128, "B takes more than two chunks");
    c.restart(3);
    let term = c.nodes[&1].status().term;
    for offset in (0..a.size_bytes).step_by(64) {
        let len = 64.min(a.size_bytes - offset);
        let m = chunk_msg(1, 3, term, &a, &a_bytes, offset, len);
        c.node(3).step(m).unwrap();
    }
    for offset in [0, 64] {
        let m = chunk_msg(1, 3, term, &b, &b_bytes, offset, 64);
        c.node(3).step(m).unwrap();
    }
    let rd = c.node(3).ready();
    assert_eq!(rd.snapshot.as_ref(), Some(&a), "A is whole: install it");
    let last = rd.snapshot_chunks.last().expect("A's chunks");
    assert_eq!(last.meta, a, "nothing staged after the install's chunks");
    assert_eq!(last.offset + last.data.len() as u64, a.size_bytes);
    // B's chunks are refused from the start, so the leader resends B in later batches.
    let b_rejects = rd
        .messages
        .iter()
        .chain(&rd.persisted_messages)
        .filter(|m| {
            matches!(m.body, MessageBody::SnapshotResp { last, offset: 0, reject: true }
                if last == b.last)
        })
        .count();
    assert_eq!(b_rejects, 2);
    // The store can do what the batch asks (its answers are dropped, as if lost).
    let restored = c.disks.get_mut(&3).expect("disk").write(&rd);
    c.applied.insert(3, restored.expect("A installed"));
    c.node(3).advance(rd.number);
    // The cluster carries on: node 3 catches up to B and beyond.
    propose_many(&mut c, 1, 50, 5);
    for _ in 0..50 {
        c.tick_all();
    }
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

/// A follower that staged every chunk durably but crashed before installing (the store stages
/// a batch's chunks, then installs) restarts with the whole snapshot staged. Resumed at its full
/// size it could never be completed: every chunk is a duplicate, the leader's transfer is fully
/// acknowledged, and only a newer snapshot would unblock it (found in review). It is received
/// again from the start instead, and installs.
#[test]
fn follower_crash_between_the_last_chunk_and_the_install_still_installs() {
    let mut c = cluster_with_entries(10, 64);
    c.crash(3);
    propose_many(&mut c, 1, 10, 200);
    let meta = c.compact(1);
    c.restart(3);
    let mut crashed = false;
    'outer: for _ in 0..40 {
        for id in 1..=3 {
            c.tick(id, 1);
        }
        for _ in 0..50 {
            for id in 1..=2 {
                while c.process_ready(id) {}
            }
            loop {
                let mut probe = c.nodes[&3].clone();
                if !probe.has_ready() {
                    break;
                }
                if probe.ready().snapshot.is_some() {
                    // Stage the batch's chunks, then crash before the install.
                    let rd = c.node(3).ready();
                    let disk = c.disks.get_mut(&3).expect("disk");
                    for chunk in &rd.snapshot_chunks {
                        if chunk.offset == 0 {
                            disk.staging = Some((chunk.meta.clone(), Vec::new()));
                        }
                        let (_, bytes) = disk.staging.as_mut().expect("staging started");
                        bytes.extend_from_slice(&chunk.data);
                    }
                    crashed = true;
                    break 'outer;
                }
                c.process_ready(3);
            }
            if c.deliver(None) == 0 {
                break;
            }
        }
    }
    assert!(crashed, "the install batch was reached");
    let (staged_meta, staged) = c.disks[&3].staging.clone().expect("staged");
    assert_eq!(staged_meta, meta);
    assert_eq!(staged.len() as u64, meta.size_bytes, "staged whole");
    c.crash(3);
    c.restart(3);
    c.node(3)
        .resume_staged_snapshot(staged_meta, staged.len() as u64);
    // No new proposals: the leader has no newer snapshot to switch to.
    for _ in 0..200 {
        c.tick_all();
        if c.nodes[&3].status().applied >= meta.last.index {
            break;
        }
    }
    assert!(
        c.nodes[&3].status().applied >= meta.last.index,
        "the staged snapshot was never installed"
    );
    assert_eq!(c.applied_data(3), c.applied_data(1));
}
