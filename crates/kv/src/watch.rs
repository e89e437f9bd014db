//! Changes by revision, for etcd's Watch: the events on a key range from a revision on, read
//! from the rows by revision ([`crate::mvcc::REVS`]). A watcher keeps its
//! own next revision and asks again when the store revision moves, so a slow watcher only
//! falls behind in revisions, never in memory.

use crate::error::{Error, KvError};
use crate::mvcc::{split_row, KeySpan, Record, Rev};
use crate::store::Store;
use crate::types::KeyValue;
use crate::view::key_value;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A put (create or update).
    Put,
    /// A delete.
    Delete,
}

/// One change of one key, as etcd's `mvccpb.Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The key before the change, when asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A batch of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Events in revision order; all events of a revision are in the same batch.
    pub events: Vec<Event>,
    /// The first revision not read yet: ask again from here.
    pub next: u64,
    /// The store revision when read.
    pub revision: u64,
}

/// Rows examined per call at most (whole revisions), so that one call stays short.
const ROWS_PER_CALL_MAX: usize = 10_000;

impl Store {
    /// The changes to keys of `(key, range_end)` (etcd's range conventions) at revisions
    /// `from..=revision`, oldest first, stopping at a revision boundary once `events_max`
    /// events (or `ROWS_PER_CALL_MAX` (10,000) rows of any key) were read. `from` below the compacted
    /// revision is `KvError::Compacted`: those changes are gone.
    pub fn changes(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: u64,
        events_max: usize,
        prev_kv: bool,
    ) -> Result<Changes, Error> {
        let view = self.read_view()?;
        let meta = view.meta;
        let from = from.max(1);
        if from < meta.compacted {
            return Err(KvError::Compacted.into());
        }
        let span = KeySpan::new(key, range_end);
        let mut events = Vec::new();
        // Never behind `from`: a watcher may start past what this member has applied.
        let mut next = (meta.revision + 1).max(from);
        let mut current = 0u64;
        let mut rows = 0usize;
        // One row, in revision order; `false`: stop reading.
        let mut handle = |main: u64, row: &[u8]| -> Result<bool, Error> {
            if main > meta.revision {
                // Committed, not yet in the index: the next call sees it.
                return Ok(false);
            }
            if main != current {
                // A revision boundary: the only place a batch may end.
                if events.len() >= events_max.max(1) || rows >= ROWS_PER_CALL_MAX {
                    next = main;
                    return Ok(false);
                }
                current = main;
            }
            rows += 1;
            let (key, record) = split_row(row)?;
            if !span.contains(key) {
                return Ok(true);
            }
            events.push(match Record::decode(record)? {
                Record::Put {
                    create,
                    version,
                    lease,
                    value,
                } => Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.to_vec(),
                        create_revision: create as i64,
                        mod_revision: main as i64,
                        version: version as i64,
                        value,
                        lease,
                    },
                    prev_kv: None,
                },
                Record::Tombstone => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.to_vec(),
                        mod_revision: main as i64,
                        ..KeyValue::default()
                    },
                    prev_kv: None,
                },
            });
            Ok(true)
        };
        // Committed rows first, up to the open transaction's (see `pending`: a row may be in
        // both for a moment), then those.
        let boundary = view.pending.first_rev();
        let mut more = true;
        for row in view.revs.range((from, 0u32)..)? {
            let (k, v) = row?;
            let (main, sub) = k.value();
            if boundary.is_some_and(|b| Rev { main, sub } >= b) {
                break;
            }
            if !handle(main, v.value())? {
                more = false;
                break;
            }
        }
        if more {
            for (rev, row) in view.pending.from(Rev { main: from, sub: 0 }) {
                if !handle(rev.main, row)? {
                    break;
                }
            }
        }
        if prev_kv && !events.is_empty() {
            // As etcd: the key as of the revision before the event's (so a put and a delete
            // of one key in one revision both report the state before it). Looked up under
            // one short lock; the values are read after it.
            let lives = view.with_index(meta.compacted, |index| {
                events
                    .iter()
                    .map(|e| index.get(&e.kv.key, e.kv.mod_revision as u64 - 1))
                    .collect::<Vec<_>>()
            })?;
            for (e, live) in events.iter_mut().zip(lives) {
                if let Some(live) = live {
                    e.prev_kv = Some(key_value(&view, &e.kv.key, live, true)?);
                }
            }
        }
        Ok(Changes {
            events,
            next,
            revision: meta.revision,
        })
    }

    /// The store revision and the compacted revision.
    pub fn revisions(&self) -> Result<(u64, u64), Error> {
        let meta = self.meta();
        Ok((meta.revision, meta.compacted))
    }
}
