//! The multi-version key index on redb: every modification of a key is one row of
//! [`HISTORY`], keyed by `(user key, revision)`.
//!
//! ```text
//!   ("a", 2) Put{create 2, version 1}      a created at 2
//!   ("a", 4) Put{create 2, version 2}      a updated at 4
//!   ("a", 6) Tombstone                     a deleted at 6
//!   ("b", 3) Put{create 3, version 1}
//! ```
//!
//! Reading key `k` at revision `r` is the last row of `k` with revision `<= r`; the key is live
//! there if that row is a `Put`. Invariants: at most one row per `(key, revision)` (see
//! [`write_row`] for the one case of a key changed twice in a transaction); every row's revision is
//! `<= ` the store revision; after compaction at `c`, every key has at most one row `<= c` and it
//! is a `Put`.

use redb::{ReadableTable, Table, TableDefinition};

use crate::error::Error;
use crate::types::KeyValue;

/// History rows: `(key, revision) -> encoded Record`.
pub(crate) const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");

/// The same rows by revision: `(revision, key) -> ()`, so that a watch reads the changes of a
/// revision range without scanning every key. Invariant: exactly the `(key, rev)` pairs of
/// [`HISTORY`], swapped.
pub(crate) const BY_REV: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("history_by_rev");

/// Trait alias for a readable history table (read-only or inside a write transaction).
pub(crate) trait HistoryTable: ReadableTable<(&'static [u8], u64), &'static [u8]> {}
impl<T: ReadableTable<(&'static [u8], u64), &'static [u8]>> HistoryTable for T {}

/// One row of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The key holds a value from this revision on.
    Put {
        /// Revision that created this generation of the key.
        create: u64,
        /// Puts since creation, >= 1.
        version: u64,
        /// Attached lease, 0 for none.
        lease: i64,
        /// The value.
        value: Vec<u8>,
    },
    /// The key was deleted at this revision.
    Tombstone,
}

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

impl Record {
    /// Row encoding: tag, then for a put `create`, `version` (u64 LE), `lease` (i64 LE), value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Record::Tombstone => vec![TAG_TOMBSTONE],
            Record::Put {
                create,
                version,
                lease,
                value,
            } => {
                let mut out = Vec::with_capacity(25 + value.len());
                out.push(TAG_PUT);
                out.extend_from_slice(&create.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&lease.to_le_bytes());
                out.extend_from_slice(value);
                out
            }
        }
    }

    /// Inverse of [`Record::encode`]; a malformed row is [`Error::Corrupt`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, Error> {
        let corrupt = || Error::Corrupt(format!("history row of {} bytes", bytes.len()));
        match bytes.split_first() {
            Some((&TAG_TOMBSTONE, [])) => Ok(Record::Tombstone),
            Some((&TAG_PUT, rest)) if rest.len() >= 24 => {
                let word = |i: usize| -> Result<[u8; 8], Error> {
                    rest[i * 8..i * 8 + 8].try_into().map_err(|_| corrupt())
                };
                Ok(Record::Put {
                    create: u64::from_le_bytes(word(0)?),
                    version: u64::from_le_bytes(word(1)?),
                    lease: i64::from_le_bytes(word(2)?),
                    value: rest[24..].to_vec(),
                })
            }
            _ => Err(corrupt()),
        }
    }

    /// The lease of a stored put row, without copying its value; `None` for a tombstone.
    pub(crate) fn lease_of(bytes: &[u8]) -> Result<Option<i64>, Error> {
        match bytes.split_first() {
            Some((&TAG_TOMBSTONE, [])) => Ok(None),
            Some((&TAG_PUT, rest)) if rest.len() >= 24 => {
                let lease: [u8; 8] = rest[16..24]
                    .try_into()
                    .map_err(|_| Error::Corrupt("history row lease".into()))?;
                Ok(Some(i64::from_le_bytes(lease)))
            }
            _ => Err(Error::Corrupt(format!(
                "history row of {} bytes",
                bytes.len()
            ))),
        }
    }

    /// The client-visible pair for a put at `key`, modified at `rev`, taking the value.
    pub(crate) fn into_kv(self, key: &[u8], rev: u64) -> Option<KeyValue> {
        match self {
            Record::Tombstone => None,
            Record::Put {
                create,
                version,
                lease,
                value,
            } => Some(KeyValue {
                key: key.to_vec(),
                create_revision: create as i64,
                mod_revision: rev as i64,
                version: version as i64,
                value,
                lease,
            }),
        }
    }

    /// Whether a stored row is a tombstone, without decoding the value.
    pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&TAG_TOMBSTONE)
    }
}

