//! Changes by revision, for etcd's Watch: the events on a key range from a revision on, read
//! from the history and its index by revision ([`crate::mvcc::BY_REV`]). A watcher keeps its
//! own next revision and asks again when the store revision moves, so a slow watcher only
//! falls behind in revisions, never in memory.

use crate::error::{Error, KvError};
use crate::mvcc::{latest, KeySpan, Record, BY_REV, HISTORY};
use crate::store::{Meta, Store, META};
use crate::types::KeyValue;

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
    /// events (or [`ROWS_PER_CALL_MAX`] rows of any key) were read. `from` below the compacted
    /// revision is `KvError::Compacted`: those changes are gone.
    pub fn changes(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: u64,
        events_max: usize,
        prev_kv: bool,
    ) -> Result<Changes, Error> {
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let from = from.max(1);
        if from < meta.compacted {
            return Err(KvError::Compacted.into());
        }
        let span = KeySpan::new(key, range_end);
        let history = txn.open_table(HISTORY)?;
        let by_rev = txn.open_table(BY_REV)?;
        let mut events = Vec::new();
        // Never behind `from`: a watcher may start past what this member has applied.
        let mut next = (meta.revision + 1).max(from);
        let mut current = 0u64;
        for (rows, row) in by_rev.range((from, &b""[..])..)?.enumerate() {
            let (k, _) = row?;
            let (rev, key) = k.value();
            if rev > meta.revision {
                break;
            }
            if rev != current {
                // A revision boundary: the only place a batch may end.
                if events.len() >= events_max.max(1) || rows >= ROWS_PER_CALL_MAX {
                    next = rev;
                    break;
                }
                current = rev;
            }
            if !span.contains(key) {
                continue;
            }
            let stored = history.get((key, rev))?.ok_or_else(|| {
                Error::Corrupt(format!("index by revision lists a missing row at {rev}"))
            })?;
            let kv = match Record::decode(stored.value())? {
                Record::Tombstone => None,
                rec => rec.into_kv(key, rev),
            };
            let prev = if prev_kv {
                latest(&history, key, rev - 1)?.and_then(|(r, rec)| rec.into_kv(key, r))
            } else {
                None
            };
            events.push(match kv {
                Some(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: prev,
                },
                None => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.to_vec(),
                        mod_revision: rev as i64,
                        ..KeyValue::default()
                    },
                    prev_kv: prev,
                },
            });
        }
        Ok(Changes {
            events,
            next,
            revision: meta.revision,
        })
    }

    /// The store revision and the compacted revision.
    pub fn revisions(&self) -> Result<(u64, u64), Error> {
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        Ok((meta.revision, meta.compacted))
    }
}
