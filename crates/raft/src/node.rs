//! The Raft node: its state, the public driving API and role transitions. Message handling is
//! split by concern into `election.rs`, `replication.rs` and `reads.rs`.
//!
//! Driving loop (one way only):
//! ```text
//!   loop {
//!       node.tick() / node.step(msg) / node.propose(data) / node.read_index(ctx)
//!       if node.has_ready() {
//!           let rd = node.ready();
//!           send rd.messages                      (may go at once; fill snapshot chunks)
//!           stage rd.snapshot_chunks; if rd.snapshot: install the staged snapshot
//!           persist rd.hard_state, rd.entries      (then sync)
//!           send rd.persisted_messages             (only after the sync)
//!           apply rd.committed_entries, then serve rd.read_states
//!           node.advance(rd.number)
//!       }
//!   }
//! ```

use crate::config::{Config, ReadOnlyOption};
use crate::errors::{CompactError, ProposeError, ReadError, StartError, StepError};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::output::{InitialState, Ready, Status};
use crate::read::ReadQueue;
use crate::rng::Rng;
use crate::role::{LeaderState, RoleState};
use crate::snapshot::{self, Incoming};
use crate::types::{
    Entry, EntryId, EntryKind, HardState, Index, NodeId, ReadCtx, Role, SnapshotChunk,
    SnapshotMeta, SoftState, Term,
};

/// What an outstanding [`Ready`] promised to do, remembered until it is advanced.
#[derive(Clone, Copy, Debug)]
struct InFlightReady {
    number: u64,
    /// Last entry index handed out for persistence, if any entries were.
    persisted_last: Option<Index>,
    /// Last committed entry handed out for apply, if any.
    applied_last: Option<Index>,
    /// The hard state handed out with (or before) this batch: durable once it is advanced.
    hard_state: HardState,
}

/// A Raft node: a deterministic state machine (see the crate docs).
#[derive(Clone, Debug)]
pub struct RawNode {
    /// Settings, validated at construction.
    pub(crate) config: Config,
    /// Current term (Figure 2 `currentTerm`). Never decreases.
    pub(crate) term: Term,
    /// Vote in `term` (Figure 2 `votedFor`). Reset only when `term` grows.
    pub(crate) vote: Option<NodeId>,
    /// Current role, with the state only that role has (`role.rs`).
    pub(crate) role: RoleState,
    /// The leader of `term`, once known. Invariant: `== Some(self.id())` iff this node is
    /// leader.
    pub(crate) leader: Option<NodeId>,
    /// The log and its pointers.
    pub(crate) log: RaftLog,
    /// Ticks since the last election timeout reset (followers: since hearing from a leader or
    /// granting a vote; leader: since the last CheckQuorum round).
    pub(crate) election_elapsed: u64,
    /// The current randomized timeout, in `[election_ticks, 2 * election_ticks)`.
    pub(crate) randomized_election_ticks: u64,
    /// Ticks since this node started: the clock of forwarded-read expiry, read rounds and
    /// the lease, and of `lease_granted_until`. Never decreases.
    pub(crate) ticks: u64,
    /// With CheckQuorum, this node refuses non-transfer (pre-)votes while `ticks` is below
    /// this (see `in_lease`): `ticks + election_ticks` whenever it hears from the leader of its
    /// term, and `election_ticks` at start with lease reads, since it may have acknowledged a
    /// lease round before it went down. It survives term and role changes: a follower moved to
    /// a higher term by a message that is not a vote must still honour the lease it granted.
    /// Never decreases.
    pub(crate) lease_granted_until: u64,
    /// A real campaign of this node lost (a majority refused it) and it has not heard from a
    /// leader since: its campaigns start with a pre-vote, PreVote off or not (see
    /// `campaign_now`). Invariant: `false` on a leader.
    pub(crate) lost_campaign: bool,
    /// Election jitter source.
    pub(crate) rng: Rng,
    /// Pending reads.
    pub(crate) reads: ReadQueue,
    /// Reads that failed, to report in the next batch.
    pub(crate) failed_reads: Vec<ReadCtx>,
    /// The newest durable snapshot this node can send (set by [`RawNode::compact`] or by
    /// installing one). Invariant: if `Some`, its last index is at least the log's offset.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// Follower: the snapshot being received, and how much of it is staged.
    pub(crate) incoming_snapshot: Option<Incoming>,
    /// Chunks to hand out for staging in the next batch.
    pub(crate) pending_chunks: Vec<SnapshotChunk>,
    /// A snapshot to hand out for installing in the next batch.
    pub(crate) pending_install: Option<SnapshotMeta>,
    /// Outgoing messages since the last batch. Bounded by flow control: one heartbeat per peer
    /// per interval, appends within each follower's window, one answer per message received.
    pub(crate) msgs: Vec<Message>,
    /// Leader: entries were proposed since the last broadcast. [`RawNode::ready`] sends them
    /// to every follower in one append each, however many proposals came in between: one
    /// broadcast per proposal cost each follower a message, a log append and an
    /// acknowledgement per entry. Invariant: `false` unless this node leads (cleared on every
    /// role change, see `reset`).
    pub(crate) bcast_pending: bool,
    /// Number of the last batch handed out.
    pub(crate) ready_number: u64,
    /// The batch handed out and not yet advanced.
    in_flight: Option<InFlightReady>,
    /// Hard state as of the last batch handed out.
    prev_hard_state: HardState,
    /// Hard state as of the last batch advanced (or the start): what a crash keeps. A
    /// candidate counts its own vote only once its term and vote are here.
    pub(crate) durable_hard_state: HardState,
    /// Soft state as of the last batch handed out (`None` before the first).
    prev_soft_state: Option<SoftState>,
}

