//! The member table: published through the log, visible at once, carried by snapshots,
//! refused over its limits, and empty after restoring a snapshot of the version before it.

mod common;

use common::Kv;
use skiff_kv::members::Member;
use skiff_kv::*;

fn member(id: u64, name: &str) -> Member {
    Member {
        id,
        name: name.into(),
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
    }
}

#[test]
fn published_members_are_listed_at_once_and_keep_their_peer_urls() {
    let mut k = Kv::new();
    k.put("a", "1");
    let rev = k.store.revision().unwrap();
    let r = k.apply(Request::MemberPublish(member(9, "m9"))).unwrap();
    assert_eq!(r, Response::Members { revision: rev });
    assert_eq!(
        k.store.revision().unwrap(),
        rev,
        "publishing changes no revision"
    );
    k.apply(Request::MemberPublish(member(3, "m3"))).unwrap();
    // Grouped commits: the table is committed with the publish, not 10 s later.
    assert_eq!(
        k.store.members().unwrap(),
        vec![member(3, "m3"), member(9, "m9")]
    );
    // A member that restarts with other client URLs updates them; its peer URLs stay.
    let moved = Member {
        peer_urls: vec!["http://elsewhere:2380".into()],
        client_urls: vec!["http://10.1.1.1:2379".into()],
        ..member(9, "m9")
    };
    k.apply(Request::MemberPublish(moved)).unwrap();
    let listed = k.store.members().unwrap();
    assert_eq!(listed[1].peer_urls, member(9, "m9").peer_urls);
    assert_eq!(
        listed[1].client_urls,
        vec!["http://10.1.1.1:2379".to_string()]
    );
}

#[test]
fn a_member_over_the_limits_is_refused_and_nothing_is_stored() {
    let mut k = Kv::new();
    let huge = Member {
        client_urls: vec!["x".repeat(4096)],
        ..member(1, "m1")
    };
    assert_eq!(k.kv_err(Request::MemberPublish(huge)), KvError::BadMember);
    assert_eq!(
        k.kv_err(Request::MemberPublish(member(0, "zero"))),
        KvError::BadMember
    );
    assert!(k.store.members().unwrap().is_empty());
}

#[test]
fn snapshots_carry_the_member_table_and_older_snapshots_restore_an_empty_one() {
    let mut a = Kv::new();
    a.put("k", "v");
    a.apply(Request::MemberPublish(member(1, "m1"))).unwrap();
    a.apply(Request::MemberPublish(member(2, "m2"))).unwrap();
    let snap = a.store.snapshot().unwrap();

    let mut b = Kv::new();
    b.apply(Request::MemberPublish(member(7, "stale"))).unwrap();
    b.store.restore(&snap).unwrap();
    assert_eq!(b.store.members().unwrap(), a.store.members().unwrap());
    assert_eq!(b.store.hash().unwrap(), a.store.hash().unwrap());

    // The same state as version 2 wrote it: no member, alarm or auth sections (three count
    // bytes and the default auth state less), its own version byte and checksum. It
    // restores, with no members.
    let mut empty = Kv::new();
    empty.put("k", "v");
    let v5 = empty.store.snapshot().unwrap();
    let auth = skiff_kv::AuthState::default().encode();
    let body = &v5[..v5.len() - 4 - auth.len() - 1];
    assert_eq!(body[8], 5, "version byte");
    assert_eq!(
        body[body.len() - 3..],
        [0, 0, 0],
        "no members, none removed, no alarms"
    );
    let mut v2 = body[..body.len() - 3].to_vec();
    v2[8] = 2;
    let crc = crc32fast::hash(&v2);
    v2.extend_from_slice(&crc.to_le_bytes());
    b.store.restore(&v2).unwrap();
    assert!(b.store.members().unwrap().is_empty());
    assert_eq!(b.store.hash().unwrap(), empty.store.hash().unwrap());
}

#[test]
fn removed_members_are_removed_for_good_and_snapshots_say_so() {
    let mut k = Kv::new();
    for id in [1, 2, 3] {
        k.apply(Request::MemberPublish(member(id, &format!("m{id}"))))
            .unwrap();
    }
    let rev = k.store.revision().unwrap();
    let r = k.apply(Request::MembersRemoved(vec![2])).unwrap();
    assert_eq!(r, Response::Members { revision: rev });
    assert_eq!(
        k.store.members().unwrap(),
        vec![member(1, "m1"), member(3, "m3")]
    );
    assert_eq!(k.store.removed_members().unwrap(), vec![2]);
    // A removed member cannot come back by publishing.
    k.apply(Request::MemberPublish(member(2, "m2"))).unwrap();
    assert_eq!(k.store.members().unwrap().len(), 2);

    let other = Kv::new();
    other.store.restore(&k.store.snapshot().unwrap()).unwrap();
    assert_eq!(other.store.removed_members().unwrap(), vec![2]);
    assert_eq!(other.store.members().unwrap(), k.store.members().unwrap());
}
