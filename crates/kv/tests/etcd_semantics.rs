//! One test per etcd v3 behaviour, with the expected values etcd documents
//! (https://etcd.io/docs/v3.5/learning/api/ and `etcdserver/apply.go`).

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
