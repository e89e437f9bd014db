//! Property test: random append/truncate/compact/install/read/reopen sequences against an
//! in-memory reference log, with 64 KiB segments so that the log rolls over and compaction
//! deletes segments. After every step the store and the model must agree on the log's ends, the
//! hard state, every term and every range read.

mod common;

use common::entry;
use proptest::prelude::*;
use raft::{Entry, EntryId, HardState, Index, Membership, NodeId, Term};
use skiff_storage::{SnapshotMeta, StorageError, Store};

/// The reference: a log start and a vector of entries after it.
#[derive(Debug, Default)]
struct Model {
    start: EntryId,
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Model {
    fn last(&self) -> Index {
        self.entries.last().map_or(self.start.index, |e| e.index)
    }
    fn term(&self, i: Index) -> Term {
        if i == self.start.index {
            return self.start.term;
        }
        self.entries[(i.0 - self.start.index.0 - 1) as usize].term
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries at `last + 1 - back` (truncating `back` uncommitted entries) in a
    /// term `bump` above the current one, maybe committing some of them.
    Write {
        back: u64,
        n: u64,
        bump: u64,
        commit_frac: u8,
        len: usize,
    },
    /// Snapshot at a fraction of the commit index, then compact to it.
    Compact { frac: u8 },
    /// Install a snapshot from a leader: at an entry of the log (the suffix after it stays) or
    /// past its end in a newer term (the log is emptied).
    Install { frac: u8, beyond: bool },
    /// Read a range given as fractions of the log.
    Read { lo: u8, hi: u8, bytes_max: u64 },
    /// Close and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 0u64..12, 0u64..2, any::<u8>(), 0usize..2000).prop_map(
            |(back, n, bump, commit_frac, len)| Op::Write { back, n, bump, commit_frac, len }
        ),
        1 => any::<u8>().prop_map(|frac| Op::Compact { frac }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(frac, beyond)| Op::Install { frac, beyond }),
        3 => (any::<u8>(), any::<u8>(), prop_oneof![Just(u64::MAX), 1u64..2000])
            .prop_map(|(lo, hi, bytes_max)| Op::Read { lo, hi, bytes_max }),
        1 => Just(Op::Reopen),
    ]
}

fn frac(lo: u64, hi: u64, f: u8) -> u64 {
    lo + (hi - lo) * u64::from(f) / 255
}

