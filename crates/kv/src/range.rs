//! Range reads with etcd's semantics (`etcdserver/apply.go` `Range`): revision checks, count,
//! filters, sort, limit and `more`.

use std::cmp::Ordering;

use crate::error::{Error, KvError};
use crate::mvcc::{KeySpan, Rev};
use crate::types::{KeyValue, RangeRequest, RangeResponse, SortOrder, SortTarget};
use crate::view::{key_value, View};

/// Resolves a request revision (`<= 0` = current) and checks it as etcd's mvcc does: above
/// `current` is a future revision, below `compacted` has been compacted (reading exactly at the
/// compacted revision is allowed).
pub(crate) fn read_revision(requested: i64, current: u64, compacted: u64) -> Result<u64, KvError> {
    if requested <= 0 {
        return Ok(current);
    }
    let rev = requested as u64;
    if rev > current {
        return Err(KvError::FutureRevision);
    }
    if rev < compacted {
        return Err(KvError::Compacted);
    }
    Ok(rev)
}

/// Serves `req` from `view`, where `current` is the revision visible to the reader (inside a
/// write transaction that already changed something, the revision being written) and
/// `compacted` the compacted revision. The response header revision is `current`, as in etcd.
///
/// The index answers everything but values: `count`, the revision filters and sorting by
/// anything but the value read no row, and values are read only for the pairs returned.
pub(crate) fn range(
    view: &(impl View + ?Sized),
    req: &RangeRequest,
    current: u64,
    compacted: u64,
) -> Result<RangeResponse, Error> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey.into());
    }
    let rev = read_revision(req.revision, current, compacted)?;
    let order = match (req.sort_target, req.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None, // already key-ordered
        (SortTarget::Key, o) => o,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, o) => o,
    };
    // Without sorting, one past the limit tells `more`; the count still covers every key.
    let fetch_max = if order != SortOrder::None || req.limit <= 0 {
        usize::MAX
    } else {
        (req.limit as usize).saturating_add(1)
    };
    let mut count: i64 = 0;
    // The pairs to return, without values yet, each with the row holding its value.
    let mut found: Vec<(KeyValue, Rev)> = Vec::new();
    view.scan(
        KeySpan::new(&req.key, &req.range_end),
        rev,
        &mut |key, live| {
            count += 1;
            if !req.count_only && found.len() < fetch_max {
                let kv = key_value(view, key, live, false)?;
                if keep(req, &kv) {
                    found.push((kv, live.rev));
                }
            }
            Ok(true)
        },
    )?;
    let by_value = req.sort_target == SortTarget::Value && order != SortOrder::None;
    if by_value {
        for (kv, r) in &mut found {
            kv.value = view.value(*r)?;
        }
    }
    sort(&mut found, req.sort_target, order);
    let mut more = false;
    if req.limit > 0 && found.len() > req.limit as usize {
        found.truncate(req.limit as usize);
        more = true;
    }
    let mut kvs = Vec::with_capacity(found.len());
    for (mut kv, r) in found {
        if req.keys_only {
            kv.value.clear();
        } else if !by_value {
            kv.value = view.value(r)?;
        }
        kvs.push(kv);
    }
    Ok(RangeResponse {
        revision: current as i64,
        kvs,
        more,
        count,
    })
}

/// The min/max mod/create revision filters (0 = unset).
fn keep(req: &RangeRequest, kv: &KeyValue) -> bool {
    let ok = |min: i64, max: i64, v: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    ok(req.min_mod_revision, req.max_mod_revision, kv.mod_revision)
        && ok(
            req.min_create_revision,
            req.max_create_revision,
            kv.create_revision,
        )
}

/// Sorts in place; stable, so ties keep ascending key order (etcd's sort is unstable and leaves
/// tie order unspecified).
fn sort<T>(kvs: &mut [(KeyValue, T)], target: SortTarget, order: SortOrder) {
    let cmp = |(a, _): &(KeyValue, T), (b, _): &(KeyValue, T)| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_checks_match_etcd() {
        assert_eq!(read_revision(0, 5, 3), Ok(5));
        assert_eq!(read_revision(-1, 5, 3), Ok(5));
        assert_eq!(read_revision(3, 5, 3), Ok(3));
        assert_eq!(read_revision(2, 5, 3), Err(KvError::Compacted));
        assert_eq!(read_revision(6, 5, 3), Err(KvError::FutureRevision));
    }
}
