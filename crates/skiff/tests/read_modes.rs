//! `--read-mode lease`: linearizable reads confirmed by the leader's lease instead of a
//! ReadIndex heartbeat round. Reads through every member see every acknowledged write.

mod common;

use common::{put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_see_every_acknowledged_write() {
    let c = Cluster::start_with(3, &["--read-mode", "lease"]);
    c.wait_leader(&[0, 1, 2]).await;
    for k in 0..30 {
        let key = format!("k{k}");
        let value = format!("v{k}");
        put_retrying(&c, k % 3, &key, &value).await;
        // A linearizable read right after the write, on another member, must see it.
        let reader = (k + 1) % 3;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut kv = c.kv(reader).await.expect("connect");
            match kv
                .range(epb::RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(r.kvs.len(), 1, "{key} missing on member {reader}");
                    assert_eq!(r.kvs[0].value, value.as_bytes());
                    break;
                }
                // No leader yet / retry: bounded by PATIENCE.
                Err(s) => assert!(Instant::now() < deadline, "read {key}: {s:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_txn_is_linearizable_and_never_enters_the_log() {
    // etcd serves a transaction of ranges like a range: ReadIndex, then a local read.
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    put_retrying(&c, leader, "rk", "rv").await;
    // Every member's one publishing entry is in the log before counting.
    c.wait_published(&[0, 1, 2]).await;
    let commit_before = c.status(leader).await.expect("status").raft_index;
    let range = |serializable| epb::RequestOp {
        request: Some(epb::request_op::Request::RequestRange(epb::RangeRequest {
            key: b"rk".to_vec(),
            serializable,
            ..Default::default()
        })),
    };
    let txn = epb::TxnRequest {
        compare: vec![epb::Compare {
            key: b"rk".to_vec(),
            result: epb::compare::CompareResult::Equal as i32,
            target: epb::compare::CompareTarget::Version as i32,
            target_union: Some(epb::compare::TargetUnion::Version(1)),
            ..Default::default()
        }],
        success: vec![range(false)],
        failure: vec![],
    };
    let deadline = Instant::now() + PATIENCE;
    let resp = loop {
        let mut kv = c.kv(follower).await.expect("connect");
        match kv.txn(txn.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) => assert!(Instant::now() < deadline, "txn: {s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(resp.succeeded, "{resp:?}");
    let Some(epb::response_op::Response::ResponseRange(r)) = &resp.responses[0].response else {
        panic!("a range response: {resp:?}");
    };
    assert_eq!(
        r.kvs[0].value, b"rv",
        "the write acknowledged before the txn"
    );
    // The serializable form is served too.
    let mut kv = c.kv(follower).await.expect("connect");
    let ser = epb::TxnRequest {
        success: vec![range(true)],
        ..txn.clone()
    };
    assert!(
        kv.txn(ser)
            .await
            .expect("serializable txn")
            .into_inner()
            .succeeded
    );
    let commit_after = c.status(leader).await.expect("status").raft_index;
    assert_eq!(
        commit_before, commit_after,
        "a read-only txn entered the log"
    );
}
