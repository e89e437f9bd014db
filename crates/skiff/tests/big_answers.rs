//! Answers too large for the peer port (issue 14): a write forwarded from a follower whose
//! answer is over the leader's shipping limit is answered from the follower's own apply, and a
//! read-only transaction returning tens of MiB stays out of the log, so nothing of it reaches
//! the session table or a snapshot; a member then catches up by snapshot and restarts.

mod common;

use std::time::{Duration, Instant};

use common::{put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::kv_client::KvClient;

/// A KV client of member `i` that accepts answers of any size up to 256 MiB.
async fn big_kv(c: &Cluster, i: usize) -> KvClient<tonic::transport::Channel> {
    let ch = common::channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    KvClient::new(ch).max_decoding_message_size(256 << 20)
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    *end.last_mut().expect("non-empty") += 1;
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_with_a_20_mib_answer_succeeds_and_snapshots_stay_small() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "10"]);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    // 15 values of 1.4 MB: 21 MB, more than the 16 MiB peer message limit.
    let value = "v".repeat(1_400_000);
    for k in 0..15 {
        put_retrying(&c, leader, &format!("big/{k:02}"), &value).await;
    }

    // A read-only transaction returning all of it: served outside the log.
    // Every member's one publishing entry is in the log before counting.
    c.wait_published(&[0, 1, 2]).await;
    let commit_before = c.status(leader).await.expect("status").raft_index;
    let txn = epb::TxnRequest {
        compare: vec![],
        success: vec![epb::RequestOp {
            request: Some(epb::request_op::Request::RequestRange(epb::RangeRequest {
                key: b"big/".to_vec(),
                range_end: prefix_end(b"big/"),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let read = big_kv(&c, follower)
        .await
        .txn(txn)
        .await
        .expect("a 21 MB read-only txn")
        .into_inner();
    let Some(epb::response_op::Response::ResponseRange(r)) = &read.responses[0].response else {
        panic!("a range answer");
    };
    assert_eq!(r.kvs.len(), 15);
    assert_eq!(
        c.status(leader).await.expect("status").raft_index,
        commit_before
    );

    // A delete with prev_kv through a follower: forwarded, applied once, answered in full.
    let deadline = Instant::now() + PATIENCE;
    let del = loop {
        let attempt = big_kv(&c, follower)
            .await
            .delete_range(epb::DeleteRangeRequest {
                key: b"big/".to_vec(),
                range_end: prefix_end(b"big/"),
                prev_kv: true,
            })
            .await;
        match attempt {
            Ok(d) => break d.into_inner(),
            Err(s) => {
                assert!(Instant::now() < deadline, "forwarded delete: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(del.deleted, 15, "deleted once, all of them");
    assert_eq!(del.prev_kvs.len(), 15);
    assert!(del.prev_kvs.iter().all(|kv| kv.value.len() == value.len()));

    // Snapshots hold the history, never the answers: with everything compacted, far smaller
    // than the 21 MB the answers carried twice.
    let mut kv = big_kv(&c, leader).await;
    let rev = del.header.expect("header").revision;
    kv.compact(epb::CompactionRequest {
        revision: rev,
        physical: false,
    })
    .await
    .expect("compact");

    // A member far behind catches up by snapshot and restarts from it.
    c.kill(other);
    for k in 0..40 {
        put_retrying(&c, leader, &format!("small/{k:02}"), "x").await;
    }
    c.spawn(other);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = common::local_range(
            &c,
            other,
            epb::RangeRequest {
                key: b"small/39".to_vec(),
                ..Default::default()
            },
        )
        .await;
        if got.is_some_and(|r| r.count == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the member never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.kill(other);
    c.spawn(other);
    c.wait_leader(&all).await;
    put_retrying(&c, other, "after", "restart").await;
    for i in all {
        let snaps = std::fs::read_dir(c.data_dir(i).join("raft").join("snap"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        assert!(snaps < 4 << 20, "member {i}: a snapshot of {snaps} bytes");
    }
}
