//! Automatic compaction of the key-value history (etcd's `--auto-compaction-mode revision`):
//! the leader compacts to `revision - retention`, so old revisions become unreadable with
//! etcd's "required revision has been compacted" while recent ones stay readable.

mod common;

use std::time::{Duration, Instant};

use common::{put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;

async fn get_at(c: &Cluster, i: usize, revision: i64) -> Result<epb::RangeResponse, tonic::Status> {
    let mut kv = c.kv(i).await.expect("connect");
    kv.range(epb::RangeRequest {
        key: b"k".to_vec(),
        revision,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_mode_compacts_old_history_on_every_member() {
    let c = Cluster::start_with(
        3,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
        ],
    );
    c.wait_leader(&[0, 1, 2]).await;
    let mut last = 0;
    for v in 0..20 {
        last = put_retrying(&c, v % 3, "k", &format!("v{v}"))
            .await
            .header
            .expect("header")
            .revision;
    }
    // Within a few check intervals, revision 2 (the first put) is compacted everywhere.
    for i in 0..3 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match get_at(&c, i, 2).await {
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    assert!(s.message().contains("compacted"), "{}", s.message());
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "member {i}: revision 2 still readable: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The last revisions stay readable.
        let r = get_at(&c, i, last - 2)
            .await
            .expect("recent revision readable");
        assert_eq!(r.kvs[0].value, b"v17");
    }
}

#[test]
fn a_bad_retention_is_refused_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "serve",
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1h",
        ])
        .output()
        .expect("run skiff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auto-compaction-retention"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
