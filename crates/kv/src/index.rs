//! The in-memory key index (etcd's `treeIndex`): for every key, the revisions of its rows in
//! [`crate::mvcc::REVS`], grouped into generations.
//!
//! ```text
//!   "a": gen{created 2, first_version 1, revs [(2,0) (4,0) (5,0)], deleted}   put, put, delete
//!        gen{created 7, first_version 1, revs [(7,0)]}                        put again
//! ```
//!
//! A generation is one life of a key: from the put that created it to the tombstone that ended
//! it (only the last generation may be live). Reading a key at revision `r` is a binary search
//! in memory; only a read that returns a value touches redb. Deletes and `count`/`keys_only`
//! ranges never read a row. The index is not stored: [`Index::rebuild`] makes it from the rows
//! when the store opens or restores a snapshot.
//!
//! Concurrency (see [`crate::store::Store`]): the store keeps the index behind a lock with the
//! store's [`Meta`]; a reader opens its redb read transaction while holding the index's read
//! lock, so the rows it sees include every row the index points to. The apply thread appends
//! rows in its redb transaction, commits, and only then adds their revisions to the index; a
//! compaction removes revisions from the index before it deletes their rows. Within a write
//! transaction, changes not yet committed live in an [`Overlay`].

use std::collections::BTreeMap;

use crate::mvcc::{KeySpan, PutHeader, Rev};
use crate::pending::{Chunk, Pending};
use crate::store::Meta;

/// What the index knows of a key at a revision where it is live: everything of its
/// `KeyValue` except the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Live {
    /// The row holding the value (its `main` is the pair's `mod_revision`).
    pub(crate) rev: Rev,
    /// Revision that created this generation.
    pub(crate) create: u64,
    /// Puts since creation, >= 1.
    pub(crate) version: u64,
    /// Attached lease, 0 for none.
    pub(crate) lease: i64,
}

impl Live {
    /// The header a row written for this put carries.
    pub(crate) fn header(&self) -> PutHeader {
        PutHeader {
            create: self.create,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// One life of a key. Invariants: `revs` is non-empty and strictly ascending; the version of
/// `revs[i]` is `first_version + i` (a tombstone ends the generation and has no version);
/// `created <= revs[0].main`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    /// Revision of the put that created the generation (kept after compaction drops that put).
    created: u64,
    /// Version of `revs[0]`.
    first_version: u64,
    /// Revisions of the generation's rows, with each put's lease (0 for the tombstone).
    revs: Vec<(Rev, i64)>,
    /// Whether the last revision is a tombstone (the generation is over).
    deleted: bool,
}

impl Generation {
    /// The key's state as of `revs[i]`: `None` if that is the tombstone.
    fn live(&self, i: usize) -> Option<Live> {
        if self.deleted && i == self.revs.len() - 1 {
            return None;
        }
        let (rev, lease) = self.revs[i];
        Some(Live {
            rev,
            create: self.created,
            version: self.first_version + i as u64,
            lease,
        })
    }
}

/// The revisions of one key. Invariants: generations are in revision order, every one but the
/// last is `deleted`, and none is empty (a key without any is removed from the index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    gens: Vec<Generation>,
}

impl KeyIndex {
    /// The key's state after every change at or before `max`: `None` if it did not exist or
    /// was deleted.
    fn at(&self, max: Rev) -> Option<Live> {
        // Most reads are of the latest state (every write's own lookup): answer those from
        // the end of the last generation without searching its revisions.
        let last = self.gens.last()?;
        if last.revs.last()?.0 <= max {
            return last.live(last.revs.len() - 1);
        }
        for g in self.gens.iter().rev() {
            if g.revs[0].0 > max {
                continue;
            }
            return g.live(g.revs.partition_point(|(r, _)| *r <= max) - 1);
        }
        None
    }

    /// The latest revision of the key, if any.
    fn last_rev(&self) -> Option<Rev> {
        self.gens.last().and_then(|g| g.revs.last()).map(|r| r.0)
    }

