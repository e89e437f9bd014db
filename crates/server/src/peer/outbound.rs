//! Outbound peer traffic: one bounded queue and one task per peer, which batches whatever is
//! queued (up to a count and byte limit) onto one long-lived client stream (`Raft.Stream`).
//! [`Peers`] is the replica's [`Outbox`], and also hands out clients for forwarding requests
//! to the leader.
//!
//! A broken stream loses its batches (Raft retransmits) and the task backs off before
//! reopening it; the gRPC channel reconnects on its own. A full queue drops the message: Raft
//! tolerates loss, and an unbounded queue to a dead peer would eat the memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft::{Message, NodeId};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::codec;
use super::faults::Faults;
use crate::pb::skiff::raft::v1 as pb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::replica::{Outbox, Removal};

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

/// Outgoing queues to every other member, and gRPC channels for forwarding requests.
pub struct Peers {
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    channels: BTreeMap<NodeId, Channel>,
    faults: Arc<Faults>,
}

/// Whether a peer refused a stream because this member was removed from the cluster.
fn refused_as_removed(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.message() == crate::rpctypes::ERR_MEMBER_REMOVED
}

impl Peers {
    /// Creates queues, lazily-connecting channels and sender tasks (on the current runtime) for
    /// `peers` (id -> peer URL), stamping batches with `cluster_id`.
    pub fn start(
        cluster_id: u64,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        faults: Arc<Faults>,
        removal: Arc<Removal>,
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
            tokio::spawn(send_loop(
                cluster_id,
                id,
                channel.clone(),
                rx,
                removal.clone(),
            ));
            queues.insert(id, tx);
            channels.insert(id, channel);
        }
        Ok(Peers {
            queues,
            channels,
            faults,
        })
    }

    /// A client for forwarding requests to `id`; `None` if `id` is unknown or cut off by the
    /// fault hook.
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

impl Outbox for Peers {
    /// Queues `m` for its recipient; drops it if the queue is full or the peer unknown.
    fn send(&self, m: Message) {
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
async fn send_loop(
    cluster_id: u64,
    to: NodeId,
    channel: Channel,
    mut rx: mpsc::Receiver<Message>,
    removal: Arc<Removal>,
) {
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
            Ok(Err(status)) if refused_as_removed(&status) => {
                tracing::error!(
                    peer = to.get(),
                    "a peer says this member was removed from the cluster"
                );
                removal.refused_by_peer();
                status.message().to_string()
            }
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
