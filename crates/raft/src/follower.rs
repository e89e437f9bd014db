//! The follower side of log replication: the AppendEntries receiver rules of Figure 2 and
//! heartbeats.

use crate::message::{Message, MessageBody, RejectHint};
use crate::node::RawNode;
use crate::types::{Entry, EntryId, Index, NodeId};

impl RawNode {
    /// A follower's handling of messages of its own term.
    pub(crate) fn step_follower(&mut self, msg: Message) {
        match msg.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.hear_from_leader(msg.from);
                let prev = EntryId {
                    term: prev_term,
                    index: prev_index,
                };
                self.handle_append(msg.from, prev, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.hear_from_leader(msg.from);
                self.handle_heartbeat(msg.from, commit, read_round);
            }
            MessageBody::ReadIndex { ctx } => self.redirect_forwarded_read(msg.from, ctx),
            MessageBody::ReadIndexResp { ctx, index } => {
                self.handle_read_index_response(ctx, index)
            }
            _ => {}
        }
    }

    /// A message from the leader of our term: remember it and restart the election timer
    /// (paper §5.2: followers remain followers while they hear from a valid leader).
    fn hear_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(leader);
    }

    /// AppendEntries receiver (Figure 2, rules 1-5; rule 1, the stale term, was handled by
    /// `step_term`).
    fn handle_append(&mut self, leader: NodeId, prev: EntryId, entries: Vec<Entry>, commit: Index) {
        if prev.index < self.log.committed() {
            // Everything up to our commit index matches the leader's log (Leader Completeness,
            // §5.4), so acknowledge that much; the leader resends from there.
            let index = self.log.committed();
            self.send(
                leader,
                MessageBody::AppendResp {
                    index,
                    reject: None,
                },
            );
            return;
        }
        match self.log.maybe_append(prev, &entries) {
            Ok(last_new) => {
                // Rule 5: commit up to what the leader committed, but only what we now know
                // matches the leader's log.
                self.log.commit_to(commit.min(last_new));
                self.send(
                    leader,
                    MessageBody::AppendResp {
                        index: last_new,
                        reject: None,
                    },
                );
            }
            Err(mismatch) => {
                let hint = RejectHint {
                    conflict_term: mismatch.conflict_term,
                    conflict_index: mismatch.conflict_index,
                };
                self.send(
                    leader,
                    MessageBody::AppendResp {
                        index: prev.index,
                        reject: Some(hint),
                    },
                );
            }
        }
    }

    /// A heartbeat carries a commit index the leader knows we hold (see `send_heartbeats`).
    /// It is clamped to our log anyway: a lying peer must not make us commit what we lack.
    fn handle_heartbeat(&mut self, leader: NodeId, commit: Index, read_round: u64) {
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(leader, MessageBody::HeartbeatResp { read_round });
    }
}
