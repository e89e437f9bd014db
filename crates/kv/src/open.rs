//! Opening a store: the tables, the format (converting older ones) and the key index, which
//! is rebuilt from the rows every time (it is not stored).

use std::collections::HashMap;

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::Error;
use crate::index::{Index, Live};
use crate::lease::{LEASES, LEASE_KEYS};
use crate::mvcc::{header, split_row, Rev, REVS};
use crate::session::{store_rows, Row, SESSIONS};
use crate::store::{Meta, FORMAT, META, META_FORMAT};

/// Format 1 and 2 history rows: `(key, revision) -> Record`, one per key and revision.
const OLD_HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
/// Format 2's index of the history by revision.
const OLD_BY_REV: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("history_by_rev");
/// The sessions by client and their eviction order, formats 1 to 3 (now rows of many sessions
/// each, and the order in memory).
const OLD_SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const OLD_SESSIONS_BY_INDEX: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("sessions_by_index");
/// Format 3's sessions in eviction order, `(last index, client) -> row`.
const EARLY_SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sessions_by_seen");

/// Creates every table so that read transactions can open them.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), Error> {
    txn.open_table(META)?;
    txn.open_table(REVS)?;
    txn.open_table(LEASES)?;
    txn.open_table(LEASE_KEYS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(crate::members::MEMBERS)?;
    txn.open_table(crate::members::MEMBERS_REMOVED)?;
    txn.open_table(crate::alarms::ALARMS)?;
    txn.open_table(crate::auth::AUTH)?;
    Ok(())
}

/// Makes `db` a store of the current format: creates a new one, or converts an older one.
pub(crate) fn prepare(db: &Database) -> Result<(), Error> {
    let txn = db.begin_write()?;
    create_tables(&txn)?;
    let format = txn.open_table(META)?.get(META_FORMAT)?.map(|v| v.value());
    match format {
        None => {
            Meta {
                revision: 1,
                compacted: 0,
                applied: 0,
            }
            .write(&txn)?;
        }
        Some(FORMAT) => {}
        Some(1 | 2) => {
            convert_history(&txn)?;
            convert_sessions(&txn)?;
        }
        Some(3) => convert_sessions(&txn)?,
        Some(other) => {
            return Err(Error::Corrupt(format!(
                "store format {other}, this build reads format {FORMAT}"
            )))
        }
    }
    txn.open_table(META)?.insert(META_FORMAT, FORMAT)?;
    txn.commit()?;
    Ok(())
}

/// Moves format 1 and 2's history by key into rows by revision, numbering the changes of a
/// revision in key order (those formats kept one row per key and revision: a key put and
/// then deleted in one revision has only its tombstone, which [`HistoryConverter`] drops).
fn convert_history(txn: &WriteTransaction) -> Result<(), Error> {
    let mut convert = HistoryConverter::default();
    {
        let history = txn.open_table(OLD_HISTORY)?;
        let mut revs = txn.open_table(REVS)?;
        for row in history.iter()? {
            let (k, v) = row?;
            let (key, main) = k.value();
            if let Some((rev, row)) = convert.row(key, main, v.value())? {
                revs.insert(rev.key(), row.as_slice())?;
            }
        }
    }
    txn.delete_table(OLD_HISTORY)?;
    txn.delete_table(OLD_BY_REV)?;
    Ok(())
}

/// Moves the sessions of formats 1 to 3 into rows of many sessions each: the table by client
/// (formats 1 and 2, and 3 as first written) and the table in eviction order (format 3 later).
/// Both held live sessions only.
fn convert_sessions(txn: &WriteTransaction) -> Result<(), Error> {
    let mut rows = Vec::new();
    {
        let old = txn.open_table(OLD_SESSIONS)?;
        for row in old.iter()? {
            let (client, bytes) = row?;
            rows.push((client.value(), Row::decode(bytes.value())?));
        }
        let early = txn.open_table(EARLY_SESSIONS)?;
        for row in early.iter()? {
            let (key, bytes) = row?;
            rows.push((key.value().1, Row::decode(bytes.value())?));
        }
        store_rows(&mut txn.open_table(SESSIONS)?, rows)?;
    }
    txn.delete_table(OLD_SESSIONS)?;
    txn.delete_table(OLD_SESSIONS_BY_INDEX)?;
    txn.delete_table(EARLY_SESSIONS)?;
    Ok(())
}

/// Turns history rows of one key and revision each, in key order, into rows by revision.
#[derive(Default)]
pub(crate) struct HistoryConverter {
    /// Next sub-revision of each revision.
    subs: HashMap<u64, u32>,
    /// The last key converted and whether it was live after its last row.
    last: Option<(Vec<u8>, bool)>,
}