    /// Appends a change at `rev`: a put described by `live` (`live.rev == rev`), or a
    /// tombstone. A change that does not follow the key's history is refused with the reason
    /// (rows that contradict each other), and the key is left as it was.
    fn try_push(&mut self, rev: Rev, change: Option<Live>) -> Result<(), String> {
        if let Some(last) = self.last_rev() {
            if last >= rev {
                return Err(format!("revision {rev:?} after {last:?}"));
            }
        }
        let live_gen = self.gens.last_mut().filter(|g| !g.deleted);
        match (change, live_gen) {
            (Some(live), _) if live.rev != rev || live.version == 0 || live.create > rev.main => {
                Err(format!("a put row describing {live:?}"))
            }
            (Some(live), Some(g)) => {
                let next = (g.created, g.first_version + g.revs.len() as u64);
                if (live.create, live.version) != next {
                    return Err(format!(
                        "(create, version) {:?} where {next:?} continues the generation",
                        (live.create, live.version)
                    ));
                }
                g.revs.push((rev, live.lease));
                Ok(())
            }
            (Some(live), None) => {
                self.gens.push(Generation {
                    created: live.create,
                    first_version: live.version,
                    revs: vec![(rev, live.lease)],
                    deleted: false,
                });
                Ok(())
            }
            (None, Some(g)) => {
                g.revs.push((rev, 0));
                g.deleted = true;
                Ok(())
            }
            (None, None) => Err("a tombstone of a key that is not live".into()),
        }
    }

    /// Drops what compacting at `main` makes unreachable, adding the dropped revisions to
    /// `doomed`: in each generation every revision before its last one `<= main`, and the
    /// whole generation if that one is its tombstone. Returns whether the key is now empty.
    fn compact(&mut self, main: u64, doomed: &mut Vec<Rev>) -> bool {
        let max = Rev::end_of(main);
        self.gens.retain_mut(|g| {
            let upto = g.revs.partition_point(|(r, _)| *r <= max);
            if upto == g.revs.len() && g.deleted {
                doomed.extend(g.revs.iter().map(|r| r.0));
                return false;
            }
            if upto > 1 {
                doomed.extend(g.revs[..upto - 1].iter().map(|r| r.0));
                g.revs.drain(..upto - 1);
                g.first_version += upto as u64 - 1;
            }
            true
        });
        self.gens.is_empty()
    }

    /// Number of revisions held.
    fn revs(&self) -> usize {
        self.gens.iter().map(|g| g.revs.len()).sum()
    }

    /// Every revision held, ascending.
    fn all_revs(&self) -> impl Iterator<Item = Rev> + '_ {
        self.gens.iter().flat_map(|g| g.revs.iter().map(|r| r.0))
    }
}

/// Every key's revisions, and the store's scalar state as of the same commit.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    /// The store's revision, compaction and applied index, as of the last commit merged.
    pub(crate) meta: Meta,
    /// Revisions held (rows of `REVS`).
    revs: u64,
    /// Which state this is: a restore replaces the index with one of a new epoch, so that a
    /// reader that started before it can tell (it is not part of the state: equality ignores
    /// it, see `same_state`).
    pub(crate) epoch: u64,
    /// Rows the index points to whose write transaction is still open (see
    /// [`crate::pending`]); not part of the state either.
    pub(crate) pending: Pending,
}

impl Index {
    /// An empty index for a store at `meta`.
    pub(crate) fn new(meta: Meta) -> Index {
        Index {
            keys: BTreeMap::new(),
            meta,
            revs: 0,
            epoch: 0,
            pending: Pending::default(),
        }
    }

    /// `key` at store revision `main`.
    pub(crate) fn get(&self, key: &[u8], main: u64) -> Option<Live> {
        self.keys.get(key)?.at(Rev::end_of(main))
    }

