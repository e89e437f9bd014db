//! One test per etcd v3 behaviour, with the expected values etcd documents
//! (https://etcd.io/docs/v3.5/learning/api/ and `etcdserver/apply.go`).

mod common;

use common::Kv;
use kv::*;

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

#[test]
fn empty_store_is_at_revision_1_and_each_put_bumps_it() {
    let mut s = Kv::new();
    assert_eq!(s.rev(), 1);
    assert_eq!(s.put("foo", "bar").revision, 2);
    assert_eq!(s.put("foo", "baz").revision, 3);
    assert_eq!(s.rev(), 3);
    assert_eq!(s.get("foo"), Some(kv("foo", "baz", 2, 3, 2)));
}

#[test]
fn delete_then_recreate_starts_a_new_generation() {
    let mut s = Kv::new();
    s.put("k", "a"); // 2
    s.put("k", "b"); // 3
    let d = s.del("k"); // 4
    assert_eq!((d.deleted, d.revision), (1, 4));
    assert_eq!(s.get("k"), None);
    s.put("k", "c"); // 5
    assert_eq!(s.get("k"), Some(kv("k", "c", 5, 5, 1)));
    // History: reading at 3 sees the old generation, at 4 nothing.
    let at = |rev| RangeRequest {
        revision: rev,
        ..RangeRequest::key("k")
    };
    assert_eq!(s.range(&at(3)).kvs, vec![kv("k", "b", 2, 3, 2)]);
    assert!(s.range(&at(4)).kvs.is_empty());
    assert_eq!(
        s.range(&at(3)).revision,
        5,
        "header carries the current revision"
    );
}

#[test]
fn delete_of_nothing_does_not_bump_the_revision() {
    let mut s = Kv::new();
    s.put("a", "1");
    let d = s.del("missing");
    assert_eq!((d.deleted, d.revision), (0, 2));
    assert_eq!(s.rev(), 2);
}

#[test]
fn range_end_conventions() {
    let mut s = Kv::new();
    for k in ["a", "ab", "abc", "b", "c", "\u{7f}"] {
        s.put(k, "v");
    }
    assert_eq!(s.keys(&RangeRequest::key("ab")), ["ab"]);
    assert_eq!(s.keys(&RangeRequest::range("ab", "c")), ["ab", "abc", "b"]);
    assert_eq!(
        s.keys(&RangeRequest::range("b", "\0")),
        ["b", "c", "\u{7f}"]
    );
    assert_eq!(
        s.keys(&RangeRequest::range("\0", "\0")).len(),
        6,
        "etcdctl get --from-key ''"
    );
    assert_eq!(s.keys(&RangeRequest::prefix("ab")), ["ab", "abc"]);
    assert!(
        s.keys(&RangeRequest::range("c", "a")).is_empty(),
        "end before key is empty"
    );
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(
        s.store
            .range(&RangeRequest::key(""))
            .unwrap_err()
            .to_string(),
        "etcdserver: key is not provided"
    );
}

#[test]
fn limit_more_and_count() {
    let mut s = Kv::new();
    for k in ["a", "b", "c", "d"] {
        s.put(k, k);
    }
    let all = RangeRequest::range("a", "\0");
    let r = s.range(&RangeRequest {
        limit: 2,
        ..all.clone()
    });
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [b"a".to_vec(), b"b".to_vec()]
    );
    assert!(r.more);
    assert_eq!(r.count, 4, "count ignores the limit");
    let r = s.range(&RangeRequest {
        limit: 4,
        ..all.clone()
    });
    assert!(!r.more);
    let r = s.range(&RangeRequest {
        count_only: true,
        ..all.clone()
    });
    assert!(r.kvs.is_empty());
    assert_eq!((r.count, r.more), (4, false));
    let r = s.range(&RangeRequest {
        keys_only: true,
        ..all
    });
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
}

