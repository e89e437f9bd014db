//! The peer port's gRPC service (`skiff.raft.v1.Raft`): Raft message batches from other
//! members, decoded and validated, into the node task's bounded inbound queue (malformed input
//! is an `InvalidArgument` answer, never a crash); and requests a follower forwards to this
//! member as leader, handed to the [`LeaderApi`] the API implements.

use std::sync::Arc;

use raft::{Message, NodeId};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::codec;
use super::faults::Faults;
use super::forward::{can_answer, session_of, ship};
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1 as pb;

/// Requests a follower forwards to the leader, answered here as leader. Implemented by the
/// API. A write carries the session the follower chose for it (`None` if it sent none), so
/// that a retry after a lost answer or a leader change is applied once (Raft thesis §6.3).
/// Nothing arriving here is forwarded again: a member that does not lead answers
/// "not leader", and the follower retries.
#[tonic::async_trait]
pub trait LeaderApi: Send + Sync + 'static {
    /// A forwarded put.
    async fn forwarded_put(
        &self,
        r: epb::PutRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::PutResponse, Status>;
    /// A forwarded delete.
    async fn forwarded_delete_range(
        &self,
        r: epb::DeleteRangeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::DeleteRangeResponse, Status>;
    /// A forwarded transaction.
    async fn forwarded_txn(
        &self,
        r: epb::TxnRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::TxnResponse, Status>;
    /// A forwarded compaction.
    async fn forwarded_compact(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::CompactionResponse, Status>;
    /// A forwarded lease grant.
    async fn forwarded_lease_grant(
        &self,
        r: epb::LeaseGrantRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseGrantResponse, Status>;
    /// A forwarded lease revoke.
    async fn forwarded_lease_revoke(
        &self,
        r: epb::LeaseRevokeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseRevokeResponse, Status>;
    /// One forwarded keep-alive (the leader keeps the deadlines).
    async fn forwarded_lease_keep_alive(
        &self,
        r: epb::LeaseKeepAliveRequest,
    ) -> Result<epb::LeaseKeepAliveResponse, Status>;
    /// A forwarded time-to-live query (the leader keeps the deadlines).
    async fn forwarded_lease_time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status>;
}

/// The peer-port service.
pub struct RaftService<F> {
    cluster_id: u64,
    me: NodeId,
    inbound: mpsc::Sender<Message>,
    leader: F,
    faults: Arc<Faults>,
}

impl<F> RaftService<F> {
    /// Delivers valid messages for `me` of cluster `cluster_id` to `inbound`, and forwarded
    /// requests to `leader`.
    pub fn new(
        cluster_id: u64,
        me: NodeId,
        inbound: mpsc::Sender<Message>,
        leader: F,
        faults: Arc<Faults>,
    ) -> Self {
        RaftService {
            cluster_id,
            me,
            inbound,
            leader,
            faults,
        }
    }
}

impl<F> RaftService<F> {
    /// Hands a batch's messages to the node task, in order. A malformed or misaddressed
    /// batch is refused whole; when the node's inbound queue is full the rest of the batch
    /// is dropped (lost messages are resent by Raft; the queue stays bounded).
    fn deliver(&self, batch: pb::MessageBatch) -> Result<(), Status> {
        if batch.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "message from cluster {:#x}, this is cluster {:#x}",
                batch.cluster_id, self.cluster_id
            )));
        }
        let mut decoded = Vec::with_capacity(batch.messages.len());
        for m in batch.messages {
            let m =
                codec::decode_message(m).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if m.to != self.me {
                return Err(Status::invalid_argument(format!(
                    "message for node {}, this is node {}",
                    m.to, self.me
                )));
            }
            decoded.push(m);
        }
        for m in decoded {
            if self.faults.is_blocked(m.from) {
                // Cut off by the fault hook: lost, as on a broken network.
                continue;
            }
            match self.inbound.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!("inbound raft queue full; dropped the rest of a batch");
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Status::unavailable("node stopped"))
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl<F: LeaderApi> pb::raft_server::Raft for RaftService<F> {
    async fn send(
        &self,
        request: Request<pb::MessageBatch>,
    ) -> Result<Response<pb::SendAck>, Status> {
        self.deliver(request.into_inner())?;
        Ok(Response::new(pb::SendAck {}))
    }

    async fn stream(
        &self,
        request: Request<tonic::Streaming<pb::MessageBatch>>,
    ) -> Result<Response<pb::SendAck>, Status> {
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.deliver(batch)?;
        }
        Ok(Response::new(pb::SendAck {}))
    }

    async fn put(&self, r: Request<epb::PutRequest>) -> Result<Response<epb::PutResponse>, Status> {
        let (session, can) = (session_of(r.metadata())?, can_answer(r.metadata()));
        let resp = self.leader.forwarded_put(r.into_inner(), session).await?;
        Ok(ship(resp, can))
    }

    async fn delete_range(
        &self,
        r: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let (session, can) = (session_of(r.metadata())?, can_answer(r.metadata()));
        let resp = self
            .leader
            .forwarded_delete_range(r.into_inner(), session)
            .await?;
        Ok(ship(resp, can))
    }

    async fn txn(&self, r: Request<epb::TxnRequest>) -> Result<Response<epb::TxnResponse>, Status> {
        let (session, can) = (session_of(r.metadata())?, can_answer(r.metadata()));
        let resp = self.leader.forwarded_txn(r.into_inner(), session).await?;
        Ok(ship(resp, can))
    }

    async fn compact(
        &self,
        r: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        let session = session_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_compact(r.into_inner(), session)
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_grant(
        &self,
        r: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        let session = session_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_lease_grant(r.into_inner(), session)
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        r: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        let session = session_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_lease_revoke(r.into_inner(), session)
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_keep_alive(
        &self,
        r: Request<epb::LeaseKeepAliveRequest>,
    ) -> Result<Response<epb::LeaseKeepAliveResponse>, Status> {
        let resp = self
            .leader
            .forwarded_lease_keep_alive(r.into_inner())
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        let resp = self
            .leader
            .forwarded_lease_time_to_live(r.into_inner())
            .await?;
        Ok(Response::new(resp))
    }
}
