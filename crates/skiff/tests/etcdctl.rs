//! Real etcdctl (v3 API) against a real 3-process cluster.

mod common;

use common::{etcdctl, etcdctl_available, etcdctl_ok, Cluster};

#[test]
fn etcdctl_session() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    let eps = c.endpoints();

    // endpoint health: a linearizable read of "health" on every member.
    let health = etcdctl_ok(&eps, &["endpoint", "health"], "");
    for i in 0..3 {
        assert!(
            health
                .stderr
                .contains(&format!("{} is healthy", c.endpoint(i)))
                || health
                    .stdout
                    .contains(&format!("{} is healthy", c.endpoint(i))),
            "{}{}",
            health.stdout,
            health.stderr
        );
    }

    assert_eq!(etcdctl_ok(&eps, &["put", "foo", "bar"], "").stdout, "OK\n");
    assert_eq!(etcdctl_ok(&eps, &["put", "foo2", "baz"], "").stdout, "OK\n");
    assert_eq!(etcdctl_ok(&eps, &["get", "foo"], "").stdout, "foo\nbar\n");
    assert_eq!(
        etcdctl_ok(&eps, &["get", "--prefix", "foo"], "").stdout,
        "foo\nbar\nfoo2\nbaz\n"
    );

    // Every member takes writes: followers forward them to the leader.
    for i in 0..3 {
        let key = format!("via{i}");
        let out = etcdctl_ok(&c.endpoint(i), &["put", &key, "v"], "");
        assert_eq!(out.stdout, "OK\n", "put via member {i}");
    }
    for i in 0..3 {
        // Linearizable reads on each member see every acknowledged write.
        let out = etcdctl_ok(
            &c.endpoint(i),
            &["get", "--prefix", "via", "--keys-only"],
            "",
        );
        assert_eq!(out.stdout, "via0\n\nvia1\n\nvia2\n\n", "get via member {i}");
    }

    // A transaction: compare, then the success branch.
    let txn = etcdctl_ok(
        &eps,
        &["txn"],
        "value(\"foo2\") = \"baz\"\n\nput t yes\n\nput t no\n\n",
    );
    assert_eq!(txn.stdout, "SUCCESS\n\nOK\n");
    assert_eq!(etcdctl_ok(&eps, &["get", "t"], "").stdout, "t\nyes\n");

    assert_eq!(etcdctl_ok(&eps, &["del", "foo"], "").stdout, "1\n");
    assert_eq!(etcdctl_ok(&eps, &["get", "foo"], "").stdout, "");
    assert_eq!(etcdctl_ok(&eps, &["del", "nothing"], "").stdout, "0\n");

    // Compaction: history below the revision is gone, with etcd's error.
    let compact = etcdctl_ok(&eps, &["compaction", "3"], "");
    assert_eq!(compact.stdout, "compacted revision 3\n");
    let old = etcdctl(&eps, &["get", "foo2", "--rev=2"], "");
    assert!(!old.ok);
    assert!(
        old.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        old.stderr
    );

    // endpoint status: one row per member, exactly one leader, same term.
    let status = etcdctl_ok(&eps, &["endpoint", "status", "-w", "simple"], "");
    let rows: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", status.stdout);
    let leaders = rows.iter().filter(|r| r.contains(", true, false,")).count();
    assert_eq!(leaders, 1, "{}", status.stdout);
    assert!(
        rows.iter().all(|r| r.contains("3.5.0")),
        "{}",
        status.stdout
    );

    // A request error comes back with etcd's message.
    let bad = etcdctl(&eps, &["get", "foo", "--rev=999"], "");
    assert!(!bad.ok);
    assert!(
        bad.stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{}",
        bad.stderr
    );
}
