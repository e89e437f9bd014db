//! Outbound peer traffic: one bounded queue and one task per peer, which batches whatever is
//! queued (up to a count and byte limit) onto one long-lived client stream (`Raft.Stream`).
//! [`Peers`] is the replica's [`Outbox`], and also hands out clients for forwarding requests
//! to the leader.
//!
//! A broken stream loses its batches (Raft retransmits) and the task backs off before
//! reopening it; the gRPC channel reconnects on its own. A full queue drops the message: Raft
//! tolerates loss, and an unbounded queue to a dead peer would eat the memory.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use raft::{Message, NodeId};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::codec;
use super::faults::Faults;
use crate::metrics::{peer_label, Metrics};
use crate::pb::skiff::raft::v1 as pb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::replica::{Outbox, Removal};
use crate::tls::PeerClientTls;

/// Messages queued for one peer, at most.
pub const PEER_QUEUE_MAX: usize = 4096;
/// Messages per `Send` call, at most.
pub const BATCH_MSGS_MAX: usize = 256;
/// Approximate bytes per `Send` call before the batch is closed (a single larger message still
/// goes alone).
pub const BATCH_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Largest gRPC message accepted or sent on the peer port.
pub const PEER_MSG_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Backoff after a failed send: the first wait (the largest is [`PeerTimeouts::backoff_max`]).
const BACKOFF_MIN: Duration = Duration::from_millis(20);

/// How the peer streams notice a dead or black-holed connection and come back, all sized to
/// the election timeout: a healed partition must not leave a stream stuck for longer than one
/// (a TCP connection whose packets were dropped otherwise waits out its retransmission
/// backoff, seconds, before it carries anything again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimeouts {
    /// A connection attempt gives up after this.
    pub connect: Duration,
    /// A stream that cannot take a batch for this long is dropped and reopened.
    pub send: Duration,
    /// The longest pause between reconnection attempts.
    pub backoff_max: Duration,
    /// HTTP/2 PING interval on every peer connection (also while idle) ...
    pub keepalive_interval: Duration,
    /// ... and how long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl PeerTimeouts {
    /// The timeouts for an election timeout of `election`.
    pub fn for_election(election: Duration) -> PeerTimeouts {
        let floor = |d: Duration, min_ms: u64| d.max(Duration::from_millis(min_ms));
        PeerTimeouts {
            connect: floor(election / 2, 100),
            send: floor(election, 200),
            backoff_max: floor(election / 4, 50),
            keepalive_interval: floor(election / 2, 100),
            keepalive_timeout: floor(election / 2, 100),
        }
    }
}

/// The TCP keepalive idle time for a keepalive interval: the kernel counts it in whole seconds
/// and refuses 0 (`EINVAL`), which is what a sub-second interval truncated to (a warning on
/// every connection attempt, and no TCP keepalive at all). The HTTP/2 PINGs catch a dead
/// connection within the interval; TCP keepalive is the backstop for a connection whose
/// HTTP/2 layer is idle.
fn tcp_keepalive_idle(interval: Duration) -> Duration {
    Duration::from_secs(interval.as_secs().max(1))
}

/// Outgoing queues to every other member, and gRPC channels for forwarding requests. The set
/// of peers and their addresses change at run time, as members are added, moved
/// (MemberUpdate) and removed.
pub struct Peers {
    cluster_id: u64,
    /// This member's own peer URL, stamped on every batch.
    own_url: String,
    timeouts: PeerTimeouts,
    links: RwLock<BTreeMap<NodeId, Link>>,
    faults: Arc<Faults>,
    removal: Arc<Removal>,
    /// Counts the bytes sent to each peer.
    metrics: Arc<Metrics>,
    /// How `https://` peers are reached (the peer certificate and CA).
    tls: PeerClientTls,
}

/// The way to one peer: its queue (its sender task ends when the queue is dropped) and a
/// channel for forwarding.
struct Link {
    url: String,
    queue: mpsc::Sender<Message>,
    channel: Channel,
}

/// Whether a peer refused a stream because this member was removed from the cluster.
pub(super) fn refused_as_removed(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.message() == crate::rpctypes::ERR_MEMBER_REMOVED
}

