//! The Raft log as the core sees it: the entries since the last snapshot, and the pointers that
//! say how far they are committed, durable and applied.
//!
//! ```text
//!   offset        applied      committed              last
//!     |              |             |                    |
//!     v              v             v                    v
//!   [snap] 1 2 3 ... a ........... c ..... p ... u-1 ... l
//!                                          ^      ^
//!                                  persisted    unstable_from - 1 (handed out in an output batch)
//!
//!   offset <= applied <= min(committed, persisted)
//!   committed <= last,  persisted < unstable_from <= last + 1
//! ```
//!
//! The core keeps the whole log since the last snapshot in memory: its size is bounded by the
//! snapshot policy (log compaction, paper §7), and the storage crate keeps the durable copy.
//!
//! Read it through [`crate::RawNode::log`] (terms and configurations at an index, for taking
//! snapshots; the pointers, for metrics); the node alone changes it.

use crate::quorum::JointConfig;
use crate::types::{Entry, EntryId, EntryKind, Index, Membership, Term};

/// Why an append from a leader did not fit this log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogMismatch {
    /// This log's term at the leader's `prev_index`, `None` if the log is too short.
    pub conflict_term: Option<Term>,
    /// First index of `conflict_term` in this log, or `last + 1` if too short.
    pub conflict_index: Index,
}

/// The in-memory log.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Id of the last entry covered by the snapshot (or `(0, 0)` without one). Entries start at
    /// `offset.index + 1`. Invariant: `offset.index <= applied`.
    offset: EntryId,
    /// Entries `offset.index + 1 ..= last`. Invariant: contiguous indexes, non-decreasing terms.
    entries: Vec<Entry>,
    /// Highest index known committed (paper Figure 2 `commitIndex`). Never decreases.
    /// Invariant: `committed <= last_index()`.
    committed: Index,
    /// Highest index handed to the application to apply (Figure 2 `lastApplied`). Never
    /// decreases. Invariant: `applied <= committed` and `applied <= persisted`.
    applied: Index,
    /// Highest index known durable on this node's disk, with the terms the log now has.
    /// Invariant: `persisted < unstable_from`.
    persisted: Index,
    /// First index not yet handed out to be persisted. Invariant:
    /// `offset.index < unstable_from <= last_index() + 1`.
    unstable_from: Index,
    /// The configuration as of `offset` (the snapshot's, or the bootstrap one).
    base_membership: Membership,
    /// Configuration entries in `entries`, `(index, membership)`, ascending. The last one (or
    /// `base_membership`) is in force: a configuration takes effect when appended (§6).
    memberships: Vec<(Index, Membership)>,
    /// The voters of the configuration in force, derived from it.
    voters: JointConfig,
}

impl RaftLog {
    /// A log restored from durable state: everything given is persisted. `offset` is the
    /// snapshot's last entry id (or default), `committed` the persisted commit index (clamped
    /// to what the log holds), and `applied` where the application's state machine stands.
    pub fn restore(
        offset: EntryId,
        membership: Membership,
        entries: Vec<Entry>,
        committed: Index,
        applied: Index,
    ) -> RaftLog {
        let memberships = entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        let last = offset.index.plus(entries.len() as u64);
        // Anything applied was committed, even if the persisted commit index lags behind it.
        let committed = committed.max(applied).max(offset.index).min(last);
        let applied = applied.max(offset.index).min(committed);
        let log = RaftLog {
            offset,
            entries,
            committed,
            applied,
            persisted: last,
            unstable_from: last.next(),
            base_membership: membership,
            memberships,
            voters: JointConfig::default(),
        };
        let mut log = log;
        log.refresh_voters();
        log.check_invariants_full();
        log
    }

    /// The configuration in force: the last one in the log, committed or not (paper §6).
    pub fn membership(&self) -> &Membership {
        self.memberships
            .last()
            .map_or(&self.base_membership, |(_, m)| m)
    }

