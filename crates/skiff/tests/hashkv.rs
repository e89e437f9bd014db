//! Maintenance.HashKV and Maintenance.Hash against a real 3-process cluster: `etcdctl endpoint
//! hashkv` (with and without `--cluster`) answers the same hash on every member at a common
//! revision, with etcd's errors for compacted and future revisions; Hash agrees too.

mod common;

use std::time::Duration;

use common::{channel, etcdctl, etcdctl_available, etcdctl_ok, Cluster};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;

/// The hashes of `etcdctl endpoint hashkv` output lines (`<endpoint>, <hash>`), by endpoint.
fn hashes(out: &str) -> Vec<(String, u32)> {
    out.lines()
        .map(|l| {
            let (ep, hash) = l.split_once(", ").expect("endpoint, hash");
            (ep.to_string(), hash.parse().expect("a u32 hash"))
        })
        .collect()
}

#[test]
fn endpoint_hashkv_agrees_across_members() {
    if !etcdctl_available() {
        return;
    }
    let rt = common::runtime();
    let c = Cluster::start(3);
    let eps = c.endpoints();
    rt.block_on(c.wait_published(&[0, 1, 2]));
    for i in 0..20 {
        etcdctl_ok(&eps, &["put", &format!("k{}", i % 7), &format!("v{i}")], "");
    }
    etcdctl_ok(&eps, &["del", "k3"], "");
    etcdctl_ok(&eps, &["compaction", "10"], "");
    etcdctl_ok(&eps, &["put", "after", "compaction"], "");
    let rev = 23; // 20 puts, a delete, a put, from revision 1

    // At the latest revision: a member that has not applied it yet answers "future revision"
    // and etcdctl fails; retried, every member answers the same hash. (`--cluster` is
    // tests/etcdctl.rs's.)
    let at = format!("--rev={rev}");
    let one = hashes(&etcdctl_ok(&eps, &["endpoint", "hashkv", &at], "").stdout);
    assert_eq!(one.len(), 3, "{one:?}");
    for i in 0..3 {
        assert!(one.iter().any(|(ep, _)| *ep == c.endpoint(i)), "{one:?}");
    }
    assert!(one.iter().all(|(_, h)| *h == one[0].1), "{one:?}");
    // Rev 0: the current revision, reached by all after a linearizable read on each.
    for i in 0..3 {
        etcdctl_ok(&c.endpoint(i), &["get", "after"], "");
    }
    let all = hashes(&etcdctl_ok(&eps, &["endpoint", "hashkv"], "").stdout);
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|(_, h)| *h == one[0].1),
        "{all:?} vs {one:?}"
    );
    // An earlier revision hashes less.
    let earlier = hashes(&etcdctl_ok(&eps, &["endpoint", "hashkv", "--rev=15"], "").stdout);
    assert!(earlier
        .iter()
        .all(|(_, h)| *h == earlier[0].1 && *h != one[0].1));

    // etcd's errors.
    let compacted = etcdctl(&eps, &["endpoint", "hashkv", "--rev=10"], "");
    assert!(
        !compacted.ok
            && compacted
                .stderr
                .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        compacted.stderr
    );
    let future = etcdctl(&eps, &["endpoint", "hashkv", "--rev=1000"], "");
    assert!(
        !future.ok
            && future
                .stderr
                .contains("etcdserver: mvcc: required revision is a future revision"),
        "{}",
        future.stderr
    );

    // Hash (no etcdctl command) agrees too, with the revision in its header.
    let whole: Vec<(i64, u32)> = (0..3)
        .map(|i| {
            rt.block_on(async {
                let ch = channel(&format!("http://{}", c.endpoint(i)))
                    .await
                    .expect("connect");
                let mut req = tonic::Request::new(epb::HashRequest {});
                req.set_timeout(Duration::from_secs(5));
                let r = MaintenanceClient::new(ch)
                    .hash(req)
                    .await
                    .expect("hash")
                    .into_inner();
                (r.header.expect("header").revision, r.hash)
            })
        })
        .collect();
    assert!(whole.iter().all(|h| *h == whole[0]), "{whole:?}");
    assert_eq!(whole[0].0, rev);
}
