//! Safety invariants, checked after every step of every node. One module per property, each
//! citing the Raft paper (Ongaro and Ousterhout, extended version, Figure 3 and §5). The
//! [`Checker`] computes what changed on a node since it was last observed (new log suffix,
//! commit advance, role) and hands each module only that, so checking stays cheap enough to run
//! after every single step.

mod acked_entries;
mod election_safety;
mod leader_append_only;
mod leader_completeness;
mod log_matching;
mod monotonic;
pub mod quorum;
mod state_machine_safety;

use std::collections::BTreeMap;
use std::hash::Hasher;

use raft::{
    Entry, EntryId, EntryKind, HardState, Index, Membership, Message, MessageBody, RawNode, Role,
    Term,
};

use crate::property::{Guard, GuardsOff, Property};
use crate::trace::Fnv;

/// A broken safety property: which one, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property broken.
    pub property: Property,
    /// The property's name, as in the paper.
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} violated: {}",
            self.property, self.invariant, self.detail
        )
    }
}

/// Result of one check.
pub type Check = Result<(), Violation>;

pub(crate) fn violation(property: Property, invariant: &'static str, detail: String) -> Check {
    Err(Violation {
        property,
        invariant,
        detail,
    })
}

/// A digest of an entry's content (kind and payload), to compare entries across nodes.
pub fn entry_hash(e: &Entry) -> u64 {
    let mut h = Fnv::default();
    match &e.kind {
        EntryKind::Normal => h.write_u8(1),
        EntryKind::Noop => h.write_u8(2),
        EntryKind::Membership(m) => {
            h.write_u8(3);
            for set in [&m.voters, &m.voters_outgoing, &m.learners] {
                for id in set {
                    h.write(&id.get().to_le_bytes());
                }
                h.write_u8(0xff);
            }
        }
    }
    h.write(&e.data);
    h.finish()
}

/// What the checker last saw of one node, to compute the change after the next step.
#[derive(Clone, Debug, Default)]
struct Shadow {
    /// The node's incarnation when observed (a restart starts from scratch).
    incarnation: u64,
    /// `terms[i - 1]` is the term of the entry at index `i`.
    terms: Vec<Term>,
    /// Commit index observed.
    commit: Index,
    /// Current term observed.
    term: Term,
    /// Role observed.
    role: Option<Role>,
    membership: Option<Membership>,
}

/// Runs every invariant module.
#[derive(Debug, Default)]
pub struct Checker {
    shadows: BTreeMap<u64, Shadow>,
    acked: acked_entries::AckedEntries,
    election: election_safety::ElectionSafety,
    append_only: leader_append_only::LeaderAppendOnly,
    matching: log_matching::LogMatching,
    completeness: leader_completeness::LeaderCompleteness,
    sms: state_machine_safety::StateMachineSafety,
    mono: monotonic::Monotonic,
    /// Guards turned off (mutation hunts only).
    guards_off: GuardsOff,
}

impl Checker {
    /// A checker with `guards_off` turned off.
    pub fn new(guards_off: GuardsOff) -> Checker {
        Checker {
            guards_off,
            ..Checker::default()
        }
    }

    /// Observes node `node` after a step (tick, message, proposal, read, advance).
    pub fn after_step(
        &mut self,
        node: u64,
        incarnation: u64,
        raft: &RawNode,
        holds: &dyn Fn(u64, EntryId) -> bool,
    ) -> Check {
        if self.guards_off.on(Guard::CoreInvariants) {
            raft.check_invariants();
        }
        let mut shadow = self.shadows.remove(&node).unwrap_or_default();
        if shadow.incarnation != incarnation {
            shadow = Shadow {
                incarnation,
                ..Shadow::default()
            };
        }
        let result = self.observe(node, raft, &mut shadow, holds);
        self.shadows.insert(node, shadow);
        result
    }