impl Peers {
    /// Creates queues, lazily-connecting channels and sender tasks (on the current runtime) for
    /// `peers` (id -> peer URL), stamping batches with `cluster_id`; `https://` peers are
    /// reached with `tls`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cluster_id: u64,
        own_url: String,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        timeouts: PeerTimeouts,
        faults: Arc<Faults>,
        removal: Arc<Removal>,
        metrics: Arc<Metrics>,
        tls: PeerClientTls,
    ) -> Result<Peers, String> {
        let p = Peers {
            cluster_id,
            own_url,
            timeouts,
            links: RwLock::new(BTreeMap::new()),
            faults,
            removal,
            metrics,
            tls,
        };
        for (id, url) in peers {
            p.set(id, &url)?;
        }
        Ok(p)
    }

    /// Sends to `id` at `url` from now on (a new peer, or one that moved); nothing changes if
    /// that is where it is already. Messages queued for its old address are dropped.
    pub fn set(&self, id: NodeId, url: &str) -> Result<(), String> {
        // The common case (the address book looking every 200 ms) without the write lock
        // that every send would wait behind.
        if self.url(id).as_deref() == Some(url) {
            return Ok(());
        }
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        if links.get(&id).is_some_and(|l| l.url == url) {
            return Ok(());
        }
        let t = self.timeouts;
        let endpoint = self
            .tls
            .endpoint(url)?
            .connect_timeout(t.connect)
            .http2_keep_alive_interval(t.keepalive_interval)
            .keep_alive_timeout(t.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(tcp_keepalive_idle(t.keepalive_interval)))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        let (queue, rx) = mpsc::channel(PEER_QUEUE_MAX);
        tokio::spawn(send_loop(
            (self.cluster_id, self.own_url.clone()),
            id,
            channel.clone(),
            rx,
            self.removal.clone(),
            t,
            self.metrics
                .peer_sent_bytes
                .get_or_create_owned(&peer_label("To", id.get())),
        ));
        links.insert(
            id,
            Link {
                url: url.to_string(),
                queue,
                channel,
            },
        );
        Ok(())
    }

    /// Stops sending to `id` (a removed member, or one whose addition failed).
    pub fn remove(&self, id: NodeId) {
        self.links
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Where `id` is reached, if it is a known peer.
    pub fn url(&self, id: NodeId) -> Option<String> {
        self.links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|l| l.url.clone())
    }

    /// Every known peer.
    pub fn ids(&self) -> Vec<NodeId> {
        self.links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// A client for forwarding requests to `id`; `None` if `id` is unknown or cut off by the
    /// fault hook.
    pub fn client(&self, id: NodeId) -> Option<RaftClient<Channel>> {
        if self.faults.is_blocked(id) {
            return None;
        }
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links.get(&id).map(|l| {
            RaftClient::new(l.channel.clone())
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
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        let Some(link) = links.get(&m.to) else {
            tracing::debug!(
                to = m.to.get(),
                "message to a peer of unknown address dropped"
            );
            return;
        };
        if link.queue.try_send(m).is_err() {
            tracing::debug!("peer queue full; message dropped");
        }
    }
}

/// Batches queued on one peer stream, at most; a stream that cannot take a batch for
/// [`PeerTimeouts::send`] (a hung peer) is dropped and reopened.
const STREAM_BATCHES_MAX: usize = 16;
/// A stream that stayed up this long counts as a recovery: backoff starts over.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Takes `first` and whatever else is queued, up to the batch limits.
fn next_batch(
    (cluster_id, own_url): &(u64, String),
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
        cluster_id: *cluster_id,
        messages,
        sender_url: own_url.clone(),
    }
}

/// Sends everything queued for `to` over one client stream (`Raft.Stream`), reopening it
/// with exponential backoff when it breaks. Messages in flight when a stream breaks are
/// lost, which Raft tolerates (it resends).
async fn send_loop(
    sender: (u64, String),
    to: NodeId,
    channel: Channel,
    mut rx: mpsc::Receiver<Message>,
    removal: Arc<Removal>,
    timeouts: PeerTimeouts,
    sent_bytes: Counter,
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
            let batch = next_batch(&sender, m, &mut rx);
            sent_bytes.inc_by(prost::Message::encoded_len(&batch) as u64);
            match tokio::time::timeout(timeouts.send, btx.send(batch)).await {
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
            // With the cause of a connection failure (a TLS certificate refused).
            Ok(Err(status)) => super::join::describe(&status),
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
        backoff = (backoff * 2).min(timeouts.backoff_max);
        // Messages queued during the outage are stale (heartbeats, old appends); drop them
        // and let Raft send fresh ones.
        while rx.try_recv().is_ok() {}
    }
}
