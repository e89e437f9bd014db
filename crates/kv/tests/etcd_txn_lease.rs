//! Leases and transactions: one test per etcd v3 behaviour, with the expected values etcd
//! documents (https://etcd.io/docs/v3.5/learning/api/ and `etcdserver/apply.go`).

mod common;

use common::Kv;
use skiff_kv::*;

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
    // After a success the transaction is shared by later applies (grouped commits): a
    // failure then undoes its own rows and lease attachments inside it.
    s.apply(Request::LeaseGrant { id: 7, ttl: 5 }).unwrap();
    s.put("c", "1");
    let attach_then_fail = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                lease: 7,
                ..PutRequest::new("a", "1")
            }),
            RequestOp::Put(PutRequest {
                lease: 3,
                ..PutRequest::new("b", "1")
            }),
        ],
        ..Default::default()
    };
    assert_eq!(
        s.kv_err(Request::Txn(attach_then_fail)),
        KvError::LeaseNotFound
    );
    assert_eq!((s.rev(), s.get("a")), (2, None));
    assert!(s.store.lease_keys(7).unwrap().is_empty());
    // The rows match the index, and the lease tables the keys.
    s.store.check_invariants().unwrap();
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

#[test]
fn a_read_only_txn_is_served_outside_the_log_with_the_answer_the_log_would_give() {
    // etcd serves a transaction of ranges only like a range (no log entry). The answer must be
    // the one applying it would give, and serving it must change nothing.
    let mut s = Kv::new();
    s.put("a", "1");
    s.put("b", "2");
    s.put("b", "3");
    s.del("a");
    s.put("c", "4");
    let range = |k: &str, end: &str, limit: i64| {
        RequestOp::Range(RangeRequest {
            range_end: end.into(),
            limit,
            ..RangeRequest::key(k)
        })
    };
    let shapes = [
        TxnRequest {
            compare: vec![cmp("b", CompareResult::Equal, CompareTarget::Version(2))],
            success: vec![range("a", "z", 0), range("b", "", 0)],
            failure: vec![range("c", "", 0)],
        },
        TxnRequest {
            compare: vec![cmp("a", CompareResult::Greater, CompareTarget::Version(0))],
            success: vec![range("b", "", 0)],
            failure: vec![
                range("a", "z", 1),
                RequestOp::Txn(TxnRequest {
                    compare: vec![cmp(
                        "c",
                        CompareResult::Equal,
                        CompareTarget::Value(b"4".to_vec()),
                    )],
                    success: vec![range("c", "", 0)],
                    failure: vec![],
                }),
            ],
        },
        TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Range(RangeRequest {
                revision: 3,
                ..RangeRequest::key("a")
            })],
            failure: vec![],
        },
    ];
    for t in shapes {
        assert!(t.is_read_only());
        let (rev, applied) = (s.rev(), s.store.applied_index().unwrap());
        let outside = s.store.txn_read_only(&t).expect("read-only txn");
        assert_eq!((s.rev(), s.store.applied_index().unwrap()), (rev, applied));
        assert_eq!(s.txn(t), outside, "the log's answer");
    }
    // Refusals are the same too: a range at a compacted revision.
    s.apply(Request::Compact { revision: 4 }).expect("compact");
    let old = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(RangeRequest {
            revision: 2,
            ..RangeRequest::key("a")
        })],
        failure: vec![],
    };
    assert!(matches!(
        s.store.txn_read_only(&old),
        Err(Error::Kv(KvError::Compacted))
    ));
    assert!(!TxnRequest {
        compare: vec![],
        success: vec![],
        failure: vec![RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("x", "y")],
            failure: vec![],
        })],
    }
    .is_read_only());
}
