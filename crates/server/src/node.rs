//! The node task: one tokio task owns the [`raft::RawNode`], the durable log and the state
//! machine, and handles each output batch in the order the core documents:
//!
//! ```text
//!   tick / step / propose / read_index
//!   ready():  1. send messages            (may go before the disk write; snapshot chunks
//!                                           are filled from the current snapshot file)
//!             2. stage incoming snapshot chunks; install a complete snapshot (state
//!                machine restored, log reset); persist hard state + entries, sync
//!             3. send persisted_messages  (votes, append acks: only after the sync)
//!             4. hand committed entries, their writers and the released reads to the
//!                apply task (crate::apply), which applies them while this task goes on
//!                to the next batch (pipelined apply); reads are answered after the
//!                entries before them are applied
//!             advance(number)
//!   then, if `snapshot_count` entries were applied since the last snapshot: snapshot the
//!   state machine, save it, compact the core's log and the durable log (paper §7).
//! ```
//!
//! Everything that reaches the task goes through a bounded channel; a full channel means
//! "busy" to the caller, never an unbounded queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::{EntryId, Index, Message, NodeId, RawNode, ReadCtx, Ready, Role, SnapshotMeta};
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{ApplyJob, ReadReply, Waiter, WriteReply};
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
    /// Queues or the uncommitted log are full: nothing was proposed.
    #[error("too many requests")]
    Busy,
    /// The request was not answered before its deadline; it may still be applied.
    #[error("request timed out")]
    Timeout,
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
    reply: WriteReply,
}

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
    /// The applied index, updated after every apply: watch streams wait on it.
    applied_changes: watch::Receiver<u64>,
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

    /// A receiver that wakes whenever the state machine has applied more entries.
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.applied_changes.clone()
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        *self.status.borrow()
    }
}

/// The snapshot a node holds: its description. Its bytes stay in the snapshot file, from
/// which outgoing chunks are read, so a member never keeps a copy of its state in memory.
pub type CurrentSnapshot = SnapshotMeta;

/// Everything the node task owns.
pub struct NodeTask {
    raw: RawNode,
    log: storage::Store,
    peers: Arc<Peers>,
    /// Jobs for the apply task, in order.
    apply: mpsc::Sender<ApplyJob>,
    /// The apply task, to learn why it stopped.
    applier: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    /// The state machine's applied index, as the apply task last published it.
    applied: Arc<AtomicU64>,
    tick: Duration,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<ReadReply>,
    inbound: mpsc::Receiver<Message>,
    status: watch::Sender<NodeStatus>,
    /// Writers waiting for their entry: index -> (term proposed in, reply).
    waiting_writes: BTreeMap<u64, (u64, WriteReply)>,
    /// Readers waiting for confirmation, by read tag.
    waiting_reads: BTreeMap<u64, ReadReply>,
    /// Next read tag.
    next_read_ctx: u64,
    /// The newest durable snapshot (taken here or installed from the leader), whose file
    /// fills outgoing `InstallSnapshot` chunks. Invariant: matches the newest snapshot file and
    /// the core's idea of its snapshot.
    snapshot: Option<CurrentSnapshot>,
    /// Take a snapshot once this many entries were applied past the log start.
    snapshot_count: u64,
    /// A snapshot being serialized and written on a blocking thread, if any (at most one).
    snapshotting: Option<tokio::task::JoinHandle<Result<CurrentSnapshot, ServerError>>>,
}

