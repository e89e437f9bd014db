//! Linearizable reads (thesis §6.4): ReadIndex at the leader, forwarding from followers
//! (follower reads), and lease reads as an option.

use crate::config::ReadOnlyOption;
use crate::errors::ReadError;
use crate::message::MessageBody;
use crate::node::RawNode;
use crate::quorum::VoteResult;
use crate::read::ReadRequest;
use crate::role::RoleState;
use crate::types::{Index, NodeId, ReadCtx, ReadState, Role};

impl RawNode {
    /// Starts a read at this node.
    pub(crate) fn start_read(&mut self, ctx: ReadCtx) -> Result<(), ReadError> {
        match self.role() {
            Role::Leader => {
                self.leader_read(ReadRequest { ctx, from: None });
                Ok(())
            }
            _ => {
                let Some(leader) = self.leader else {
                    return Err(ReadError::NoLeader);
                };
                // If the leader's answer is lost, the read fails after an election timeout
                // rather than hanging.
                let expires_at = self.ticks + 2 * self.config.election_ticks;
                let Some(id) = self.reads.forward(ctx, expires_at) else {
                    return Err(ReadError::DuplicateCtx);
                };
                // The wire carries our request id, not the application's tag.
                self.send(leader, MessageBody::ReadIndex { ctx: ReadCtx(id) });
                Ok(())
            }
        }
    }

    /// The leader takes a read, local or forwarded.
    fn leader_read(&mut self, req: ReadRequest) {
        if !self.leading().committed_in_term {
            // Until an entry of its term commits, a new leader does not know the commit index
            // (§6.4 step 1); the read waits for the no-op.
            self.reads.wait_for_commit(req, self.ticks);
            return;
        }
        let commit = self.log.committed();
        let skip_round = cfg!(feature = "mut-read-without-quorum")
            || (cfg!(feature = "mut-read-skip-round-removing")
                && self.log.voters().voters().len() == 1);
        if skip_round || self.is_sole_voter() || self.lease_holds() {
            // Sole voter: no one else can be elected without our vote. Lease: no other
            // leader can be elected before the lease ends (see `lease.rs` and the clock
            // assumption on `ReadOnlyOption::LeaseBased`).
            self.on_read_confirmed(req, commit);
            return;
        }
        if let Some(round) = self.reads.add_to_round(vec![req], commit, self.ticks) {
            self.send_heartbeats(round);
        }
    }

    /// Whether this node is the only voter of every configuration in force (both halves of a
    /// joint one). A configuration takes effect when appended, so a leader removing itself
    /// keeps leading under a configuration whose one voter is *another* node, which can elect
    /// itself alone: a round is needed then (issue 12, hole 1).
    pub(crate) fn is_sole_voter(&self) -> bool {
        let voters = self.log.voters().voters();
        voters.len() == 1 && voters.contains(&self.id())
    }

    /// Lease reads are on, no leader transfer can be under way, and a quorum acknowledged a
    /// heartbeat round recently enough.
    ///
    /// A transfer target campaigns with votes that set the followers' leases aside (thesis
    /// §3.10), so the lease is void while a transfer is pending, and for the rest of the term
    /// once TimeoutNow was sent: a TimeoutNow delayed past an abort still starts such a
    /// campaign (issue 12, hole 2; etcd-io/raft#99).
    pub(crate) fn lease_holds(&self) -> bool {
        if self.config.read_only != ReadOnlyOption::LeaseBased {
            return false;
        }
        let ls = self.leading();
        let transfer_voids_lease = ls.lead_transferee.is_some() || ls.lease.is_revoked();
        if transfer_voids_lease && !cfg!(feature = "mut-lease-during-transfer") {
            return false;
        }
        let me = self.id();
        let acked = self.log.voters().committed_index(|id| {
            let round = if id == me {
                u64::MAX
            } else {
                ls.progress.get(&id).map_or(0, |pr| pr.read_round_acked)
            };
            Some(Index(round))
        });
        ls.lease
            .holds(acked.0, self.ticks, self.config.election_ticks)
    }

    /// The leader's no-op (or another entry of its term) committed: reads that waited can get
    /// their round.
    pub(crate) fn on_first_commit_in_term(&mut self) {
        for req in self.reads.take_waiting_commit() {
            self.leader_read(req);
        }
    }

    /// A read round was acknowledged by some follower; release every round a quorum confirmed.
    pub(crate) fn confirm_reads(&mut self) {
        let me = self.id();
        let voters = self.log.voters();
        let RoleState::Leader(ls) = &self.role else {
            panic!("reads confirmed off the leader");
        };
        let progress = &ls.progress;
        let confirmed = self.reads.confirm(|round| {
            voters.vote_result(|id| {
                Some(
                    id == me
                        || progress
                            .get(&id)
                            .is_some_and(|pr| pr.read_round_acked >= round),
                )
            }) == VoteResult::Won
        });
        for (req, index) in confirmed {
            self.on_read_confirmed(req, index);
        }
    }

    fn on_read_confirmed(&mut self, req: ReadRequest, index: Index) {
        // Preconditions (thesis §6.4): only a leader that has committed an entry of its term
        // confirms a read, at an index it has committed.
        assert!(
            self.leading().committed_in_term,
            "a read confirmed before the term's first commit"
        );
        assert!(
            index <= self.log.committed(),
            "read index beyond the commit index"
        );
        match req.from {
            None => self.reads.push_confirmed(ReadState {
                ctx: req.ctx,
                index,
            }),
            Some(follower) => self.send(
                follower,
                MessageBody::ReadIndexResp {
                    ctx: req.ctx,
                    index: Some(index),
                },
            ),
        }
    }

    /// A follower forwarded a read to us as leader.
    pub(crate) fn handle_forwarded_read(&mut self, from: NodeId, ctx: ReadCtx) {
        if self.reads.len() >= self.config.pending_reads_max {
            self.send(from, MessageBody::ReadIndexResp { ctx, index: None });
            return;
        }
        self.leader_read(ReadRequest {
            ctx,
            from: Some(from),
        });
    }

    /// A read forwarded to a node that is not the leader: refuse, so the follower retries.
    pub(crate) fn redirect_forwarded_read(&mut self, from: NodeId, ctx: ReadCtx) {
        self.send(from, MessageBody::ReadIndexResp { ctx, index: None });
    }

    /// The leader answered a read we forwarded.
    pub(crate) fn handle_read_index_response(&mut self, id: ReadCtx, index: Option<Index>) {
        let Some(ctx) = self.reads.answer_forwarded(id.0) else {
            // Expired already, a duplicate, or meant for an earlier incarnation.
            return;
        };
        match index {
            Some(index) => self.reads.push_confirmed(ReadState { ctx, index }),
            None => self.failed_reads.push(ctx),
        }
    }

    /// A read that cannot complete any more.
    pub(crate) fn fail_read(&mut self, req: ReadRequest) {
        match req.from {
            None => self.failed_reads.push(req.ctx),
            Some(follower) => self.send(
                follower,
                MessageBody::ReadIndexResp {
                    ctx: req.ctx,
                    index: None,
                },
            ),
        }
    }

    /// Whether confirmed reads are ready to be released in the next batch.
    pub(crate) fn reads_releasable(&self) -> bool {
        self.reads.has_releasable(self.log.applied())
    }
}
