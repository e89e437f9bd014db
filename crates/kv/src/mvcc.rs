//! The multi-version rows on redb: one append-only table, [`REVS`], keyed by revision, where
//! every modification of a key is one row (etcd's backend `key` bucket).
//!
//! ```text
//!   (2, 0) "a" Put{create 2, version 1}      a created at 2
//!   (3, 0) "b" Put{create 3, version 1}
//!   (4, 0) "a" Put{create 2, version 2}      a updated at 4
//!   (5, 0) "a" Tombstone                     a deleted at 5 ...
//!   (5, 1) "b" Tombstone                     ... and b, by the same delete
//! ```
//!
//! A revision is [`Rev`] `(main, sub)`: `main` is the store revision of the write transaction,
//! `sub` numbers its changes in order (etcd's sub-revisions). Puts and deletes append at the
//! right edge of the B-tree, whatever the key. Which row holds key `k` at revision `r` is the
//! in-memory [`crate::index::Index`]'s answer; this table only stores the rows and is what the
//! index is rebuilt from when the store opens. Invariants: the rows are exactly the revisions
//! the index holds; every row's `main` is `<=` the store revision.

use redb::TableDefinition;

use crate::codec::{read_varint, Writer};
use crate::error::Error;

/// The rows: `(main, sub) -> varint key length ++ key ++ encoded Record`.
pub(crate) const REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("revisions");

/// A revision: the store revision `main` and the change's position `sub` within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Rev {
    /// Store revision of the write transaction.
    pub(crate) main: u64,
    /// Position of the change within the transaction, from 0.
    pub(crate) sub: u32,
}

impl Rev {
    /// The last revision of store revision `main`: every change made at or before it.
    pub(crate) fn end_of(main: u64) -> Rev {
        Rev {
            main,
            sub: u32::MAX,
        }
    }

    /// The redb key.
    pub(crate) fn key(self) -> (u64, u32) {
        (self.main, self.sub)
    }
}

/// One row's change.
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

/// The fixed part of a put row: everything but the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PutHeader {
    /// Revision that created this generation of the key.
    pub(crate) create: u64,
    /// Puts since creation, >= 1.
    pub(crate) version: u64,
    /// Attached lease, 0 for none.
    pub(crate) lease: i64,
}

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

impl Record {
    /// Record encoding: tag, then for a put `create`, `version` (u64 LE), `lease` (i64 LE),
    /// value. The same bytes the history rows of format 2 held, so a migration copies them.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Tombstone => out.push(TAG_TOMBSTONE),
            Record::Put {
                create,
                version,
                lease,
                value,
            } => {
                out.reserve(25 + value.len());
                out.push(TAG_PUT);
                out.extend_from_slice(&create.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&lease.to_le_bytes());
                out.extend_from_slice(value);
            }
        }
    }

    /// Inverse of [`Record::encode_into`]; a malformed record is [`Error::Corrupt`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, Error> {
        Ok(match header(bytes)? {
            None => Record::Tombstone,
            Some(h) => Record::Put {
                create: h.create,
                version: h.version,
                lease: h.lease,
                value: bytes[25..].to_vec(),
            },
        })
    }
}

/// The header of an encoded record, without copying its value; `None` for a tombstone.
pub(crate) fn header(bytes: &[u8]) -> Result<Option<PutHeader>, Error> {
    let corrupt = || Error::Corrupt(format!("record of {} bytes", bytes.len()));
    match bytes.split_first() {
        Some((&TAG_TOMBSTONE, [])) => Ok(None),
        Some((&TAG_PUT, rest)) if rest.len() >= 24 => {
            let word = |i: usize| -> Result<[u8; 8], Error> {
                rest[i * 8..i * 8 + 8].try_into().map_err(|_| corrupt())
            };
            let h = PutHeader {
                create: u64::from_le_bytes(word(0)?),
                version: u64::from_le_bytes(word(1)?),
                lease: i64::from_le_bytes(word(2)?),
            };
            if h.create == 0 || h.version == 0 {
                return Err(corrupt());
            }
            Ok(Some(h))
        }
        _ => Err(corrupt()),
    }
}

/// A stored row: the key and the record.
pub(crate) fn encode_row(key: &[u8], record: &Record) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(key.len() + 40));
    w.bytes(key);
    record.encode_into(&mut w.0);
    w.0
}

/// Splits a stored row into its key and its encoded record (not decoded).
pub(crate) fn split_row(row: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let mut pos = 0usize;
    let len = read_varint(|| {
        let b = row
            .get(pos)
            .copied()
            .ok_or_else(|| Error::Corrupt("truncated row".into()))?;
        pos += 1;
        Ok(b)
    })?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| pos.checked_add(len))
        .filter(|&end| end <= row.len())
        .ok_or_else(|| Error::Corrupt("row key longer than the row".into()))?;
    Ok((&row[pos..end], &row[end..]))
}

/// The value of a stored put row (`None` for a tombstone).
pub(crate) fn row_value(row: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let (_, record) = split_row(row)?;
    Ok(header(record)?.map(|_| record[25..].to_vec()))
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

    /// The span as bounds on a map keyed by `Vec<u8>`.
    pub(crate) fn bounds(&self) -> (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        match *self {
            KeySpan::Single(key) => (Included(key), Included(key)),
            // An empty interval still needs bounds a BTreeMap accepts.
            KeySpan::Interval(start, end) if end <= start => (Included(start), Excluded(start)),
            KeySpan::Interval(start, end) => (Included(start), Excluded(end)),
            KeySpan::From(start) => (Included(start), Unbounded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_reject_garbage() {
        let put = Record::Put {
            create: 3,
            version: 2,
            lease: -7,
            value: b"v".to_vec(),
        };
        for rec in [put, Record::Tombstone] {
            let row = encode_row(b"key", &rec);
            let (key, bytes) = split_row(&row).expect("splits");
            assert_eq!(key, b"key");
            assert_eq!(Record::decode(bytes).ok(), Some(rec));
        }
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[0, 1, 2]).is_err());
        assert!(Record::decode(&[1, 0]).is_err());
        assert!(Record::decode(&[9]).is_err());
        assert!(split_row(&[5, b'a']).is_err());
        assert!(split_row(&[]).is_err());
    }

    #[test]
    fn revisions_order_by_main_then_sub() {
        let r = |main, sub| Rev { main, sub };
        assert!(r(2, 9) < r(3, 0));
        assert!(r(3, 1) < r(3, 2));
        assert!(r(3, 7) < Rev::end_of(3) && Rev::end_of(3) < r(4, 0));
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
