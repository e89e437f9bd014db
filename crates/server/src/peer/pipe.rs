//! Forwarding key-value writes to the leader in batches: one long-lived `Forward` stream per
//! leader, carrying encoded commands one way and results the other, instead of a gRPC call per
//! write (which cost a third of the cluster's write throughput on the 2-core box).
//!
//! ```text
//!   Api::write --ForwardPipes::forward--> queue (bounded) --> pipe task --ForwardBatch-->  leader
//!                <--oneshot--------------- pending by id  <-- pipe task <--ForwardResults--
//! ```
//!
//! The pipe task batches whatever is queued when the stream can take it (up to
//! [`BATCH_WRITES_MAX`] writes or [`BATCH_BYTES_MAX`] bytes). If the stream fails or ends,
//! every write in flight on it fails as a connection failure, which the forwarder retries like
//! a failed call (writes carry sessions, so a write that did reach the leader is applied once),
//! and the next write opens a new stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use raft::NodeId;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::outbound::Peers;
use crate::pb::skiff::raft::v1 as pb;

/// Writes queued for one pipe, not yet sent; a full queue refuses new writes as busy.
const QUEUED_MAX: usize = 4096;
/// Most writes in one batch.
pub const BATCH_WRITES_MAX: usize = 512;
/// Most command bytes in one batch (a single larger write goes alone).
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Writes sent and not answered on one pipe, at most: the leader answers each one, so this
/// bounds what both ends hold.
pub const IN_FLIGHT_MAX: usize = 8192;

/// What the leader answered a forwarded write with.
#[derive(Debug, PartialEq)]
pub enum Forwarded {
    /// The state machine's result.
    Answer(Result<kv::Response, kv::KvError>),
    /// Applied, but too large to ship: answer from this member's own apply.
    LeftOut,
}

/// One queued write.
struct Pending {
    command: Vec<u8>,
    can_answer: bool,
    reply: oneshot::Sender<Result<Forwarded, Status>>,
}

/// The pipes of one member, at most one per leader.
pub struct ForwardPipes {
    cluster_id: u64,
    peers: Arc<Peers>,
    /// The open pipe, if any, and the leader it goes to.
    pipe: Mutex<Option<(NodeId, mpsc::Sender<Pending>)>>,
}

impl ForwardPipes {
    /// Pipes of a member of `cluster_id`, over the peers' channels.
    pub fn new(cluster_id: u64, peers: Arc<Peers>) -> Self {
        ForwardPipes {
            cluster_id,
            peers,
            pipe: Mutex::new(None),
        }
    }

    /// Sends an encoded write to `leader` and waits for its result. Failures are statuses the
    /// forwarder understands: a connection failure (retryable) when no stream to the leader
    /// can be opened or it broke; the leader's own status otherwise.
    pub async fn forward(
        &self,
        leader: NodeId,
        command: Vec<u8>,
        can_answer: bool,
    ) -> Result<Forwarded, Status> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue_to(leader)?;
        match queue.try_send(Pending {
            command,
            can_answer,
            reply,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Status::resource_exhausted(
                    crate::rpctypes::ERR_TOO_MANY_REQUESTS,
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable("forward stream to the leader closed"))
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("forward stream to the leader closed")))
    }

    /// The queue of the pipe to `leader`, opening one if there is none or it ended; a pipe to
    /// another member is dropped (its task ends once its writes are answered).
    fn queue_to(&self, leader: NodeId) -> Result<mpsc::Sender<Pending>, Status> {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((to, queue)) = pipe.as_ref() {
            if *to == leader && !queue.is_closed() {
                return Ok(queue.clone());
            }
        }
        let client = self
            .peers
            .client(leader)
            .ok_or_else(|| Status::unavailable("no channel to the leader"))?;
        let (tx, rx) = mpsc::channel(QUEUED_MAX);
        tokio::spawn(run(self.cluster_id, client, rx));
        *pipe = Some((leader, tx.clone()));
        Ok(tx)
    }
}

/// The pipe task: opens the stream, sends batches, routes results, and fails everything in
/// flight when the stream ends.
async fn run(
    cluster_id: u64,
    mut client: pb::raft_client::RaftClient<tonic::transport::Channel>,
    mut queue: mpsc::Receiver<Pending>,
) {
    // Batches for the stream; small, since each holds many writes.
    let (out, out_rx) = mpsc::channel::<pb::ForwardBatch>(4);
    let mut waiting: HashMap<u64, oneshot::Sender<Result<Forwarded, Status>>> = HashMap::new();
    let mut next_id = 0u64;
    let opened = client
        .forward(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await;
    let mut results = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => {
            // Whatever the leader said (even `Unimplemented` from another version), the
            // writes did not reach it: a connection failure, which the forwarder retries.
            let failed = Status::unavailable(format!(
                "forward stream to the leader not opened: {}",
                s.message()
            ));
            fail_queued(&mut queue, &failed);
            return;
        }
    };
    // Whether writes may still come (the pipe is still the forwarder's).
    let mut open = true;
    let ended = loop {
        let room = IN_FLIGHT_MAX.saturating_sub(waiting.len());
        tokio::select! {
            first = queue.recv(), if open && room > 0 => {
                let Some(first) = first else {
                    // No more writes will come; wait for the answers in flight.
                    open = false;
                    if waiting.is_empty() {
                        return;
                    }
                    continue;
                };
                let batch = take_batch(first, &mut queue, room, &mut next_id, &mut waiting);
                if out.send(pb::ForwardBatch { cluster_id, writes: batch }).await.is_err() {
                    break Status::unavailable("forward stream to the leader closed");
                }
            }
            answered = results.message() => match answered {
                Ok(Some(batch)) => {
                    for r in batch.results {
                        if let Some(reply) = waiting.remove(&r.id) {
                            let _ = reply.send(outcome(r.outcome));
                        }
                    }
                }
                Ok(None) => break Status::unavailable("forward stream to the leader ended"),
                Err(s) => break s,
            },
        }
        if !open && waiting.is_empty() {
            return;
        }
    };
    // Whatever was sent may or may not have been applied: the forwarder retries under the
    // same sessions. The status is a connection failure (retryable), whatever ended it.
    let broken = Status::unavailable(format!("forward stream to the leader: {}", ended.message()));
    for (_, reply) in waiting.drain() {
        let _ = reply.send(Err(broken.clone()));
    }
    queue.close();
    fail_queued(&mut queue, &broken);
}