impl NodeTask {
    /// Builds the task and its handle; `inbound` is where the transport delivers messages.
    /// `snapshot` is the snapshot the log starts from (already given to the core with
    /// `RawNode::compact`), if any.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode,
        log: storage::Store,
        kv: Arc<kv::Store>,
        peers: Arc<Peers>,
        tick: Duration,
        inbound: mpsc::Receiver<Message>,
        snapshot: Option<CurrentSnapshot>,
        snapshot_count: u64,
    ) -> (NodeTask, NodeHandle) {
        assert!(snapshot_count > 0, "snapshot_count must be positive");
        let (ptx, prx) = mpsc::channel(PROPOSALS_QUEUE_MAX);
        let (rtx, rrx) = mpsc::channel(READS_QUEUE_MAX);
        let applied = Arc::new(AtomicU64::new(raw.status().applied.0));
        let (stx, srx) = watch::channel(status_of(&raw, &applied));
        let (changed_tx, changed_rx) = watch::channel(raw.status().applied.0);
        let (apply, applier) = crate::apply::spawn(kv.clone(), applied.clone(), changed_tx);
        let handle = NodeHandle {
            proposals: ptx,
            reads: rtx,
            status: srx,
            kv: kv.clone(),
            applied_changes: changed_rx,
        };
        let task = NodeTask {
            raw,
            log,
            peers,
            apply,
            applier: Some(applier),
            applied,
            tick,
            proposals: prx,
            reads: rrx,
            inbound,
            status: stx,
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            next_read_ctx: 1,
            snapshot,
            snapshot_count,
            snapshotting: None,
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
                done = async { self.snapshotting.as_mut().expect("guarded").await },
                    if self.snapshotting.is_some() =>
                {
                    self.snapshotting = None;
                    let taken = done.map_err(|e| {
                        ServerError::Invariant(format!("snapshot writer failed: {e}"))
                    })??;
                    self.finish_snapshot(taken)?;
                }
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
                self.handle_ready(rd).await?;
            }
            self.maybe_snapshot().await?;
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

    async fn handle_ready(&mut self, rd: Ready) -> Result<(), ServerError> {
        if let Some(ss) = rd.soft_state {
            tracing::info!(term = ss.term.0, role = ?ss.role, leader = ?ss.leader.map(|l| l.get()), "raft state");
        }
        // 1. Messages that do not depend on this batch's disk write.
        self.send_all(rd.messages);
        // 2. Stage snapshot chunks, install a complete snapshot, persist, then sync
        //    (Store::write syncs before returning).
        tokio::task::block_in_place(|| self.stage_chunks(&rd.snapshot_chunks))?;
        if let Some(meta) = &rd.snapshot {
            self.install_snapshot(meta, rd.hard_state.as_ref()).await?;
        }
        if rd.hard_state.is_some() || !rd.entries.is_empty() {
            let log = &mut self.log;
            tokio::task::block_in_place(|| log.write(rd.hard_state.as_ref(), &rd.entries))?;
        }
        // 3. Messages that promise durable state.
        self.send_all(rd.persisted_messages);
        // 4. Apply (in the apply task), then answer the reads released in this batch.
        let mut writers = Vec::new();
        if let Some(first) = rd.committed_entries.first() {
            // Writers below the first committed entry lost theirs to another leader (committed
            // entries are contiguous, so every other writer is matched below).
            self.fail_writes_through(first.index.0.saturating_sub(1));
        }
        for e in &rd.committed_entries {
            if let Some((term, reply)) = self.waiting_writes.remove(&e.index.0) {
                writers.push(Waiter {
                    index: e.index.0,
                    term,
                    reply,
                });
            }
        }
        let reads: Vec<ReadReply> = rd
            .read_states
            .iter()
            .filter_map(|rs| self.waiting_reads.remove(&rs.ctx.0))
            .collect();
        if !rd.committed_entries.is_empty() || !reads.is_empty() {
            self.submit(ApplyJob::Entries {
                entries: rd.committed_entries,
                writers,
                reads,
            })
            .await?;
        }
        for ctx in rd.failed_reads {
            if let Some(reply) = self.waiting_reads.remove(&ctx.0) {
                let _ = reply.send(Err(ReadFailure::Retry));
            }
        }
        self.raw.advance(rd.number);
        self.status
            .send_replace(status_of(&self.raw, &self.applied));
        Ok(())
    }

    /// Queues a job for the apply task; if that task has stopped, returns why.
    async fn submit(&mut self, job: ApplyJob) -> Result<(), ServerError> {
        if self.apply.send(job).await.is_ok() {
            return Ok(());
        }
        Err(self.apply_failure().await)
    }

    /// Waits for the apply task's answer to a job.
    async fn wait<T>(
        &mut self,
        rx: oneshot::Receiver<Result<T, ServerError>>,
    ) -> Result<T, ServerError> {
        match rx.await {
            Ok(r) => r,
            // The apply task dropped the job unanswered: it stopped.
            Err(_) => Err(self.apply_failure().await),
        }
    }

    /// Why the apply task stopped.
    async fn apply_failure(&mut self) -> ServerError {
        match self.applier.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ServerError::Invariant("the apply task stopped".into()),
                Err(e) => ServerError::Invariant(format!("the apply task failed: {e}")),
            },
            None => ServerError::Invariant("the apply task stopped".into()),
        }
    }

    /// Stages chunks of an incoming snapshot durably, in order (before the batch's
    /// `SnapshotResp` promises them to the leader).
    fn stage_chunks(&mut self, chunks: &[raft::SnapshotChunk]) -> Result<(), ServerError> {
        for chunk in chunks {
            if chunk.offset == 0 {
                self.log
                    .stage_begin(&storage_meta(&chunk.meta), chunk.meta.size_bytes)?;
            }
            let staged = self.log.staged().map(|p| p.meta.last);
            if staged != Some(chunk.meta.last) {
                // The core only asks for chunks that continue what it knows is staged.
                return Err(ServerError::Invariant(format!(
                    "snapshot chunk for {:?} at offset {} but {staged:?} is staged",
                    chunk.meta.last, chunk.offset
                )));
            }
            self.log.stage_chunk(chunk.offset, &chunk.data)?;
        }
        Ok(())
    }

    /// Installs a fully staged snapshot from the leader: the snapshot file becomes durable,
    /// the state machine is replaced by it (after every entry queued before it is applied),
    /// then the log restarts after it (keeping a matching suffix). A crash between the steps
    /// is finished at the next start (see `server::recover_snapshot`).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        hard_state: Option<&raft::HardState>,
    ) -> Result<(), ServerError> {
        let log = &mut self.log;
        let (staged, size, data) = tokio::task::block_in_place(|| -> Result<_, ServerError> {
            log.stage_finish()?;
            log.open_snapshot()?
                .ok_or_else(|| ServerError::Invariant("the installed snapshot vanished".into()))
        })?;
        if staged.last != meta.last || size != meta.size_bytes {
            return Err(ServerError::Invariant(format!(
                "asked to install snapshot {:?} of {} bytes but staged {:?} has {size} bytes",
                meta.last, meta.size_bytes, staged.last,
            )));
        }
        let (done, rx) = oneshot::channel();
        self.submit(ApplyJob::Install {
            data: Box::new(data),
            index: meta.last.index.0,
            done,
        })
        .await?;
        self.wait(rx).await?;
        let mut hs = hard_state.copied().unwrap_or_else(|| self.log.hard_state());
        hs.commit = hs.commit.max(meta.last.index);
        tokio::task::block_in_place(|| self.log.reset_to_snapshot(meta.last, &hs))?;
        tracing::info!(
            index = meta.last.index.0,
            term = meta.last.term.0,
            bytes = meta.size_bytes,
            "installed a snapshot from the leader"
        );
        // Writers waiting on entries the snapshot covers will never see them applied here.
        self.fail_writes_through(meta.last.index.0);
        self.snapshot = Some(meta.clone());
        Ok(())
    }

    /// Starts a snapshot once `snapshot_count` entries were applied past the log start
    /// (paper §7): the apply task opens a durable, consistent view of the state machine, and a
    /// blocking thread serializes it and writes the snapshot file, so neither the node task nor
    /// applying waits for a large state to be written. [`NodeTask::finish_snapshot`] then
    /// compacts the logs.
    async fn maybe_snapshot(&mut self) -> Result<(), ServerError> {
        // Cheap test first (no IO): this runs after every batch.
        let start = self.log.log_start().index.0;
        if self.snapshotting.is_some()
            || self.raw.status().applied.0 < start.saturating_add(self.snapshot_count)
        {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.submit(ApplyJob::Snapshot { done }).await?;
        let view = self.wait(rx).await?;
        let applied = view.applied_index()?;
        if applied < start.saturating_add(self.snapshot_count) {
            return Ok(());
        }
        let index = Index(applied);
        let Some(term) = self.raw.log().term(index) else {
            return Ok(());
        };
        let last = EntryId { term, index };
        let membership = self.raw.log().membership_at(index).clone();
        let dir = self.log.snapshot_dir().to_path_buf();
        self.snapshotting = Some(tokio::task::spawn_blocking(move || {
            // Streamed from the read view to the file: the state is never whole in memory.
            let smeta = storage::SnapshotMeta {
                last,
                membership: membership.clone(),
            };
            let mut file = storage::SnapshotWriter::create(&dir, &smeta)?;
            let size_bytes = view.write_to(&mut file)?;
            drop(view);
            file.finish()?;
            Ok(SnapshotMeta {
                last,
                membership,
                size_bytes,
            })
        }));
        Ok(())
    }

    /// Adopts a snapshot written by [`NodeTask::maybe_snapshot`] and compacts the core's log
    /// and the durable log up to it. Skipped if a snapshot installed from the leader in the
    /// meantime already covers it (the file is then removed by the next adoption).
    fn finish_snapshot(&mut self, meta: CurrentSnapshot) -> Result<(), ServerError> {
        let covered = self.log.log_start().index;
        if meta.last.index <= covered || !self.raw.log().matches(meta.last) {
            tracing::info!(
                index = meta.last.index.0,
                "a newer snapshot was installed meanwhile; dropping the one taken here"
            );
            return Ok(());
        }
        let log = &mut self.log;
        tokio::task::block_in_place(|| -> Result<_, ServerError> {
            log.adopt_snapshot(&storage_meta(&meta))?;
            // The membership as of the new log start, before the entries that held it go.
            log.set_membership(&meta.membership)?;
            Ok(())
        })?;
        self.raw
            .compact(meta.clone())
            .map_err(|e| ServerError::Invariant(format!("core refused compaction: {e:?}")))?;
        tokio::task::block_in_place(|| self.log.compact(meta.last))?;
        tracing::info!(
            index = meta.last.index.0,
            term = meta.last.term.0,
            bytes = meta.size_bytes,
            "took a snapshot and compacted the log"
        );
        self.snapshot = Some(meta);
        Ok(())
    }

    fn send_all(&self, msgs: Vec<Message>) {
        for mut m in msgs {
            if let raft::MessageBody::InstallSnapshot {
                meta,
                offset,
                len,
                data,
            } = &mut m.body
            {
                // Fill the chunk from the current snapshot's file; drop it if that snapshot
                // was replaced (the leader restarts the transfer with the new one).
                if self.snapshot.as_ref() != Some(&*meta) {
                    tracing::debug!(to = m.to.get(), "dropped a chunk of a replaced snapshot");
                    continue;
                }
                let log = &self.log;
                match tokio::task::block_in_place(|| log.snapshot_chunk(meta.last, *offset, *len)) {
                    Ok(chunk) => *data = chunk,
                    Err(e) => {
                        // The core resends after a timeout; a file that cannot be read is
                        // reported, and the follower waits for the next snapshot.
                        tracing::warn!(to = m.to.get(), error = %e, "cannot read a snapshot chunk");
                        continue;
                    }
                }
            }
            self.peers.send(m);
        }
    }

    /// Answers writers waiting on entries up to `index` that will not be applied here.
    fn fail_writes_through(&mut self, index: u64) {
        while let Some(entry) = self.waiting_writes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (_, reply) = entry.remove();
            let _ = reply.send(Err(WriteError::LeaderChanged));
        }
    }
}

/// The storage crate's description of a snapshot (its size lives in the file).
pub fn storage_meta(meta: &SnapshotMeta) -> storage::SnapshotMeta {
    storage::SnapshotMeta {
        last: meta.last,
        membership: meta.membership.clone(),
    }
}

fn status_of(raw: &RawNode, applied: &AtomicU64) -> NodeStatus {
    let s = raw.status();
    NodeStatus {
        term: s.term.0,
        leader: s.leader,
        role: s.role,
        commit: s.commit.0,
        applied: applied.load(Ordering::Acquire),
    }
}
