//! etcd's Maintenance.MoveLeader (`etcdctl move-leader`): leadership moves to the voter asked
//! for while clients keep writing through every member and see no failure; refusals carry
//! etcd's codes and messages.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{channel, etcdctl, etcdctl_available, put_retrying, Cluster};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::Code;

/// Member ids by index, from each member's Status header.
async fn member_ids(c: &Cluster) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..c.members.len() {
        let s = c.status(i).await.expect("status");
        ids.push(s.header.expect("header").member_id);
    }
    ids
}

async fn move_leader(c: &Cluster, i: usize, target: u64) -> Result<(), tonic::Status> {
    let ch = channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    let mut req = tonic::Request::new(epb::MoveLeaderRequest { target_id: target });
    req.set_timeout(Duration::from_secs(10));
    MaintenanceClient::new(ch)
        .move_leader(req)
        .await
        .map(|r| assert!(r.into_inner().header.is_some(), "a header"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_move_leader_hands_off_while_clients_write_through_every_member() {
    if !etcdctl_available() {
        return;
    }
    let c = Arc::new(Cluster::start(3));
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let ids = member_ids(&c).await;
    let target = (leader + 1) % 3;

    // One writer per member, each putting its own keys in a loop; every failure is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for i in 0..3 {
        let (c, stop, written, failures) =
            (c.clone(), stop.clone(), written.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            let mut kv = c.kv(i).await.expect("connect");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = epb::PutRequest {
                    key: format!("w{i}-{n}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                };
                match kv.put(put).await {
                    Ok(_) => {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("member {i}: {s:?}")),
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = written.load(Ordering::Relaxed);
    assert!(before > 0, "the writers make progress before the move");

    let endpoints = c.endpoints();
    let target_hex = format!("{:x}", ids[target]);
    let out =
        tokio::task::spawn_blocking(move || etcdctl(&endpoints, &["move-leader", &target_hex], ""))
            .await
            .expect("etcdctl");
    assert!(out.ok, "move-leader failed: {}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!(
            "Leadership transferred from {:x} to {:x}",
            ids[leader], ids[target]
        )
    );
    // Answered once the target leads, and every member agrees.
    assert_eq!(c.wait_leader(&[0, 1, 2]).await, target);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "writes failed during the move: {failures:?}"
    );
    assert!(
        written.load(Ordering::Relaxed) > before,
        "the writers make progress after the move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_refuses_as_etcd_does() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let ids = member_ids(&c).await;
    let follower = (leader + 1) % 3;
    put_retrying(&c, leader, "k", "v").await;

    // Only the leader moves leadership (etcdctl finds it with Status first).
    let s = move_leader(&c, follower, ids[(leader + 2) % 3])
        .await
        .expect_err("a follower refuses");
    assert_eq!(
        (s.code(), s.message()),
        (Code::FailedPrecondition, "etcdserver: not leader")
    );
    // An id that is no member, and the invalid id 0.
    let unknown = (1..).find(|id| !ids.contains(id)).expect("a free id");
    for target in [unknown, 0] {
        let s = move_leader(&c, leader, target)
            .await
            .expect_err("not a member");
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee"
            ),
            "target {target}"
        );
    }
    // The leader itself: nothing to do, as in etcd.
    move_leader(&c, leader, ids[leader])
        .await
        .expect("moving to the leader itself");
    assert_eq!(c.wait_leader(&[0, 1, 2]).await, leader);

    if etcdctl_available() {
        let out = etcdctl(
            &c.endpoints(),
            &["move-leader", &format!("{unknown:x}")],
            "",
        );
        assert!(!out.ok, "etcdctl move-leader to a stranger succeeded");
        assert!(
            out.stderr.contains("etcdserver: bad leader transferee"),
            "{}",
            out.stderr
        );
    }
}