#[test]
fn sort_by_each_target() {
    let mut s = Kv::new();
    s.put("a", "3"); // 2
    s.put("b", "1"); // 3
    s.put("c", "2"); // 4
    s.put("a", "4"); // 5: a has version 2, mod 5
    let all = RangeRequest::range("a", "\0");
    let sorted = |s: &Kv, target, order, limit| {
        s.keys(&RangeRequest {
            sort_target: target,
            sort_order: order,
            limit,
            ..all.clone()
        })
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(&s, Key, Descend, 0), ["c", "b", "a"]);
    assert_eq!(sorted(&s, Value, Ascend, 0), ["b", "c", "a"]);
    assert_eq!(sorted(&s, Mod, Descend, 0), ["a", "c", "b"]);
    assert_eq!(sorted(&s, Create, Ascend, 0), ["a", "b", "c"]);
    assert_eq!(
        sorted(&s, Version, Descend, 0),
        ["a", "b", "c"],
        "ties keep key order"
    );
    // A non-key target without order sorts ascending, as etcd does.
    assert_eq!(sorted(&s, Value, None, 0), ["b", "c", "a"]);
    // Limit applies after sorting.
    assert_eq!(sorted(&s, Mod, Descend, 1), ["a"]);
    let r = s.range(&RangeRequest {
        sort_target: Mod,
        sort_order: Descend,
        limit: 1,
        ..all
    });
    assert!(r.more);
    assert_eq!(r.count, 3);
}

#[test]
fn mod_and_create_revision_filters() {
    let mut s = Kv::new();
    s.put("a", "1"); // 2
    s.put("b", "1"); // 3
    s.put("a", "2"); // 4
    let all = RangeRequest::range("a", "\0");
    assert_eq!(
        s.keys(&RangeRequest {
            min_mod_revision: 4,
            ..all.clone()
        }),
        ["a"]
    );
    assert_eq!(
        s.keys(&RangeRequest {
            max_create_revision: 2,
            ..all.clone()
        }),
        ["a"]
    );
    assert_eq!(
        s.keys(&RangeRequest {
            min_create_revision: 3,
            ..all
        }),
        ["b"]
    );
}

