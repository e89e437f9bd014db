//! Fault tests on a real 3-process cluster: SIGKILL the leader, writes resume after
//! re-election, the restarted member catches up, and no acknowledged write is lost.

mod common;

use std::time::{Duration, Instant};

use common::{put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;

async fn serializable_get(c: &Cluster, i: usize, key: &str) -> Option<Vec<u8>> {
    let mut kv = c.kv(i).await?;
    let r = kv
        .range(epb::RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    r.kvs.into_iter().next().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_then_restart_it() {
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all).await;
    let mut acked = Vec::new();
    for k in 0..10 {
        let key = format!("before{k}");
        put_retrying(&c, (leader + 1) % 3, &key, "v").await;
        acked.push(key);
    }

    c.kill(leader);
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&live).await;
    assert_ne!(new_leader, leader);
    for k in 0..10 {
        let key = format!("after{k}");
        // Alternate between the two survivors: one of them forwards to the other.
        put_retrying(&c, live[k % 2], &key, "w").await;
        acked.push(key);
    }

    c.spawn(leader);
    let deadline = Instant::now() + PATIENCE;
    for key in &acked {
        loop {
            if serializable_get(&c, leader, key).await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted member never caught up with {key}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every member holds every acknowledged write.
    for i in all {
        for key in &acked {
            assert!(
                serializable_get(&c, i, key).await.is_some(),
                "member {i} lost {key}"
            );
        }
    }
    // And the restarted member takes writes again.
    put_retrying(&c, leader, "back", "x").await;
}
