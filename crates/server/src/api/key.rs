//! etcd's KV service (`etcdserverpb.KV`; etcd's `v3rpc/key.go`): Range, Put, DeleteRange, Txn
//! and Compact. Writes run on the leader through `Api::write_kv` (puts, deletes and
//! transactions, forwarded on the batched pipe) and `Api::write` (compactions), both in the one
//! forward-and-retry loop; a range, and a transaction of ranges only, is linearizable (ReadIndex, then this
//! member's state machine) unless `serializable` is set, and never enters the log.

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::{convert, unexpected, Api};
use crate::pb::etcdserverpb as epb;
use crate::peer::{forwarded, Origin, Reached};
use crate::rpctypes::ERR_KEY_NOT_PROVIDED;

impl Api {
    async fn range_impl(
        &self,
        caller: Caller,
        r: epb::RangeRequest,
    ) -> Result<epb::RangeResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        let req = convert::range_request(&r).map_err(|e| Status::invalid_argument(e.0))?;
        if !r.serializable {
            self.linearizable_read().await?;
        }
        // Against the state the read sees (after the barrier), as etcd's `isPermitted`.
        self.check_permission(&caller, || kv::Request::Range(req.clone()))?;
        let resp = self.read_range(req).await?;
        Ok(convert::range_response(resp, self.header()))
    }

    async fn put_impl(
        &self,
        caller: Caller,
        r: epb::PutRequest,
    ) -> Result<epb::PutResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        self.check_quota(super::quota::put_cost(&r)).await?;
        let req = kv::Request::Put(convert::put_request(&r));
        match self.write_kv_as(req, Some(caller.stamp())).await? {
            kv::Response::Put(p) => Ok(convert::put_response(p, self.header())),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_impl(
        &self,
        caller: Caller,
        r: epb::DeleteRangeRequest,
    ) -> Result<epb::DeleteRangeResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        let req = kv::Request::DeleteRange(convert::delete_request(&r));
        match self.write_kv_as(req, Some(caller.stamp())).await? {
            kv::Response::DeleteRange(d) => Ok(convert::delete_response(d, self.header())),
            other => Err(unexpected(&other)),
        }
    }

    async fn txn_impl(
        &self,
        caller: Caller,
        r: epb::TxnRequest,
    ) -> Result<epb::TxnResponse, Status> {
        let txn = convert::txn_request(&r).map_err(|e| Status::invalid_argument(e.0))?;
        if txn.is_read_only() {
            // Served like a range, without a log entry (etcd's `isTxnReadonly`): linearizable
            // unless every op is a serializable range.
            if !is_txn_serializable(&r) {
                self.linearizable_read().await?;
            }
            self.check_permission(&caller, || kv::Request::Txn(txn.clone()))?;
            let resp = self.read_kv(move |kv| kv.txn_read_only(&txn)).await?;
            return Ok(convert::txn_response(resp, self.header()));
        }
        self.check_quota(super::quota::txn_cost(&r)).await?;
        match self
            .write_kv_as(kv::Request::Txn(txn), Some(caller.stamp()))
            .await?
        {
            kv::Response::Txn(t) => Ok(convert::txn_response(t, self.header())),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn compact_impl(
        &self,
        r: epb::CompactionRequest,
        origin: Origin,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::CompactionResponse, Status> {
        let req = kv::Request::Compact {
            revision: r.revision,
        };
        let via = |mut c: super::LeaderClient, s| {
            let r = forwarded(r, s, stamp.as_ref());
            async move { c.compact(r).await }
        };
        match self.write(req, origin, session, stamp.clone(), via).await? {
            Reached::Here(kv::Response::Compact { revision }) => Ok(epb::CompactionResponse {
                header: Some(epb::ResponseHeader {
                    revision,
                    ..self.header()
                }),
            }),
            Reached::Here(other) => Err(unexpected(&other)),
            Reached::Leader(resp) => Ok(resp),
        }
    }
}

/// Whether every op of both branches is a serializable range (etcd's `isTxnSerializable`; a
/// nested transaction is not).
fn is_txn_serializable(r: &epb::TxnRequest) -> bool {
    use epb::request_op::Request as Op;
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(&op.request, Some(Op::RequestRange(range)) if range.serializable))
}

#[tonic::async_trait]
impl epb::kv_server::Kv for Api {
    async fn range(
        &self,
        request: Request<epb::RangeRequest>,
    ) -> Result<Response<epb::RangeResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let resp = self.range_impl(caller, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn put(
        &self,
        request: Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let resp = self.put_impl(caller, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let resp = self.delete_impl(caller, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn txn(
        &self,
        request: Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let resp = self.txn_impl(caller, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        // History belongs to every user: only an administrator compacts it (etcd 3.4 lets
        // any user; Skiff is stricter). Checked here, and again at apply against the stamp.
        let caller = self.admin(&request).await?;
        let resp = self
            .compact_impl(
                request.into_inner(),
                Origin::Client,
                None,
                Some(caller.stamp()),
            )
            .await?;
        Ok(Response::new(resp))
    }
}