/// A set of keys, resolved from etcd's `(key, range_end)` conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySpan<'a> {
    /// Only this key (`range_end` empty).
    Single(&'a [u8]),
    /// `[start, end)`; empty when `end <= start`.
    Interval(&'a [u8], &'a [u8]),
    /// Every key `>= start` (`range_end == "\0"`).
    From(&'a [u8]),
}

impl<'a> KeySpan<'a> {
    /// Interprets `range_end` as etcd does.
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::Single(key),
            [0] => KeySpan::From(key),
            end => KeySpan::Interval(key, end),
        }
    }

    /// Whether `k` is in the span.
    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeySpan::Single(key) => k == key,
            KeySpan::Interval(start, end) => start <= k && k < end,
            KeySpan::From(start) => start <= k,
        }
    }
}

/// The last row of `key` at or below `rev`, with its revision.
pub(crate) fn latest(
    t: &impl HistoryTable,
    key: &[u8],
    rev: u64,
) -> Result<Option<(u64, Record)>, Error> {
    let row = t.range((key, 0u64)..=(key, rev))?.next_back().transpose()?;
    match row {
        None => Ok(None),
        Some((k, v)) => Ok(Some((k.value().1, Record::decode(v.value())?))),
    }
}

/// The live pair of `key` at `rev`, if any.
pub(crate) fn live(t: &impl HistoryTable, key: &[u8], rev: u64) -> Result<Option<KeyValue>, Error> {
    Ok(latest(t, key, rev)?.and_then(|(r, rec)| rec.into_kv(key, r)))
}

/// Every pair of the span `key..range_end` live at `rev`, in key order.
pub(crate) fn live_in(
    t: &impl HistoryTable,
    key: &[u8],
    range_end: &[u8],
    rev: u64,
) -> Result<Vec<KeyValue>, Error> {
    let mut out = Vec::new();
    scan_live(t, KeySpan::new(key, range_end), rev, |k, r, b| {
        out.extend(Record::decode(b)?.into_kv(k, r));
        Ok(true)
    })?;
    Ok(out)
}