    fn observe(
        &mut self,
        node: u64,
        raft: &RawNode,
        shadow: &mut Shadow,
        holds: &dyn Fn(u64, EntryId) -> bool,
    ) -> Check {
        let log = raft.log();
        let status = raft.status();
        let last = log.last_index().0;
        // Longest prefix of the shadow that still agrees with the log, by term. Entries below
        // the snapshot (`offset`) were compacted: the shadow keeps their terms (or a
        // placeholder, term 0, when they arrived by snapshot) and only the rest, plus the
        // snapshot's own last entry, can be compared.
        let offset = log.offset();
        let mut keep = (shadow.terms.len() as u64).min(last);
        while keep > offset.index.0
            && log.term(Index(keep)) != Some(shadow.terms[keep as usize - 1])
        {
            keep -= 1;
        }
        if keep == offset.index.0
            && keep > 0
            && shadow.terms[keep as usize - 1] != offset.term
            && shadow.terms[keep as usize - 1] != Term(0)
        {
            keep -= 1;
        }
        let changed_from = Index(keep + 1);
        let old_len = shadow.terms.len() as u64;
        if self.guards_off.on(Guard::Monotonic) {
            self.mono
                .check_step(node, shadow, &status, changed_from, old_len)?;
        }
        let from = keep.max(offset.index.0);
        let new_entries = if from < last {
            log.slice(Index(from + 1), Index(last), u64::MAX)
        } else {
            Vec::new()
        };
        let prev_term = log.term(Index(from)).unwrap_or_default();
        self.matching.check_entries(node, prev_term, &new_entries)?;
        if self.guards_off.on(Guard::QuorumShape) {
            quorum::check_transitions(node, raft, &new_entries)?;
        }
        let count_quorums = self.guards_off.on(Guard::QuorumCount);
        shadow.terms.truncate(keep as usize);
        while (shadow.terms.len() as u64) < offset.index.0 {
            let i = shadow.terms.len() as u64 + 1;
            shadow.terms.push(if i == offset.index.0 {
                offset.term
            } else {
                Term(0)
            });
        }
        shadow.terms.extend(new_entries.iter().map(|e| e.term));
        if status.commit > shadow.commit {
            let lo = shadow.commit.next().max(log.first_index());
            if lo <= status.commit {
                let committed = log.slice(lo, status.commit, u64::MAX);
                self.sms.record_committed(node, status.term, &committed)?;
            }
            if count_quorums && status.role == Role::Leader && shadow.role == Some(Role::Leader) {
                quorum::check_commit(node, raft, shadow.membership.as_ref(), holds)?;
            }
        }
        if status.role == Role::Leader {
            let new_leader = shadow.role != Some(Role::Leader) || shadow.term != status.term;
            self.election.observe_leader(node, status.term)?;
            if new_leader {
                let votes = self.election.votes_for(status.term, node);
                if count_quorums {
                    quorum::check_election(node, raft, &votes)?;
                }
                self.completeness.check_new_leader(node, raft, &self.sms)?;
                self.append_only.start_term(node, raft);
            } else {
                self.append_only.check(node, raft)?;
            }
        }
        self.acked.check(node, raft)?;
        shadow.commit = status.commit;
        shadow.term = status.term;
        shadow.role = Some(status.role);
        shadow.membership = Some(log.membership().clone());
        Ok(())
    }

    /// Observes a message as it leaves a node (after any sync it waited for), with the
    /// sender's state at that moment.
    pub fn on_send(&mut self, msg: &Message, sender: &RawNode) -> Check {
        match msg.body {
            MessageBody::VoteResp { reject: false } => {
                self.election
                    .observe_vote(msg.from.get(), msg.term, msg.to.get())?;
            }
            MessageBody::AppendResp {
                index,
                reject: None,
            } => {
                self.acked
                    .on_ack(msg.from.get(), sender, msg.term, msg.to.get(), index);
            }
            _ => {}
        }
        Ok(())
    }

    /// Observes an entry handed to the state machine of `node`.
    pub fn on_apply(&mut self, node: u64, incarnation: u64, term: Term, entry: &Entry) -> Check {
        self.sms.on_apply(node, incarnation, term, entry)
    }

    /// The application restored its state machine from a snapshot ending at `last` (after an
    /// install, or on restart).
    pub fn on_restore(&mut self, node: u64, incarnation: u64, last: EntryId) -> Check {
        self.sms.on_restore(node, incarnation, last)
    }

    /// Observes a hard state becoming durable on `node`.
    pub fn on_durable(&mut self, node: u64, hs: &HardState) -> Check {
        if self.guards_off.off(Guard::Monotonic) {
            return Ok(());
        }
        self.mono.on_durable(node, hs)
    }

    /// Observes a node just restarted from its durable hard state.
    pub fn on_restart(&mut self, node: u64, raft: &RawNode, durable: &HardState) -> Check {
        if self.guards_off.off(Guard::Monotonic) {
            return Ok(());
        }
        self.mono.on_restart(node, raft, durable)
    }

    /// A full (not incremental) Log Matching pass over a node's whole log, for the end of a run.
    pub fn full_check(&mut self, node: u64, raft: &RawNode) -> Check {
        let log = raft.log();
        if self.guards_off.on(Guard::CoreInvariants) {
            log.check_invariants_full();
        }
        if log.last_index() < log.first_index() {
            return Ok(());
        }
        let entries = log.slice(log.first_index(), log.last_index(), u64::MAX);
        self.matching
            .check_entries(node, log.offset().term, &entries)?;
        self.completeness_committed_prefix(node, raft)
    }

    fn completeness_committed_prefix(&self, node: u64, raft: &RawNode) -> Check {
        self.sms.check_committed_prefix(node, raft)
    }

    /// Number of distinct indexes known committed (for reports).
    pub fn committed_len(&self) -> usize {
        self.sms.committed_len()
    }

    /// The entry known committed at `index`, as `(term, hash)`.
    pub fn committed_at(&self, index: u64) -> Option<(Term, u64)> {
        self.sms.committed_at(index)
    }
}