fn apply(store: &mut Store, m: &mut Model, op: &Op) {
    match *op {
        Op::Write {
            back,
            n,
            bump,
            commit_frac,
            len,
        } => {
            let commit = m.hard_state.commit;
            // Never truncate committed entries or the compacted prefix.
            let floor = commit.max(m.start.index);
            let from = Index(m.last().0.saturating_sub(back).max(floor.0) + 1);
            let term = m.hard_state.term.0.max(m.term(from.prev()).0) + bump;
            let es: Vec<Entry> = (0..n)
                .map(|k| entry(from.0 + k, term.max(1), len))
                .collect();
            let new_last = if n == 0 {
                m.last()
            } else {
                Index(from.0 + n - 1)
            };
            let hs = HardState {
                term: Term(term.max(1)),
                vote: NodeId::new(1),
                commit: Index(frac(commit.0, new_last.0, commit_frac)),
            };
            let es = if n == 0 { Vec::new() } else { es };
            store.write(Some(&hs), &es).expect("valid write");
            if let Some(f) = es.first() {
                m.entries
                    .truncate((f.index.0 - m.start.index.0 - 1) as usize);
                m.entries.extend(es.iter().cloned());
            }
            m.hard_state = hs;
        }
        Op::Compact { frac: f } => {
            let to = Index(frac(m.start.index.0, m.hard_state.commit.0, f));
            if to <= m.start.index {
                return;
            }
            let id = EntryId {
                term: m.term(to),
                index: to,
            };
            let meta = SnapshotMeta {
                last: id,
                membership: Membership::default(),
            };
            store.save_snapshot(&meta, b"state").expect("save snapshot");
            store.compact(id).expect("compact");
            m.entries.drain(..(to.0 - m.start.index.0) as usize);
            m.start = id;
        }
        Op::Install { frac: f, beyond } => {
            let (first, last) = (m.start.index.0 + 1, m.last().0);
            let to = if beyond || last < first {
                EntryId {
                    term: Term(m.hard_state.term.0.max(m.term(m.last()).0) + 1),
                    index: Index(last + 1 + u64::from(f % 5)),
                }
            } else {
                let i = Index(frac(first, last, f));
                EntryId {
                    term: m.term(i),
                    index: i,
                }
            };
            let keep = !beyond && to.index.0 <= last;
            let hs = HardState {
                term: m.hard_state.term.max(to.term),
                vote: NodeId::new(1),
                commit: m.hard_state.commit.max(to.index).min(if keep {
                    m.last()
                } else {
                    to.index
                }),
            };
            let meta = SnapshotMeta {
                last: to,
                membership: Membership::new([NodeId::new(1).unwrap()]),
            };
            store
                .save_snapshot(&meta, b"installed")
                .expect("save snapshot");
            store.reset_to_snapshot(to, &hs).expect("reset");
            if keep {
                m.entries.drain(..(to.index.0 - m.start.index.0) as usize);
            } else {
                m.entries.clear();
            }
            m.start = to;
            m.hard_state = hs;
        }
        Op::Read { lo, hi, bytes_max } => {
            let first = m.start.index.0 + 1;
            let (lo, hi) = (
                frac(first, m.last().0 + 1, lo),
                frac(first, m.last().0 + 1, hi),
            );
            let got = store.entries(Index(lo), Index(hi), bytes_max);
            if lo > hi {
                assert!(got.unwrap().is_empty());
            } else if hi > m.last().0 {
                assert!(
                    matches!(got, Err(StorageError::Unavailable { .. })),
                    "{got:?}"
                );
            } else {
                let got = got.expect("in range");
                assert!(!got.is_empty());
                let want = &m.entries[(lo - first) as usize..=(hi - first) as usize];
                assert_eq!(&got[..], &want[..got.len()]);
                let bytes: u64 = got.iter().map(|e| e.size_bytes()).sum();
                assert!(got.len() == 1 || bytes <= bytes_max);
                if got.len() < want.len() {
                    assert!(bytes + want[got.len()].size_bytes() > bytes_max);
                }
            }
        }
        // Handled by the caller, which owns the store.
        Op::Reopen => {}
    }
}

fn open(dir: &std::path::Path) -> Result<(Store, skiff_storage::Recovered), StorageError> {
    let mut o = common::options();
    o.segment_bytes = skiff_storage::SEGMENT_BYTES_MIN;
    Store::open(dir, o)
}

fn check(store: &Store, m: &Model) {
    store.check_invariants();
    assert_eq!(store.log_start(), m.start);
    assert_eq!(store.last_index(), m.last());
    assert_eq!(store.hard_state(), m.hard_state);
    for e in &m.entries {
        assert_eq!(store.term(e.index).unwrap(), e.term);
    }
    assert_eq!(store.term(m.start.index).unwrap(), m.start.term);
    if m.start.index.0 > 0 {
        assert!(matches!(
            store.entries(m.start.index, m.last(), u64::MAX),
            Err(StorageError::Compacted { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path()).unwrap();
        let mut m = Model::default();
        for op in &ops {
            if matches!(op, Op::Reopen) {
                drop(store);
                let (s, rec) = open(dir.path()).unwrap();
                store = s;
                prop_assert_eq!(rec.last_index, m.last());
                prop_assert_eq!(rec.hard_state, m.hard_state);
                prop_assert_eq!(rec.log_start, m.start);
                let all = common::all_entries(&store).unwrap();
                prop_assert_eq!(&all, &m.entries);
            }
            apply(&mut store, &mut m, op);
            check(&store, &m);
        }
    }
}