/// Every key of the span `key..range_end` live at `rev`, with its lease, in key order: what a
/// delete needs, without copying any value.
pub(crate) fn live_keys_in(
    t: &impl HistoryTable,
    key: &[u8],
    range_end: &[u8],
    rev: u64,
) -> Result<Vec<(Vec<u8>, i64)>, Error> {
    let mut out = Vec::new();
    scan_live(t, KeySpan::new(key, range_end), rev, |k, _, b| {
        if let Some(lease) = Record::lease_of(b)? {
            out.push((k.to_vec(), lease));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Calls `visit` for every key of `span` live at `rev`, in ascending key order, with the
/// revision of its row and the row's bytes; stops when `visit` returns `false`.
///
/// Cost: two B-tree seeks per distinct key in the span (one to find the key, one for its
/// last row at `rev`), independent of how much history each key has.
pub(crate) fn scan_live(
    t: &impl HistoryTable,
    span: KeySpan<'_>,
    rev: u64,
    mut visit: impl FnMut(&[u8], u64, &[u8]) -> Result<bool, Error>,
) -> Result<(), Error> {
    if let KeySpan::Single(key) = span {
        if let Some((k, v)) = t.range((key, 0u64)..=(key, rev))?.next_back().transpose()? {
            if !Record::is_tombstone(v.value()) {
                visit(key, k.value().1, v.value())?;
            }
        }
        return Ok(());
    }
    let (KeySpan::Interval(start, _) | KeySpan::From(start)) = span else {
        unreachable!("single handled above")
    };
    let mut cursor = start.to_vec();
    loop {
        let next = t.range((cursor.as_slice(), 0u64)..)?.next().transpose()?;
        let Some((k, _)) = next else { return Ok(()) };
        let key = k.value().0.to_vec();
        drop(k);
        if !span.contains(&key) {
            return Ok(());
        }
        let row = t
            .range((key.as_slice(), 0u64)..=(key.as_slice(), rev))?
            .next_back()
            .transpose()?;
        if let Some((rk, rv)) = row {
            if !Record::is_tombstone(rv.value()) && !visit(&key, rk.value().1, rv.value())? {
                return Ok(());
            }
        }
        cursor = key;
        cursor.push(0);
    }
}

/// Appends a row.
///
/// Transaction validation (etcd's `checkIntervals`) lets a key change at most once per
/// revision, with one exception it shares with etcd: a put in one nested transaction followed by
/// a delete in a later sibling (etcd gives them different sub-revisions). Here the tombstone
/// replaces the put at the same revision, which is what a read at that revision sees in etcd
/// too. Any other second write to `(key, rev)` is a bug and panics.
pub(crate) fn write_row(
    t: &mut Table<'_, (&'static [u8], u64), &'static [u8]>,
    by_rev: &mut Table<'_, (u64, &'static [u8]), ()>,
    key: &[u8],
    rev: u64,
    record: &Record,
) -> Result<(), Error> {
    by_rev.insert((rev, key), ())?;
    let old = t.insert((key, rev), record.encode().as_slice())?;
    if let Some(old) = old {
        let put_then_delete = !Record::is_tombstone(old.value()) && *record == Record::Tombstone;
        assert!(put_then_delete, "key changed twice in revision {rev}");
    }
    Ok(())
}

/// Drops history made unreachable by compacting at `rev`: for each key, every row `<= rev`
/// except the last one, and that one too if it is a tombstone. Returns rows removed.
pub(crate) fn compact(
    t: &mut Table<'_, (&'static [u8], u64), &'static [u8]>,
    by_rev: &mut Table<'_, (u64, &'static [u8]), ()>,
    rev: u64,
) -> Result<u64, Error> {
    let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
    {
        // Walk all rows once; `pending` is the last row <= rev of the current key.
        let mut pending: Option<(Vec<u8>, u64, bool)> = None;
        for row in t.iter()? {
            let (k, v) = row?;
            let (key, r) = k.value();
            if r > rev {
                continue;
            }
            let tomb = Record::is_tombstone(v.value());
            if let Some((pk, pr, ptomb)) = pending.take() {
                if pk.as_slice() == key {
                    doomed.push((pk, pr)); // superseded by a later row <= rev
                } else if ptomb {
                    doomed.push((pk, pr)); // the last row of a deleted key
                }
            }
            pending = Some((key.to_vec(), r, tomb));
        }
        if let Some((pk, pr, true)) = pending {
            doomed.push((pk, pr));
        }
    }
    for (key, r) in &doomed {
        t.remove((key.as_slice(), *r))?;
        by_rev.remove((*r, key.as_slice()))?;
    }
    Ok(doomed.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let put = Record::Put {
            create: 3,
            version: 2,
            lease: -7,
            value: b"v".to_vec(),
        };
        assert_eq!(Record::decode(&put.encode()).ok(), Some(put));
        assert_eq!(
            Record::decode(&Record::Tombstone.encode()).ok(),
            Some(Record::Tombstone)
        );
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[0, 1, 2]).is_err());
        assert!(Record::decode(&[1, 0]).is_err());
        assert!(Record::decode(&[9]).is_err());
    }

    #[test]
    fn spans_follow_etcd_conventions() {
        assert_eq!(KeySpan::new(b"a", b""), KeySpan::Single(b"a"));
        assert_eq!(KeySpan::new(b"a", b"\0"), KeySpan::From(b"a"));
        assert!(KeySpan::new(b"a", b"c").contains(b"b"));
        assert!(!KeySpan::new(b"a", b"c").contains(b"c"));
        assert!(!KeySpan::new(b"c", b"a").contains(b"b"));
        assert!(KeySpan::new(b"a", b"\0").contains(b"zzz"));
    }
}
