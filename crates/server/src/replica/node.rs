//! The node task: one tokio task owns the [`raft::RawNode`], the durable log and the state
//! machine, and handles each output batch in the order the core documents:
//!
//! ```text
//!   tick / step / propose / read_index
//!   ready():  1. send messages            (may go before the disk write; snapshot chunks
//!                                           are filled from the current snapshot file)
//!             2. stage incoming snapshot chunks; install a complete snapshot (state
//!                machine restored, log reset); persist hard state + entries, sync
//!                (unless only the commit index changed: `must_sync` false, no IO)
//!             3. send persisted_messages  (votes, append acks: only after the sync)
//!             4. hand committed entries, their writers and the released reads to the
//!                apply task ([`super::apply`]), which applies them while this task goes on
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

use raft::{Message, NodeId, RawNode, ReadCtx, Ready};
use tokio::sync::{mpsc, oneshot, watch};

use super::apply::ApplyJob;
use super::handle::{AdminOp, NodeHandle, NodeStatus, PendingMember, Proposal};
use super::reply::{ReadFailure, ReadReply, Waiter, WriteError, WriteReply};
use super::{CurrentSnapshot, Outbox};
use crate::error::ServerError;
use crate::metrics::{Metrics, ReplicationView};

/// Proposals queued for the node task, at most.
pub const PROPOSALS_QUEUE_MAX: usize = 1024;
/// Read requests queued for the node task, at most.
pub const READS_QUEUE_MAX: usize = 1024;
/// Operator requests (leader transfers) queued for the node task, at most.
pub const ADMIN_QUEUE_MAX: usize = 16;
/// Inbound peer messages queued for the node task, at most.
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// How often the leader's view of its followers is published for metrics and the dashboard.
const REPLICATION_VIEW_EVERY: Duration = Duration::from_millis(200);
/// Inputs taken per wake-up before the batch is handled (group commit: one sync per batch).
const INPUTS_PER_BATCH_MAX: usize = 256;

