//! The follower side of log replication: the AppendEntries receiver rules of Figure 2 and
//! heartbeats.

use crate::message::{Message, MessageBody, RejectHint};
use crate::node::RawNode;
use crate::snapshot::{self, ChunkVerdict};
use crate::types::{Entry, EntryId, Index, NodeId, SnapshotChunk, SnapshotMeta};

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
            MessageBody::InstallSnapshot {
                meta,
                offset,
                len,
                data,
            } => {
                self.hear_from_leader(msg.from);
                self.handle_snapshot_chunk(msg.from, meta, offset, len, data);
            }
            MessageBody::TimeoutNow if self.leader == Some(msg.from) => {
                self.campaign_for_transfer();
            }
            MessageBody::ReadIndex { ctx } => self.redirect_forwarded_read(msg.from, ctx),
            MessageBody::ReadIndexResp { ctx, index } => {
                self.handle_read_index_response(ctx, index)
            }
            _ => {}
        }
    }

    /// A message from the leader of our term: remember it and restart the election timer
    /// (paper §5.2: followers remain followers while they hear from a valid leader). An
    /// election succeeded, so our next campaign need not doubt it can win (`lost_campaign`).
    fn hear_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(leader);
        self.lost_campaign = false;
        let until = self.ticks + self.config.election_ticks;
        self.lease_granted_until = self.lease_granted_until.max(until);
    }

    /// AppendEntries receiver (Figure 2, rules 1-5; rule 1, the stale term, was handled by
    /// `step_term`).
    fn handle_append(&mut self, leader: NodeId, prev: EntryId, entries: Vec<Entry>, commit: Index) {
        // Preconditions: only the leader of our term reaches here (`step_term` and
        // `hear_from_leader`).
        assert_eq!(
            self.leader,
            Some(leader),
            "append from a node that is not our leader"
        );
        assert!(!self.is_leader(), "a leader handles an append");
        let committed_before = self.log.committed();
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
                // Postconditions (rules 3-5): the log now holds prev and every sent entry, and
                // the commit index moved only forward and only over entries we hold.
                if !cfg!(feature = "mut-truncate-committed") {
                    assert!(self.log.matches(prev) || prev.index < self.log.offset().index);
                    if let Some(e) = entries.last() {
                        assert!(
                            self.log.matches(e.id()) || e.index <= self.log.offset().index,
                            "appended entry {} is not in the log",
                            e.index
                        );
                    }
                }
                assert!(self.log.committed() >= committed_before, "commit went back");
                assert!(self.log.committed() <= self.log.last_index());
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

    /// InstallSnapshot receiver (paper Figure 13), one chunk at a time: chunks are staged in
    /// order; the last one installs the snapshot atomically (nothing partial is visible).
    fn handle_snapshot_chunk(
        &mut self,
        leader: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        len: u64,
        data: Vec<u8>,
    ) {
        if data.len() as u64 != len {
            // Corrupt or unfilled chunk: ignore it; the leader resends after a stall.
            return;
        }
        let last = meta.last;
        if last.index <= self.log.committed() && !cfg!(feature = "mut-install-stale-snapshot") {
            // Everything the snapshot covers is committed here already: acknowledge, and the
            // leader replicates entries from our commit index on.
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
        if self.pending_install.is_some() {
            // This batch already installs a snapshot, and a batch stages its chunks before it
            // installs (see `Ready`). Staging a chunk now would replace the staged, complete
            // snapshot before the store installs it (found by the simulator: a newer
            // snapshot's first chunks arriving right behind the last chunk of an older one).
            // Ask for this snapshot from the start; the next batch stages it.
            let body = MessageBody::SnapshotResp {
                last,
                offset: 0,
                reject: true,
            };
            self.send(leader, body);
            return;
        }
        let (offset_next, reject) =
            match snapshot::on_chunk(&mut self.incoming_snapshot, &meta, offset, len) {
                ChunkVerdict::Accept { complete } => {
                    // Mutation: install as soon as the first chunk is staged.
                    let complete = complete || cfg!(feature = "mut-apply-partial-snapshot");
                    self.pending_chunks.push(SnapshotChunk {
                        meta: meta.clone(),
                        offset,
                        data,
                    });
                    if complete {
                        // Postcondition of the decision to install (Figure 13, step 5 only
                        // after the last chunk): `meta` is whole in the staging area, received
                        // in order, and this batch stages nothing after it.
                        if !cfg!(feature = "mut-apply-partial-snapshot") {
                            let incoming = self.incoming_snapshot.as_ref();
                            assert!(
                                incoming.is_some_and(|i| i.meta == meta),
                                "installing a snapshot that is not the one being received"
                            );
                            assert!(
                                incoming.is_some_and(|i| i.received == meta.size_bytes),
                                "installing a partially received snapshot"
                            );
                            assert!(
                                snapshot::chunks_end_staged(&self.pending_chunks, &meta),
                                "this batch's chunks do not end with the snapshot to install"
                            );
                        }
                        self.incoming_snapshot = None;
                        self.install_snapshot(meta);
                        let body = MessageBody::AppendResp {
                            index: last.index,
                            reject: None,
                        };
                        self.send(leader, body);
                        return;
                    }
                    (offset + len, false)
                }
                ChunkVerdict::Duplicate(expected) => (expected, false),
                ChunkVerdict::Reject(expected) => (expected, true),
            };
        let body = MessageBody::SnapshotResp {
            last,
            offset: offset_next,
            reject,
        };
        self.send(leader, body);
    }

    /// Adopts a fully staged snapshot: the log restarts after it, the membership is the
    /// snapshot's, and the application restores its state from the staged bytes.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        self.log
            .install_snapshot(meta.last, meta.membership.clone());
        self.snapshot = Some(meta.clone());
        self.pending_install = Some(meta);
    }

    /// A heartbeat carries a commit index the leader knows we hold (see `send_heartbeats`).
    /// It is clamped to our log anyway: a lying peer must not make us commit what we lack.
    fn handle_heartbeat(&mut self, leader: NodeId, commit: Index, read_round: u64) {
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(leader, MessageBody::HeartbeatResp { read_round });
    }
}
