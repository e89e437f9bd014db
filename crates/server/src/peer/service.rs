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
use super::forward::{session_of, stamp_of};
use super::pipe::{self, BATCH_BYTES_MAX, BATCH_WRITES_MAX, IN_FLIGHT_MAX};
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1 as pb;
use crate::replica::Removal;
use crate::rpctypes::ERR_MEMBER_REMOVED;

/// Requests a follower forwards to the leader, answered here as leader. Implemented by the
/// API. A write carries the session the follower chose for it (`None` if it sent none), so
/// that a retry after a lost answer or a leader change is applied once (Raft thesis §6.3).
/// Nothing arriving here is forwarded again: a member that does not lead answers
/// "not leader", and the follower retries.
#[tonic::async_trait]
pub trait LeaderApi: Send + Sync + 'static {
    /// A forwarded key-value write: an encoded put, delete or txn with its session, proposed
    /// here as it is. Returns the state machine's result, or the status of a write that did
    /// not reach it (this member does not lead, the queue is full, ...).
    async fn forwarded_command(
        &self,
        command: Vec<u8>,
    ) -> Result<Result<kv::Response, kv::KvError>, Status>;

    /// A forwarded compaction, with the stamp of the client that sent it (see
    /// [`super::forward::AUTH_STAMP_HEADER`]; so for every request below that takes one).
    async fn forwarded_compact(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
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
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::LeaseRevokeResponse, Status>;
    /// One forwarded keep-alive (the leader keeps the deadlines).
    async fn forwarded_lease_keep_alive(
        &self,
        r: epb::LeaseKeepAliveRequest,
    ) -> Result<epb::LeaseKeepAliveResponse, Status>;
    /// A forwarded member removal (the leader's core changes the configuration).
    async fn forwarded_member_remove(
        &self,
        r: epb::MemberRemoveRequest,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberRemoveResponse, Status>;
    /// A forwarded member addition, with the id the forwarding member chose.
    async fn forwarded_member_add(
        &self,
        r: epb::MemberAddRequest,
        id: u64,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberAddResponse, Status>;
    /// A forwarded learner promotion (only the leader knows how far the learner is).
    async fn forwarded_member_promote(
        &self,
        r: epb::MemberPromoteRequest,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberPromoteResponse, Status>;
    /// A member joining with an empty data dir asks who it is (any member answers).
    async fn join(&self, r: pb::JoinRequest) -> Result<pb::JoinResponse, Status>;
    /// A forwarded time-to-live query (the leader keeps the deadlines).
    async fn forwarded_lease_time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status>;
    /// This member's hash of its key-value history at a revision (any member answers, from
    /// its own applied state), for a peer's corruption check.
    async fn peer_hash_kv(&self, r: epb::HashKvRequest) -> Result<epb::HashKvResponse, Status>;
    /// This member's view of itself (and of its followers, on the leader), for a peer's
    /// dashboard.
    async fn member_state(&self, r: pb::MemberStateRequest) -> Result<pb::MemberState, Status>;
}

/// The peer-port service.
pub struct RaftService<F> {
    cluster_id: u64,
    me: NodeId,
    inbound: mpsc::Sender<Message>,
    leader: F,
    faults: Arc<Faults>,
    removal: Arc<Removal>,
    /// Learns the address of a sender it has none for (see [`RaftService::with_peers`]).
    peers: Option<Arc<super::Peers>>,
    /// Counts the bytes received from each peer, if set (see [`RaftService::with_metrics`]).
    metrics: Option<Arc<crate::metrics::Metrics>>,
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
        removal: Arc<Removal>,
    ) -> Self {
        RaftService {
            cluster_id,
            me,
            inbound,
            leader,
            faults,
            removal,
            peers: None,
            metrics: None,
        }
    }

    /// Answers senders this member has no address for at the peer URL their batches carry:
    /// a member added while this one was down, which may lead by now (etcd adds such a
    /// remote from a message's `X-PeerURLs`). Known senders keep their address: only the
    /// member table moves them.
    pub fn with_peers(mut self, peers: Arc<super::Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Counts received bytes by sender in `metrics` (etcd's
    /// `etcd_network_peer_received_bytes_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<F> RaftService<F> {
    /// Records where `from` is reached if this member has no address for it yet.
    fn learn_address(&self, from: NodeId, url: &str) {
        let Some(peers) = &self.peers else {
            return;
        };
        if url.is_empty()
            || url.len() > kv::members::MEMBER_URL_BYTES_MAX
            || peers.url(from).is_some()
            || crate::cluster::check_url(url).is_err()
        {
            return;
        }
        tracing::info!(
            peer = format!("{:x}", from.get()),
            url,
            "learned a peer's address from its messages"
        );
        if let Err(e) = peers.set(from, url) {
            tracing::warn!(error = %e, "unusable peer address");
        }
    }

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
        let batch_bytes = self
            .metrics
            .as_ref()
            .map(|_| prost::Message::encoded_len(&batch) as u64);
        let batch_url = batch.sender_url;
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
            // A removed member is told so (it stops), and never heard (etcd refuses its
            // traffic the same way).
            if self.removal.is_removed(m.from.get()) {
                return Err(Status::failed_precondition(ERR_MEMBER_REMOVED));
            }
            decoded.push(m);
        }
        if let (Some(metrics), Some(bytes), Some(first)) =
            (&self.metrics, batch_bytes, decoded.first())
        {
            // Labelled by sender only for known peers: anyone reaching the port could make up
            // ids, and each would be a series kept forever.
            let known = self
                .peers
                .as_ref()
                .is_some_and(|p| p.url(first.from).is_some());
            let label = if known {
                crate::metrics::peer_label("From", first.from.get())
            } else {
                vec![("From", "unknown".to_string())]
            };
            metrics
                .peer_received_bytes
                .get_or_create(&label)
                .inc_by(bytes);
        }
        let mut heard = None;
        for m in decoded {
            if self.faults.is_blocked(m.from) {
                // Cut off by the fault hook: lost, as on a broken network.
                continue;
            }
            if heard != Some(m.from) {
                heard = Some(m.from);
                self.removal.heard_from(m.from.get());
                self.learn_address(m.from, &batch_url);
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

/// The results of a `Forward` stream as they become ready, batched: each poll sends the
/// results waiting, up to [`BATCH_WRITES_MAX`] of them and [`BATCH_BYTES_MAX`] bytes (a single
/// larger answer goes alone; answers are at most `SHIPPED_ANSWER_BYTES_MAX`), so that no
/// message comes near the peer port's message limit.
struct ForwardResults {
    ready: mpsc::Receiver<Result<pb::ForwardResult, Status>>,
    /// Read while batching and left for the next message: a result that did not fit, or the
    /// status that ends the stream.
    next: Option<Result<pb::ForwardResult, Status>>,
}

impl tokio_stream::Stream for ForwardResults {
    type Item = Result<pb::ForwardResults, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use prost::Message;
        use std::task::Poll;
        let first = match self.next.take() {
            Some(r) => r,
            None => match std::task::ready!(self.ready.poll_recv(cx)) {
                None => return Poll::Ready(None),
                Some(r) => r,
            },
        };
        let first = match first {
            Ok(r) => r,
            Err(s) => return Poll::Ready(Some(Err(s))),
        };
        let mut bytes = first.encoded_len();
        let mut results = vec![first];
        while results.len() < BATCH_WRITES_MAX && bytes < BATCH_BYTES_MAX {
            match self.ready.try_recv() {
                Ok(Ok(r)) if bytes + r.encoded_len() > BATCH_BYTES_MAX => {
                    self.next = Some(Ok(r));
                    break;
                }
                Ok(Ok(r)) => {
                    bytes += r.encoded_len();
                    results.push(r);
                }
                Ok(Err(s)) => {
                    self.next = Some(Err(s));
                    break;
                }
                Err(_) => break,
            }
        }
        Poll::Ready(Some(Ok(pb::ForwardResults { results })))
    }
}

#[tonic::async_trait]
impl<F: LeaderApi + Clone> pb::raft_server::Raft for RaftService<F> {
    type ForwardStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardResults, Status>> + Send>,
    >;

    /// Proposes each forwarded write as it arrives, at most [`IN_FLIGHT_MAX`] at once per
    /// stream (the stream is not read while that many wait), and streams their results back.
    async fn forward(
        &self,
        request: Request<tonic::Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut batches = request.into_inner();
        let (ready, results) = mpsc::channel(IN_FLIGHT_MAX);
        let (leader, cluster_id) = (self.leader.clone(), self.cluster_id);
        let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                if batch.cluster_id != cluster_id {
                    let refused = Status::failed_precondition(format!(
                        "writes from cluster {:#x}, this is cluster {cluster_id:#x}",
                        batch.cluster_id
                    ));
                    let _ = ready.send(Err(refused)).await;
                    return;
                }
                for w in batch.writes {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let (ready, leader) = (ready.clone(), leader.clone());
                    tokio::spawn(async move {
                        let result = leader.forwarded_command(w.command).await;
                        let _ = ready
                            .send(Ok(pipe::result_of(w.id, result, w.can_answer)))
                            .await;
                        drop(permit);
                    });
                }
            }
        });
        Ok(Response::new(Box::pin(ForwardResults {
            ready: results,
            next: None,
        })))
    }

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

    async fn compact(
        &self,
        r: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        let session = session_of(r.metadata())?;
        let stamp = stamp_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_compact(r.into_inner(), session, stamp)
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
        let stamp = stamp_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_lease_revoke(r.into_inner(), session, stamp)
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

    async fn member_remove(
        &self,
        r: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        let stamp = stamp_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_member_remove(r.into_inner(), stamp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn member_add(
        &self,
        r: Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        let id = crate::api::reconfigure::member_id_of(r.metadata())?;
        let stamp = stamp_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_member_add(r.into_inner(), id, stamp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn member_promote(
        &self,
        r: Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        let stamp = stamp_of(r.metadata())?;
        let resp = self
            .leader
            .forwarded_member_promote(r.into_inner(), stamp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn join(
        &self,
        r: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let resp = self.leader.join(r.into_inner()).await?;
        Ok(Response::new(resp))
    }

    /// Tells a member that asks whether it was removed (see `super::probe`).
    async fn probe(&self, r: Request<pb::ProbeRequest>) -> Result<Response<pb::SendAck>, Status> {
        let r = r.into_inner();
        if r.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "probe from cluster {:#x}, this is cluster {:#x}",
                r.cluster_id, self.cluster_id
            )));
        }
        if NodeId::new(r.from).is_some_and(|from| self.faults.is_blocked(from)) {
            // Cut off by the fault hook: as unreachable as its messages.
            return Err(Status::unavailable("cut off by the fault hook"));
        }
        if self.removal.is_removed(r.from) {
            return Err(Status::failed_precondition(ERR_MEMBER_REMOVED));
        }
        Ok(Response::new(pb::SendAck {}))
    }

    async fn hash_kv(
        &self,
        r: Request<epb::HashKvRequest>,
    ) -> Result<Response<epb::HashKvResponse>, Status> {
        let resp = self.leader.peer_hash_kv(r.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn member_state(
        &self,
        r: Request<pb::MemberStateRequest>,
    ) -> Result<Response<pb::MemberState>, Status> {
        let r = r.into_inner();
        if NodeId::new(r.from).is_some_and(|from| self.faults.is_blocked(from)) {
            // Cut off by the fault hook: as unreachable as its messages.
            return Err(Status::unavailable("cut off by the fault hook"));
        }
        Ok(Response::new(self.leader.member_state(r).await?))
    }
}