    /// The configuration in force right after entry `index` (what a snapshot taken at
    /// `index` must record). `index` must be at or after the log's start.
    pub fn membership_at(&self, index: Index) -> &Membership {
        assert!(
            index >= self.offset.index,
            "configuration before the snapshot"
        );
        self.memberships
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.base_membership, |(_, m)| m)
    }

    /// Index of the entry that set the configuration in force (the snapshot's index or 0 for
    /// the base configuration).
    pub fn membership_index(&self) -> Index {
        self.memberships
            .last()
            .map_or(self.offset.index, |(i, _)| *i)
    }

    /// The voters of the configuration in force.
    pub fn voters(&self) -> &JointConfig {
        &self.voters
    }

    fn refresh_voters(&mut self) {
        let m = self.membership();
        let voters = JointConfig {
            incoming: crate::quorum::MajorityConfig::new(m.voters.iter().copied()),
            outgoing: crate::quorum::MajorityConfig::new(m.voters_outgoing.iter().copied()),
        };
        self.voters = voters;
    }

    /// Index of the first entry held (it may be `last + 1` when the log is empty).
    pub fn first_index(&self) -> Index {
        self.offset.index.next()
    }

    /// The bytes ([`Entry::size_bytes`]) of the entries this log holds after `index`: what a
    /// follower whose match index is `index` still has to receive, as far as this log can
    /// tell (entries already compacted into the snapshot are not counted). For operators
    /// (replication lag in bytes); linear in the number of entries counted.
    pub fn bytes_after(&self, index: Index) -> u64 {
        let skip = index.0.saturating_sub(self.offset.index.0);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).map(Entry::size_bytes).sum()
    }

    /// Index of the last entry, or the snapshot's last index when no entries remain.
    pub fn last_index(&self) -> Index {
        self.offset.index.plus(self.entries.len() as u64)
    }

    /// Term of the last entry, or the snapshot's.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset.term, |e| e.term)
    }

    /// Id of the last entry.
    pub fn last_id(&self) -> EntryId {
        EntryId {
            term: self.last_term(),
            index: self.last_index(),
        }
    }

    /// Commit index.
    pub fn committed(&self) -> Index {
        self.committed
    }

    /// Applied index.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Durable index.
    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// The snapshot boundary.
    pub fn offset(&self) -> EntryId {
        self.offset
    }

    /// Term of the entry at `index`: `None` if it was compacted away or is beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset.index {
            return Some(self.offset.term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset.index {
            return None;
        }
        let pos = (index.0 - self.offset.index.0 - 1) as usize;
        self.entries.get(pos)
    }

    /// Whether this log holds an entry with exactly this id.
    pub fn matches(&self, id: EntryId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Entries from `lo` through `hi` inclusive, at most `bytes_max` of them by
    /// [`Entry::size_bytes`] but always at least one when the range is not empty.
    /// Panics if `lo` was compacted: callers check [`RaftLog::first_index`] first.
    pub fn slice(&self, lo: Index, hi: Index, bytes_max: u64) -> Vec<Entry> {
        assert!(lo >= self.first_index(), "slice from compacted index {lo}");
        assert!(hi <= self.last_index(), "slice beyond last index {hi}");
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut i = lo;
        while i <= hi {
            let e = self.entry(i).expect("entry in range");
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
            i = i.next();
        }
        out
    }

    /// Entries from `lo` through `hi` inclusive, borrowed (no copy). Panics on a compacted or
    /// missing index, like [`RaftLog::slice`].
    pub fn iter_range(&self, lo: Index, hi: Index) -> impl Iterator<Item = &Entry> {
        assert!(lo >= self.first_index(), "range from compacted index {lo}");
        assert!(hi <= self.last_index(), "range beyond last index {hi}");
        let start = (lo.0 - self.offset.index.0 - 1) as usize;
        let end = (hi.0 - self.offset.index.0) as usize;
        self.entries[start..end.max(start)].iter()
    }

    /// The election restriction (paper §5.4.1): a candidate's log is at least as up to date as
    /// ours if its last term is higher, or equal with an index at least ours.
    pub fn is_up_to_date(&self, last: EntryId) -> bool {
        last.term > self.last_term()
            || (last.term == self.last_term() && last.index >= self.last_index())
    }

    /// Leader append (Leader Append-Only, §5.3): entries go after the last one, in order.
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            assert_eq!(
                e.index,
                self.last_index().next(),
                "leader append out of order"
            );
            assert!(
                e.term >= self.last_term(),
                "leader append with a lower term"
            );
            if let EntryKind::Membership(m) = &e.kind {
                self.memberships.push((e.index, m.clone()));
                self.refresh_voters();
            }
            self.entries.push(e);
        }
    }

    /// Follower append with the consistency check of Figure 2 (AppendEntries receiver rules 2-4):
    /// if our entry at `prev` matches, drop any conflicting suffix and append what is new.
    /// Returns the index of the last entry the leader sent, which this log now matches up to.
    /// Panics if the leader asks to overwrite a committed entry: that breaks Log Matching and is
    /// a bug somewhere (paper §5.4, State Machine Safety).
    pub fn maybe_append(&mut self, prev: EntryId, entries: &[Entry]) -> Result<Index, LogMismatch> {
        if !self.matches(prev) {
            return Err(self.mismatch_hint(prev.index));
        }
        let last_new = prev.index.plus(entries.len() as u64);
        // Receiver rule 3: find the first entry that is new or conflicts; entries before it
        // are already here (a duplicate or reordered append must not truncate them, §5.3).
        let first_new = if cfg!(feature = "mut-truncate-committed") {
            // Mutation: treat every entry as new, so a stale append truncates what follows it.
            0
        } else {
            entries
                .iter()
                .position(|e| !self.matches(e.id()))
                .unwrap_or(entries.len())
        };
        if first_new < entries.len() {
            let from = entries[first_new].index;
            if from <= self.last_index() {
                assert!(
                    from > self.committed || cfg!(feature = "mut-truncate-committed"),
                    "truncating committed entry {from} (committed {})",
                    self.committed
                );
                self.truncate_from(from);
            }
            self.append(entries[first_new..].to_vec());
        }
        Ok(last_new)
    }

    /// The fast-backtracking hint for a rejected `prev_index` (§5.3, last paragraphs).
    fn mismatch_hint(&self, prev_index: Index) -> LogMismatch {
        match self.term(prev_index) {
            None if prev_index > self.last_index() => LogMismatch {
                conflict_term: None,
                conflict_index: self.last_index().next(),
            },
            // Compacted away: everything up to the snapshot matches (it was committed), so ask
            // for what follows it.
            None => LogMismatch {
                conflict_term: None,
                conflict_index: self.first_index(),
            },
            Some(t) => {
                let mut first = prev_index;
                while first.prev() > self.offset.index && self.term(first.prev()) == Some(t) {
                    first = first.prev();
                }
                LogMismatch {
                    conflict_term: Some(t),
                    conflict_index: first,
                }
            }
        }
    }

    /// The last index at or below `at` that holds an entry of `term`, if any. The leader uses it
    /// to skip over a follower's conflicting term.
    pub fn last_index_of_term(&self, term: Term, at: Index) -> Option<Index> {
        let mut i = at.min(self.last_index());
        while i > self.offset.index {
            let t = self.term(i).expect("in range");
            if t == term {
                return Some(i);
            }
            if t < term {
                return None;
            }
            i = i.prev();
        }
        None
    }

    fn truncate_from(&mut self, from: Index) {
        assert!(from > self.offset.index);
        assert!(from > self.committed || cfg!(feature = "mut-truncate-committed"));
        if cfg!(feature = "mut-truncate-committed") {
            // Mutation: keep the pointers consistent so the bug surfaces in the simulator's
            // checkers rather than in this log's own asserts.
            self.committed = self.committed.min(from.prev());
            self.applied = self.applied.min(from.prev());
        }
        let keep = (from.0 - self.offset.index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(from);
        self.persisted = self.persisted.min(from.prev());
        // A configuration rolls back with its entry (paper §6).
        let before = self.memberships.len();
        self.memberships.retain(|(i, _)| *i < from);
        if self.memberships.len() != before {
            self.refresh_voters();
        }
    }

    /// Discards entries through `last`, which a durable snapshot now covers (paper §7).
    /// Requires `last` applied: only applied state can be in a snapshot.
    pub fn compact_to(&mut self, last: EntryId) {
        assert!(last.index <= self.applied, "compacting beyond applied");
        assert!(
            self.matches(last),
            "compaction point {last:?} is not in the log"
        );
        if last.index <= self.offset.index {
            return;
        }
        let drop = (last.index.0 - self.offset.index.0) as usize;
        self.entries.drain(..drop);
        self.offset = last;
        // The configuration as of the snapshot becomes the base.
        let covered = self.memberships.partition_point(|(i, _)| *i <= last.index);
        if let Some((_, m)) = self.memberships.drain(..covered).next_back() {
            self.base_membership = m;
        }
        self.check_invariants();
    }

    /// Replaces the log's prefix with a snapshot received from the leader (paper Figure 13,
    /// receiver rules 6-7): if an entry matches the snapshot's last entry, the entries after
    /// it are kept; otherwise the whole log is discarded. Commit and applied move to the
    /// snapshot; the application restores its state from the snapshot bytes.
    pub fn install_snapshot(&mut self, last: EntryId, membership: Membership) {
        assert!(
            last.index > self.committed || cfg!(feature = "mut-install-stale-snapshot"),
            "installing a snapshot at or below commit"
        );
        if self.matches(last) {
            let drop = (last.index.0 - self.offset.index.0) as usize;
            self.entries.drain(..drop);
            self.memberships.retain(|(i, _)| *i > last.index);
        } else {
            // Nothing after the snapshot survives, durable or not (found by the simulator:
            // keeping `persisted` beyond the snapshot broke `persisted < unstable_from` when a
            // stale suffix of an old leader was on disk).
            self.entries.clear();
            self.memberships.clear();
            self.unstable_from = last.index.next();
            self.persisted = last.index;
        }
        self.base_membership = membership;
        self.refresh_voters();
        self.offset = last;
        self.committed = last.index;
        self.applied = last.index;
        self.persisted = self.persisted.max(last.index);
        self.unstable_from = self.unstable_from.max(last.index.next());
        self.check_invariants();
    }

    /// Raises the commit index. Returns whether it moved.
    pub fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Entries handed out but not yet persisted, plus new ones: what the next output batch must
    /// write. Marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        if self.unstable_from > self.last_index() {
            return Vec::new();
        }
        let lo = (self.unstable_from.0 - self.offset.index.0 - 1) as usize;
        let out = self.entries[lo..].to_vec();
        self.unstable_from = self.last_index().next();
        out
    }

    /// Whether there are entries to hand out for persistence.
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// The application reports entries through `index` durable. Entries handed out after a
    /// truncation below `index` are not counted: what is on disk past the truncation point is
    /// stale and will be overwritten by the next batch.
    pub fn persisted_to(&mut self, index: Index) {
        let index = index.min(self.unstable_from.prev());
        if index > self.persisted {
            self.persisted = index;
        }
    }

    /// Committed, durable entries not yet handed to the application, at most `bytes_max` (but at
    /// least one).
    pub fn next_to_apply(&self, bytes_max: u64) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applied {
            return Vec::new();
        }
        self.slice(self.applied.next(), hi, bytes_max)
    }

    /// Whether committed, durable entries wait to be applied.
    pub fn has_next_to_apply(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }

    /// The application has applied through `index`.
    pub fn applied_to(&mut self, index: Index) {
        assert!(index <= self.committed, "applied {index} beyond committed");
        assert!(index <= self.persisted, "applied {index} beyond persisted");
        if index > self.applied {
            self.applied = index;
        }
    }

    /// Panics if an invariant in the field docs does not hold.
    pub fn check_invariants(&self) {
        assert!(self.offset.index <= self.applied, "applied below snapshot");
        assert!(self.applied <= self.committed, "applied beyond committed");
        assert!(self.applied <= self.persisted, "applied beyond persisted");
        assert!(self.committed <= self.last_index(), "committed beyond last");
        assert!(
            self.persisted < self.unstable_from,
            "persisted beyond handed-out"
        );
        assert!(
            self.unstable_from > self.offset.index,
            "unstable before snapshot"
        );
        assert!(
            self.unstable_from <= self.last_index().next(),
            "unstable beyond end"
        );
        // Order within `entries` is enforced where entries are added (`append`), so the
        // per-step check is O(1); `check_invariants_full` walks the whole log.
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            assert_eq!(
                first.index,
                self.offset.index.next(),
                "first entry after snapshot"
            );
            assert_eq!(last.index, self.last_index(), "log indexes not contiguous");
            assert!(
                first.term >= self.offset.term,
                "log term below snapshot term"
            );
        }
    }

    /// [`RaftLog::check_invariants`] plus a walk over every entry.
    pub fn check_invariants_full(&self) {
        self.check_invariants();
        let mut prev = self.offset;
        for e in &self.entries {
            assert_eq!(e.index, prev.index.next(), "log indexes not contiguous");
            assert!(e.term >= prev.term, "log terms decrease at {}", e.index);
            prev = e.id();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use proptest::prelude::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: Index(index),
            kind: EntryKind::Normal,
            data: vec![index as u8],
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| ent(i as u64 + 1, t))
            .collect();
        RaftLog::restore(
            EntryId::default(),
            Membership::default(),
            entries,
            Index(0),
            Index(0),
        )
    }

    fn id(term: u64, index: u64) -> EntryId {
        EntryId {
            term: Term(term),
            index: Index(index),
        }
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        // §5.4.1: later term wins; same term, longer log wins.
        let log = log_of(&[1, 1, 2]);
        assert!(log.is_up_to_date(id(3, 1)));
        assert!(log.is_up_to_date(id(2, 3)));
        assert!(log.is_up_to_date(id(2, 4)));
        assert!(!log.is_up_to_date(id(2, 2)));
        assert!(!log.is_up_to_date(id(1, 10)));
    }

    #[test]
    fn append_rejects_missing_prev_with_hints() {
        // Figure 2, AppendEntries receiver rule 2.
        let mut log = log_of(&[1, 1, 2, 2, 2]);
        assert_eq!(
            log.maybe_append(id(3, 9), &[]),
            Err(LogMismatch {
                conflict_term: None,
                conflict_index: Index(6)
            })
        );
        assert_eq!(
            log.maybe_append(id(3, 5), &[]),
            Err(LogMismatch {
                conflict_term: Some(Term(2)),
                conflict_index: Index(3)
            })
        );
    }

    #[test]
    fn append_truncates_only_on_conflict() {
        // Figure 2, AppendEntries receiver rules 3 and 4.
        let mut log = log_of(&[1, 1, 2, 2]);
        // A stale, shorter append that matches must not truncate.
        assert_eq!(log.maybe_append(id(1, 1), &[ent(2, 1)]), Ok(Index(2)));
        assert_eq!(log.last_index(), Index(4));
        // A conflict at 3 truncates 3.. and appends.
        assert_eq!(log.maybe_append(id(1, 2), &[ent(3, 3)]), Ok(Index(3)));
        assert_eq!(log.last_id(), id(3, 3));
        log.check_invariants();
    }

    #[test]
    #[should_panic(expected = "truncating committed entry")]
    fn truncating_committed_entry_panics() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(Index(3));
        let _ = log.maybe_append(id(1, 2), &[ent(3, 3)]);
    }

    #[test]
    fn persistence_and_apply_pointers() {
        let mut log = log_of(&[1]);
        log.append(vec![ent(2, 1), ent(3, 1)]);
        let unstable = log.take_unstable();
        assert_eq!(unstable.len(), 2);
        log.commit_to(Index(3));
        // Only durable entries are applied.
        assert_eq!(log.next_to_apply(u64::MAX).len(), 1);
        log.persisted_to(Index(3));
        assert_eq!(log.next_to_apply(u64::MAX).len(), 3);
        log.applied_to(Index(3));
        assert!(!log.has_next_to_apply());
        log.check_invariants();
    }

    #[test]
    fn persisted_ignores_entries_truncated_while_in_flight() {
        let mut log = log_of(&[1]);
        log.append(vec![ent(2, 1), ent(3, 1)]);
        let _ = log.take_unstable();
        // Before the batch is durable, a new leader overwrites index 2.
        assert_eq!(log.maybe_append(id(1, 1), &[ent(2, 2)]), Ok(Index(2)));
        log.persisted_to(Index(3));
        assert_eq!(log.persisted(), Index(1));
        assert_eq!(log.take_unstable(), vec![ent(2, 2)]);
        log.check_invariants();
    }

    #[test]
    fn configurations_take_effect_when_appended_and_roll_back_when_truncated() {
        // Paper §6: a server uses the latest configuration in its log, committed or not.
        let three = Membership::new([1, 2, 3].map(|i| crate::NodeId::new(i).unwrap()));
        let four = Membership::new([1, 2, 3, 4].map(|i| crate::NodeId::new(i).unwrap()));
        let mut log = RaftLog::restore(
            EntryId::default(),
            three.clone(),
            Vec::new(),
            Index(0),
            Index(0),
        );
        let conf = Entry {
            term: Term(1),
            index: Index(2),
            kind: EntryKind::Membership(four.clone()),
            data: Vec::new(),
        };
        assert_eq!(log.maybe_append(id(0, 0), &[ent(1, 1), conf]), Ok(Index(2)));
        assert_eq!(log.membership(), &four);
        assert_eq!(log.voters().voters().len(), 4);
        assert_eq!(log.membership_at(Index(1)), &three);
        // A new leader overwrites the uncommitted configuration entry: back to three voters.
        assert_eq!(log.maybe_append(id(1, 1), &[ent(2, 2)]), Ok(Index(2)));
        assert_eq!(log.membership(), &three);
        assert_eq!(log.voters().voters().len(), 3);
    }

    #[test]
    fn installing_a_non_matching_snapshot_drops_a_longer_durable_suffix() {
        // The log holds an old leader's uncommitted entries beyond the snapshot index, durable.
        let mut log = log_of(&[1, 1, 1, 1, 1]);
        log.install_snapshot(id(2, 3), Membership::default());
        log.check_invariants_full();
        assert_eq!(log.last_id(), id(2, 3));
        assert_eq!(log.persisted(), Index(3));
        assert!(!log.has_unstable());
    }

    #[test]
    fn last_index_of_term_skips_higher_terms() {
        let log = log_of(&[1, 1, 2, 2, 4, 4]);
        assert_eq!(log.last_index_of_term(Term(2), Index(6)), Some(Index(4)));
        assert_eq!(log.last_index_of_term(Term(3), Index(6)), None);
        assert_eq!(log.last_index_of_term(Term(1), Index(6)), Some(Index(2)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Follower append: prev index (modulo length+1), terms of new entries as offsets.
        Append {
            prev: u64,
            new_terms: Vec<u64>,
        },
        Commit(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..12, prop::collection::vec(0u64..3, 0..5))
                .prop_map(|(prev, new_terms)| Op::Append { prev, new_terms }),
            (0u64..12).prop_map(Op::Commit),
        ]
    }

    proptest! {
        /// The log against a deliberately simple reference: a `Vec<u64>` of terms.
        #[test]
        fn follower_append_matches_reference(ops in prop::collection::vec(op(), 1..40)) {
            let mut log = log_of(&[]);
            let mut reference: Vec<u64> = Vec::new();
            let mut committed = 0u64;
            for op in ops {
                match op {
                    Op::Append { prev, new_terms } => {
                        let prev = prev % (reference.len() as u64 + 2);
                        let prev_term = if prev == 0 { 0 } else {
                            reference.get(prev as usize - 1).copied().unwrap_or(99)
                        };
                        // New entries have terms >= prev_term, non-decreasing.
                        let mut t = prev_term.max(1);
                        let entries: Vec<Entry> = new_terms.iter().enumerate().map(|(i, d)| {
                            t += d;
                            ent(prev + 1 + i as u64, t)
                        }).collect();
                        // Skip appends that would overwrite committed entries: a correct leader
                        // never sends those (the panic is tested separately).
                        let would_truncate_committed = entries.iter().any(|e| {
                            e.index.0 <= committed
                                && reference.get(e.index.0 as usize - 1) != Some(&e.term.0)
                        });
                        if would_truncate_committed || (prev as usize) > reference.len() {
                            if (prev as usize) > reference.len() {
                                prop_assert!(log.maybe_append(id(prev_term, prev), &entries).is_err());
                            }
                            continue;
                        }
                        let matches = prev == 0 || reference[prev as usize - 1] == prev_term;
                        let got = log.maybe_append(id(prev_term, prev), &entries);
                        if !matches {
                            prop_assert!(got.is_err());
                            continue;
                        }
                        prop_assert_eq!(got, Ok(Index(prev + entries.len() as u64)));
                        for e in &entries {
                            let pos = e.index.0 as usize - 1;
                            if pos < reference.len() {
                                if reference[pos] != e.term.0 {
                                    reference.truncate(pos);
                                    reference.push(e.term.0);
                                }
                            } else {
                                reference.push(e.term.0);
                            }
                        }
                    }
                    Op::Commit(c) => {
                        let c = c.min(reference.len() as u64);
                        if c > committed {
                            committed = c;
                        }
                        log.commit_to(Index(c));
                    }
                }
                log.check_invariants_full();
                prop_assert_eq!(log.last_index(), Index(reference.len() as u64));
                for (i, t) in reference.iter().enumerate() {
                    prop_assert_eq!(log.term(Index(i as u64 + 1)), Some(Term(*t)));
                }
                prop_assert_eq!(log.committed(), Index(committed));
            }
        }
    }
}
