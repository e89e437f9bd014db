//! Peer transport: Raft messages to and from other servers over gRPC (`skiff.raft.v1.Raft`).
//!
//! Sending: one bounded queue and one task per peer. The task batches whatever is queued (up
//! to a count and byte limit) into one `Send` call. A failed call drops its batch (Raft
//! retransmits) and the task backs off before the next attempt; the gRPC channel reconnects on
//! its own. A full queue drops the message: Raft tolerates loss, and an unbounded queue to a
//! dead peer would eat the memory.
//!
//! Receiving: [`RaftService`] decodes and validates each message and hands it to the node
//! task's bounded inbound queue; malformed input is an `InvalidArgument` answer, never a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use raft::{Message, NodeId};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::api::lease::ForwardedLeases;
use crate::codec;
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1 as pb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;

/// Messages queued for one peer, at most.
pub const PEER_QUEUE_MAX: usize = 4096;
/// Messages per `Send` call, at most.
pub const BATCH_MSGS_MAX: usize = 256;
/// Approximate bytes per `Send` call before the batch is closed (a single larger message still
/// goes alone).
pub const BATCH_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Largest gRPC message accepted or sent on the peer port.
pub const PEER_MSG_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Backoff after a failed send: first and largest wait.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long one `Send` call may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A fault hook for tests: peers whose traffic is dropped in both directions, as if the network
/// between them and this member were cut. Empty in normal operation.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: std::sync::RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    /// Replaces the set of cut-off peers.
    pub fn set_blocked(&self, peers: BTreeSet<NodeId>) {
        match self.blocked.write() {
            Ok(mut b) => *b = peers,
            Err(poisoned) => *poisoned.into_inner() = peers,
        }
    }

    /// Whether traffic with `peer` is dropped.
    pub fn is_blocked(&self, peer: NodeId) -> bool {
        match self.blocked.read() {
            Ok(b) => b.contains(&peer),
            Err(poisoned) => poisoned.into_inner().contains(&peer),
        }
    }
}

/// Outgoing queues to every other member, and gRPC channels for forwarding writes.
pub struct Peers {
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    channels: BTreeMap<NodeId, Channel>,
    faults: Arc<Faults>,
}

impl Peers {
    /// Creates queues, lazily-connecting channels and sender tasks (on the current runtime) for
    /// `peers` (id -> peer URL), stamping batches with `cluster_id`.
    pub fn start(
        cluster_id: u64,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        faults: Arc<Faults>,
    ) -> Result<Peers, String> {
        let mut queues = BTreeMap::new();
        let mut channels = BTreeMap::new();
        for (id, url) in peers {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("peer url {url:?}: {e}"))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            let channel = endpoint.connect_lazy();
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            tokio::spawn(send_loop(cluster_id, id, channel.clone(), rx));
            queues.insert(id, tx);
            channels.insert(id, channel);
        }
        Ok(Peers {
            queues,
            channels,
            faults,
        })
    }

    /// Queues `m` for its recipient; drops it if the queue is full or the peer unknown.
    pub fn send(&self, m: Message) {
        if self.faults.is_blocked(m.to) {
            return;
        }
        let Some(q) = self.queues.get(&m.to) else {
            tracing::warn!(to = m.to.get(), "message to an unknown peer dropped");
            return;
        };
        if q.try_send(m).is_err() {
            tracing::debug!("peer queue full; message dropped");
        }
    }

    /// A client for forwarding writes to `id`.
    pub fn client(&self, id: NodeId) -> Option<RaftClient<Channel>> {
        if self.faults.is_blocked(id) {
            return None;
        }
        self.channels.get(&id).map(|c| {
            RaftClient::new(c.clone())
                .max_decoding_message_size(PEER_MSG_BYTES_MAX)
                .max_encoding_message_size(PEER_MSG_BYTES_MAX)
        })
    }
}