    /// Calls `visit` for every key of `span` live at store revision `main`, in key order;
    /// stops when it returns `false`.
    pub(crate) fn scan<E>(
        &self,
        span: KeySpan<'_>,
        main: u64,
        mut visit: impl FnMut(&[u8], Live) -> Result<bool, E>,
    ) -> Result<(), E> {
        let max = Rev::end_of(main);
        for (key, ki) in self.keys.range::<[u8], _>(span.bounds()) {
            if let Some(live) = ki.at(max) {
                if !visit(key, live)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keys of `span` that have any revision (live or not), in order, from `start` on; used to
    /// merge the index with an overlay.
    fn keys_in<'a>(
        &'a self,
        span: KeySpan<'a>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a {
        self.keys.range::<[u8], _>(span.bounds())
    }

    /// Appends a change of `key` at `rev` that the writer made: one that does not follow the
    /// key's history is a bug, and panics.
    pub(crate) fn push(&mut self, key: &[u8], rev: Rev, change: Option<Live>) {
        if let Err(why) = self.try_push(key, rev, change) {
            panic!("index change of {key:?} at {rev:?}: {why}");
        }
    }

    /// Appends a change of `key` at `rev` read from storage (see [`KeyIndex::try_push`]).
    pub(crate) fn try_push(
        &mut self,
        key: &[u8],
        rev: Rev,
        change: Option<Live>,
    ) -> Result<(), String> {
        match self.keys.get_mut(key) {
            Some(ki) => ki.try_push(rev, change)?,
            None => {
                let mut ki = KeyIndex::default();
                ki.try_push(rev, change)?;
                self.keys.insert(key.to_vec(), ki);
            }
        }
        self.revs += 1;
        Ok(())
    }

    /// Compacts every key at store revision `main` (see [`KeyIndex::compact`]); returns the
    /// revisions dropped, ascending, whose rows the caller deletes.
    pub(crate) fn compact(&mut self, main: u64) -> Vec<Rev> {
        let mut doomed = Vec::new();
        self.keys.retain(|_, ki| !ki.compact(main, &mut doomed));
        doomed.sort_unstable();
        self.revs -= doomed.len() as u64;
        doomed
    }

    /// Applies a committed overlay: its changes, and `meta`.
    pub(crate) fn merge(&mut self, overlay: Overlay, meta: Meta) {
        for (key, changes) in overlay.keys {
            for (rev, change) in changes {
                self.push(&key, rev, change);
            }
        }
        self.meta = meta;
    }

    /// Whether two indexes hold the same keys, revisions and meta (whatever their epochs).
    pub(crate) fn same_state(&self, other: &Index) -> bool {
        self.keys == other.keys && self.meta == other.meta && self.revs == other.revs
    }

    /// Revisions held, which equals the rows of `REVS`.
    pub(crate) fn len(&self) -> u64 {
        self.revs
    }

    /// Keys with any revision.
    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Keys whose latest revision is a put (not deleted). Walks every key: for metrics
    /// scrapes, not for the apply path.
    pub(crate) fn live_keys(&self) -> usize {
        self.keys
            .values()
            .filter(|ki| ki.gens.last().is_some_and(|g| !g.deleted))
            .count()
    }

    /// Checks the counters against the maps (tests and the simulator): panics on a mismatch.
    pub(crate) fn check(&self) {
        let revs: usize = self.keys.values().map(KeyIndex::revs).sum();
        assert_eq!(revs as u64, self.revs, "index revision count");
        for ki in self.keys.values() {
            assert!(!ki.gens.is_empty(), "a key without generations");
            let revs: Vec<Rev> = ki.all_revs().collect();
            assert!(
                revs.windows(2).all(|w| w[0] < w[1]),
                "revisions out of order"
            );
            assert!(
                revs.iter().all(|r| r.main <= self.meta.revision),
                "a revision above the store revision"
            );
            for g in &ki.gens[..ki.gens.len() - 1] {
                assert!(g.deleted, "a live generation before the last");
            }
        }
    }
}

/// The changes of an open write transaction, not yet in the index: per key, in order, every
/// change made above revision `cap`. Readers of the transaction see the index as of `cap`
/// with the overlay on top.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    keys: BTreeMap<Vec<u8>, Vec<(Rev, Option<Live>)>>,
    /// Changes held.
    len: usize,
    /// The rows the transaction wrote, ascending, not in redb yet: the batch appends them
    /// when it ends, and they become [`Pending`] rows if the transaction stays open.
    pub(crate) rows: Chunk,
    /// The lease table changes the transaction made, in order (to undo them).
    pub(crate) lease_changes: Vec<LeaseChange>,
}

/// One change of the lease tables, as made (see [`Overlay::lease_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseChange {
    /// A lease was granted.
    Granted(i64),
    /// A lease with this TTL was revoked.
    Revoked { id: i64, ttl: i64 },
    /// A key was attached to a lease.
    Attached(i64, Vec<u8>),
    /// A key was detached from a lease.
    Detached(i64, Vec<u8>),
}

