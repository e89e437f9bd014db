//! Request validation (etcd's `v3rpc/key.go` checks, done before anything is applied), compare
//! evaluation and transaction execution.

use std::collections::BTreeSet;

use crate::command::Request;
use crate::error::{Error, KvError};
use crate::index::Live;
use crate::mvcc::KeySpan;
use crate::range;
use crate::types::{
    Compare, CompareResult, CompareTarget, KeyValue, PutRequest, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::view::{key_value, View};
use crate::write::Writer;
use crate::TXN_OPS_MAX;

/// Static checks of a request, in etcd's order; no state is read.
pub(crate) fn check_request(req: &Request) -> Result<(), KvError> {
    match req {
        Request::Range(r) => check_key(&r.key),
        Request::Put(p) => check_put(p),
        Request::DeleteRange(d) => check_key(&d.key),
        Request::Txn(t) => check_txn_request(t),
        Request::MemberPublish(m) => m.check(),
        // From a configuration entry: at most the configuration, which the core bounds.
        Request::MembersRemoved(_) => Ok(()),
        Request::MemberAdd(m) => m.check(),
        Request::MemberUpdate { id, peer_urls } => crate::members::Member {
            id: *id,
            peer_urls: peer_urls.clone(),
            ..Default::default()
        }
        .check(),
        // The alarm table bounds itself (see `crate::alarms`).
        Request::Auth(a) => a.check(),
        Request::Compact { .. }
        | Request::LeaseGrant { .. }
        | Request::LeaseRevoke { .. }
        | Request::Alarm { .. } => Ok(()),
    }
}

/// Static checks of a transaction.
pub(crate) fn check_txn_request(t: &TxnRequest) -> Result<(), KvError> {
    check_txn(t, TXN_OPS_MAX)?;
    // Overlap checks after the size checks, to bound their cost (as etcd does).
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

fn check_put(p: &PutRequest) -> Result<(), KvError> {
    check_key(&p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the largest of compares, success and failure ops must not exceed
/// `ops_max`, and a nested transaction gets what is left (`ops_max - largest`), which also bounds
/// the nesting depth by [`TXN_OPS_MAX`].
fn check_txn(t: &TxnRequest, ops_max: usize) -> Result<(), KvError> {
    let largest = t.compare.len().max(t.success.len()).max(t.failure.len());
    if largest > ops_max {
        return Err(KvError::TooManyOps);
    }
    for c in &t.compare {
        check_key(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_key(&r.key)?,
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) => check_key(&d.key)?,
            RequestOp::Txn(inner) => check_txn(inner, ops_max - largest)?,
        }
    }
    Ok(())
}

/// Keys put and spans deleted by a branch (including nested transactions).
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    /// `(key, range_end)` pairs, interpreted by [`KeySpan::new`].
    dels: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn deletes(&self, key: &[u8]) -> bool {
        self.dels
            .iter()
            .any(|(k, e)| KeySpan::new(k, e).contains(key))
    }
}

/// etcd's `checkIntervals`: within one branch (and the branches nested in it) no key may be
/// put twice, nor be both put and deleted; the success and failure branches of one nested
/// transaction may put the same key since only one of them runs. This is what guarantees that
/// a transaction changes each key at most once per revision.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes, KvError> {
    let mut w = Writes::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            w.dels.push((d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let then = check_intervals(&t.success)?;
        let other = check_intervals(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.deletes(k) {
                return Err(KvError::DuplicateKey);
            }
        }
        w.puts.extend(then.puts.iter().cloned());
        for k in &other.puts {
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.deletes(k) {
                return Err(KvError::DuplicateKey);
            }
        }
        w.puts.extend(other.puts);
        w.dels.extend(then.dels);
        w.dels.extend(other.dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if w.puts.contains(&p.key) || w.deletes(&p.key) {
            return Err(KvError::DuplicateKey);
        }
        w.puts.insert(p.key.clone());
    }
    Ok(w)
}

/// Whether a compare holds on the writer's current view: every live key of the span must
/// satisfy it; a span with no live key compares as a zero pair (version, create, mod and lease
/// 0), except that a value compare on it is false.
pub(crate) fn compare_holds(
    view: &(impl View + ?Sized),
    c: &Compare,
    rev: u64,
) -> Result<bool, Error> {
    // Only a value compare reads rows, after the scan; the index knows the rest.
    let with_value = matches!(c.target, CompareTarget::Value(_));
    let mut any = false;
    let mut holds = true;
    let mut values: Vec<(Vec<u8>, Live)> = Vec::new();
    view.scan(KeySpan::new(&c.key, &c.range_end), rev, &mut |key, live| {
        any = true;
        if with_value {
            values.push((key.to_vec(), live));
            return Ok(true);
        }
        holds = compare_kv(c, &key_value(view, key, live, false)?);
        Ok(holds)
    })?;
    if !any {
        return Ok(!with_value && compare_kv(c, &KeyValue::default()));
    }
    for (key, live) in values {
        if !compare_kv(c, &key_value(view, &key, live, true)?) {
            return Ok(false);
        }
    }
    Ok(holds)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::NotEqual => ord.is_ne(),
    }
}

/// Whether every compare of `t` holds, stopping at the first that does not (etcd evaluates
/// them all on the view before any op).
fn compares_hold(
    t: &TxnRequest,
    mut holds: impl FnMut(&Compare) -> Result<bool, Error>,
) -> Result<bool, Error> {
    for c in &t.compare {
        if !holds(c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs a validated transaction: compares on the view before its ops, then the chosen branch
/// in order, each op seeing the earlier ones' writes. Every write lands at the one revision of
/// the enclosing write transaction.
pub(crate) fn execute(w: &mut Writer<'_>, t: &TxnRequest) -> Result<TxnResponse, Error> {
    let succeeded = compares_hold(t, |c| compare_holds(w, c, w.read_rev()))?;
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(w.range(r)?),
            RequestOp::Put(p) => ResponseOp::Put(w.put(p)?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(w.delete(d)?),
            RequestOp::Txn(inner) => ResponseOp::Txn(execute(w, inner)?),
        });
    }
    Ok(TxnResponse {
        revision: w.read_rev() as i64,
        succeeded,
        responses,
    })
}

/// Runs a validated read-only transaction ([`TxnRequest::is_read_only`]) on the history as of
/// revision `rev`: what [`execute`] would answer, without a write transaction.
pub(crate) fn execute_read_only(
    view: &(impl View + ?Sized),
    t: &TxnRequest,
    rev: u64,
    compacted: u64,
) -> Result<TxnResponse, Error> {
    let succeeded = compares_hold(t, |c| compare_holds(view, c, rev))?;
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(range::range(view, r, rev, compacted)?),
            RequestOp::Txn(inner) => {
                ResponseOp::Txn(execute_read_only(view, inner, rev, compacted)?)
            }
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                panic!("execute_read_only given a transaction that writes")
            }
        });
    }
    Ok(TxnResponse {
        revision: rev as i64,
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, RangeRequest};

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest::new(k, "v"))
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest::range(k, end))
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    }

    fn check(success: Vec<RequestOp>) -> Result<(), KvError> {
        check_request(&Request::Txn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }))
    }

    #[test]
    fn overlapping_writes_are_duplicate_keys() {
        assert_eq!(check(vec![put("a"), put("a")]), Err(KvError::DuplicateKey));
        assert_eq!(
            check(vec![put("b"), del("a", "c")]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(vec![del("a", "\0"), put("z")]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put("a"), txn(vec![put("a")], vec![])]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(vec![del("a", ""), txn(vec![], vec![put("a")])]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put("a"), txn(vec![del("a", "")], vec![])]),
            Err(KvError::DuplicateKey)
        );
        // Allowed: disjoint keys, overlapping deletes, the same key in both nested branches.
        assert_eq!(check(vec![put("a"), put("b"), del("c", "d")]), Ok(()));
        assert_eq!(check(vec![del("a", "c"), del("b", "d")]), Ok(()));
        assert_eq!(check(vec![txn(vec![put("a")], vec![put("a")])]), Ok(()));
        assert_eq!(check(vec![del("a", "b"), put("b")]), Ok(()));
    }

    #[test]
    fn static_checks_match_etcd() {
        let empty = RequestOp::Range(RangeRequest::key(""));
        assert_eq!(check(vec![empty]), Err(KvError::EmptyKey));
        let mut p = PutRequest::new("k", "v");
        p.ignore_value = true;
        assert_eq!(check(vec![RequestOp::Put(p)]), Err(KvError::ValueProvided));
        let mut p = PutRequest::new("k", "");
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(check(vec![RequestOp::Put(p)]), Err(KvError::LeaseProvided));
        let many: Vec<_> = (0..=TXN_OPS_MAX).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(KvError::TooManyOps));
        let ok: Vec<_> = (0..TXN_OPS_MAX).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(ok), Ok(()));
        // Nesting eats the budget: 128 levels of one op each is the most allowed.
        let mut nested = put("x");
        for _ in 0..TXN_OPS_MAX {
            nested = txn(vec![nested], vec![]);
        }
        assert_eq!(check(vec![nested]), Err(KvError::TooManyOps));
    }
}
