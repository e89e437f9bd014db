//! The node task: one tokio task owns the [`raft::RawNode`], the durable log and the state
//! machine, and handles each output batch in the order the core documents:
//!
//! ```text
//!   tick / step / propose / read_index
//!   ready():  1. send messages            (may go before the disk write)
//!             2. persist hard state + entries, sync
//!             3. send persisted_messages  (votes, append acks: only after the sync)
//!             4. apply committed entries, answer waiting writers
//!             5. answer reads released by the core (safe only after step 4)
//!             advance(number)
//! ```
//!
//! Everything that reaches the task goes through a bounded channel; a full channel means
//! "busy" to the caller, never an unbounded queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft::{EntryKind, Message, NodeId, RawNode, ReadCtx, Ready, Role};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ServerError;
use crate::transport::Peers;

/// Proposals queued for the node task, at most.
pub const PROPOSALS_QUEUE_MAX: usize = 1024;
/// Read requests queued for the node task, at most.
pub const READS_QUEUE_MAX: usize = 1024;
/// Inbound peer messages queued for the node task, at most.
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// Inputs taken per wake-up before the batch is handled (group commit: one sync per batch).
const INPUTS_PER_BATCH_MAX: usize = 256;

/// Why a write did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// Queues or the uncommitted log are full.
    #[error("too many requests")]
    Busy,
    /// The request exceeds the entry size limit.
    #[error("request is too large")]
    TooLarge,
    /// Another entry was committed where this one was proposed (leadership changed).
    #[error("leader changed")]
    LeaderChanged,
    /// The state machine refused the request (etcd's error message).
    #[error(transparent)]
    Kv(#[from] kv::KvError),
    /// The node task stopped.
    #[error("node stopped")]
    Stopped,
}

/// Why a linearizable read could not be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    /// No leader is known.
    #[error("no leader")]
    NoLeader,
    /// Too many reads pending.
    #[error("busy")]
    Busy,
    /// The leader changed or did not answer in time; retry.
    #[error("retry")]
    Retry,
    /// The node task stopped.
    #[error("node stopped")]
    Stopped,
}

struct Proposal {
    data: Vec<u8>,
    reply: oneshot::Sender<Result<kv::Response, WriteError>>,
}

type ReadReply = oneshot::Sender<Result<(), ReadFailure>>;

/// What the API can see of the node, updated after every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
}

/// The API's side of the node task. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<ReadReply>,
    status: watch::Receiver<NodeStatus>,
    /// The state machine, for reads (writes go through the log).
    pub kv: Arc<kv::Store>,
}

impl NodeHandle {
    /// Proposes an encoded command and waits until it is applied. Errors at once when the
    /// queue is full or this node does not lead.
    pub async fn propose(&self, data: Vec<u8>) -> Result<kv::Response, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .try_send(Proposal { data, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Busy,
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        rx.await.unwrap_or(Err(WriteError::Stopped))
    }

    /// Waits until a linearizable read may be served from the local state machine.
    pub async fn read_index(&self) -> Result<(), ReadFailure> {
        let (reply, rx) = oneshot::channel();
        self.reads.try_send(reply).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReadFailure::Busy,
            mpsc::error::TrySendError::Closed(_) => ReadFailure::Stopped,
        })?;
        rx.await.unwrap_or(Err(ReadFailure::Stopped))
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        *self.status.borrow()
    }
}

/// Everything the node task owns.
pub struct NodeTask {
    raw: RawNode,
    log: storage::Store,
    kv: Arc<kv::Store>,
    peers: Arc<Peers>,
    tick: Duration,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<ReadReply>,
    inbound: mpsc::Receiver<Message>,
    status: watch::Sender<NodeStatus>,
    /// Writers waiting for their entry: index -> (term proposed in, reply).
    waiting_writes: BTreeMap<u64, (u64, oneshot::Sender<Result<kv::Response, WriteError>>)>,
    /// Readers waiting for confirmation, by read tag.
    waiting_reads: BTreeMap<u64, ReadReply>,
    /// Next read tag.
    next_read_ctx: u64,
}

