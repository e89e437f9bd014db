//! The answers to requests followers forward to this member as leader
//! ([`crate::peer::LeaderApi`]): each runs as [`Origin::Peer`], here once, under the session
//! the follower chose (a fresh one if it sent none), and is never forwarded again.

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::peer::{LeaderApi, Origin};

#[tonic::async_trait]
impl LeaderApi for Api {
    async fn forwarded_put(
        &self,
        r: epb::PutRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::PutResponse, Status> {
        self.put_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_delete_range(
        &self,
        r: epb::DeleteRangeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::DeleteRangeResponse, Status> {
        self.delete_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_txn(
        &self,
        r: epb::TxnRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::TxnResponse, Status> {
        self.txn_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_compact(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::CompactionResponse, Status> {
        self.compact_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_lease_grant(
        &self,
        r: epb::LeaseGrantRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseGrantResponse, Status> {
        self.lease_grant_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_lease_revoke(
        &self,
        r: epb::LeaseRevokeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseRevokeResponse, Status> {
        self.lease_revoke_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_lease_keep_alive(
        &self,
        r: epb::LeaseKeepAliveRequest,
    ) -> Result<epb::LeaseKeepAliveResponse, Status> {
        self.keep_alive_one(r.id, Origin::Peer).await
    }

    async fn forwarded_lease_time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        self.time_to_live(r, Origin::Peer).await
    }
}