impl HistoryConverter {
    /// The row by revision for `(key, main) -> record`, or `None` for a tombstone of a key
    /// that was not live (put and deleted in the same revision: the put was never stored).
    pub(crate) fn row(
        &mut self,
        key: &[u8],
        main: u64,
        record: &[u8],
    ) -> Result<Option<(Rev, Vec<u8>)>, Error> {
        let is_put = header(record)?.is_some();
        let was_live = match &self.last {
            Some((k, live)) if k.as_slice() == key => *live,
            _ => false,
        };
        self.last = Some((key.to_vec(), is_put));
        if !is_put && !was_live {
            return Ok(None);
        }
        let sub = self.subs.entry(main).or_insert(0);
        let rev = Rev { main, sub: *sub };
        *sub += 1;
        let mut row = crate::codec::Writer(Vec::with_capacity(key.len() + record.len() + 2));
        row.bytes(key);
        row.0.extend_from_slice(record);
        Ok(Some((rev, row.0)))
    }
}

/// Builds the key index from the rows and meta seen by `txn`. Rows that contradict each other
/// (a tombstone of a key that is not live, a put that does not continue its generation) are
/// [`Error::Corrupt`].
pub(crate) fn rebuild(txn: &ReadTransaction) -> Result<Index, Error> {
    let meta = Meta::read(&txn.open_table(META)?)?;
    let mut index = Index::new(meta);
    for row in txn.open_table(REVS)?.iter()? {
        let (k, v) = row?;
        let (main, sub) = k.value();
        add_row(&mut index, Rev { main, sub }, v.value())?;
    }
    Ok(index)
}