impl NodeTask {
    /// Builds the task and its handle; `inbound` is where the transport delivers messages.
    pub fn new(
        raw: RawNode,
        log: storage::Store,
        kv: Arc<kv::Store>,
        peers: Arc<Peers>,
        tick: Duration,
        inbound: mpsc::Receiver<Message>,
    ) -> (NodeTask, NodeHandle) {
        let (ptx, prx) = mpsc::channel(PROPOSALS_QUEUE_MAX);
        let (rtx, rrx) = mpsc::channel(READS_QUEUE_MAX);
        let (stx, srx) = watch::channel(status_of(&raw));
        let handle = NodeHandle {
            proposals: ptx,
            reads: rtx,
            status: srx,
            kv: kv.clone(),
        };
        let task = NodeTask {
            raw,
            log,
            kv,
            peers,
            tick,
            proposals: prx,
            reads: rrx,
            inbound,
            status: stx,
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            next_read_ctx: 1,
        };
        (task, handle)
    }

    /// Runs until a storage or state machine fault (returned), or until all handles and the
    /// transport are dropped.
    pub async fn run(mut self) -> Result<(), ServerError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.raw.tick(),
                m = self.inbound.recv() => match m {
                    Some(m) => self.step(m),
                    None => return Ok(()),
                },
                p = self.proposals.recv() => match p {
                    Some(p) => self.propose(p),
                    None => return Ok(()),
                },
                r = self.reads.recv() => match r {
                    Some(r) => self.read(r),
                    None => return Ok(()),
                },
            }
            // Take whatever else is already queued so that one sync covers all of it.
            for _ in 0..INPUTS_PER_BATCH_MAX {
                if let Ok(m) = self.inbound.try_recv() {
                    self.step(m);
                } else if let Ok(p) = self.proposals.try_recv() {
                    self.propose(p);
                } else if let Ok(r) = self.reads.try_recv() {
                    self.read(r);
                } else {
                    break;
                }
            }
            while self.raw.has_ready() {
                let rd = self.raw.ready();
                self.handle_ready(rd)?;
            }
        }
    }

    fn step(&mut self, m: Message) {
        if let Err(e) = self.raw.step(m) {
            tracing::warn!(error = %e, "dropped a peer message");
        }
    }

    fn propose(&mut self, p: Proposal) {
        match self.raw.propose(p.data) {
            Ok(id) => {
                self.waiting_writes.insert(id.index.0, (id.term.0, p.reply));
            }
            Err(raft::ProposeError::NotLeader { leader }) => {
                let _ = p.reply.send(Err(WriteError::NotLeader(leader)));
            }
            Err(raft::ProposeError::LeadershipTransfer { to }) => {
                let _ = p.reply.send(Err(WriteError::NotLeader(Some(to))));
            }
            Err(raft::ProposeError::Busy) => {
                let _ = p.reply.send(Err(WriteError::Busy));
            }
            Err(raft::ProposeError::TooLarge { .. }) => {
                let _ = p.reply.send(Err(WriteError::TooLarge));
            }
        }
    }

    fn read(&mut self, reply: ReadReply) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match self.raw.read_index(ReadCtx(ctx)) {
            Ok(()) => {
                self.waiting_reads.insert(ctx, reply);
            }
            Err(e) => {
                let f = match e {
                    raft::ReadError::NoLeader => ReadFailure::NoLeader,
                    raft::ReadError::Busy => ReadFailure::Busy,
                    _ => ReadFailure::Retry,
                };
                let _ = reply.send(Err(f));
            }
        }
    }

    fn handle_ready(&mut self, rd: Ready) -> Result<(), ServerError> {
        if rd.snapshot.is_some() || !rd.snapshot_chunks.is_empty() {
            // This server never compacts its log, so no peer should send it a snapshot.
            return Err(ServerError::Unsupported(
                "installing a snapshot from the leader".into(),
            ));
        }
        if let Some(ss) = rd.soft_state {
            tracing::info!(term = ss.term.0, role = ?ss.role, leader = ?ss.leader.map(|l| l.get()), "raft state");
        }
        // 1. Messages that do not depend on this batch's disk write.
        self.send_all(rd.messages);
        // 2. Persist, then sync (Store::write syncs before returning).
        if rd.hard_state.is_some() || !rd.entries.is_empty() {
            let log = &mut self.log;
            tokio::task::block_in_place(|| log.write(rd.hard_state.as_ref(), &rd.entries))?;
        }
        // 3. Messages that promise durable state.
        self.send_all(rd.persisted_messages);
        // 4. Apply.
        if !rd.committed_entries.is_empty() {
            let kv = self.kv.clone();
            let results = tokio::task::block_in_place(|| apply_all(&kv, &rd.committed_entries))?;
            for (entry, result) in rd.committed_entries.iter().zip(results) {
                self.answer_write(entry.index.0, entry.term.0, result);
            }
        }
        // 5. Reads, now that everything they must observe is applied.
        for rs in rd.read_states {
            if let Some(reply) = self.waiting_reads.remove(&rs.ctx.0) {
                let _ = reply.send(Ok(()));
            }
        }
        for ctx in rd.failed_reads {
            if let Some(reply) = self.waiting_reads.remove(&ctx.0) {
                let _ = reply.send(Err(ReadFailure::Retry));
            }
        }
        self.raw.advance(rd.number);
        self.status.send_replace(status_of(&self.raw));
        Ok(())
    }

    fn send_all(&self, msgs: Vec<Message>) {
        for m in msgs {
            if matches!(m.body, raft::MessageBody::InstallSnapshot { .. }) {
                tracing::error!(to = m.to.get(), "snapshot transfer is not supported yet");
                continue;
            }
            self.peers.send(m);
        }
    }

    fn answer_write(
        &mut self,
        index: u64,
        term: u64,
        result: Option<Result<kv::Response, kv::KvError>>,
    ) {
        // Writers whose index was passed without their entry lost it to another leader.
        while let Some(entry) = self.waiting_writes.first_entry() {
            if *entry.key() >= index {
                break;
            }
            let (_, reply) = entry.remove();
            let _ = reply.send(Err(WriteError::LeaderChanged));
        }
        if let Some((want_term, reply)) = self.waiting_writes.remove(&index) {
            let answer = match result {
                _ if want_term != term => Err(WriteError::LeaderChanged),
                Some(Ok(resp)) => Ok(resp),
                Some(Err(e)) => Err(WriteError::Kv(e)),
                None => Err(WriteError::LeaderChanged),
            };
            let _ = reply.send(answer);
        }
    }
}