#[test]
fn reads_at_past_future_and_compacted_revisions() {
    let mut s = Kv::new();
    s.put("k", "1"); // 2
    s.put("k", "2"); // 3
    s.put("k", "3"); // 4
    let at = |rev| RangeRequest {
        revision: rev,
        ..RangeRequest::key("k")
    };
    assert_eq!(s.range(&at(2)).kvs[0].value, b"1");
    assert_eq!(s.range(&at(1)).kvs, vec![]);
    let future = s.store.range(&at(5)).unwrap_err();
    assert_eq!(
        future.to_string(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert!(matches!(future, Error::Kv(KvError::FutureRevision)));
    assert!(matches!(
        s.apply(Request::Compact { revision: 3 }),
        Ok(Response::Compact { revision: 4 })
    ));
    assert_eq!(s.rev(), 4, "compaction does not change the revision");
    assert_eq!(s.store.compact_revision().unwrap(), 3);
    let gone = s.store.range(&at(2)).unwrap_err();
    assert_eq!(
        gone.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        s.range(&at(3)).kvs[0].value,
        b"2",
        "the compacted revision itself is readable"
    );
    assert_eq!(s.range(&at(3)).kvs[0].version, 2);
}

#[test]
fn compaction_errors_and_what_it_keeps() {
    let mut s = Kv::new();
    s.put("live", "1"); // 2
    s.put("gone", "1"); // 3
    s.del("gone"); // 4
    s.put("live", "2"); // 5
    s.put("later", "1"); // 6
    assert_eq!(
        s.kv_err(Request::Compact { revision: 7 }),
        KvError::FutureRevision
    );
    s.apply(Request::Compact { revision: 5 }).unwrap();
    assert_eq!(
        s.kv_err(Request::Compact { revision: 5 }),
        KvError::Compacted
    );
    assert_eq!(
        s.kv_err(Request::Compact { revision: 4 }),
        KvError::Compacted
    );
    let at5 = RangeRequest {
        revision: 5,
        ..RangeRequest::range("a", "\0")
    };
    assert_eq!(s.keys(&at5), ["live"]);
    assert_eq!(s.get("live"), Some(kv("live", "2", 2, 5, 2)));
    assert_eq!(s.keys(&RangeRequest::range("a", "\0")), ["later", "live"]);
    s.apply(Request::Compact { revision: 6 }).unwrap();
    s.store.check_invariants().unwrap();
}

#[test]
fn put_prev_kv_ignore_value_and_ignore_lease() {
    let mut s = Kv::new();
    s.apply(Request::LeaseGrant { id: 7, ttl: 60 }).unwrap();
    let first = s.put_req(PutRequest {
        prev_kv: true,
        lease: 7,
        ..PutRequest::new("k", "v1")
    });
    assert_eq!(first.prev_kv, None);
    let r = s.put_req(PutRequest {
        prev_kv: true,
        ignore_lease: true,
        ..PutRequest::new("k", "v2")
    });
    assert_eq!(
        r.prev_kv.map(|kv| (kv.value, kv.lease)),
        Some((b"v1".to_vec(), 7))
    );
    assert_eq!(
        s.get("k").map(|kv| kv.lease),
        Some(7),
        "ignore_lease keeps the lease"
    );
    s.put_req(PutRequest {
        ignore_value: true,
        ..PutRequest::new("k", "")
    });
    let now = s.get("k").unwrap();
    assert_eq!(
        (now.value.as_slice(), now.lease, now.version),
        (&b"v2"[..], 0, 3),
        "lease dropped"
    );
    assert!(s.store.lease_keys(7).unwrap().is_empty());
    assert_eq!(
        s.kv_err(Request::Put(PutRequest {
            ignore_value: true,
            ..PutRequest::new("x", "")
        })),
        KvError::KeyNotFound
    );
    assert_eq!(
        s.kv_err(Request::Put(PutRequest {
            ignore_value: true,
            ..PutRequest::new("k", "v")
        })),
        KvError::ValueProvided
    );
    assert_eq!(
        s.kv_err(Request::Put(PutRequest {
            ignore_lease: true,
            lease: 7,
            ..PutRequest::new("k", "")
        })),
        KvError::LeaseProvided
    );
    assert_eq!(
        s.kv_err(Request::Put(PutRequest::new("", "v"))),
        KvError::EmptyKey
    );
    assert_eq!(
        KvError::EmptyKey.to_string(),
        "etcdserver: key is not provided"
    );
}

#[test]
fn delete_range_with_prev_kv() {
    let mut s = Kv::new();
    for k in ["a", "b", "c"] {
        s.put(k, k);
    }
    let d = s.del_req(DeleteRangeRequest {
        prev_kv: true,
        ..DeleteRangeRequest::range("a", "c")
    });
    assert_eq!(d.deleted, 2);
    assert_eq!(d.revision, 5, "one revision for the whole range");
    assert_eq!(
        d.prev_kvs,
        vec![kv("a", "a", 2, 2, 1), kv("b", "b", 3, 3, 1)]
    );
    assert_eq!(s.keys(&RangeRequest::range("a", "\0")), ["c"]);
    assert_eq!(
        s.kv_err(Request::DeleteRange(DeleteRangeRequest::key(""))),
        KvError::EmptyKey
    );
}

#[test]
fn leases_attach_and_revoke_deletes_keys_in_one_revision() {
    let mut s = Kv::new();
    assert_eq!(
        s.kv_err(Request::Put(PutRequest {
            lease: 9,
            ..PutRequest::new("k", "v")
        })),
        KvError::LeaseNotFound
    );
    assert_eq!(
        KvError::LeaseNotFound.to_string(),
        "etcdserver: requested lease not found"
    );
    assert!(matches!(
        s.apply(Request::LeaseGrant { id: 9, ttl: 5 }),
        Ok(Response::LeaseGrant {
            revision: 1,
            id: 9,
            ttl: 5
        })
    ));
    assert_eq!(
        s.kv_err(Request::LeaseGrant { id: 9, ttl: 5 }),
        KvError::LeaseExists
    );
    assert_eq!(
        s.kv_err(Request::LeaseGrant {
            id: 10,
            ttl: LEASE_TTL_MAX + 1
        }),
        KvError::LeaseTtlTooLarge
    );
    s.put_req(PutRequest {
        lease: 9,
        ..PutRequest::new("a", "1")
    }); // 2
    s.put_req(PutRequest {
        lease: 9,
        ..PutRequest::new("b", "1")
    }); // 3
    s.put("c", "1"); // 4
    assert_eq!(s.store.leases().unwrap(), vec![Lease { id: 9, ttl: 5 }]);
    assert_eq!(
        s.store.lease_keys(9).unwrap(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(s.get("a").unwrap().lease, 9);
    s.del("b"); // 5: detaches b
    assert_eq!(s.store.lease_keys(9).unwrap(), vec![b"a".to_vec()]);
    s.put_req(PutRequest {
        lease: 9,
        ..PutRequest::new("b", "2")
    }); // 6
    assert!(matches!(
        s.apply(Request::LeaseRevoke { id: 9 }),
        Ok(Response::LeaseRevoke { revision: 7 })
    ));
    assert_eq!(s.keys(&RangeRequest::range("a", "\0")), ["c"]);
    let at6 = RangeRequest {
        revision: 6,
        ..RangeRequest::range("a", "\0")
    };
    assert_eq!(s.keys(&at6), ["a", "b", "c"]);
    assert!(s.store.leases().unwrap().is_empty());
    assert_eq!(
        s.kv_err(Request::LeaseRevoke { id: 9 }),
        KvError::LeaseNotFound
    );
    // Revoking a lease without keys does not bump the revision.
    s.apply(Request::LeaseGrant { id: 11, ttl: 5 }).unwrap();
    assert!(matches!(
        s.apply(Request::LeaseRevoke { id: 11 }),
        Ok(Response::LeaseRevoke { revision: 7 })
    ));
    s.store.check_invariants().unwrap();
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare::new(key, result, target)
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest::new(k, v))
}

#[test]
fn txn_compares_on_missing_keys_use_zero() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut s = Kv::new();
    for (c, expect) in [
        (cmp("missing", Equal, Version(0)), true),
        (cmp("missing", Equal, Create(0)), true),
        (cmp("missing", Equal, Mod(0)), true),
        (cmp("missing", Equal, Lease(0)), true),
        (cmp("missing", Less, Version(1)), true),
        (cmp("missing", Equal, Value(vec![])), false),
        (cmp("missing", NotEqual, Value(b"x".to_vec())), false),
    ] {
        let r = s.txn(TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        });
        assert_eq!(r.succeeded, expect, "{c:?}");
    }
    assert_eq!(s.rev(), 1, "read-only txns leave the revision alone");
}

#[test]
fn txn_compare_targets_and_results() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut s = Kv::new();
    s.put("k", "m"); // 2
    s.put("k", "m"); // 3: version 2, create 2, mod 3
    for (c, expect) in [
        (cmp("k", Equal, Version(2)), true),
        (cmp("k", Greater, Version(1)), true),
        (cmp("k", Less, Create(3)), true),
        (cmp("k", NotEqual, Mod(3)), false),
        (cmp("k", Greater, Value(b"l".to_vec())), true),
        (cmp("k", Less, Value(b"m".to_vec())), false),
        (cmp("k", Equal, Lease(0)), true),
    ] {
        let r = s.txn(TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        });
        assert_eq!(r.succeeded, expect, "{c:?}");
    }
}