impl RawNode {
    /// Starts a node from its durable state. Errors on an invalid config or inconsistent state.
    /// Use it at boot and after every crash: build `state` from what is on disk (see
    /// "Persisting and restarting" in the crate guide), or with [`InitialState::new_cluster`]
    /// for a brand-new cluster.
    pub fn new(config: Config, state: InitialState) -> Result<RawNode, StartError> {
        config.validate().map_err(StartError::Config)?;
        check_initial_state(&state).map_err(StartError::CorruptState)?;
        let forward_ids = forward_id_base(&config, &state);
        let log = RaftLog::restore(
            state.snapshot,
            state.membership.clone(),
            state.entries,
            state.hard_state.commit,
            state.applied,
        );
        // Hash the id before mixing: see `Rng::mix` (the simulator caught correlated streams).
        let seed = Rng::mix(config.seed ^ Rng::mix(config.id.get()));
        let mut node = RawNode {
            term: state.hard_state.term,
            vote: if cfg!(feature = "mut-forget-vote") {
                None
            } else {
                state.hard_state.vote
            },
            role: RoleState::Follower,
            leader: None,
            log,
            election_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            ticks: 0,
            lease_granted_until: if config.read_only == ReadOnlyOption::LeaseBased
                && !cfg!(feature = "mut-restart-forgets-lease")
            {
                config.election_ticks
            } else {
                0
            },
            lost_campaign: false,
            rng: Rng::new(seed),
            reads: ReadQueue::new(forward_ids),
            failed_reads: Vec::new(),
            snapshot: None,
            incoming_snapshot: None,
            pending_chunks: Vec::new(),
            pending_install: None,
            msgs: Vec::new(),
            bcast_pending: false,
            ready_number: 0,
            in_flight: None,
            prev_hard_state: state.hard_state,
            durable_hard_state: state.hard_state,
            prev_soft_state: None,
            config,
        };
        node.prev_hard_state.commit = node.log.committed();
        node.reset_randomized_election_timeout();
        node.check_invariants();
        Ok(node)
    }

    /// This node's id, as configured ([`Config::id`]): the `from` of every message it sends.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The current role's name.
    pub(crate) fn role(&self) -> Role {
        self.role.kind()
    }

    /// Whether this node leads its term.
    pub(crate) fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The leader's state. Panics off the leader: callers are leader-only paths.
    pub(crate) fn leading(&self) -> &LeaderState {
        match &self.role {
            RoleState::Leader(ls) => ls,
            other => panic!("leader state asked of a {:?}", other.kind()),
        }
    }

    /// The leader's state, mutably. Panics off the leader: callers are leader-only paths.
    pub(crate) fn leading_mut(&mut self) -> &mut LeaderState {
        match &mut self.role {
            RoleState::Leader(ls) => ls,
            other => panic!("leader state asked of a {:?}", other.kind()),
        }
    }

