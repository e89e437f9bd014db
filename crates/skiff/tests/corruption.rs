//! The corruption checks against a real 3-process cluster: one stopped member's state
//! machine is altered offline (a byte of a stored value flipped in its redb file); restarted
//! with `--experimental-initial-corrupt-check` it refuses to start, and restarted without it
//! the leader's periodic check (`--experimental-corrupt-check-time`) raises a CORRUPT alarm
//! naming it, after which writes are refused with etcd's message and reads still answer.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_available, etcdctl_ok, Cluster, PATIENCE};
use redb::ReadableTable;

/// The redb table of rows by revision (`kv::mvcc::REVS`): `(main, sub) -> key ++ record`.
const REVS: redb::TableDefinition<(u64, u32), &[u8]> = redb::TableDefinition::new("revisions");

/// Flips the last byte of the newest row ending in `marker` (a put's value is the end of
/// its row) in the state machine file at `path`; returns its revision.
fn flip_newest_value(path: &std::path::Path, marker: u8) -> u64 {
    let db = redb::Database::open(path).expect("open the stopped member's kv.redb");
    let txn = db.begin_write().expect("write txn");
    let main = {
        let mut t = txn.open_table(REVS).expect("rows");
        let (key, mut row) = {
            let mut newest = None;
            for r in t.iter().expect("iter") {
                let (k, v) = r.expect("row");
                if v.value().last() == Some(&marker) {
                    newest = Some((k.value(), v.value().to_vec()));
                }
            }
            newest.expect("a put row")
        };
        *row.last_mut().expect("non-empty") ^= 0x20;
        t.insert(key, row.as_slice()).expect("insert");
        key.0
    };
    txn.commit().expect("commit");
    main
}

#[test]
fn an_altered_member_is_found_and_named() {
    if !etcdctl_available() {
        return;
    }
    let rt = common::runtime();
    // Frequent snapshots make the state machine durable often (a member SIGKILLed keeps
    // only what its redb file had made durable, and replays the rest from its log): the
    // altered row is then one the member does not rewrite when it restarts.
    let check = [
        "--experimental-corrupt-check-time",
        "1s",
        "--snapshot-count",
        "5",
    ];
    let mut c = Cluster::start_with(3, &check);
    let eps = c.endpoints();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let victim = (leader + 1) % 3;
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            rt.block_on(c.status(i))
                .expect("status")
                .header
                .expect("header")
                .member_id
        })
        .collect();
    for i in 0..10 {
        etcdctl_ok(&eps, &["put", &format!("k{i}"), "vvvv"], "");
    }
    // Every member applied them; then a few quiet seconds, so that the checks agree first.
    for i in 0..3 {
        etcdctl_ok(&c.endpoint(i), &["get", "k9"], "");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(etcdctl_ok(&eps, &["alarm", "list"], "").stdout.is_empty());

    c.kill(victim);
    let rev = flip_newest_value(&c.data_dir(victim).join("kv.redb"), b'v');
    assert!(rev >= 2, "altered revision {rev}");

    // With the initial check, the altered member refuses to start.
    let mut with_initial = check.to_vec();
    with_initial.push("--experimental-initial-corrupt-check");
    c.set_extra_args(&with_initial);
    c.spawn(victim);
    let status = c.wait_exit(victim).expect("the altered member stops");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(c.log_path(victim)).expect("log");
    let refusal = format!("{:x} found data inconsistency with peers", ids[victim]);
    assert!(log.contains(&refusal), "{log}");

    // Without it, it starts; the leader's periodic check names it.
    c.set_extra_args(&check);
    c.spawn(victim);
    let expected = format!("memberID:{} alarm:CORRUPT ", ids[victim]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = etcdctl(&eps, &["alarm", "list"], "");
        if list.ok && list.stdout.lines().any(|l| l == expected) {
            assert_eq!(list.stdout, format!("{expected}\n"), "only the victim");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm: {}",
            list.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let named = format!("member_id={:x}", ids[victim]);
    let leader_log = std::fs::read_to_string(c.log_path(leader)).expect("log");
    assert!(
        leader_log.lines().any(
            |l| l.contains("same compact revision then hashes must match") && l.contains(&named)
        ),
        "{leader_log}"
    );

    // Writes are refused as etcd's corrupt applier refuses them; reads still answer.
    for i in [leader, victim] {
        let out = etcdctl(&c.endpoint(i), &["put", "after", "v"], "");
        assert!(
            !out.ok && out.stderr.contains("etcdserver: corrupt cluster"),
            "{}",
            out.stderr
        );
    }
    let del = etcdctl(&eps, &["del", "k1"], "");
    assert!(
        !del.ok && del.stderr.contains("etcdserver: corrupt cluster"),
        "{}",
        del.stderr
    );
    assert_eq!(
        etcdctl_ok(&c.endpoint(leader), &["get", "k1"], "").stdout,
        "k1\nvvvv\n"
    );
    for i in 0..3 {
        let status = rt.block_on(c.status(i)).expect("status");
        assert!(status.errors.contains(&expected), "{:?}", status.errors);
    }
}
