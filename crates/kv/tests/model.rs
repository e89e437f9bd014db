//! Property test: the store against a deliberately simple reference model, a `Vec` of every
//! `(key, revision, value or tombstone)` ever written. The model derives versions and create
//! revisions by walking that list, and models compaction only as "reads below it fail", so it
//! shares no code or data structure with the store.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use proptest::prelude::*;
use skiff_kv::*;

/// One write: (key, revision, Some((value, lease)) for a put, None for a delete).
type Row = (Vec<u8>, i64, Option<(Vec<u8>, i64)>);

/// The reference model.
#[derive(Default)]
struct Model {
    /// Every write, in order.
    rows: Vec<Row>,
    /// Granted leases: id -> ttl.
    leases: BTreeMap<i64, i64>,
    /// Store revision minus one (the model starts at 0 changes; etcd at revision 1).
    changes: i64,
    compacted: i64,
    /// Whether the running transaction has written (then reads see revision + 1).
    dirty: bool,
}

fn in_span(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

impl Model {
    fn rev(&self) -> i64 {
        1 + self.changes
    }

    fn read_rev(&self) -> i64 {
        self.rev() + i64::from(self.dirty)
    }

    /// The live pair of `key` at `rev`, computed from scratch.
    fn get(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        let mut kv: Option<KeyValue> = None;
        for (k, r, v) in &self.rows {
            if k != key || *r > rev {
                continue;
            }
            kv = v.as_ref().map(|(value, lease)| {
                let (create, version) = kv
                    .as_ref()
                    .map_or((*r, 1), |p| (p.create_revision, p.version + 1));
                KeyValue {
                    key: k.clone(),
                    create_revision: create,
                    mod_revision: *r,
                    version,
                    value: value.clone(),
                    lease: *lease,
                }
            });
        }
        kv
    }

    fn live(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        let keys: BTreeSet<&Vec<u8>> = self
            .rows
            .iter()
            .map(|(k, _, _)| k)
            .filter(|k| in_span(k, key, end))
            .collect();
        keys.into_iter().filter_map(|k| self.get(k, rev)).collect()
    }

    fn write(&mut self, key: &[u8], value: Option<(Vec<u8>, i64)>) {
        self.rows.push((key.to_vec(), self.rev() + 1, value));
        self.dirty = true;
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, KvError> {
        let cur = self.read_rev();
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev > cur {
            return Err(KvError::FutureRevision);
        }
        if rev < self.compacted {
            return Err(KvError::Compacted);
        }
        let mut kvs = self.live(&r.key, &r.range_end, rev);
        let count = kvs.len() as i64;
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        Ok(RangeResponse {
            revision: cur,
            kvs,
            more,
            count,
        })
    }

    fn check_put(p: &PutRequest) -> Result<(), KvError> {
        if p.ignore_value && !p.value.is_empty() {
            return Err(KvError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(KvError::LeaseProvided);
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, KvError> {
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(KvError::LeaseNotFound);
        }
        let prev = self.get(&p.key, self.read_rev());
        let (value, lease) = match &prev {
            None if p.ignore_value || p.ignore_lease => return Err(KvError::KeyNotFound),
            Some(kv) => (
                if p.ignore_value {
                    kv.value.clone()
                } else {
                    p.value.clone()
                },
                if p.ignore_lease { kv.lease } else { p.lease },
            ),
            None => (p.value.clone(), p.lease),
        };
        self.write(&p.key, Some((value, lease)));
        Ok(PutResponse {
            revision: self.rev() + 1,
            prev_kv: prev.filter(|_| p.prev_kv),
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed = self.live(&d.key, &d.range_end, self.read_rev());
        for kv in &doomed {
            self.write(&kv.key, None);
        }
        DeleteRangeResponse {
            revision: self.read_rev(),
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { vec![] },
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        let kvs = self.live(&c.key, &c.range_end, self.read_rev());
        if kvs.is_empty() && matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        let zero = [KeyValue::default()];
        let kvs = if kvs.is_empty() { &zero[..] } else { &kvs[..] };
        kvs.iter().all(|kv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        })
    }

    /// Flat transactions only (the generator makes no nested ones): a key put twice, or put
    /// and deleted, in one branch is a duplicate.
    fn duplicate(ops: &[RequestOp]) -> bool {
        let mut puts = BTreeSet::new();
        let dels: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
                _ => None,
            })
            .collect();
        ops.iter().any(|op| match op {
            RequestOp::Put(p) => {
                !puts.insert(p.key.clone()) || dels.iter().any(|(k, e)| in_span(&p.key, k, e))
            }
            _ => false,
        })
    }

    fn apply(&mut self, req: &Request) -> Result<Response, KvError> {
        let saved = (self.rows.len(), self.dirty);
        let out = self.apply_inner(req);
        if out.is_err() {
            self.rows.truncate(saved.0);
        }
        self.changes += i64::from(self.dirty && out.is_ok());
        self.dirty = false;
        out
    }

    fn apply_inner(&mut self, req: &Request) -> Result<Response, KvError> {
        Ok(match req {
            Request::Range(r) => Response::Range(self.range(r)?),
            Request::Put(p) => {
                Self::check_put(p)?;
                Response::Put(self.put(p)?)
            }
            Request::DeleteRange(d) => Response::DeleteRange(self.delete(d)),
            Request::Txn(t) => {
                for op in t.success.iter().chain(&t.failure) {
                    if let RequestOp::Put(p) = op {
                        Self::check_put(p)?;
                    }
                }
                if Self::duplicate(&t.success) || Self::duplicate(&t.failure) {
                    return Err(KvError::DuplicateKey);
                }
                let succeeded = t.compare.iter().all(|c| self.holds(c));
                let mut responses = vec![];
                for op in if succeeded { &t.success } else { &t.failure } {
                    responses.push(match op {
                        RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                        RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                        RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d)),
                        RequestOp::Txn(_) => unreachable!("not generated"),
                    });
                }
                Response::Txn(TxnResponse {
                    revision: self.read_rev(),
                    succeeded,
                    responses,
                })
            }
            Request::Compact { revision } => {
                if *revision <= self.compacted {
                    return Err(KvError::Compacted);
                }
                if *revision > self.rev() {
                    return Err(KvError::FutureRevision);
                }
                self.compacted = *revision;
                Response::Compact {
                    revision: self.rev(),
                }
            }
            Request::LeaseGrant { id, ttl } => {
                if *id == 0 {
                    return Err(KvError::LeaseNotFound);
                }
                if self.leases.insert(*id, *ttl).is_some() {
                    return Err(KvError::LeaseExists);
                }
                Response::LeaseGrant {
                    revision: self.rev(),
                    id: *id,
                    ttl: *ttl,
                }
            }
            Request::LeaseRevoke { id } => {
                if self.leases.remove(id).is_none() {
                    return Err(KvError::LeaseNotFound);
                }
                for kv in self.live(b"\0", b"\0", self.read_rev()) {
                    if kv.lease == *id {
                        self.write(&kv.key, None);
                    }
                }
                Response::LeaseRevoke {
                    revision: self.read_rev(),
                }
            }
            // Not generated: the member table is outside the key-value model.
            Request::MemberPublish(_)
            | Request::MembersRemoved(_)
            | Request::MemberAdd(_)
            | Request::MemberUpdate { .. }
            | Request::Alarm { .. }
            | Request::Auth(_) => unreachable!("not generated"),
        })
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "b", "bb", "c", "d"]).prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "", "\0", "bz", "c", "e", "a"])
        .prop_map(|k| k.as_bytes().to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "x", "y", "z"]).prop_map(|v| v.as_bytes().to_vec())
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (key(), range_end(), 0i64..4, -1i64..14).prop_map(|(key, range_end, limit, revision)| {
        RangeRequest {
            key,
            range_end,
            limit,
            revision,
            ..Default::default()
        }
    })
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    let lease = prop::sample::select(vec![0i64, 0, 1, 2]);
    let ignore = prop::sample::select(vec![
        (false, false),
        (false, false),
        (true, false),
        (false, true),
    ]);
    (key(), value(), any::<bool>(), lease, ignore).prop_map(
        |(key, value, prev_kv, lease, (ignore_value, ignore_lease))| PutRequest {
            key,
            value,
            prev_kv,
            lease,
            ignore_value,
            ignore_lease,
        },
    )
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        range_req().prop_map(RequestOp::Range),
        put_req().prop_map(RequestOp::Put),
        delete_req().prop_map(RequestOp::DeleteRange),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..10).prop_map(CompareTarget::Create),
        (0i64..10).prop_map(CompareTarget::Mod),
        value().prop_map(CompareTarget::Value),
        (0i64..3).prop_map(CompareTarget::Lease),
    ];
    (
        key(),
        prop::sample::select(vec!["", "", "\0", "c"]),
        result,
        target,
    )
        .prop_map(|(key, end, result, target)| Compare {
            key,
            range_end: end.into(),
            result,
            target,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => put_req().prop_map(Request::Put),
        2 => delete_req().prop_map(Request::DeleteRange),
        2 => range_req().prop_map(Request::Range),
        3 => (prop::collection::vec(compare(), 0..3), prop::collection::vec(op(), 0..4), prop::collection::vec(op(), 0..3))
            .prop_map(|(compare, success, failure)| Request::Txn(TxnRequest { compare, success, failure })),
        1 => (0i64..14).prop_map(|revision| Request::Compact { revision }),
        1 => (0i64..3).prop_map(|id| Request::LeaseGrant { id, ttl: 10 }),
        1 => (0i64..3).prop_map(|id| Request::LeaseRevoke { id }),
    ]
}

