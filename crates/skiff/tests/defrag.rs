//! Defragmentation (etcd's `Defragment`, `etcdctl defrag`) on a real cluster: after a
//! compaction the state machine's file keeps its size, with most of it free (`dbSizeInUse`
//! says how little is used); a defrag gives the space back, the data is unchanged, and the
//! cluster goes on taking writes meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{etcdctl_available, etcdctl_ok, local_range, put_request_retrying, Cluster};
use server::pb::etcdserverpb as epb;

const KEYS: usize = 100;
const VERSIONS: usize = 40;
const VALUE_BYTES: usize = 8 * 1024;

fn value(key: usize, version: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (version % 26) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(key as u64).to_le_bytes());
    v
}

/// Every member's `(dbSize, dbSizeInUse, raftAppliedIndex)`.
async fn sizes(c: &Cluster) -> Vec<(i64, i64, u64)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let s = c.status(i).await.expect("status");
        out.push((s.db_size, s.db_size_in_use, s.raft_applied_index));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_shrinks_every_member_after_compaction_and_keeps_data_and_writes() {
    if !etcdctl_available() {
        return;
    }
    let c = Arc::new(Cluster::start(3));
    let leader = c.wait_leader(&[0, 1, 2]).await;

    // 4,000 versions of 100 keys, 8 KiB each: about 33 MB of history, then compacted to the
    // last version of each key (under 1 MB live).
    let mut last_revision = 0;
    for version in 0..VERSIONS {
        let mut writers = Vec::new();
        for key in 0..KEYS {
            let c = c.clone();
            writers.push(tokio::spawn(async move {
                let request = epb::PutRequest {
                    key: format!("big/{key:03}").into_bytes(),
                    value: value(key, version),
                    ..Default::default()
                };
                put_request_retrying(&c, leader, request).await
            }));
        }
        for w in writers {
            let r = w.await.expect("writer");
            last_revision = last_revision.max(r.header.expect("header").revision);
        }
    }
    let mut kv = c.kv(leader).await.expect("connect");
    kv.compact(epb::CompactionRequest {
        revision: last_revision,
        physical: true,
    })
    .await
    .expect("compact");

    // Every member has applied everything (the leader's applied index, exactly, as each
    // member's Status reports it), and the compaction left most of each file free.
    let deadline = Instant::now() + common::PATIENCE;
    let before = loop {
        let leader_applied = c.status(leader).await.expect("status").raft_applied_index;
        let s = sizes(&c).await;
        if s.iter().all(|&(_, _, applied)| applied == leader_applied) {
            break s;
        }
        assert!(Instant::now() < deadline, "members never caught up: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for &(size, in_use, _) in &before {
        assert!(size > 20_000_000, "the history filled the file: {before:?}");
        assert!(
            in_use * 4 < size,
            "after compaction most of the file is free: {before:?}"
        );
    }

    // A writer goes on through the leader while every member defragments.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (c, stop, written) = (c.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut kv = c.kv(leader).await.expect("connect");
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let n = written.load(Ordering::Relaxed);
                let t = Instant::now();
                kv.put(epb::PutRequest {
                    key: format!("during/{n}").into_bytes(),
                    value: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .expect("a write during defragmentation failed");
                slowest = slowest.max(t.elapsed());
                written.fetch_add(1, Ordering::Relaxed);
            }
            slowest
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = etcdctl_ok(&c.endpoints(), &["defrag"], "");
    for i in 0..3 {
        let line = format!("Finished defragmenting etcd member[{}]", c.endpoint(i));
        assert!(out.stdout.contains(&line), "{}", out.stdout);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let slowest = writer.await.expect("writer");
    let during = written.load(Ordering::Relaxed);
    assert!(during > 0, "writes went on");
    eprintln!("{during} writes during defrag, slowest {slowest:?}");

    let after = sizes(&c).await;
    for (i, (&(size_before, _, _), &(size, in_use, _))) in before.iter().zip(&after).enumerate() {
        assert!(
            size * 4 < size_before,
            "member {i} shrank to under a quarter: {before:?} -> {after:?}"
        );
        assert!(in_use <= size, "member {i}: {after:?}");
    }
    // The data is unchanged on every member: each key's last version, at its revision.
    for i in 0..3 {
        let r = local_range(
            &c,
            i,
            epb::RangeRequest {
                key: b"big/".to_vec(),
                range_end: b"big0".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("range");
        assert_eq!(r.kvs.len(), KEYS, "member {i}");
        for (key, kv) in r.kvs.iter().enumerate() {
            assert_eq!(kv.value, value(key, VERSIONS - 1), "member {i} key {key}");
            assert_eq!(kv.version, VERSIONS as i64, "member {i} key {key}");
        }
        let r = local_range(
            &c,
            i,
            epb::RangeRequest {
                key: b"during/".to_vec(),
                range_end: b"during0".to_vec(),
                count_only: true,
                ..Default::default()
            },
        )
        .await
        .expect("range");
        assert!(r.count as u64 <= during, "member {i}");
    }
    // History below the compaction stays gone, not resurrected by the move.
    let mut kv = c.kv(leader).await.expect("connect");
    let old = kv
        .range(epb::RangeRequest {
            key: b"big/000".to_vec(),
            revision: last_revision - 1,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(old.code(), tonic::Code::OutOfRange, "{old:?}");
}
