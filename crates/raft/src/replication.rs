//! The leader side of log replication (paper §5.3, §5.4.2): appends with flow control, fast
//! backtracking on rejection, the current-term commit rule, heartbeats and CheckQuorum.

use crate::message::{Message, MessageBody, RejectHint};
use crate::node::RawNode;
use crate::progress::ProgressState;
use crate::quorum::VoteResult;
use crate::types::EntryId;
use crate::types::{Entry, Index, NodeId};

impl RawNode {
    /// Leader clock: heartbeats every `heartbeat_ticks`; every `election_ticks`, step down
    /// unless a quorum was heard from (CheckQuorum, thesis §6.2).
    pub(crate) fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        let election_ticks = self.config.election_ticks;
        let ls = self.leading_mut();
        ls.heartbeat_elapsed += 1;
        if ls.lead_transferee.is_some() {
            ls.transfer_elapsed += 1;
            if ls.transfer_elapsed >= election_ticks {
                // The target did not take over in time: abort and take proposals again.
                self.abort_transfer();
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                if !self.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                for pr in self.leading_mut().progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        let age_max = 2 * self.config.election_ticks;
        for req in self.reads.expire_leader_reads(self.ticks, age_max) {
            self.fail_read(req);
        }
        let heartbeat_ticks = self.config.heartbeat_ticks;
        let ls = self.leading_mut();
        if ls.heartbeat_elapsed >= heartbeat_ticks {
            ls.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// Whether a quorum (counting this node) was heard from in the current CheckQuorum round.
    pub(crate) fn quorum_active(&self) -> bool {
        let me = self.id();
        let progress = &self.leading().progress;
        let result = self.log.voters().vote_result(|id| {
            Some(id == me || progress.get(&id).is_some_and(|pr| pr.recent_active))
        });
        result == VoteResult::Won
    }

    /// Appends entries created by this leader and starts replicating them.
    pub(crate) fn append_as_leader(&mut self, entries: Vec<Entry>) {
        let term = self.term;
        let ls = self.leading_mut();
        for e in &entries {
            assert_eq!(e.term, term, "leader appends only entries of its term");
            ls.uncommitted_bytes += e.size_bytes();
        }
        self.log.append(entries);
        // This node's own acknowledgement comes when the batch is durable (advance); a
        // one-node cluster commits then. The followers get the entries from the caller's
        // broadcast: at once, or at the next `ready` for proposals (`bcast_pending`).
    }

    /// Sends appends to every follower that can take one.
    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self.leading().progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer);
        }
    }