/// Batches queued on one peer stream, at most; a stream that cannot take a batch for
/// [`SEND_TIMEOUT`] (a hung peer) is dropped and reopened.
const STREAM_BATCHES_MAX: usize = 16;
/// A stream that stayed up this long counts as a recovery: backoff starts over.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Takes `first` and whatever else is queued, up to the batch limits.
fn next_batch(
    cluster_id: u64,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> pb::MessageBatch {
    let mut bytes = first.body.size_bytes();
    let mut messages = vec![codec::encode_message(&first)];
    while messages.len() < BATCH_MSGS_MAX && bytes < BATCH_BYTES_MAX {
        match rx.try_recv() {
            Ok(m) => {
                bytes += m.body.size_bytes();
                messages.push(codec::encode_message(&m));
            }
            Err(_) => break,
        }
    }
    pb::MessageBatch {
        cluster_id,
        messages,
    }
}

/// Sends everything queued for `to` over one client stream (`Raft.Stream`), reopening it
/// with exponential backoff when it breaks. Messages in flight when a stream breaks are
/// lost, which Raft tolerates (it resends).
async fn send_loop(cluster_id: u64, to: NodeId, channel: Channel, mut rx: mpsc::Receiver<Message>) {
    let client = RaftClient::new(channel)
        .max_decoding_message_size(PEER_MSG_BYTES_MAX)
        .max_encoding_message_size(PEER_MSG_BYTES_MAX);
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        // Open a stream lazily, when there is something to send.
        let Some(first) = rx.recv().await else {
            return;
        };
        let (btx, brx) = mpsc::channel(STREAM_BATCHES_MAX);
        let mut c = client.clone();
        let mut call = tokio::spawn(async move {
            c.stream(tokio_stream::wrappers::ReceiverStream::new(brx))
                .await
        });
        let opened = tokio::time::Instant::now();
        let mut pending = Some(first);
        let why = loop {
            let m = match pending.take() {
                Some(m) => m,
                None => match rx.recv().await {
                    Some(m) => m,
                    None => {
                        drop(btx);
                        let _ = call.await;
                        return;
                    }
                },
            };
            let batch = next_batch(cluster_id, m, &mut rx);
            match tokio::time::timeout(SEND_TIMEOUT, btx.send(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break "stream closed".to_string(),
                Err(_) => {
                    call.abort();
                    break "peer stopped reading".to_string();
                }
            }
        };
        let why = match (&mut call).await {
            Ok(Err(status)) => status.message().to_string(),
            _ => why,
        };
        if opened.elapsed() >= STREAM_HEALTHY_AFTER {
            failing = false;
            backoff = BACKOFF_MIN;
        }
        if !failing {
            tracing::warn!(peer = to.get(), error = %why, "stream to peer broke; reconnecting with backoff");
        }
        failing = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        // Messages queued during the outage are stale (heartbeats, old appends); drop them
        // and let Raft send fresh ones.
        while rx.try_recv().is_ok() {}
    }
}

/// gRPC metadata key carrying the session id of a forwarded write (see [`ForwardedWrites`]).
pub const SESSION_HEADER: &str = "skiff-session-id";

/// The session of a forwarded write, from its metadata: `None` if absent, an error if garbled.
pub fn session_of(md: &tonic::metadata::MetadataMap) -> Result<Option<kv::Session>, Status> {
    let Some(v) = md.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let id = v
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&id| id != 0)
        .ok_or_else(|| Status::invalid_argument(format!("malformed {SESSION_HEADER}")))?;
    Ok(Some(kv::Session {
        client_id: id,
        seq: 1,
    }))
}

/// Writes a follower forwards to the leader. Implemented by the API. Each carries the
/// session the follower chose for it, so that a retry after a lost answer or a leader change
/// is applied once (Raft thesis §6.3).
#[tonic::async_trait]
pub trait ForwardedWrites: Send + Sync + 'static {
    /// A put arriving from a follower.
    async fn put_here(
        &self,
        r: epb::PutRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::PutResponse, Status>;
    /// A delete arriving from a follower.
    async fn delete_here(
        &self,
        r: epb::DeleteRangeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::DeleteRangeResponse, Status>;
    /// A transaction arriving from a follower.
    async fn txn_here(
        &self,
        r: epb::TxnRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::TxnResponse, Status>;
    /// A compaction arriving from a follower.
    async fn compact_here(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::CompactionResponse, Status>;
}

/// The peer-port service.
pub struct RaftService<F> {
    cluster_id: u64,
    me: NodeId,
    inbound: mpsc::Sender<Message>,
    writes: F,
    faults: Arc<Faults>,
}

impl<F> RaftService<F> {
    /// Delivers valid messages for `me` of cluster `cluster_id` to `inbound`.
    pub fn new(
        cluster_id: u64,
        me: NodeId,
        inbound: mpsc::Sender<Message>,
        writes: F,
        faults: Arc<Faults>,
    ) -> Self {
        RaftService {
            cluster_id,
            me,
            inbound,
            writes,
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
impl<F: ForwardedWrites + ForwardedLeases> pb::raft_server::Raft for RaftService<F> {
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

    async fn put(
        &self,
        request: Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        let session = session_of(request.metadata())?;
        self.writes
            .put_here(request.into_inner(), session)
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let session = session_of(request.metadata())?;
        self.writes
            .delete_here(request.into_inner(), session)
            .await
            .map(Response::new)
    }

    async fn txn(
        &self,
        request: Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        let session = session_of(request.metadata())?;
        self.writes
            .txn_here(request.into_inner(), session)
            .await
            .map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        let session = session_of(request.metadata())?;
        self.writes
            .compact_here(request.into_inner(), session)
            .await
            .map(Response::new)
    }

    async fn lease_grant(
        &self,
        r: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        self.writes.lease_grant_here(r).await
    }

    async fn lease_revoke(
        &self,
        r: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        self.writes.lease_revoke_here(r).await
    }

    async fn lease_keep_alive(
        &self,
        r: Request<epb::LeaseKeepAliveRequest>,
    ) -> Result<Response<epb::LeaseKeepAliveResponse>, Status> {
        self.writes.lease_keep_alive_here(r).await
    }

    async fn lease_time_to_live(
        &self,
        r: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        self.writes.lease_time_to_live_here(r).await
    }
}
