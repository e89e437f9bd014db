//! Snapshots on a real 3-process cluster (`--snapshot-count 20`): members compact their logs,
//! a member that was down while the leader compacted past it catches up by InstallSnapshot,
//! and members restart from their own snapshots, whole cluster included, losing nothing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;

/// Keys under `prefix` that member `i` holds, read locally (serializable).
async fn local_count(c: &Cluster, i: usize, prefix: &str) -> Option<i64> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut()? += 1;
    let request = epb::RangeRequest {
        key: prefix.into(),
        range_end: end,
        count_only: true,
        ..Default::default()
    };
    Some(common::local_range(c, i, request).await?.count)
}

async fn wait_count(c: &Cluster, i: usize, prefix: &str, want: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = local_count(c, i, prefix).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} holds {got:?} keys under {prefix}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn snapshot_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("raft/snap"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default()
}

fn log_mentions(c: &Cluster, i: usize, what: &str) -> bool {
    std::fs::read_to_string(c.log_path(i))
        .map(|t| t.contains(what))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_by_snapshot_and_restarts_from_it() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "20"]);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all).await;
    let behind = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    put_retrying(&c, leader, "k/000", "v").await;
    wait_count(&c, behind, "k/", 1).await;

    // Down while the others write and compact far past it.
    c.kill(behind);
    for k in 1..150 {
        put_retrying(&c, other, &format!("k/{k:03}"), &format!("v{k}")).await;
    }
    for i in [leader, other] {
        // Snapshots are written in the background; the newest replaces the older ones once
        // adopted, so one file remains.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let files = snapshot_files(&c.data_dir(i));
            if files.len() == 1 && log_mentions(&c, i, "took a snapshot and compacted the log") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} should keep one snapshot file: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    c.spawn(behind);
    wait_count(&c, behind, "k/", 150).await;
    assert!(
        log_mentions(&c, behind, "installed a snapshot from the leader"),
        "the member caught up without a snapshot although the log was compacted"
    );
    // Counted where operators look: the sender's and the receiver's metrics.
    let installed = common::http_get(c.members[behind].client_port, "/metrics");
    assert!(
        installed.contains("skiff_snapshots_installed_total 1"),
        "{installed}"
    );
    let sent = [leader, other]
        .iter()
        .map(|&i| common::http_get(c.members[i].client_port, "/metrics"))
        .any(|m| {
            m.contains("skiff_snapshots_sent_total 1") || m.contains("skiff_snapshots_sent_total 2")
        });
    assert!(sent, "no member counted the snapshot it sent");
    assert_eq!(snapshot_files(&c.data_dir(behind)).len(), 1);

    // It restarts from the installed snapshot plus its log.
    c.kill(behind);
    c.spawn(behind);
    wait_count(&c, behind, "k/", 150).await;

    // The whole cluster restarts from snapshots and logs, and takes writes again.
    for i in all {
        c.kill(i);
    }
    for i in all {
        c.spawn(i);
    }
    c.wait_leader(&all).await;
    for i in all {
        wait_count(&c, i, "k/", 150).await;
    }
    put_retrying(&c, behind, "k/150", "after").await;
    for i in all {
        wait_count(&c, i, "k/", 151).await;
    }
    // Values survived, not only keys.
    let mut kv = c.kv(behind).await.expect("connect");
    let r = kv
        .range(epb::RangeRequest {
            key: "k/077".into(),
            ..Default::default()
        })
        .await
        .expect("linearizable get")
        .into_inner();
    assert_eq!(r.kvs[0].value, b"v77");
}
