//! Terms and elections: the term rules every message passes through, election timeouts,
//! PreVote, RequestVote and vote counting (paper §5.1, §5.2, §5.4.1; thesis §9.6).

use crate::message::{Message, MessageBody};
use crate::node::RawNode;
use crate::quorum::VoteResult;
use crate::role::{Campaign, RoleState};
use crate::types::{EntryId, Index, NodeId, Role};

impl RawNode {
    /// Follower and candidate clock: start an election when the randomized timeout passes
    /// without hearing from a leader (paper §5.2).
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_ticks && self.is_promotable() {
            self.campaign_now();
        }
    }

    /// Only voters may campaign: voters of the configuration in force (the last one in the
    /// log, §6), and also voters of the last committed one while a later configuration is
    /// still uncommitted here. The uncommitted entry may yet be replaced, and until it
    /// commits the servers that hold it can be the only ones able to win: found by the
    /// simulator (Swarm seed 102983), the joint configuration {2,3,4,5} -> {1,3,6} with
    /// C_new appended only on 2, 4 and 5. They no longer counted themselves voters, and 1, 3
    /// and 6, missing C_new, needed a majority of {2,3,4,5}, whose members refused them as
    /// less up to date (§5.4.1): nobody could ever be elected. A candidate still counts
    /// votes by the configuration in force, so Election Safety is unchanged; if it wins
    /// without being a member it leads until that configuration commits, then steps down
    /// (`on_commit_membership`, §6). See `campaign_now` for why it always pre-votes.
    pub(crate) fn is_promotable(&self) -> bool {
        let me = self.id();
        self.log.voters().contains(me) || self.log.membership_at(self.log.committed()).is_voter(me)
    }

    /// Starts a pre-vote if enabled, else a real election. A server outside the configuration
    /// in force (see `is_promotable`) always pre-votes first (thesis §9.6): its removal may
    /// have committed without its knowing, and the new configuration's voters, having moved
    /// on, then refuse it without raising their term (thesis §4.2.3: removed servers must not
    /// disrupt the cluster). (A transfer's campaign skips the pre-vote even then: see
    /// `campaign_for_transfer`; the sender's lease is already revoked.)
    ///
    /// So does a server whose last real campaign lost, until it hears from a leader
    /// (`lost_campaign`): a majority refused it, so it may be unable to win (§5.4.1: its log
    /// is behind theirs), and each further term it starts only takes its own vote in that term
    /// and moves its voters on to it (§5.1). Found by the simulator (Swarm seed 8760087, PreVote
    /// off): node 4, down while {4,8,9} and then {4,8} were appended, campaigned every timeout
    /// in the configuration its log ends with, and the removed 3 and 5, unaware of their
    /// removal, pushed its term further. Node 8, the one server that could win, needed node
    /// 4's vote but is outside node 4's configuration, so it learned node 4's term only from
    /// node 4's refusals, an election timeout late: every request found node 4 already voted
    /// for itself in that term or past it, for 13 s. A pre-vote asks about the next term
    /// without moving anyone to it, and a server that could win still wins one round later.
    pub(crate) fn campaign_now(&mut self) {
        assert!(
            self.is_promotable(),
            "a campaign by a server that cannot vote"
        );
        let term = self.term;
        let outside = !self.log.voters().contains(self.id());
        let pre = self.config.pre_vote || outside || self.lost_campaign;
        if pre {
            self.become_pre_candidate();
            self.request_votes(true, false);
        } else {
            self.become_candidate();
            self.request_votes(false, false);
        }
        // Postconditions (§5.2, thesis §9.6): a pre-vote still under way left the term alone
        // (a sole voter's wins at once and moves on to a real campaign); a real campaign
        // started the next term.
        if self.role() == Role::PreCandidate {
            assert_eq!(self.term, term, "a pre-vote moved the term");
        } else {
            assert_eq!(self.term, term.next(), "a campaign skipped a term");
        }
    }

    /// Leader transfer (thesis §3.10): the leader says we hold its whole log; campaign now,
    /// without a pre-vote, and ask voters to set their lease aside.
    pub(crate) fn campaign_for_transfer(&mut self) {
        if !self.is_promotable() {
            return;
        }
        self.become_candidate();
        self.request_votes(false, true);
    }

    /// Sends (pre-)vote requests to every other voter and counts our own vote; a one-node
    /// cluster wins at once.
    fn request_votes(&mut self, pre: bool, leader_transfer: bool) {
        let me = self.id();
        self.campaign_state_mut().votes.insert(me, true);
        if self.tally() == VoteResult::Won {
            if pre || self.own_vote_durable() {
                self.on_campaign_won(pre);
            }
            // Else a sole voter: it leads once its vote is durable (`advance`).
            return;
        }
        let last = self.log.last_id();
        // A pre-vote asks about the term we would move to, without moving (thesis §9.6).
        let term = if pre { self.term.next() } else { self.term };
        for peer in self.peers() {
            let body = if pre {
                MessageBody::PreVote {
                    last_log_index: last.index,
                    last_log_term: last.term,
                }
            } else {
                MessageBody::Vote {
                    last_log_index: last.index,
                    last_log_term: last.term,
                    leader_transfer,
                }
            };
            self.send_with_term(peer, term, body);
        }
    }

    /// The current (pre-)campaign. Panics in other roles: callers are campaign paths.
    fn campaign_state(&self) -> &Campaign {
        match &self.role {
            RoleState::PreCandidate(c) | RoleState::Candidate(c) => c,
            other => panic!("votes asked of a {:?}", other.kind()),
        }
    }

    fn campaign_state_mut(&mut self) -> &mut Campaign {
        match &mut self.role {
            RoleState::PreCandidate(c) | RoleState::Candidate(c) => c,
            other => panic!("votes asked of a {:?}", other.kind()),
        }
    }

    /// Whether this node's term and its vote for itself are durable. A candidate counts its
    /// own vote, and so may lead, only then: a leader whose term a crash could take back may
    /// come back in the older term and lead (or vote in) that term again, with another log.
    /// Found by the simulator (Swarm seeds 2780045, two leaders of term 5, and 2177418, two
    /// different entries 20@4): a sole voter won its term before the term was on disk. Peers'
    /// votes answer Vote requests, which leave only after the sync, so this delays only a
    /// sole voter, by one batch (etcd's asynchronous storage does the same).
    pub(crate) fn own_vote_durable(&self) -> bool {
        (self.durable_hard_state.term, self.durable_hard_state.vote) == (self.term, self.vote)
    }

    /// A candidate holding a quorum whose own vote just became durable leads.
    pub(crate) fn maybe_win_with_durable_vote(&mut self) {
        if self.role() == Role::Candidate
            && self.own_vote_durable()
            && self.tally() == VoteResult::Won
        {
            self.on_campaign_won(false);
        }
    }

    fn tally(&self) -> VoteResult {
        self.log
            .voters()
            .vote_result(|id| self.campaign_state().votes.get(&id).copied())
    }

    fn on_campaign_won(&mut self, pre: bool) {
        if pre {
            self.become_candidate();
            self.request_votes(false, false);
        } else {
            self.become_leader();
        }
    }

    /// Whether this node heard from a live leader recently enough to refuse to help anyone
    /// replace it (thesis §6.2 and §4.2.3: "ignore RequestVote when a leader is known"), which
    /// is also what a leader's lease reads rely on (thesis §6.4.1).
    ///
    /// The window runs on its own clock (`lease_granted_until`), not on knowing a leader: a
    /// higher-term message that is not a vote (a stale heartbeat's answer, a late vote
    /// answer) makes us a follower of nobody, yet the lease we acknowledged still runs (issue
    /// 12, found in review). With lease reads, a node that has just started is in the window
    /// for one election timeout: it may have acknowledged a lease round before it went down
    /// and forgotten it (issue 12, hole 3). Only lease reads need that for safety; with
    /// CheckQuorum alone, forgetting costs at most one disruptive election, so such clusters
    /// keep electing at once after a start. A leader is always in its own lease: CheckQuorum
    /// steps it down when it loses its quorum.
    pub(crate) fn in_lease(&self) -> bool {
        self.config.check_quorum && (self.is_leader() || self.ticks < self.lease_granted_until)
    }

    /// The term rules every message passes first (Figure 2, "all servers": a higher term makes
    /// us a follower; a lower term is stale), then dispatch by role.
    pub(crate) fn step_term(&mut self, msg: Message) {
        if msg.term > self.term {
            let is_vote_request = matches!(
                msg.body,
                MessageBody::Vote {
                    leader_transfer: false,
                    ..
                } | MessageBody::PreVote { .. }
            );
            if is_vote_request && self.in_lease() {
                // A disruptive or removed server: ignore it, do not even raise our term.
                return;
            }
            match msg.body {
                // A pre-vote does not change anyone's term.
                MessageBody::PreVote { .. } => {}
                // A granted pre-vote answer carries the future term of our own campaign.
                MessageBody::PreVoteResp { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                MessageBody::Vote { .. } => {
                    // Figure 2: a follower restarts its election timer only when it grants a
                    // vote or hears from the current leader. Moving to a candidate's term does
                    // neither: if we refuse the vote (our log is more up to date), our own
                    // timer must keep running, or candidates that cannot win would keep the
                    // one node that can from ever campaigning (found by the simulator: Swarm
                    // seed 2088, PreVote off, livelocked for 10 s).
                    let (elapsed, timeout) =
                        (self.election_elapsed, self.randomized_election_ticks);
                    self.become_follower(msg.term, None);
                    self.election_elapsed = elapsed;
                    self.randomized_election_ticks = timeout;
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            self.step_stale(msg);
            return;
        }
        match msg.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => self.handle_vote_request(msg),
            _ => match self.role() {
                Role::Leader => self.step_leader(msg),
                Role::Candidate | Role::PreCandidate => self.step_candidate(msg),
                Role::Follower => self.step_follower(msg),
            },
        }
    }

    /// A message from an older term. Most are dropped; a few are answered so that the stale
    /// sender learns our term.
    fn step_stale(&mut self, msg: Message) {
        match msg.body {
            // Figure 2, AppendEntries rule 1: "Reply false if term < currentTerm", with our
            // term "for leader to update itself". Always, not only with PreVote or CheckQuorum
            // (etcd's choice, assuming our own vote requests would depose the stale leader):
            // a server whose log lacks the configuration that made it a member asks only the
            // voters of its old configuration, so its higher term never reaches the leader,
            // which it ignores in turn; it never catches up (found by the simulator: Swarm
            // seed 221436, a restarted voter of {3,4,5} at term 9 with an empty log, campaigning
            // to the removed 1 and 2 while 4 led {3,4,5} in term 6).
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // Index 0 promises nothing about our log: the answer only carries our term.
                // (Our last index would read as a match if the sender is re-elected in our
                // term before the answer arrives.)
                let body = MessageBody::AppendResp {
                    index: Index(0),
                    reject: None,
                };
                self.send(msg.from, body);
            }
            // A pre-candidate with a lower term must learn ours, or it cannot catch up.
            MessageBody::PreVote { .. } => {
                self.send(msg.from, MessageBody::PreVoteResp { reject: true });
            }
            // Figure 2, RequestVote rule 1, likewise with our term "for candidate to update
            // itself" (etcd drops it). Unanswered, a candidate that needs our vote can stay a
            // term behind us for good: found by the simulator, Swarm seed 2159289, where node
            // 4 (joint {4} -> {1}) needed node 1, which, far behind and believing in {1,3,5},
            // campaigned among voters that refused it, always one term ahead of node 4.
            MessageBody::Vote { .. } => {
                self.send(msg.from, MessageBody::VoteResp { reject: true });
            }
            _ => {}
        }
    }

    /// RequestVote receiver (Figure 2) and its PreVote twin: grant if we have not voted for
    /// someone else in this term and the candidate's log is at least as up to date (§5.4.1).
    fn handle_vote_request(&mut self, msg: Message) {
        let (pre, transfer, last) = match msg.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => (
                true,
                false,
                EntryId {
                    term: last_log_term,
                    index: last_log_index,
                },
            ),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                leader_transfer,
            } => (
                false,
                leader_transfer,
                EntryId {
                    term: last_log_term,
                    index: last_log_index,
                },
            ),
            _ => unreachable!("not a vote request"),
        };
        // Preconditions: `step_term` moved us to a real vote's term (or dropped it), and a
        // pre-vote never asks about a term below ours.
        assert!(
            if pre {
                msg.term >= self.term
            } else {
                msg.term == self.term
            },
            "vote request of term {} reached a node of term {}",
            msg.term,
            self.term
        );
        let vote_before = self.vote;
        let can_vote = cfg!(feature = "mut-double-vote")
            || self.vote == Some(msg.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && msg.term > self.term);
        let up_to_date =
            self.log.is_up_to_date(last) || cfg!(feature = "mut-no-election-restriction");
        // In the lease window a new vote is refused in any term, ours included (`step_term`
        // drops higher-term requests before they get here); a vote already given is repeated,
        // and a transfer's votes set the window aside (thesis §3.10).
        let lease_refuses = !transfer && self.vote != Some(msg.from) && self.in_lease();
        let grant = can_vote && up_to_date && !lease_refuses;
        if pre {
            // Answer in the asked-for term when granting, so the pre-candidate counts it.
            let term = if grant { msg.term } else { self.term };
            self.send_with_term(msg.from, term, MessageBody::PreVoteResp { reject: !grant });
            return;
        }
        if grant {
            // §5.2: granting a vote resets the election timer, and the vote is durable before
            // the answer leaves (VoteResp needs persistence).
            self.election_elapsed = 0;
            self.vote = Some(msg.from);
        }
        self.send(msg.from, MessageBody::VoteResp { reject: !grant });
        // Postconditions (Figure 2, RequestVote rule 2): at most one vote per term, never
        // changed once given, and only for a log at least as up to date as ours.
        if !cfg!(feature = "mut-double-vote") {
            assert!(
                vote_before.is_none() || self.vote == vote_before,
                "vote changed within term {} from {vote_before:?} to {:?}",
                self.term,
                self.vote
            );
        }
        if grant && !cfg!(feature = "mut-no-election-restriction") {
            assert!(self.log.is_up_to_date(last), "voted for a stale log");
            assert_eq!(self.vote, Some(msg.from));
        }
    }

    /// Candidate and pre-candidate: count votes; an append or heartbeat of this term means
    /// someone else won (paper §5.2).
    fn step_candidate(&mut self, msg: Message) {
        match msg.body {
            MessageBody::PreVoteResp { reject } if self.role() == Role::PreCandidate => {
                self.record_vote(msg.from, !reject, true);
            }
            MessageBody::VoteResp { reject } if self.role() == Role::Candidate => {
                self.record_vote(msg.from, !reject, false);
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(msg.term, Some(msg.from));
                self.step_follower(msg);
            }
            MessageBody::ReadIndex { ctx } => {
                self.send(msg.from, MessageBody::ReadIndexResp { ctx, index: None });
            }
            _ => {}
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool, pre: bool) {
        if !self.log.voters().contains(from) {
            return;
        }
        self.campaign_state_mut()
            .votes
            .entry(from)
            .or_insert(granted);
        match self.tally() {
            VoteResult::Won if pre || self.own_vote_durable() => self.on_campaign_won(pre),
            // Our vote's batch is not advanced yet: `advance` finishes the election.
            VoteResult::Won => {}
            VoteResult::Lost => {
                // A real campaign a majority refused: campaign by pre-vote from now on, until
                // a leader is heard from (see `campaign_now`).
                if !pre {
                    self.lost_campaign = true;
                }
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }
}
