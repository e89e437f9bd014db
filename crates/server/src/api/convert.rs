//! Conversions between etcd's protobuf messages and the state machine's plain types
//! ([`kv::types`]). Requests come from clients, so unknown enum values are refused with a
//! message rather than guessed.

use crate::pb::etcdserverpb as epb;
use crate::pb::mvccpb;

/// A client request that cannot be expressed in the state machine's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// A `RangeRequest` for the state machine.
pub fn range_request(r: &epb::RangeRequest) -> Result<kv::RangeRequest, InvalidRequest> {
    use epb::range_request::{SortOrder as O, SortTarget as T};
    let sort_order = match O::try_from(r.sort_order) {
        Ok(O::None) => kv::SortOrder::None,
        Ok(O::Ascend) => kv::SortOrder::Ascend,
        Ok(O::Descend) => kv::SortOrder::Descend,
        Err(_) => {
            return Err(InvalidRequest(format!(
                "unknown sort order {}",
                r.sort_order
            )))
        }
    };
    let sort_target = match T::try_from(r.sort_target) {
        Ok(T::Key) => kv::SortTarget::Key,
        Ok(T::Version) => kv::SortTarget::Version,
        Ok(T::Create) => kv::SortTarget::Create,
        Ok(T::Mod) => kv::SortTarget::Mod,
        Ok(T::Value) => kv::SortTarget::Value,
        Err(_) => {
            return Err(InvalidRequest(format!(
                "unknown sort target {}",
                r.sort_target
            )))
        }
    };
    Ok(kv::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// A `PutRequest` for the state machine.
pub fn put_request(r: &epb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// A `DeleteRangeRequest` for the state machine.
pub fn delete_request(r: &epb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        prev_kv: r.prev_kv,
    }
}

/// A `TxnRequest` for the state machine (nested transactions included; the kv crate bounds
/// their depth and size when it validates).
pub fn txn_request(r: &epb::TxnRequest) -> Result<kv::TxnRequest, InvalidRequest> {
    Ok(kv::TxnRequest {
        compare: r.compare.iter().map(compare).collect::<Result<_, _>>()?,
        success: r.success.iter().map(request_op).collect::<Result<_, _>>()?,
        failure: r.failure.iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

fn compare(c: &epb::Compare) -> Result<kv::Compare, InvalidRequest> {
    use epb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => kv::CompareResult::Equal,
        Ok(R::Greater) => kv::CompareResult::Greater,
        Ok(R::Less) => kv::CompareResult::Less,
        Ok(R::NotEqual) => kv::CompareResult::NotEqual,
        Err(_) => {
            return Err(InvalidRequest(format!(
                "unknown compare result {}",
                c.result
            )))
        }
    };
    // The target enum says which union member counts; a missing member compares against the
    // zero value, as in etcd.
    let u = c.target_union.clone();
    let target = match T::try_from(c.target) {
        Ok(T::Version) => kv::CompareTarget::Version(match u {
            Some(U::Version(v)) => v,
            _ => 0,
        }),
        Ok(T::Create) => kv::CompareTarget::Create(match u {
            Some(U::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(T::Mod) => kv::CompareTarget::Mod(match u {
            Some(U::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(T::Value) => kv::CompareTarget::Value(match u {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(T::Lease) => kv::CompareTarget::Lease(match u {
            Some(U::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => {
            return Err(InvalidRequest(format!(
                "unknown compare target {}",
                c.target
            )))
        }
    };
    Ok(kv::Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        result,
        target,
    })
}

fn request_op(op: &epb::RequestOp) -> Result<kv::RequestOp, InvalidRequest> {
    use epb::request_op::Request as R;
    match &op.request {
        Some(R::RequestRange(r)) => Ok(kv::RequestOp::Range(range_request(r)?)),
        Some(R::RequestPut(r)) => Ok(kv::RequestOp::Put(put_request(r))),
        Some(R::RequestDeleteRange(r)) => Ok(kv::RequestOp::DeleteRange(delete_request(r))),
        Some(R::RequestTxn(r)) => Ok(kv::RequestOp::Txn(txn_request(r)?)),
        None => Err(InvalidRequest("txn operation without a request".into())),
    }
}

/// A key-value pair for the wire.
pub fn key_value(kv: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A range response for the wire; `header` is filled in by the caller.
pub fn range_response(r: kv::RangeResponse, header: epb::ResponseHeader) -> epb::RangeResponse {
    epb::RangeResponse {
        header: Some(epb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put response for the wire.
pub fn put_response(r: kv::PutResponse, header: epb::ResponseHeader) -> epb::PutResponse {
    epb::PutResponse {
        header: Some(epb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        prev_kv: r.prev_kv.map(key_value),
    }
}

/// A delete response for the wire.
pub fn delete_response(
    r: kv::DeleteRangeResponse,
    header: epb::ResponseHeader,
) -> epb::DeleteRangeResponse {
    epb::DeleteRangeResponse {
        header: Some(epb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A transaction response for the wire; nested responses carry the same header, as in etcd.
pub fn txn_response(r: kv::TxnResponse, header: epb::ResponseHeader) -> epb::TxnResponse {
    use epb::response_op::Response as R;
    let header = epb::ResponseHeader {
        revision: r.revision,
        ..header
    };
    let responses = r
        .responses
        .into_iter()
        .map(|op| epb::ResponseOp {
            response: Some(match op {
                kv::ResponseOp::Range(r) => R::ResponseRange(range_response(r, header)),
                kv::ResponseOp::Put(r) => R::ResponsePut(put_response(r, header)),
                kv::ResponseOp::DeleteRange(r) => {
                    R::ResponseDeleteRange(delete_response(r, header))
                }
                kv::ResponseOp::Txn(r) => R::ResponseTxn(txn_response(r, header)),
            }),
        })
        .collect();
    epb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}