    /// The leader's state, if this node leads.
    pub(crate) fn leader_state(&self) -> Option<&LeaderState> {
        match &self.role {
            RoleState::Leader(ls) => Some(ls),
            _ => None,
        }
    }

    /// A snapshot of the node's state (role, term, leader, commit and applied indexes): use it
    /// to route clients to the leader, for metrics, and to decide when to take a snapshot.
    pub fn status(&self) -> Status {
        Status {
            id: self.id(),
            term: self.term,
            vote: self.vote,
            role: self.role(),
            leader: self.leader,
            commit: self.log.committed(),
            applied: self.log.applied(),
            persisted: self.log.persisted(),
            last: self.log.last_id(),
        }
    }

    /// Leader only: the highest index known to be in `id`'s log (this node's own: its durable
    /// index), as etcd's `Progress.Match`; `None` off the leader or for a non-member. For
    /// deciding whether a learner has caught up before promoting it.
    pub fn match_index(&self, id: NodeId) -> Option<Index> {
        let ls = self.leader_state()?;
        if id == self.id() {
            return Some(self.log.persisted());
        }
        ls.progress.get(&id).map(|pr| pr.matched)
    }

    /// Leader only (empty otherwise): what it knows of each follower, by id. For operators'
    /// views (metrics, dashboards); the protocol never reads it back.
    pub fn followers(&self) -> Vec<crate::progress::FollowerView> {
        let Some(ls) = self.leader_state() else {
            return Vec::new();
        };
        let learners = &self.log.membership().learners;
        ls.progress
            .iter()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, pr)| crate::progress::FollowerView {
                id: *id,
                learner: learners.contains(id),
                matched: pr.matched,
                next: pr.next,
                state: pr.state,
                inflight_msgs: pr.inflights.count(),
                inflight_bytes: pr.inflights.bytes(),
                lag_bytes: self.log.bytes_after(pr.matched),
                recent_active: pr.recent_active,
                snapshot: pr
                    .snapshot
                    .as_ref()
                    .map(|t| (t.meta().size_bytes, t.acked())),
            })
            .collect()
    }

    /// Heartbeat rounds this node started to confirm reads (ReadIndex, thesis §6.4) since it
    /// was created, across terms: reads served by lease or as sole voter take none, and
    /// reads that join an open round share it. For operators (metrics).
    pub fn read_rounds(&self) -> u64 {
        self.reads.read_rounds()
    }

    /// Read-only view of the log, for checkers and tests, and for the term and configuration
    /// at an applied index when you take a snapshot ([`RaftLog::term`],
    /// [`RaftLog::membership_at`]).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration the node was started with; read it where your driver needs the same
    /// limits (the snapshot chunk size when filling chunks, say).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Advances logical time by one tick. Call it at a fixed interval from your driver's
    /// timer: every timeout in [`Config`] (election, heartbeat, lease) is counted in ticks.
    pub fn tick(&mut self) {
        self.ticks += 1;
        match self.role() {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        for ctx in self.reads.expire_forwarded(self.ticks) {
            self.failed_reads.push(ctx);
        }
        self.check_invariants_if_debug();
    }

    /// Starts an election now, as if the election timeout had passed (with a pre-vote first if
    /// enabled). Does nothing on a leader or on a node that does not vote.
    pub fn campaign(&mut self) {
        if !self.is_leader() && self.is_promotable() {
            self.campaign_now();
        }
        self.check_invariants_if_debug();
    }

    /// Proposes a command. On the leader it is appended and replicated; the returned id says
    /// where, so the caller can tell when it commits (or is lost: a different entry committed
    /// at that index).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<EntryId, ProposeError> {
        let Some(ls) = self.leader_state() else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(to) = ls.lead_transferee {
            return Err(ProposeError::LeadershipTransfer { to });
        }
        let uncommitted_bytes = ls.uncommitted_bytes;
        let entry = Entry {
            term: self.term,
            index: self.log.last_index().next(),
            kind: EntryKind::Normal,
            data,
        };
        let size = entry.size_bytes();
        if size > self.config.msg_bytes_max {
            return Err(ProposeError::TooLarge {
                size_bytes: size,
                size_bytes_max: self.config.msg_bytes_max,
            });
        }
        // An empty pipeline always takes one entry, so a single large entry cannot wedge it.
        if uncommitted_bytes > 0 && uncommitted_bytes + size > self.config.uncommitted_bytes_max {
            return Err(ProposeError::Busy);
        }
        let id = entry.id();
        self.append_as_leader(vec![entry]);
        self.bcast_pending = true;
        self.check_invariants_if_debug();
        Ok(id)
    }

    /// Asks for a linearizable read tagged `ctx`. The answer comes as a [`ReadState`](crate::ReadState) in a later
    /// batch (or in [`Ready::failed_reads`]). Works on followers too: they ask the leader.
    pub fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ReadError> {
        if self.reads.len() >= self.config.pending_reads_max {
            return Err(ReadError::Busy);
        }
        let result = self.start_read(ctx);
        self.check_invariants_if_debug();
        result
    }

    /// Whether [`RawNode::ready`] has anything to hand out (and no batch is outstanding).
    pub fn has_ready(&self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        !self.msgs.is_empty()
            || !self.pending_chunks.is_empty()
            || self.pending_install.is_some()
            || self.log.has_unstable()
            || self.log.has_next_to_apply()
            || self.hard_state() != self.prev_hard_state
            || Some(self.soft_state()) != self.prev_soft_state
            || !self.failed_reads.is_empty()
            || self.reads_releasable()
    }

    /// Hands out the next output batch. Panics if the previous one was not advanced: the
    /// durability order depends on batches being handled one after another.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.in_flight.is_none(),
            "ready() called before advance() of the previous batch"
        );
        self.ready_number += 1;
        if std::mem::take(&mut self.bcast_pending) {
            assert!(
                self.is_leader(),
                "a broadcast is pending only on the leader"
            );
            // As many appends as each follower's window takes (a burst may exceed one
            // message's byte limit).
            let peers: Vec<NodeId> = self.leading().progress.keys().copied().collect();
            for peer in peers {
                while self.send_append(peer) {}
            }
        }
        self.reads.close_open_round();
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        let entries = self.log.take_unstable();
        let committed_entries = self.log.next_to_apply(self.config.apply_bytes_max);
        let applied_last = committed_entries.last().map(|e| e.index);
        let read_states = self.reads.release(
            applied_last
                .unwrap_or(self.log.applied())
                .max(self.log.applied()),
        );
        // Nothing of a term or vote that is not durable yet may leave (etcd: no message before
        // the latest HardState is persisted): after a crash this node could come back in the
        // older term and live the same term again differently. A sole voter wins at once with
        // no Vote message to wait for (found by the simulator, Swarm seed 2262450: two
        // incarnations of node 1 led term 3, and a learner got two different entries 24@3).
        let term_or_vote_changed = (hard_state.term, hard_state.vote)
            != (self.prev_hard_state.term, self.prev_hard_state.vote);
        let term_or_vote_new = term_or_vote_changed && !cfg!(feature = "mut-send-before-persist");
        let (persisted_messages, messages) = std::mem::take(&mut self.msgs)
            .into_iter()
            .partition(|m: &Message| term_or_vote_new || m.body.needs_persistence());
        // A batch installs only the snapshot its staged chunks end with: the store stages
        // chunks first, then installs (see `Ready::snapshot`).
        if let Some(meta) = &self.pending_install {
            assert!(
                cfg!(feature = "mut-apply-partial-snapshot")
                    || snapshot::chunks_end_staged(&self.pending_chunks, meta),
                "a batch installs a snapshot its chunks do not end with"
            );
        }
        // Only a new term, vote, entry or snapshot chunk must reach the disk before anything
        // depends on it. A commit index is volatile state (paper Figure 2): written without a
        // sync, a crash that loses it makes this node learn it again from the leader (etcd's
        // `MustSync`).
        let must_sync = (term_or_vote_changed && !cfg!(feature = "mut-sync-only-log"))
            || !entries.is_empty()
            || !self.pending_chunks.is_empty()
            || self.pending_install.is_some();
        let rd = Ready {
            number: self.ready_number,
            must_sync,
            soft_state: (Some(soft_state) != self.prev_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.prev_hard_state).then_some(hard_state),
            snapshot_chunks: std::mem::take(&mut self.pending_chunks),
            snapshot: self.pending_install.take(),
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            failed_reads: std::mem::take(&mut self.failed_reads),
        };
        self.in_flight = Some(InFlightReady {
            number: rd.number,
            persisted_last: rd.entries.last().map(|e| e.index),
            applied_last,
            hard_state,
        });
        self.prev_hard_state = hard_state;
        self.prev_soft_state = Some(soft_state);
        rd
    }

    /// Acknowledges batch `number`: its state is durable, its messages sent, its entries
    /// applied and its reads served. Panics on a number that is not the outstanding batch.
    pub fn advance(&mut self, number: u64) {
        let rd = self
            .in_flight
            .take()
            .expect("advance() without an outstanding ready()");
        assert_eq!(
            rd.number, number,
            "advance() of a batch that is not outstanding"
        );
        if let Some(last) = rd.persisted_last {
            self.log.persisted_to(last);
        }
        self.durable_hard_state = rd.hard_state;
        if let Some(applied) = rd.applied_last {
            let mut applied = applied;
            if cfg!(feature = "mut-apply-twice") && applied > self.log.applied().next() {
                // Mutation: forget the last entry was applied, so it is handed out again.
                applied = applied.prev();
            }
            self.log.applied_to(applied);
        }
        if self.is_leader() {
            self.maybe_commit();
        }
        // A candidate that already holds a quorum (a sole voter) leads once its own vote is
        // durable (see `own_vote_durable`).
        self.maybe_win_with_durable_vote();
        self.check_invariants_if_debug();
    }

    /// The application took a durable snapshot of its state through `meta.last` (paper §7):
    /// the core discards the log entries it covers and sends it to followers that need them.
    /// Call it again with the snapshot's description after restarting from a snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Result<(), CompactError> {
        let last = meta.last;
        if last.index > self.log.applied() {
            return Err(CompactError::NotApplied {
                index: last.index,
                applied: self.log.applied(),
            });
        }
        if last.index < self.log.offset().index {
            return Err(CompactError::Stale {
                index: last.index,
                first_index: self.log.first_index(),
            });
        }
        if !self.log.matches(last) {
            return Err(CompactError::Mismatch { last });
        }
        self.log.compact_to(last);
        self.snapshot = Some(meta);
        self.check_invariants_if_debug();
        Ok(())
    }

    /// After a restart, resumes receiving a snapshot of which `received_bytes` were staged
    /// durably before the crash, so that the leader continues from there. Ignored if the
    /// snapshot is no longer needed.
    ///
    /// A snapshot staged whole but not installed (the crash came between the last chunk and
    /// the install) is received again from the start: resumed at its full size, every chunk
    /// would be a duplicate and the leader's transfer fully acknowledged, so nothing could
    /// complete it; and a batch installs only a snapshot its own chunks end with.
    pub fn resume_staged_snapshot(&mut self, meta: SnapshotMeta, received_bytes: u64) {
        if meta.last.index > self.log.committed() && received_bytes <= meta.size_bytes {
            let received = if received_bytes == meta.size_bytes {
                0
            } else {
                received_bytes
            };
            self.incoming_snapshot = Some(Incoming { meta, received });
        }
    }

    /// Handles one message from a peer: call it for every message your transport receives,
    /// in any order (the core copes with loss, duplication and reordering). An error means the
    /// message was not meant for this node; drop it.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        if msg.to != self.id() {
            return Err(StepError::WrongRecipient { to: msg.to });
        }
        if msg.from == self.id() {
            return Err(StepError::FromSelf);
        }
        self.step_term(msg);
        self.check_invariants_if_debug();
        Ok(())
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role(),
            leader: self.leader,
            term: self.term,
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.id(), "message to self");
        self.msgs.push(Message {
            from: self.id(),
            to,
            term,
            body,
        });
    }

    /// Voters other than this node, sorted.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        let me = self.id();
        self.log
            .voters()
            .voters()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    pub(crate) fn reset_randomized_election_timeout(&mut self) {
        let e = self.config.election_ticks;
        self.randomized_election_ticks = self.rng.range(e, 2 * e);
    }

    /// Panics if any invariant of the node or its parts is broken. The simulator calls this
    /// after every step.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        if let Some(s) = &self.snapshot {
            assert!(
                s.last.index >= self.log.offset().index,
                "snapshot older than the log start"
            );
        }
        self.reads.check_invariants();
        assert!(
            self.log.last_term() <= self.term,
            "log holds a term above the current one"
        );
        assert_eq!(
            self.leader == Some(self.id()),
            self.is_leader(),
            "leader field disagrees with role"
        );
        assert!(
            !self.bcast_pending || self.is_leader(),
            "a broadcast is pending on a node that does not lead"
        );
        assert!(
            !(self.lost_campaign && self.is_leader()),
            "a leader remembers a lost campaign"
        );
        match &self.role {
            RoleState::Leader(ls) => {
                assert_eq!(self.vote, Some(self.id()), "leader did not vote for itself");
                ls.check_invariants(self.id());
                let mut members = self.log.membership().members();
                members.remove(&self.id());
                assert!(
                    ls.progress.keys().copied().eq(members.iter().copied()),
                    "leader tracks exactly the other members"
                );
                for pr in ls.progress.values() {
                    assert!(
                        pr.matched <= self.log.last_index(),
                        "follower matched beyond leader log"
                    );
                }
                if let Some(to) = ls.lead_transferee {
                    assert!(
                        self.log.membership().is_voter(to),
                        "transfer to a non-voter"
                    );
                }
            }
            RoleState::Candidate(c) => {
                assert_eq!(
                    self.vote,
                    Some(self.id()),
                    "candidate did not vote for itself"
                );
                assert_eq!(c.votes.get(&self.id()), Some(&true), "no own vote counted");
            }
            RoleState::PreCandidate(c) => {
                assert_eq!(
                    c.votes.get(&self.id()),
                    Some(&true),
                    "no own pre-vote counted"
                );
            }
            RoleState::Follower => {}
        }
        if let RoleState::PreCandidate(c) | RoleState::Candidate(c) = &self.role {
            // Our own vote is recorded even outside the configuration in force (thesis
            // §4.2.2), where the tally ignores it; every other one is a voter's.
            for &id in c.votes.keys() {
                assert!(
                    id == self.id() || self.log.voters().contains(id),
                    "a non-voter's vote recorded"
                );
            }
        }
        assert!(
            self.randomized_election_ticks >= self.config.election_ticks
                && self.randomized_election_ticks < 2 * self.config.election_ticks
        );
    }

    pub(crate) fn check_invariants_if_debug(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }
}