#[test]
fn txn_compare_over_a_range_needs_every_key() {
    use CompareResult::*;
    let mut s = Kv::new();
    s.put("p/a", "1");
    s.put("p/b", "2");
    let over = |result, v: &str| Compare {
        range_end: prefix_end(b"p/"),
        ..cmp("p/", result, CompareTarget::Value(v.into()))
    };
    assert!(
        s.txn(TxnRequest {
            compare: vec![over(Greater, "0")],
            ..Default::default()
        })
        .succeeded
    );
    assert!(
        !s.txn(TxnRequest {
            compare: vec![over(Greater, "1")],
            ..Default::default()
        })
        .succeeded
    );
}

#[test]
fn txn_writes_share_one_revision_and_see_each_other() {
    let mut s = Kv::new();
    s.put("x", "0"); // 2
    let r = s.txn(TxnRequest {
        compare: vec![cmp(
            "x",
            CompareResult::Equal,
            CompareTarget::Value(b"0".to_vec()),
        )],
        success: vec![
            put_op("a", "1"),
            put_op("b", "1"),
            RequestOp::Range(RangeRequest::range("a", "c")),
            RequestOp::DeleteRange(DeleteRangeRequest::key("x")),
            RequestOp::Txn(TxnRequest {
                success: vec![put_op("c", "1")],
                ..Default::default()
            }),
        ],
        failure: vec![],
    });
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    assert_eq!(s.rev(), 3);
    let ResponseOp::Range(read) = &r.responses[2] else {
        panic!("{r:?}")
    };
    assert_eq!(
        read.count, 2,
        "a range in a txn sees the txn's earlier puts"
    );
    let ResponseOp::Put(p) = &r.responses[0] else {
        panic!()
    };
    assert_eq!(p.revision, 3);
    for k in ["a", "b", "c"] {
        assert_eq!(s.get(k).map(|kv| kv.mod_revision), Some(3));
    }
    assert_eq!(s.get("x"), None);
    // The failure branch runs when a compare fails.
    let r = s.txn(TxnRequest {
        compare: vec![cmp("x", CompareResult::Equal, CompareTarget::Version(5))],
        success: vec![put_op("s", "1")],
        failure: vec![put_op("f", "1")],
    });
    assert!(!r.succeeded);
    assert_eq!(
        (s.get("s"), s.get("f").map(|kv| kv.mod_revision)),
        (None, Some(4))
    );
}

