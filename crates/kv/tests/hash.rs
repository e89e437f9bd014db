//! `Store::hash_kv` (etcd's `HashByRev`, behind Maintenance.HashKV): equal on replicas at a
//! revision both reached, stable while history grows, different when a row differs, and
//! etcd's errors for compacted and future revisions.

use skiff_kv::*;

fn put(k: &str, v: &str) -> Command {
    Command::new(Request::Put(PutRequest::new(k, v)))
}

fn apply_all(s: &Store, from_index: u64, cmds: &[Command]) {
    for (i, c) in cmds.iter().enumerate() {
        s.apply(from_index + i as u64, c).expect("apply");
    }
}

fn history() -> Vec<Command> {
    vec![
        put("a", "1"),
        put("b", "2"),
        put("a", "3"),
        Command::new(Request::DeleteRange(DeleteRangeRequest::key("b"))),
        put("c", "4"),
    ]
}

#[test]
fn replicas_agree_at_every_common_revision_and_the_hash_stays_put() {
    let ahead = Store::in_memory(Options::default()).expect("store");
    let behind = Store::in_memory(Options::default()).expect("store");
    let cmds = history();
    apply_all(&ahead, 1, &cmds);
    apply_all(&behind, 1, &cmds[..3]);
    assert_eq!(behind.revision().expect("rev"), 4);
    let at4 = behind.hash_kv(0).expect("hash");
    assert_eq!(
        (at4.revision, at4.compact_revision),
        (4, 0),
        "rev 0 is the current revision"
    );
    let ahead_at4 = ahead.hash_kv(4).expect("hash");
    assert_eq!(ahead_at4.hash, at4.hash);
    assert_eq!(
        ahead_at4.revision, 6,
        "the answer carries the current revision"
    );
    for rev in 1..=4 {
        assert_eq!(
            ahead.hash_kv(rev).expect("hash").hash,
            behind.hash_kv(rev).expect("hash").hash,
            "revision {rev}"
        );
    }
    assert_ne!(ahead.hash_kv(5).expect("hash").hash, at4.hash);
    // Later history leaves the hash at a revision alone.
    ahead.apply(6, &put("d", "5")).expect("put");
    assert_eq!(ahead.hash_kv(4).expect("hash").hash, at4.hash);
}

#[test]
fn a_different_row_changes_the_hash() {
    let one = Store::in_memory(Options::default()).expect("store");
    let other = Store::in_memory(Options::default()).expect("store");
    apply_all(&one, 1, &[put("a", "1"), put("b", "2")]);
    apply_all(&other, 1, &[put("a", "1"), put("b", "X")]);
    assert_eq!(
        one.hash_kv(2).expect("hash").hash,
        other.hash_kv(2).expect("hash").hash
    );
    assert_ne!(
        one.hash_kv(0).expect("hash").hash,
        other.hash_kv(0).expect("hash").hash
    );
    assert_ne!(one.hash().expect("hash"), other.hash().expect("hash"));
}

#[test]
fn compacted_and_future_revisions_get_etcds_errors() {
    let s = Store::in_memory(Options::default()).expect("store");
    let replica = Store::in_memory(Options::default()).expect("store");
    let mut cmds = history();
    cmds.push(Command::new(Request::Compact { revision: 4 }));
    apply_all(&s, 1, &cmds);
    apply_all(&replica, 1, &cmds);
    let kv_err = |r: Result<KvHash, Error>| match r {
        Err(Error::Kv(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(kv_err(s.hash_kv(4)), KvError::Compacted);
    assert_eq!(kv_err(s.hash_kv(1)), KvError::Compacted);
    assert_eq!(kv_err(s.hash_kv(7)), KvError::FutureRevision);
    let h = s.hash_kv(5).expect("hash");
    assert_eq!((h.revision, h.compact_revision), (6, 4));
    assert_eq!(replica.hash_kv(5).expect("hash"), h);
    assert_eq!(
        replica.hash_kv(0).expect("hash"),
        s.hash_kv(6).expect("hash")
    );
    // Restored from a snapshot, a member hashes the same.
    let copy = Store::in_memory(Options::default()).expect("store");
    copy.restore(&s.snapshot().expect("snapshot"))
        .expect("restore");
    assert_eq!(copy.hash_kv(0).expect("hash"), s.hash_kv(0).expect("hash"));
    assert_eq!(copy.hash().expect("hash"), s.hash().expect("hash"));
}

#[test]
fn the_whole_state_hash_covers_alarms() {
    let s = Store::in_memory(Options::default()).expect("store");
    s.apply(1, &put("a", "1")).expect("put");
    let before = s.hash().expect("hash");
    let kv_before = s.hash_kv(0).expect("hash");
    s.apply(
        2,
        &Command::new(Request::Alarm {
            action: AlarmAction::Activate,
            alarm: AlarmMember {
                member_id: 1,
                alarm: AlarmType::NoSpace,
            },
        }),
    )
    .expect("raise");
    assert_ne!(s.hash().expect("hash"), before);
    assert_eq!(s.hash_kv(0).expect("hash"), kv_before, "no key changed");
}