/// Where a node's forwarded-read ids start: different across restarts of the same node (the
/// term or log grew, or the seed differs), so an answer meant for an earlier incarnation does
/// not match a new read. The PRNG spreads the value over the id space.
fn forward_id_base(config: &Config, state: &InitialState) -> u64 {
    let last = state
        .entries
        .last()
        .map_or(state.snapshot.index, |e| e.index);
    let mix = config.seed ^ state.hard_state.term.0.rotate_left(32) ^ last.0.rotate_left(17);
    Rng::new(mix).next_u64()
}

/// Checks recovered state for consistency; an error describes the first problem.
fn check_initial_state(state: &InitialState) -> Result<(), String> {
    let mut prev = state.snapshot;
    for e in &state.entries {
        if e.index != prev.index.next() {
            return Err(format!("entry {} follows entry {}", e.index, prev.index));
        }
        if e.term < prev.term {
            return Err(format!(
                "entry {} has term {} below {}",
                e.index, e.term, prev.term
            ));
        }
        prev = e.id();
    }
    if prev.term > state.hard_state.term {
        return Err(format!(
            "log term {} is above the persisted term {}",
            prev.term, state.hard_state.term
        ));
    }
    if state.applied < state.snapshot.index {
        return Err(format!(
            "applied index {} is below the snapshot index {}",
            state.applied, state.snapshot.index
        ));
    }
    if state.applied > prev.index {
        return Err(format!(
            "applied index {} is beyond the last log index {}",
            state.applied, prev.index
        ));
    }
    state.membership.validate()?;
    for e in &state.entries {
        if let EntryKind::Membership(m) = &e.kind {
            m.validate()
                .map_err(|err| format!("entry {}: {err}", e.index))?;
        }
    }
    Ok(())
}