/// Adds the stored row at `rev` to `index`, checking it against the key's history.
pub(crate) fn add_row(index: &mut Index, rev: Rev, row: &[u8]) -> Result<(), Error> {
    if rev.main > index.meta.revision || rev.main == 0 {
        return Err(Error::Corrupt(format!(
            "row at {rev:?} outside revisions 1..={}",
            index.meta.revision
        )));
    }
    let (key, record) = split_row(row)?;
    let change = header(record)?.map(|h| Live {
        rev,
        create: h.create,
        version: h.version,
        lease: h.lease,
    });
    index
        .try_push(key, rev, change)
        .map_err(|why| Error::Corrupt(format!("row at {rev:?}: {why}")))
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;

    use super::*;
    use crate::command::{Command, Request, Response};
    use crate::mvcc::Record;
    use crate::store::{Options, Store};
    use crate::types::RangeRequest;

    fn record(r: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode_into(&mut out);
        out
    }

    fn put(create: u64, version: u64, value: &str) -> Vec<u8> {
        record(&Record::Put {
            create,
            version,
            lease: 0,
            value: value.as_bytes().to_vec(),
        })
    }

    #[test]
    fn a_format_2_store_is_converted_to_rows_by_revision() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let mut history = txn.open_table(OLD_HISTORY).expect("history");
            let mut by_rev = txn.open_table(OLD_BY_REV).expect("by rev");
            let tomb = record(&Record::Tombstone);
            let rows: [(&[u8], u64, Vec<u8>); 5] = [
                (b"a", 2, put(2, 1, "x")),
                (b"a", 3, put(2, 2, "y")),
                (b"a", 4, tomb.clone()),
                (b"b", 3, put(3, 1, "z")),
                // Put and deleted in one revision: format 2 kept only the tombstone.
                (b"c", 5, tomb),
            ];
            for (key, rev, row) in &rows {
                history.insert((*key, *rev), row.as_slice()).expect("row");
                by_rev.insert((*rev, *key), ()).expect("by rev");
            }
            Meta {
                revision: 5,
                compacted: 0,
                applied: 7,
            }
            .write(&txn)
            .expect("meta");
            txn.open_table(META)
                .expect("meta")
                .insert(META_FORMAT, 2)
                .expect("format");
            // Client 9's last request, applied at index 6, answered "compacted at 3".
            let answer = crate::codec::encode_result(&Ok(Response::Compact { revision: 3 }));
            let session = Row {
                seq: 1,
                index: 6,
                outcome: answer,
            };
            let mut sessions = txn.open_table(OLD_SESSIONS).expect("sessions");
            sessions
                .insert(9, session.encode().as_slice())
                .expect("session");
            txn.open_table(OLD_SESSIONS_BY_INDEX)
                .expect("by index")
                .insert((6, 9), ())
                .expect("by index");
        }
        txn.commit().expect("commit");

        let store = Store::init(db, Options::default()).expect("converted");
        store.check_invariants().expect("invariants");
        assert_eq!(store.applied_index().expect("applied"), 7);
        let at = |rev: i64| {
            let req = RangeRequest {
                revision: rev,
                ..RangeRequest::range("\0", "\0")
            };
            let r = store.range(&req).expect("range");
            r.kvs
                .iter()
                .map(|kv| {
                    format!(
                        "{}={}@{}v{}",
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value),
                        kv.mod_revision,
                        kv.version
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(at(3), "a=y@3v2 b=z@3v1");
        assert_eq!(at(4), "b=z@3v1");
        assert_eq!(at(5), "b=z@3v1");
        let events: Vec<(i64, Vec<u8>)> = store
            .changes(b"\0", b"\0", 1, 100, false)
            .expect("changes")
            .events
            .iter()
            .map(|e| (e.kv.mod_revision, e.kv.key.clone()))
            .collect();
        let want: Vec<(i64, Vec<u8>)> = vec![
            (2, b"a".to_vec()),
            (3, b"a".to_vec()),
            (3, b"b".to_vec()),
            (4, b"a".to_vec()),
        ];
        assert_eq!(events, want);
        // The session came along: a retry of client 9's request gets its first answer.
        let retry = Command::with_session(9, 1, Request::Compact { revision: 5 });
        assert_eq!(
            store.apply(8, &retry).expect("retry"),
            Response::Compact { revision: 3 }
        );
        store.check_invariants().expect("invariants");
        let txn = store.begin_read().expect("read");
        assert!(txn.open_table(OLD_HISTORY).is_err(), "old tables dropped");
        assert!(txn.open_table(OLD_SESSIONS).is_err(), "old tables dropped");
    }

    #[test]
    fn format_3_sessions_in_eviction_order_are_converted() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("db");
        let txn = db.begin_write().expect("txn");
        {
            Meta {
                revision: 1,
                compacted: 0,
                applied: 6,
            }
            .write(&txn)
            .expect("meta");
            txn.open_table(META)
                .expect("meta")
                .insert(META_FORMAT, 3)
                .expect("format");
            txn.open_table(REVS).expect("rows");
            let answer = crate::codec::encode_result(&Ok(Response::Compact { revision: 1 }));
            let session = Row {
                seq: 1,
                index: 6,
                outcome: answer,
            };
            txn.open_table(EARLY_SESSIONS)
                .expect("sessions")
                .insert((6, 9), session.encode().as_slice())
                .expect("session");
        }
        txn.commit().expect("commit");
        let store = Store::init(db, Options::default()).expect("converted");
        store.check_invariants().expect("invariants");
        let retry = Command::with_session(9, 1, Request::Compact { revision: 1 });
        assert_eq!(
            store.apply(7, &retry).expect("a retry"),
            Response::Compact { revision: 1 }
        );
        let txn = store.begin_read().expect("read");
        assert!(txn.open_table(EARLY_SESSIONS).is_err(), "old table dropped");
    }

    #[test]
    fn rows_that_contradict_each_other_are_corrupt_not_a_panic() {
        let mut index = Index::new(Meta {
            revision: 9,
            compacted: 0,
            applied: 0,
        });
        let row = |key: &[u8], r: &Record| {
            let mut w = crate::codec::Writer(Vec::new());
            w.bytes(key);
            r.encode_into(&mut w.0);
            w.0
        };
        let at = |main| Rev { main, sub: 0 };
        let tomb = row(b"k", &Record::Tombstone);
        assert!(matches!(
            add_row(&mut index, at(2), &tomb),
            Err(Error::Corrupt(_))
        ));
        let first = row(
            b"k",
            &Record::Put {
                create: 2,
                version: 1,
                lease: 0,
                value: vec![],
            },
        );
        add_row(&mut index, at(2), &first).expect("a first put");
        // A version that skips, a revision that goes back, one above the store revision.
        let skip = row(
            b"k",
            &Record::Put {
                create: 2,
                version: 3,
                lease: 0,
                value: vec![],
            },
        );
        assert!(add_row(&mut index, at(3), &skip).is_err());
        assert!(add_row(&mut index, at(1), &first).is_err());
        assert!(add_row(&mut index, at(10), &tomb).is_err());
        assert!(add_row(&mut index, at(3), &[7, 1]).is_err());
        add_row(&mut index, at(3), &tomb).expect("a tombstone of a live key");
        index.check();
    }
}