/// Everything the node task owns.
pub struct NodeTask {
    pub(super) raw: RawNode,
    pub(super) log: storage::Store,
    outbox: Arc<dyn Outbox>,
    /// Jobs for the apply task, in order.
    apply: mpsc::Sender<ApplyJob>,
    /// The apply task, to learn why it stopped.
    applier: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    /// The state machine's applied index, as the apply task last published it.
    applied: Arc<AtomicU64>,
    tick: Duration,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<ReadReply>,
    admin: mpsc::Receiver<AdminOp>,
    inbound: mpsc::Receiver<Message>,
    status: watch::Sender<NodeStatus>,
    /// The configuration in force, as last published to the handles.
    membership: watch::Sender<Arc<raft::Membership>>,
    /// Members added by configuration entries not applied yet (see [`PendingMember`]).
    pending_members: watch::Sender<Arc<Vec<PendingMember>>>,
    /// Writers waiting for their entry: index -> (term proposed in, reply).
    waiting_writes: BTreeMap<u64, (u64, WriteReply)>,
    /// Readers waiting for confirmation, by read tag.
    waiting_reads: BTreeMap<u64, ReadReply>,
    /// Next read tag.
    next_read_ctx: u64,
    /// The newest durable snapshot (taken here or installed from the leader), whose file
    /// fills outgoing `InstallSnapshot` chunks. Invariant: matches the newest snapshot file and
    /// the core's idea of its snapshot.
    pub(super) snapshot: Option<CurrentSnapshot>,
    /// Take a snapshot once this many entries were applied past the log start.
    pub(super) snapshot_count: u64,
    /// A snapshot being serialized and written on a blocking thread, if any (at most one).
    pub(super) snapshotting: Option<tokio::task::JoinHandle<Result<CurrentSnapshot, ServerError>>>,
    /// This member's metrics (counted here: leader changes, failed proposals, snapshots,
    /// reads; published here: the leader's view of its followers).
    pub(super) metrics: Arc<Metrics>,
    /// The last leader this member knew, to count changes of leader.
    last_leader: Option<NodeId>,
    /// When the followers' view was last published for metrics (at most every
    /// [`REPLICATION_VIEW_EVERY`]); `None` while there is nothing published.
    replication_published: Option<std::time::Instant>,
    /// The core's count of read rounds ([`raft::RawNode::read_rounds`]) already added to
    /// `skiff_read_index_rounds_total`.
    read_rounds_counted: u64,
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
        outbox: Arc<dyn Outbox>,
        tick: Duration,
        inbound: mpsc::Receiver<Message>,
        snapshot: Option<CurrentSnapshot>,
        snapshot_count: u64,
        removal: Arc<super::Removal>,
        metrics: Arc<Metrics>,
    ) -> (NodeTask, NodeHandle) {
        assert!(snapshot_count > 0, "snapshot_count must be positive");
        let (ptx, prx) = mpsc::channel(PROPOSALS_QUEUE_MAX);
        let (rtx, rrx) = mpsc::channel(READS_QUEUE_MAX);
        let (atx, arx) = mpsc::channel(ADMIN_QUEUE_MAX);
        let applied = Arc::new(AtomicU64::new(raw.status().applied.0));
        let (stx, srx) = watch::channel(status_of(&raw, &applied));
        let (mtx, mrx) = watch::channel(Arc::new(raw.log().membership().clone()));
        let (pending_tx, pending_rx) = watch::channel(Arc::new(pending_members(&raw)));
        let (changed_tx, changed_rx) = watch::channel(raw.status().applied.0);
        let session_waiters = Arc::new(super::session_waiters::SessionWaiters::default());
        let (apply, applier) = super::apply::spawn(
            kv.clone(),
            applied.clone(),
            changed_tx,
            session_waiters.clone(),
            removal,
            metrics.clone(),
        );
        let handle = NodeHandle {
            proposals: ptx,
            reads: rtx,
            admin: atx,
            status: srx,
            membership: mrx,
            pending_members: pending_rx,
            kv: kv.clone(),
            applied_changes: changed_rx,
            session_waiters,
            metrics: metrics.clone(),
        };
        let task = NodeTask {
            raw,
            log,
            outbox,
            apply,
            applier: Some(applier),
            applied,
            tick,
            proposals: prx,
            reads: rrx,
            admin: arx,
            inbound,
            status: stx,
            membership: mtx,
            pending_members: pending_tx,
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            next_read_ctx: 1,
            snapshot,
            snapshot_count,
            snapshotting: None,
            metrics,
            last_leader: None,
            replication_published: None,
            read_rounds_counted: 0,
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
                Some(op) = self.admin.recv() => self.admin(op),
                done = async { self.snapshotting.as_mut().expect("guarded").await },
                    if self.snapshotting.is_some() =>
                {
                    self.snapshotting = None;
                    let taken = match done {
                        Ok(Ok(taken)) => taken,
                        // If the apply task stopped, its error is the one to report.
                        Ok(Err(e)) if self.applier.as_ref().is_some_and(|a| a.is_finished()) => {
                            tracing::warn!(error = %e, "snapshot abandoned");
                            return Err(self.apply_failure().await);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(e) => {
                            return Err(ServerError::Invariant(format!(
                                "snapshot writer failed: {e}"
                            )))
                        }
                    };
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
            // Every wake-up, not only with a batch: acknowledgements move the followers'
            // progress without producing one.
            self.publish_metrics();
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
                self.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(WriteError::NotLeader(leader)));
            }
            Err(raft::ProposeError::LeadershipTransfer { to }) => {
                self.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(WriteError::NotLeader(Some(to))));
            }
            Err(raft::ProposeError::Busy) => {
                self.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(WriteError::Busy));
            }
            Err(raft::ProposeError::TooLarge { .. }) => {
                self.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(WriteError::TooLarge));
            }
        }
    }

    fn admin(&mut self, op: AdminOp) {
        match op {
            AdminOp::TransferLeader { to, reply } => {
                let _ = reply.send(self.raw.transfer_leader(to));
            }
            AdminOp::MatchIndex { id, reply } => {
                let me = self.raw.id();
                let answer = self
                    .raw
                    .match_index(me)
                    .map(|own| (own.0, self.raw.match_index(id).map(|m| m.0)));
                let _ = reply.send(answer);
            }
            AdminOp::ChangeMembership {
                change,
                context,
                reply,
                applied,
            } => match self.raw.change_membership_with_context(change, context) {
                Ok(id) => {
                    // Answered like a write: by the apply of the entry at `id`, if it is
                    // still the one proposed (same term).
                    self.waiting_writes.insert(id.index.0, (id.term.0, applied));
                    let _ = reply.send(Ok(id));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn read(&mut self, reply: ReadReply) {
        self.metrics.read_index_requests.inc();
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
            let st = self.raw.status();
            tracing::info!(
                member = %format_args!("{:x}", st.id.get()),
                term = ss.term.0,
                role = ?ss.role,
                leader = %ss.leader.map_or("none".to_string(), |l| format!("{:x}", l.get())),
                commit = st.commit.0,
                last = st.last.index.0,
                "raft state"
            );
            // etcd counts every new leader seen, the first one too.
            if ss.leader.is_some() && ss.leader != self.last_leader {
                self.metrics.leader_seen();
            }
            if ss.leader.is_some() {
                self.last_leader = ss.leader;
            }
        }
        if let Some(meta) = &rd.snapshot {
            self.metrics.snapshots_installed.inc();
            self.metrics
                .snapshot_installed_bytes
                .inc_by(meta.size_bytes);
        }
        if !rd.read_states.is_empty() {
            self.metrics
                .read_index_batch
                .observe(rd.read_states.len() as f64);
        }
        let rounds = self.raw.read_rounds();
        if rounds > self.read_rounds_counted {
            self.metrics
                .read_index_rounds
                .inc_by(rounds - self.read_rounds_counted);
            self.read_rounds_counted = rounds;
        }
        // 1. Messages that do not depend on this batch's disk write.
        self.send_all(rd.messages);
        // 2. Stage snapshot chunks, install a complete snapshot, persist, then sync
        //    (Store::write syncs before returning).
        // `block_in_place` hands this worker's queue to another thread (a blocking-pool
        // wakeup) even for nothing: only when there are chunks.
        if !rd.snapshot_chunks.is_empty() {
            tokio::task::block_in_place(|| self.stage_chunks(&rd.snapshot_chunks))?;
        }
        if let Some(meta) = &rd.snapshot {
            self.install_snapshot(meta, rd.hard_state.as_ref()).await?;
        }
        if rd.must_sync {
            if rd.hard_state.is_some() || !rd.entries.is_empty() {
                let log = &mut self.log;
                tokio::task::block_in_place(|| log.write(rd.hard_state.as_ref(), &rd.entries))?;
            }
        } else if let Some(hs) = &rd.hard_state {
            // Only the commit index changed: kept until the next synced record (etcd's
            // `MustSync`; see `storage::Store::write_commit`).
            self.log.write_commit(hs)?;
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
        // Members a committed configuration entry leaves out: the configuration before it is
        // still in the core's log (the log starts at or before the applied index).
        let removals = rd
            .committed_entries
            .iter()
            .filter_map(|e| {
                let raft::EntryKind::Membership(next) = &e.kind else {
                    return None;
                };
                let before = self.raw.log().membership_at(raft::Index(e.index.0 - 1));
                let gone: Vec<u64> = before
                    .members()
                    .difference(&next.members())
                    .map(|id| id.get())
                    .collect();
                (!gone.is_empty()).then_some((e.index.0, gone))
            })
            .collect();
        if !rd.committed_entries.is_empty() || !reads.is_empty() {
            self.submit(ApplyJob::Entries {
                entries: rd.committed_entries,
                writers,
                reads,
                removals,
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
        if **self.membership.borrow() != *self.raw.log().membership() {
            let m = self.raw.log().membership();
            let hex = |s: &std::collections::BTreeSet<raft::NodeId>| {
                s.iter()
                    .map(|id| format!("{:x}", id.get()))
                    .collect::<Vec<_>>()
            };
            tracing::info!(
                member = %format_args!("{:x}", self.raw.id().get()),
                term = self.raw.status().term.0,
                voters = ?hex(&m.voters), outgoing = ?hex(&m.voters_outgoing),
                learners = ?hex(&m.learners), index = self.raw.log().membership_index().0,
                "configuration in force"
            );
            self.membership.send_replace(Arc::new(m.clone()));
            self.pending_members
                .send_replace(Arc::new(pending_members(&self.raw)));
        }
        Ok(())
    }

    /// Queues a job for the apply task; if that task has stopped, returns why.
    pub(super) async fn submit(&mut self, job: ApplyJob) -> Result<(), ServerError> {
        if self.apply.send(job).await.is_ok() {
            return Ok(());
        }
        Err(self.apply_failure().await)
    }

    /// Waits for the apply task's answer to a job.
    pub(super) async fn wait<T>(
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
                    Ok(chunk) => {
                        if *offset == 0 {
                            self.metrics.snapshots_sent.inc();
                            tracing::info!(
                                member = %format_args!("{:x}", self.raw.id().get()),
                                to = %format_args!("{:x}", m.to.get()),
                                index = meta.last.index.0,
                                term = meta.last.term.0,
                                bytes = meta.size_bytes,
                                "sending a snapshot"
                            );
                        }
                        self.metrics.snapshot_sent_bytes.inc_by(chunk.len() as u64);
                        *data = chunk;
                    }
                    Err(e) => {
                        // The core resends after a timeout; a file that cannot be read is
                        // reported, and the follower waits for the next snapshot.
                        tracing::warn!(to = m.to.get(), error = %e, "cannot read a snapshot chunk");
                        continue;
                    }
                }
            }
            self.outbox.send(m);
        }
    }

    /// Sets the gauges this task owns, and publishes the leader's view of its followers (at
    /// most every [`REPLICATION_VIEW_EVERY`], or once emptied when leadership is lost).
    fn publish_metrics(&mut self) {
        let m = &self.metrics;
        m.proposals_pending
            .set(i64::try_from(self.waiting_writes.len()).unwrap_or(i64::MAX));
        m.apply_queue.set(
            i64::try_from(self.apply.max_capacity() - self.apply.capacity()).unwrap_or(i64::MAX),
        );
        let leading = self.raw.status().role == raft::Role::Leader;
        let due = match self.replication_published {
            None => leading,
            Some(at) => !leading || at.elapsed() >= REPLICATION_VIEW_EVERY,
        };
        if !due {
            return;
        }
        if leading {
            m.publish_replication(ReplicationView {
                last_index: self.raw.log().last_index().0,
                followers: self.raw.followers(),
            });
            self.replication_published = Some(std::time::Instant::now());
        } else {
            m.publish_replication(ReplicationView::default());
            self.replication_published = None;
        }
    }

    /// Answers writers waiting on entries up to `index` that will not be applied here.
    pub(super) fn fail_writes_through(&mut self, index: u64) {
        while let Some(entry) = self.waiting_writes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (_, reply) = entry.remove();
            self.metrics.proposals_failed.inc();
            let _ = reply.send(Err(WriteError::LeaderChanged));
        }
    }
}

/// Members added by configuration entries past the applied index, with the addresses their
/// entries carry (a MemberAdd's context): the member table describes them only once the entry
/// is applied, and a leader must reach a new voter before that (it may need its vote or its
/// acknowledgement to commit anything), also after a restart.
fn pending_members(raw: &RawNode) -> Vec<PendingMember> {
    let log = raw.log();
    let from = log.applied().max(log.offset().index).next();
    if from > log.last_index() {
        return Vec::new();
    }
    log.iter_range(from, log.last_index())
        .filter(|e| matches!(e.kind, raft::EntryKind::Membership(_)) && !e.data.is_empty())
        .filter_map(|e| {
            let cmd = kv::codec::decode_command(&e.data).ok()?;
            let kv::Request::MemberAdd(m) = cmd.request else {
                return None;
            };
            Some(PendingMember {
                id: NodeId::new(m.id)?,
                peer_urls: m.peer_urls,
                voters_before: log.membership_at(e.index.prev()).voters.clone(),
            })
        })
        .collect()
}

fn status_of(raw: &RawNode, applied: &AtomicU64) -> NodeStatus {
    let s = raw.status();
    NodeStatus {
        term: s.term.0,
        leader: s.leader,
        role: s.role,
        commit: s.commit.0,
        last: s.last.index.0,
        applied: applied.load(Ordering::Acquire),
        membership_index: raw.log().membership_index().0,
    }
}