/// Takes `first` and whatever else is queued, up to the batch limits and `room`, into one
/// batch, registering each write's reply under a new id.
fn take_batch(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
    room: usize,
    next_id: &mut u64,
    waiting: &mut HashMap<u64, oneshot::Sender<Result<Forwarded, Status>>>,
) -> Vec<pb::ForwardedWrite> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(p) = next.take() {
        *next_id += 1;
        bytes += p.command.len();
        waiting.insert(*next_id, p.reply);
        batch.push(pb::ForwardedWrite {
            id: *next_id,
            command: p.command,
            can_answer: p.can_answer,
        });
        if batch.len() >= BATCH_WRITES_MAX.min(room) || bytes >= BATCH_BYTES_MAX {
            break;
        }
        next = queue.try_recv().ok();
    }
    batch
}

/// Fails every queued write with `status`.
fn fail_queued(queue: &mut mpsc::Receiver<Pending>, status: &Status) {
    queue.close();
    while let Ok(p) = queue.try_recv() {
        let _ = p.reply.send(Err(status.clone()));
    }
}

/// The result of one write, as the leader sent it.
fn outcome(o: Option<pb::forward_result::Outcome>) -> Result<Forwarded, Status> {
    use pb::forward_result::Outcome;
    match o {
        Some(Outcome::Answer(bytes)) => kv::codec::decode_result(&bytes)
            .map(Forwarded::Answer)
            .map_err(|e| Status::internal(format!("the leader's answer does not decode: {e}"))),
        Some(Outcome::Error(e)) => Err(Status::new(tonic::Code::from(e.code), e.message)),
        Some(Outcome::LeftOut(_)) => Ok(Forwarded::LeftOut),
        None => Err(Status::internal(
            "the leader sent a result without an outcome",
        )),
    }
}

/// The leader's side: the result message for write `id`. An answer larger than
/// `SHIPPED_ANSWER_BYTES_MAX` is left out when the follower can answer it from its own apply;
/// otherwise (the follower had no room to wait for its apply) it is reported as an error that
/// says the write was applied, rather than sent in a message that could break the stream.
pub fn result_of(
    id: u64,
    result: Result<Result<kv::Response, kv::KvError>, Status>,
    can_answer: bool,
) -> pb::ForwardResult {
    use pb::forward_result::Outcome;
    let error = |s: Status| {
        Outcome::Error(pb::ForwardError {
            code: s.code() as i32,
            message: s.message().to_string(),
        })
    };
    let outcome = match result {
        Ok(answer) => {
            let bytes = kv::codec::encode_result(&answer);
            match (
                bytes.len() > super::forward::SHIPPED_ANSWER_BYTES_MAX,
                can_answer,
            ) {
                (false, _) => Outcome::Answer(bytes),
                (true, true) => Outcome::LeftOut(true),
                (true, false) => error(Status::resource_exhausted(format!(
                    "the write was applied, but its answer of {} bytes is too large to forward; \
                     read the result instead",
                    bytes.len()
                ))),
            }
        }
        Err(s) => error(s),
    };
    pb::ForwardResult {
        id,
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_large_answers_are_left_out() {
        let small = Ok(Ok(kv::Response::Compact { revision: 3 }));
        let r = result_of(1, small, true);
        assert_eq!(
            outcome(r.outcome).expect("decodes"),
            Forwarded::Answer(Ok(kv::Response::Compact { revision: 3 }))
        );
        let failed = Ok(Err(kv::KvError::LeaseNotFound));
        let r = result_of(2, failed, false);
        assert_eq!(
            outcome(r.outcome).expect("decodes"),
            Forwarded::Answer(Err(kv::KvError::LeaseNotFound))
        );
        let refused = Err(Status::unavailable(crate::rpctypes::ERR_NOT_LEADER));
        let s = outcome(result_of(3, refused, true).outcome).expect_err("a status");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), crate::rpctypes::ERR_NOT_LEADER);

        let big = kv::Response::Range(kv::RangeResponse {
            revision: 2,
            kvs: vec![kv::KeyValue {
                key: b"k".to_vec(),
                value: vec![0u8; super::super::forward::SHIPPED_ANSWER_BYTES_MAX + 1],
                ..Default::default()
            }],
            more: false,
            count: 1,
        });
        let left_out = result_of(4, Ok(Ok(big.clone())), true);
        assert_eq!(
            outcome(left_out.outcome).expect("decodes"),
            Forwarded::LeftOut
        );
        // Without a member to answer it, a too-large answer is an error that says it applied.
        let refused = outcome(result_of(5, Ok(Ok(big)), false).outcome).expect_err("an error");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("was applied"),
            "{}",
            refused.message()
        );
    }
}