impl Overlay {
    /// Whether the overlay holds no change.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records a change of `key` at `rev` (`None`: a tombstone). A key changes at most once
    /// per store revision, except a put followed by its deletion in sibling nested
    /// transactions (etcd gives them different sub-revisions too); anything else is a bug.
    pub(crate) fn push(&mut self, key: &[u8], rev: Rev, change: Option<Live>) {
        let changes = match self.keys.get_mut(key) {
            Some(c) => c,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        if let Some(&(last, ref was)) = changes.last() {
            assert!(last < rev, "overlay revisions out of order");
            if last.main == rev.main {
                assert!(
                    was.is_some() && change.is_none(),
                    "key changed twice in revision {}",
                    rev.main
                );
            }
        }
        changes.push((rev, change));
        self.len += 1;
    }

    /// The row written at `rev` by this transaction, if any.
    pub(crate) fn row(&self, rev: Rev) -> Option<&[u8]> {
        let i = self.rows.binary_search_by_key(&rev, |r| r.0).ok()?;
        Some(&self.rows[i].1)
    }

    /// The overlay's answer for `key` at revision `max`: `None` if it has no change of `key` at
    /// or below `max` (ask the index), else the state after the last such change.
    fn at(&self, key: &[u8], max: Rev) -> Option<Option<Live>> {
        let changes = self.keys.get(key)?;
        changes
            .iter()
            .rev()
            .find(|(r, _)| *r <= max)
            .map(|(_, change)| *change)
    }
}

/// The index as of revision `cap` with an overlay of later changes on top: what a write
/// transaction reads.
pub(crate) struct Layered<'a> {
    /// Committed state; only revisions `<= cap` are read from it.
    pub(crate) index: &'a Index,
    /// Changes above `cap`.
    pub(crate) overlay: &'a Overlay,
    /// Store revision the index is read at, at most.
    pub(crate) cap: u64,
}

