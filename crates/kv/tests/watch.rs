//! Changes by revision (the state machine side of etcd's Watch).

use skiff_kv::*;

fn store() -> Store {
    // Grouped commits, as the server runs: changes are read from the open transaction too.
    Store::in_memory(Options {
        commit_delay: std::time::Duration::from_secs(10),
        ..Options::default()
    })
    .expect("store")
}

fn apply(s: &Store, index: u64, req: Request) {
    s.apply(index, &Command::new(req)).expect("apply");
}

fn put(k: &str, v: &str) -> Request {
    Request::Put(PutRequest::new(k, v))
}

fn kinds(c: &Changes) -> Vec<(EventKind, String, i64)> {
    c.events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8(e.kv.key.clone()).unwrap(),
                e.kv.mod_revision,
            )
        })
        .collect()
}

#[test]
fn changes_come_in_revision_order_with_prev_kv_and_filters_by_range() {
    let s = store();
    apply(&s, 1, put("a", "1")); // rev 2
    apply(&s, 2, put("b", "1")); // rev 3
    apply(&s, 3, put("a", "2")); // rev 4
    apply(&s, 4, Request::DeleteRange(DeleteRangeRequest::key("a"))); // rev 5
    apply(&s, 5, put("c", "1")); // rev 6
    let all = s.changes(b"a", b"\0", 0, 100, true).unwrap();
    assert_eq!(all.revision, 6);
    assert_eq!(all.next, 7);
    use EventKind::*;
    assert_eq!(
        kinds(&all),
        vec![
            (Put, "a".into(), 2),
            (Put, "b".into(), 3),
            (Put, "a".into(), 4),
            (Delete, "a".into(), 5),
            (Put, "c".into(), 6),
        ]
    );
    assert_eq!(all.events[2].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(all.events[3].prev_kv.as_ref().unwrap().value, b"2");
    assert!(all.events[0].prev_kv.is_none());
    assert_eq!(all.events[2].kv.version, 2);
    // One key, from a revision on, without prev_kv.
    let a = s.changes(b"a", b"", 4, 100, false).unwrap();
    assert_eq!(
        kinds(&a),
        vec![(Put, "a".into(), 4), (Delete, "a".into(), 5)]
    );
    assert!(a.events.iter().all(|e| e.prev_kv.is_none()));
    // Nothing new yet.
    let none = s.changes(b"a", b"\0", 7, 100, false).unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.next, 7);
    // A start past the store revision (a member that has not applied it yet) stays put.
    let ahead = s.changes(b"a", b"\0", 9, 100, false).unwrap();
    assert!(ahead.events.is_empty());
    assert_eq!(ahead.next, 9);
}

#[test]
fn a_batch_ends_at_a_revision_boundary_and_resumes() {
    let s = store();
    // One transaction writes three keys at one revision.
    apply(
        &s,
        1,
        Request::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest::new("k1", "v")),
                RequestOp::Put(PutRequest::new("k2", "v")),
                RequestOp::Put(PutRequest::new("k3", "v")),
            ],
            failure: vec![],
        }),
    );
    apply(&s, 2, put("k4", "v"));
    let first = s.changes(b"k", b"l", 1, 1, false).unwrap();
    assert_eq!(first.events.len(), 3, "a revision is never split");
    assert_eq!(first.next, 3);
    let second = s.changes(b"k", b"l", first.next, 1, false).unwrap();
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.next, 4);
}

#[test]
fn compacted_changes_are_refused_and_the_index_follows_compaction_and_restore() {
    let s = store();
    for i in 1..=6 {
        apply(&s, i, put("k", &i.to_string()));
    }
    apply(&s, 7, Request::Compact { revision: 5 });
    assert!(matches!(
        s.changes(b"k", b"", 3, 10, false),
        Err(Error::Kv(KvError::Compacted))
    ));
    let kept = s.changes(b"k", b"", 5, 10, false).unwrap();
    assert_eq!(kept.events.len(), 3);
    s.check_invariants().unwrap();
    let copy = store();
    copy.restore(&s.snapshot().unwrap()).unwrap();
    copy.check_invariants().unwrap();
    assert_eq!(copy.changes(b"k", b"", 5, 10, false).unwrap(), kept);
}

/// A put and a delete of one key in one revision (sibling nested transactions, which etcd
/// allows too) are two events of that revision, in order, and each reports as its previous
/// pair the key as of the revision before, as etcd's watch does (`ModRevision - 1`).
#[test]
fn a_put_then_delete_in_one_revision_are_two_events_with_the_previous_revisions_pair() {
    let s = store();
    apply(&s, 1, put("k", "old")); // rev 2
    let nested = |op| {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![op],
            failure: vec![],
        })
    };
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            nested(RequestOp::Put(PutRequest::new("k", "new"))),
            nested(RequestOp::DeleteRange(DeleteRangeRequest::key("k"))),
        ],
        failure: vec![],
    };
    apply(&s, 2, Request::Txn(txn)); // rev 3
    let c = s.changes(b"k", b"", 3, 100, true).unwrap();
    assert_eq!(
        kinds(&c),
        vec![
            (EventKind::Put, "k".to_string(), 3),
            (EventKind::Delete, "k".to_string(), 3)
        ]
    );
    assert_eq!(c.events[0].kv.value, b"new");
    for e in &c.events {
        let prev = e.prev_kv.as_ref().expect("k existed at revision 2");
        assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"old"[..], 2));
    }
    assert!(s.range(&RangeRequest::key("k")).unwrap().kvs.is_empty());
}