/// Every read the model can answer, at every revision, must match.
fn same_history(store: &Store, model: &Model) {
    for rev in 0..=model.rev() + 1 {
        let req = RangeRequest {
            revision: rev,
            ..RangeRequest::range("\0", "\0")
        };
        let got = store.range(&req).map_err(|e| match e {
            Error::Kv(k) => k,
            other => panic!("{other}"),
        });
        assert_eq!(got, model.range(&req), "full range at revision {rev}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference_model(
        requests in prop::collection::vec(request(), 1..40),
        grouped in any::<bool>(),
    ) {
        // Grouped: the applies share one open transaction (their rows read from the
        // index's pending rows, a failed request undone inside it) until a check settles it.
        let options = Options {
            commit_delay: if grouped { std::time::Duration::from_secs(10) } else { std::time::Duration::ZERO },
            ..Options::default()
        };
        let store = Store::in_memory(options).expect("store");
        let mut model = Model::default();
        for (i, req) in requests.iter().enumerate() {
            let got = store.apply(i as u64 + 1, &Command::new(req.clone())).map_err(|e| match e {
                Error::Kv(k) => k,
                other => panic!("storage fault: {other}"),
            });
            let want = model.apply(req);
            prop_assert_eq!(&got, &want, "request {} {:?}", i, req);
            prop_assert_eq!(store.revision().expect("rev"), model.rev());
            prop_assert_eq!(store.compact_revision().expect("compact"), model.compacted);
            let leases: Vec<_> = model.leases.iter().map(|(&id, &ttl)| Lease { id, ttl }).collect();
            prop_assert_eq!(store.leases().expect("leases"), leases);
            if !grouped || i % 7 == 6 {
                store.check_invariants().expect("invariants");
            }
        }
        store.check_invariants().expect("invariants");
        same_history(&store, &model);

        // A snapshot restored elsewhere answers the same, and hashes the same.
        let copy = Store::in_memory(Options::default()).expect("store");
        copy.apply(1, &Command::new(Request::Put(PutRequest::new("junk", "x")))).expect("put");
        copy.restore(&store.snapshot().expect("snapshot")).expect("restore");
        same_history(&copy, &model);
        prop_assert_eq!(copy.hash().expect("hash"), store.hash().expect("hash"));
        prop_assert_eq!(copy.applied_index().expect("applied"), requests.len() as u64);
    }
}

/// Writes on two keys, so that nested transactions often touch the same key.
fn dense_op() -> impl Strategy<Value = RequestOp> {
    let key = prop::sample::select(vec!["a", "b"]);
    let end = prop::sample::select(vec!["", "", "\0"]);
    prop_oneof![
        3 => (key.clone(), value()).prop_map(|(k, v)| RequestOp::Put(PutRequest::new(k, v))),
        3 => (key.clone(), end).prop_map(|(k, e)| RequestOp::DeleteRange(DeleteRangeRequest::range(k, e))),
        1 => key.prop_map(|k| RequestOp::Range(RangeRequest::key(k))),
        1 => op(),
    ]
}

/// Nested transactions of random shape (up to three levels) on a few keys.
fn nested_txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = dense_op();
    let ops = leaf.prop_recursive(3, 24, 4, |inner| {
        (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(inner.clone(), 0..4),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(compare, success, failure)| {
                RequestOp::Txn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    });
    (
        prop::collection::vec(compare(), 0..2),
        prop::collection::vec(ops.clone(), 0..4),
        prop::collection::vec(ops, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever nested transactions clients send, apply returns a response or a request error
    /// (never a panic or a storage fault), bumps the revision by at most one, and keeps the
    /// store's invariants; a failed transaction changes nothing.
    #[test]
    fn nested_txns_never_panic_and_keep_invariants(txns in prop::collection::vec(nested_txn(), 1..12)) {
        let store = Store::in_memory(Options::default()).expect("store");
        store.apply(1, &Command::new(Request::LeaseGrant { id: 1, ttl: 10 })).expect("grant");
        for (i, t) in txns.into_iter().enumerate() {
            let before = (store.revision().expect("rev"), store.hash().expect("hash"));
            match store.apply(i as u64 + 2, &Command::new(Request::Txn(t))) {
                Ok(resp) => prop_assert!(resp.revision() - before.0 <= 1),
                Err(Error::Kv(_)) => prop_assert_eq!(store.hash().expect("hash"), before.1),
                Err(other) => panic!("storage fault: {other}"),
            }
            prop_assert!(store.revision().expect("rev") - before.0 <= 1);
            store.check_invariants().expect("invariants");
        }
    }
}

/// One watch event as a comparable tuple: revision, key, put?, value, previous value.
type EventRow = (i64, Vec<u8>, bool, Vec<u8>, Option<Vec<u8>>);

/// Every change the watch API reports from revision 1 on.
fn all_events(store: &Store) -> Vec<EventRow> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let c = match store.changes(b"\0", b"\0", from, 1000, true) {
            Ok(c) => c,
            Err(Error::Kv(KvError::Compacted)) => return out,
            Err(other) => panic!("{other}"),
        };
        for e in &c.events {
            out.push((
                e.kv.mod_revision,
                e.kv.key.clone(),
                e.kind == EventKind::Put,
                e.kv.value.clone(),
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            ));
        }
        if c.next > c.revision {
            return out;
        }
        from = c.next;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Applying in batches of any size gives the answers applying one by one gives (the
    /// overlay of uncommitted changes reads like the committed index), the same history, the
    /// same watch events and the same hash; and a reopened store (its key index rebuilt from
    /// the rows on disk) reads the same at every revision.
    #[test]
    fn batches_and_reopening_read_like_applying_one_by_one(
        requests in prop::collection::vec(request(), 1..40),
        cuts in prop::collection::vec(1usize..8, 1..40),
    ) {
        let one = Store::in_memory(Options::default()).expect("store");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.redb");
        let batched = Store::open(&path, Options::default()).expect("store");
        let cmds: Vec<Command> = requests.iter().cloned().map(Command::new).collect();
        let want = common::apply_one_by_one(&one, 1, &cmds);
        let got = common::apply_in_batches(&batched, &cmds, &cuts);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(batched.hash().expect("hash"), one.hash().expect("hash"));
        prop_assert_eq!(all_events(&batched), all_events(&one));
        let rev = one.revision().expect("rev");
        let full = |s: &Store, r: i64| s.range(&RangeRequest { revision: r, ..RangeRequest::range("\0", "\0") }).ok();
        let before: Vec<_> = (0..=rev).map(|r| full(&batched, r)).collect();
        drop(batched);
        let reopened = Store::open(&path, Options::default()).expect("reopen");
        reopened.check_invariants().expect("invariants");
        let after: Vec<_> = (0..=rev).map(|r| full(&reopened, r)).collect();
        prop_assert_eq!(before, after);
        prop_assert_eq!(reopened.hash().expect("hash"), one.hash().expect("hash"));
    }
}

/// Readers running beside the apply thread, which puts, deletes and compacts, always see one
/// consistent state: a range at the current revision or any revision not compacted never
/// fails with anything but "compacted", and what it returns is what that revision held.
#[test]
fn readers_beside_apply_and_compaction_see_consistent_states() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let store = Arc::new(Store::in_memory(Options::default()).expect("store"));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let (rev, compacted) = store.revisions().expect("revisions");
                    for at in [0, rev as i64, compacted.max(1) as i64] {
                        let req = RangeRequest {
                            revision: at,
                            ..RangeRequest::prefix("k")
                        };
                        match store.range(&req) {
                            Ok(r) => {
                                // Every value names the revision it was written at.
                                for kv in &r.kvs {
                                    let v: i64 = String::from_utf8_lossy(&kv.value)
                                        .parse()
                                        .expect("numeric value");
                                    assert_eq!(v, kv.mod_revision, "a value from another row");
                                }
                                reads += 1;
                            }
                            Err(Error::Kv(KvError::Compacted)) => {}
                            Err(other) => panic!("read failed beside apply: {other}"),
                        }
                    }
                    let w = store.changes(b"k", b"l", compacted.max(1), 100, true);
                    assert!(
                        matches!(w, Ok(_) | Err(Error::Kv(KvError::Compacted))),
                        "watch read failed: {w:?}"
                    );
                }
                reads
            })
        })
        .collect();
    let mut index = 0;
    for round in 0..400u64 {
        let rev = store.revision().expect("rev");
        let req = match round % 10 {
            7 => Request::DeleteRange(DeleteRangeRequest::range("k3", "k5")),
            9 => Request::Compact { revision: rev - 3 },
            _ => Request::Put(PutRequest::new(
                format!("k{}", round % 7),
                (rev + 1).to_string(),
            )),
        };
        index += 1;
        match store.apply(index, &Command::new(req)) {
            Ok(_) | Err(Error::Kv(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    store.check_invariants().expect("invariants");
}
