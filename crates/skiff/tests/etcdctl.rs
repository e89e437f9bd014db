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

/// `--cluster` makes etcdctl dial every member's client URL from `member list`, and its gRPC
/// client then sends the whole URL (`http://host:port`) as the HTTP/2 `:authority`, which
/// stock h2 resets with PROTOCOL_ERROR (see vendor/h2/README.skiff.md). Operators' runbooks
/// use these three commands.
#[test]
fn etcdctl_cluster_flag_reaches_every_member() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    common::runtime().block_on(c.wait_published(&[0, 1, 2]));
    let put = etcdctl_ok(&c.endpoint(0), &["put", "k", "v", "-w", "json"], "");
    let put: serde_json::Value =
        serde_json::from_str(&put.stdout).unwrap_or_else(|e| panic!("{e}: {put:?}"));
    let revision = put["header"]["revision"]
        .as_i64()
        .expect("revision")
        .to_string();
    let status = etcdctl_ok(
        &c.endpoint(0),
        &["endpoint", "status", "--cluster", "-w", "json"],
        "",
    );
    let status: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status:?}"));
    let mut endpoints: Vec<String> = status
        .as_array()
        .expect("one status per member")
        .iter()
        .map(|s| s["Endpoint"].as_str().expect("endpoint").to_string())
        .collect();
    endpoints.sort();
    let mut want: Vec<String> = (0..3)
        .map(|i| format!("http://{}", c.endpoint(i)))
        .collect();
    want.sort();
    assert_eq!(endpoints, want);

    let health = etcdctl_ok(&c.endpoint(1), &["endpoint", "health", "--cluster"], "");
    let text = format!("{}{}", health.stdout, health.stderr);
    for e in &want {
        assert!(text.contains(&format!("{e} is healthy")), "{text}");
    }
    assert!(!text.contains("PROTOCOL_ERROR"), "{text}");

    // Every member's hash at the put's revision is the same (a member that has not applied
    // it yet answers "future revision", and etcdctl_ok retries).
    let hashes = etcdctl_ok(
        &c.endpoint(2),
        &["endpoint", "hashkv", "--cluster", "--rev", &revision],
        "",
    );
    let lines: Vec<&str> = hashes.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{hashes:?}");
    let hash = |l: &str| l.rsplit(", ").next().map(str::to_string);
    assert!(
        lines.iter().all(|l| hash(l) == hash(lines[0])),
        "{hashes:?}"
    );
}
