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