/// Applies committed entries in order. `None` for entries that carry no command.
fn apply_all(
    kv: &kv::Store,
    entries: &[raft::Entry],
) -> Result<Vec<Option<Result<kv::Response, kv::KvError>>>, ServerError> {
    let applied = kv.applied_index()?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.index.0 <= applied {
            // Replayed after a restart: the state machine already has it.
            out.push(None);
            continue;
        }
        match e.kind {
            EntryKind::Normal => {
                let cmd = match kv::codec::decode_command(&e.data) {
                    Ok(cmd) => cmd,
                    Err(err) => {
                        // A committed entry that does not decode is on every replica: skip it
                        // deterministically rather than wedge the cluster.
                        tracing::error!(index = e.index.0, error = %err, "undecodable command");
                        kv.advance_applied(e.index.0)?;
                        out.push(None);
                        continue;
                    }
                };
                match kv.apply(e.index.0, &cmd) {
                    Ok(resp) => out.push(Some(Ok(resp))),
                    Err(kv::Error::Kv(err)) => out.push(Some(Err(err))),
                    Err(other) => return Err(other.into()),
                }
            }
            _ => {
                kv.advance_applied(e.index.0)?;
                out.push(None);
            }
        }
    }
    Ok(out)
}

fn status_of(raw: &RawNode) -> NodeStatus {
    let s = raw.status();
    NodeStatus {
        term: s.term.0,
        leader: s.leader,
        role: s.role,
        commit: s.commit.0,
        applied: s.applied.0,
    }
}
