//! Backups (`skiff_kv::backup`): a view written in etcd's envelope verifies, restores into a new
//! store with every key, revision, compaction and lease (sessions and members dropped, the
//! applied index reset), and a truncated or altered file is refused without touching the
//! store.

mod common;

use std::io::Cursor;

use common::Kv;
use skiff_kv::backup::{verify_backup, BODY_ALIGN_BYTES, DIGEST_BYTES};
use skiff_kv::members::Member;
use skiff_kv::*;

/// A backup of `store` as `etcdctl snapshot save` stores it: the body, then its sha256.
fn backup_of(store: &Store) -> Vec<u8> {
    let view = store.snapshot_view().expect("view");
    let announced = view.backup_body_bytes().expect("size");
    let mut file = Vec::new();
    let (body, digest) = view.write_backup_body(&mut file).expect("body");
    assert_eq!(body, announced, "the announced size is what is written");
    assert_eq!(file.len() as u64, body);
    file.extend_from_slice(&digest);
    file
}

/// A store with history, a compaction, a lease with keys, a session and a member.
fn source() -> Kv {
    let mut k = Kv::new();
    k.put("a", "1");
    k.put("a", "2");
    k.put("gone", "x");
    k.del("gone");
    k.apply(Request::LeaseGrant { id: 77, ttl: 30 })
        .expect("grant");
    k.put_req(PutRequest {
        lease: 77,
        ..PutRequest::new("leased", "v")
    });
    k.apply(Request::Compact { revision: 3 }).expect("compact");
    k.put("b", "3");
    k.put("big", &"v".repeat(2000));
    k.apply(Request::MemberPublish(Member {
        id: 9,
        name: "old".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
        client_urls: vec!["http://127.0.0.1:2".into()],
    }))
    .expect("publish");
    k.index += 1;
    let put = Command::with_session(5, 1, Request::Put(PutRequest::new("s", "1")));
    k.store.apply(k.index, &put).expect("session put");
    k
}

fn all(store: &Store) -> Vec<KeyValue> {
    store
        .range(&RangeRequest::range("\0", "\0"))
        .expect("range")
        .kvs
}

#[test]
fn a_backup_restores_every_key_revision_and_lease_into_a_new_store() {
    let k = source();
    // The last writes are still in the open grouped transaction: the backup includes them.
    let file = backup_of(&k.store);
    assert_eq!(file.len() as u64 % BODY_ALIGN_BYTES, DIGEST_BYTES);
    let summary = verify_backup(&mut Cursor::new(&file)).expect("verifies");
    assert_eq!(summary.file_bytes, file.len() as u64);
    assert_eq!(summary.state.revision, k.store.revision().unwrap() as u64);
    assert_eq!(summary.state.compacted, 3);
    assert_eq!(summary.state.applied, k.index);
    assert_eq!(summary.state.leases, 1);
    assert_eq!(
        summary.state.keys, 6,
        "a, gone (its history), leased, b, big, s"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let restored = Store::open(dir.path().join("kv.redb"), Options::default()).expect("open");
    restored
        .restore_backup(&mut Cursor::new(&file), 1)
        .expect("restores");
    assert_eq!(all(&restored), all(&k.store));
    assert_eq!(restored.revision().unwrap(), k.store.revision().unwrap());
    assert_eq!(restored.compact_revision().unwrap(), 3);
    assert_eq!(restored.applied_index().unwrap(), 1);
    assert_eq!(restored.leases().unwrap(), k.store.leases().unwrap());
    assert_eq!(restored.lease_keys(77).unwrap(), vec![b"leased".to_vec()]);
    assert!(
        restored.members().unwrap().is_empty(),
        "old members dropped"
    );
    assert!(restored.removed_members().unwrap().is_empty());
    restored.check_invariants().expect("invariants");
    // The old cluster's session is gone: the same (client, seq) is a new write here, where
    // the source answers it from its session.
    let rev = restored.revision().unwrap();
    let again = Command::with_session(5, 1, Request::Put(PutRequest::new("s", "1")));
    restored.apply(2, &again).expect("applies");
    assert_eq!(restored.revision().unwrap(), rev + 1);
    let source_rev = k.store.revision().unwrap();
    k.store.apply(k.index + 1, &again).expect("deduplicated");
    assert_eq!(k.store.revision().unwrap(), source_rev);
    // It reopens as it was left (the restore is committed durably).
    drop(restored);
    let reopened = Store::open(dir.path().join("kv.redb"), Options::default()).expect("reopen");
    assert_eq!(reopened.applied_index().unwrap(), 2);
    assert_eq!(reopened.revision().unwrap(), rev + 1);
    // A backup of the restored store holds the same rows.
    let second = backup_of(&reopened);
    let s2 = verify_backup(&mut Cursor::new(&second)).expect("verifies");
    assert_eq!(s2.state.revision, (rev + 1) as u64);
}

#[test]
fn a_truncated_or_altered_backup_is_refused_and_changes_nothing() {
    let k = source();
    let file = backup_of(&k.store);
    let target = Kv::new();
    let mut t = target;
    t.put("mine", "1");
    let before = all(&t.store);
    let mut bad: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        (
            "truncated by one byte".into(),
            file[..file.len() - 1].to_vec(),
        ),
        ("truncated to 512+32".into(), file[..544].to_vec()),
        (
            "without its digest".into(),
            file[..file.len() - 32].to_vec(),
        ),
    ];
    for at in [
        0,
        9,
        file.len() / 2,
        file.len() - 40,
        file.len() - 33,
        file.len() - 1,
    ] {
        let mut flipped = file.clone();
        flipped[at] ^= 0x01;
        bad.push((format!("byte {at} flipped"), flipped));
    }
    for (what, bytes) in bad {
        let err = verify_backup(&mut Cursor::new(&bytes)).expect_err(&what);
        let text = err.to_string();
        assert!(
            text.contains("truncated") || text.contains("corrupt"),
            "{what}: {text}"
        );
        t.store
            .restore_backup(&mut Cursor::new(&bytes), 1)
            .expect_err(&what);
        assert_eq!(all(&t.store), before, "{what}: the store changed");
    }
}

#[test]
fn a_crafted_file_with_a_valid_digest_is_still_checked_inside() {
    // A body whose digest matches but whose snapshot is broken (a flipped byte, digest
    // recomputed): the snapshot's own CRC refuses it.
    use sha2::Digest;
    let k = source();
    let mut file = backup_of(&k.store);
    file[20] ^= 0x40;
    let body = file.len() - 32;
    let digest = sha2::Sha256::digest(&file[..body]);
    file[body..].copy_from_slice(&digest);
    let err = verify_backup(&mut Cursor::new(&file)).expect_err("refused");
    assert!(err.to_string().contains("snapshot"), "{err}");
}