#[test]
fn nested_txns_see_earlier_writes_and_may_put_then_delete_a_key() {
    let mut s = Kv::new();
    s.put("k", "old"); // 2
    let nested = |success| {
        RequestOp::Txn(TxnRequest {
            success,
            ..Default::default()
        })
    };
    // etcd accepts a put in one nested txn and a delete of the same key in a later sibling.
    let r = s.txn(TxnRequest {
        success: vec![
            nested(vec![put_op("k", "new")]),
            RequestOp::Txn(TxnRequest {
                compare: vec![cmp(
                    "k",
                    CompareResult::Equal,
                    CompareTarget::Value(b"new".to_vec()),
                )],
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    prev_kv: true,
                    ..DeleteRangeRequest::key("k")
                })],
                failure: vec![],
            }),
        ],
        ..Default::default()
    });
    assert_eq!(r.revision, 3);
    let ResponseOp::Txn(second) = &r.responses[1] else {
        panic!("{r:?}")
    };
    assert!(
        second.succeeded,
        "the nested compare saw the earlier nested put"
    );
    let ResponseOp::DeleteRange(d) = &second.responses[0] else {
        panic!()
    };
    assert_eq!(d.prev_kvs, vec![kv("k", "new", 2, 3, 2)]);
    assert_eq!(s.get("k"), None);
    let at2 = RangeRequest {
        revision: 2,
        ..RangeRequest::key("k")
    };
    assert_eq!(s.range(&at2).kvs, vec![kv("k", "old", 2, 2, 1)]);
    s.put("k", "again"); // 4
    assert_eq!(s.get("k"), Some(kv("k", "again", 4, 4, 1)));
    s.store.check_invariants().unwrap();
}

#[test]
fn txn_errors_apply_nothing() {
    let mut s = Kv::new();
    let dup = TxnRequest {
        success: vec![put_op("a", "1"), put_op("a", "2")],
        ..Default::default()
    };
    assert_eq!(s.kv_err(Request::Txn(dup)), KvError::DuplicateKey);
    assert_eq!(
        KvError::DuplicateKey.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    // A failing op after a successful one rolls the whole txn back.
    let bad_lease = TxnRequest {
        success: vec![
            put_op("a", "1"),
            RequestOp::Put(PutRequest {
                lease: 3,
                ..PutRequest::new("b", "1")
            }),
        ],
        ..Default::default()
    };
    assert_eq!(s.kv_err(Request::Txn(bad_lease)), KvError::LeaseNotFound);
    let future = TxnRequest {
        success: vec![RequestOp::Range(RangeRequest {
            revision: 99,
            ..RangeRequest::key("a")
        })],
        ..Default::default()
    };
    assert_eq!(s.kv_err(Request::Txn(future)), KvError::FutureRevision);
    assert_eq!((s.rev(), s.get("a")), (1, None));
    assert_eq!(
        s.store.applied_index().unwrap(),
        3,
        "failed entries are still applied"
    );
}

#[test]
fn hash_is_deterministic_and_tracks_state() {
    let mut a = Kv::new();
    let mut b = Kv::new();
    for s in [&mut a, &mut b] {
        s.put("k", "v");
        s.del("k");
        s.apply(Request::LeaseGrant { id: 1, ttl: 3 }).unwrap();
    }
    // Raft bookkeeping (applied index) is not keyspace.
    b.store.advance_applied(100).unwrap();
    b.index = 100;
    assert_eq!(a.store.hash().unwrap(), b.store.hash().unwrap());
    b.put("k", "v");
    assert_ne!(a.store.hash().unwrap().1, b.store.hash().unwrap().1);
}