    /// Sends one append to `to` if flow control allows and it carries something: entries, or
    /// a probe. A new commit index alone is not worth a message: the next append or heartbeat
    /// carries it (this keeps an idle-ish cluster at about one round trip per entry, as the
    /// 6.5840 Count test demands). Returns whether one was sent.
    pub(crate) fn send_append(&mut self, to: NodeId) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.leading().progress.get(&to) else {
            return false;
        };
        if pr.state == ProgressState::Snapshot {
            return self.send_snapshot_chunks(to);
        }
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let probing = pr.state == ProgressState::Probe;
        let prev_index = next.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // The entries this follower needs were compacted away: send the snapshot that
            // covers them instead (paper §7).
            let Some(meta) = self.snapshot.clone() else {
                // Restarted from a snapshot whose description the application has not given
                // back yet (`RawNode::compact`); nothing to send until it does.
                return false;
            };
            self.leading_mut()
                .progress
                .get_mut(&to)
                .expect("progress exists")
                .become_snapshot(meta);
            return self.send_snapshot_chunks(to);
        };
        let entries = if next <= last {
            self.log.slice(next, last, self.config.msg_bytes_max)
        } else {
            Vec::new()
        };
        if entries.is_empty() && !probing {
            return false;
        }
        let sent_last = entries.last().map(|e| e.index);
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let body = MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit: self.log.committed(),
        };
        self.send(to, body);
        let pr = self
            .leading_mut()
            .progress
            .get_mut(&to)
            .expect("progress exists");
        pr.sent_append(sent_last, bytes);
        true
    }

    /// Sends the snapshot chunks the transfer window allows. Returns whether any were sent.
    fn send_snapshot_chunks(&mut self, to: NodeId) -> bool {
        let chunk = self.config.snapshot_chunk_bytes;
        let window = chunk.saturating_mul(self.config.snapshot_chunks_inflight_max);
        let mut chunks = Vec::new();
        let pr = self
            .leading_mut()
            .progress
            .get_mut(&to)
            .expect("progress exists");
        let transfer = pr.snapshot.as_mut().expect("transfer in snapshot state");
        while let Some((offset, len)) = transfer.next_chunk(chunk, window) {
            chunks.push((transfer.meta().clone(), offset, len));
        }
        let sent = !chunks.is_empty();
        for (meta, offset, len) in chunks {
            let body = MessageBody::InstallSnapshot {
                meta,
                offset,
                len,
                data: Vec::new(),
            };
            self.send(to, body);
        }
        sent
    }

    /// A follower's answer to a snapshot chunk that did not complete the install.
    fn handle_snapshot_response(&mut self, from: NodeId, last: EntryId, offset: u64, reject: bool) {
        let Some(pr) = self.leading_mut().progress.get_mut(&from) else {
            return;
        };
        let Some(transfer) = pr.snapshot.as_mut() else {
            return;
        };
        if transfer.meta().last != last {
            return;
        }
        if reject {
            transfer.on_reject(offset);
        } else {
            transfer.on_ack(offset);
        }
        self.send_snapshot_chunks(from);
    }

    /// Heartbeats carry `min(commit, match)`: a follower may not hold the leader's entries past
    /// its match, and must not commit an index whose entry might differ from the leader's.
    fn bcast_heartbeat(&mut self) {
        // Every broadcast is a fresh round: its acknowledgements confirm pending reads and
        // extend the lease.
        let round = self.reads.new_round_id();
        self.send_heartbeats(round);
    }

    /// Sends heartbeats for `read_round` and remembers when, for the lease.
    pub(crate) fn send_heartbeats(&mut self, read_round: u64) {
        let (now, election_ticks) = (self.ticks, self.config.election_ticks);
        self.leading_mut()
            .lease
            .record(read_round, now, election_ticks);
        let commit = self.log.committed();
        let targets: Vec<(NodeId, Index)> = self
            .leading()
            .progress
            .iter()
            .map(|(&id, pr)| (id, pr.matched.min(commit)))
            .collect();
        for (to, commit) in targets {
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
    }

    /// The leader's handling of messages of its own term.
    pub(crate) fn step_leader(&mut self, msg: Message) {
        if let Some(pr) = self.leading_mut().progress.get_mut(&msg.from) {
            pr.recent_active = true;
        }
        match msg.body {
            MessageBody::AppendResp { index, reject } => {
                self.handle_append_response(msg.from, index, reject);
            }
            MessageBody::HeartbeatResp { read_round } => {
                self.handle_heartbeat_response(msg.from, read_round);
            }
            MessageBody::ReadIndex { ctx } => self.handle_forwarded_read(msg.from, ctx),
            MessageBody::SnapshotResp {
                last,
                offset,
                reject,
            } => self.handle_snapshot_response(msg.from, last, offset, reject),
            // Another leader in our term would break Election Safety (§5.2); a message that
            // claims it is a corrupt or lying peer, which we ignore.
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, index: Index, reject: Option<RejectHint>) {
        if !self.leading().progress.contains_key(&from) {
            return;
        }
        if let Some(hint) = reject {
            let next = self.next_after_rejection(index, hint);
            let pr = self
                .leading_mut()
                .progress
                .get_mut(&from)
                .expect("checked above");
            if pr.maybe_decr_to(index, next) {
                self.send_append(from);
            }
            return;
        }
        if index > self.log.last_index() {
            // A follower cannot hold more than we sent; this answer is not about our log.
            return;
        }
        let pr = self
            .leading_mut()
            .progress
            .get_mut(&from)
            .expect("checked above");
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                let covered = pr
                    .snapshot
                    .as_ref()
                    .map_or(Index(0), |t| t.meta().last.index);
                if pr.matched >= covered {
                    // Installed (or it had the entries already): replicate from there.
                    pr.become_replicate();
                }
            }
            ProgressState::Replicate => {}
        }
        self.maybe_commit();
        if !self.is_leader() {
            // A committed configuration removed this leader.
            return;
        }
        // Pipeline whatever else this follower can take.
        while self.send_append(from) {}
        if self.leading().lead_transferee == Some(from) {
            self.maybe_send_timeout_now(from);
        }
    }

    /// Turns a follower's conflict hint into the next index to probe: skip the follower's whole
    /// conflicting term if we do not have it, or jump to the end of our entries of that term
    /// (§5.3, last paragraphs: one round trip per term, not per entry).
    fn next_after_rejection(&self, rejected: Index, hint: RejectHint) -> Index {
        let next = match hint.conflict_term {
            Some(term) => match self.log.last_index_of_term(term, rejected) {
                Some(i) => i.next(),
                None => hint.conflict_index,
            },
            None => hint.conflict_index,
        };
        next.min(rejected).max(Index(1))
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let last = self.log.last_index();
        let newest = self.snapshot.clone();
        let Some(pr) = self.leading_mut().progress.get_mut(&from) else {
            return;
        };
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        // A heartbeat answer is proof of life: resend what may have been lost.
        if pr.on_heartbeat_response(last) {
            // A stalled snapshot transfer restarts with the newest snapshot: the edge drops
            // chunks of a snapshot it no longer has.
            if let (Some(t), Some(newest)) = (pr.snapshot.as_ref(), newest) {
                if t.meta() != &newest {
                    pr.become_snapshot(newest);
                }
            }
            self.send_append(from);
        }
        if read_round > 0 {
            self.confirm_reads();
        }
    }

    /// Commits the highest index a quorum holds, but only if its entry is of the current term:
    /// counting replicas of an older term's entry is unsafe (paper §5.4.2, Figure 8). Returns
    /// whether the commit index moved.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let me = self.id();
        let persisted = self.log.persisted();
        let progress = &self.leading().progress;
        let candidate = self.log.voters().committed_index(|id| {
            if id == me {
                Some(persisted)
            } else {
                progress.get(&id).map(|pr| pr.matched)
            }
        });
        let current_term =
            self.log.term(candidate) == Some(self.term) || cfg!(feature = "mut-commit-old-term");
        if candidate <= self.log.committed() || !current_term {
            return false;
        }
        let old = self.log.committed();
        let released: u64 = self
            .log
            .iter_range(old.next(), candidate)
            .filter(|e| e.term == self.term)
            .map(Entry::size_bytes)
            .sum();
        let ls = self.leading_mut();
        ls.uncommitted_bytes = ls.uncommitted_bytes.saturating_sub(released);
        self.log.commit_to(candidate);
        // Postconditions (§5.4.2): the commit index moved forward to an entry of this term in
        // this leader's log (a quorum of followers may hold it before our own disk does); an
        // empty pipeline holds no uncommitted bytes.
        assert_eq!(self.log.committed(), candidate);
        assert!(candidate > old && candidate <= self.log.last_index());
        if !cfg!(feature = "mut-commit-old-term") {
            assert_eq!(self.log.term(candidate), Some(self.term));
        }
        if candidate == self.log.last_index() {
            debug_assert_eq!(
                self.leading().uncommitted_bytes,
                0,
                "bytes left after everything committed"
            );
        }
        let ls = self.leading_mut();
        if !ls.committed_in_term {
            ls.committed_in_term = true;
            self.on_first_commit_in_term();
        }
        self.on_commit_membership();
        true
    }
}