impl Layered<'_> {
    /// `key` at store revision `main`.
    pub(crate) fn get(&self, key: &[u8], main: u64) -> Option<Live> {
        match self.overlay.at(key, Rev::end_of(main)) {
            Some(state) => state,
            None => self.index.get(key, main.min(self.cap)),
        }
    }

    /// [`Index::scan`] of the layered view.
    pub(crate) fn scan<E>(
        &self,
        span: KeySpan<'_>,
        main: u64,
        mut visit: impl FnMut(&[u8], Live) -> Result<bool, E>,
    ) -> Result<(), E> {
        if self.overlay.is_empty() {
            return self.index.scan(span, main.min(self.cap), visit);
        }
        let max = Rev::end_of(main);
        let base = Rev::end_of(main.min(self.cap));
        let mut ours = self.overlay.keys.range::<[u8], _>(span.bounds()).peekable();
        let mut theirs = self.index.keys_in(span).peekable();
        loop {
            // The next key in order from either side; the overlay's state wins when it has
            // a change at or below `max`.
            let (key, live) = match (ours.peek(), theirs.peek()) {
                (None, None) => return Ok(()),
                (Some((k, _)), Some((t, _))) if k.as_slice() == t.as_slice() => {
                    let (k, _) = ours.next().expect("peeked");
                    let (_, ki) = theirs.next().expect("peeked");
                    let live = match self.overlay.at(k, max) {
                        Some(state) => state,
                        None => ki.at(base),
                    };
                    (k.as_slice(), live)
                }
                (Some((k, _)), Some((t, _))) if k.as_slice() > t.as_slice() => {
                    let (t, ki) = theirs.next().expect("peeked");
                    (t.as_slice(), ki.at(base))
                }
                (Some(_), _) => {
                    let (k, _) = ours.next().expect("peeked");
                    (k.as_slice(), self.overlay.at(k, max).flatten())
                }
                (None, Some(_)) => {
                    let (t, ki) = theirs.next().expect("peeked");
                    (t.as_slice(), ki.at(base))
                }
            };
            if let Some(live) = live {
                if !visit(key, live)? {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: u64) -> Rev {
        Rev { main, sub: 0 }
    }

    fn put(main: u64, create: u64, version: u64) -> Option<Live> {
        Some(Live {
            rev: rev(main),
            create,
            version,
            lease: 0,
        })
    }

    fn meta() -> Meta {
        Meta {
            revision: 100,
            compacted: 0,
            applied: 0,
        }
    }

    #[test]
    fn reads_follow_generations_and_compaction_keeps_what_is_reachable() {
        let mut ix = Index::new(meta());
        ix.push(b"a", rev(2), put(2, 2, 1));
        ix.push(b"a", rev(4), put(4, 2, 2));
        ix.push(b"a", rev(5), None);
        ix.push(b"a", rev(7), put(7, 7, 1));
        ix.check();
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(
            ix.get(b"a", 3).map(|l| (l.rev.main, l.version)),
            Some((2, 1))
        );
        assert_eq!(
            ix.get(b"a", 4).map(|l| (l.rev.main, l.version)),
            Some((4, 2))
        );
        assert_eq!(ix.get(b"a", 6), None);
        assert_eq!(ix.get(b"a", 9).map(|l| (l.create, l.version)), Some((7, 1)));

        // Compacting at 4 keeps the put at 4 (still the value at 4) and what follows.
        assert_eq!(ix.compact(4), vec![rev(2)]);
        assert_eq!(ix.get(b"a", 4).map(|l| (l.create, l.version)), Some((2, 2)));
        // At 5 the first generation ends in a tombstone: all of it goes.
        assert_eq!(ix.compact(5), vec![rev(4), rev(5)]);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.compact(9), Vec::<Rev>::new());
        ix.push(b"a", rev(10), None);
        assert_eq!(ix.compact(10), vec![rev(7), rev(10)]);
        assert_eq!(ix.keys(), 0);
        ix.check();
    }

    #[test]
    fn a_put_then_delete_in_one_revision_reads_as_deleted() {
        let mut ix = Index::new(meta());
        let mut o = Overlay::default();
        o.push(b"k", rev(3), put(3, 3, 1));
        o.push(b"k", Rev { main: 3, sub: 1 }, None);
        let view = Layered {
            index: &ix,
            overlay: &o,
            cap: 2,
        };
        assert_eq!(view.get(b"k", 3), None);
        ix.merge(o, meta());
        assert_eq!(ix.get(b"k", 3), None);
        assert_eq!(ix.get(b"k", 2), None);
    }

    #[test]
    #[should_panic(expected = "key changed twice")]
    fn a_second_put_in_one_revision_is_a_bug() {
        let mut o = Overlay::default();
        o.push(b"k", rev(3), put(3, 3, 1));
        o.push(b"k", Rev { main: 3, sub: 1 }, put(3, 3, 2));
    }

    #[test]
    fn the_layered_view_merges_keys_in_order() {
        let mut ix = Index::new(meta());
        for (k, r) in [(b"a", 2), (b"c", 3), (b"e", 4)] {
            ix.push(k, rev(r), put(r, r, 1));
        }
        let mut o = Overlay::default();
        o.push(b"b", rev(5), put(5, 5, 1));
        o.push(b"c", Rev { main: 5, sub: 1 }, None);
        o.push(b"f", Rev { main: 5, sub: 2 }, put(5, 5, 1));
        let view = Layered {
            index: &ix,
            overlay: &o,
            cap: 4,
        };
        let keys = |main| {
            let mut out = Vec::new();
            view.scan(KeySpan::From(b""), main, |k, _| {
                out.push(String::from_utf8_lossy(k).into_owned());
                Ok::<_, ()>(true)
            })
            .expect("scan");
            out.join(",")
        };
        assert_eq!(keys(5), "a,b,e,f");
        assert_eq!(keys(4), "a,c,e");
    }
}
