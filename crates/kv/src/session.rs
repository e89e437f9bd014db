//! Client sessions for exactly-once application (Raft thesis §6.3).
//!
//! For each client id the store keeps the sequence number of its last applied request, what
//! is needed to answer a retry of it, and the Raft index at which the client was last seen. A
//! command whose `(client_id, seq)` is:
//!
//! - `seq == last`: a retry; nothing is applied and it gets the first attempt's answer;
//! - `seq < last`: older than the stored result; refused with [`KvError::StaleSequence`];
//! - `seq > last`: applied, and its outcome replaces the stored one;
//! - unknown client with `seq == 1`: a new session, applied, unless the session may have been
//!   evicted (below), which is refused with [`KvError::SessionExpired`];
//! - unknown client with `seq > 1`: refused with [`KvError::SessionExpired`], because the
//!   session may have been evicted after this very request was applied.
//!
//! **No payload.** A row never holds a response that could be large. An answer of at most
//! 128 bytes (errors; puts and deletes without `prev_kv`; compactions and lease requests) is
//! stored as it is (`Outcome::Stored`). A larger one carries key-values (`prev_kv`, a txn's
//! ranges): the row holds the store revision before the request instead (`Outcome::Replay`),
//! and a retry is answered by running the request again as of that revision in a transaction
//! that is never committed (MVCC keeps the history until it is compacted; after that the retry
//! gets [`KvError::AnswerLost`]: applied, answer gone). Rows written before this rule (a whole stored response) are
//! still read.
//!
//! **Cost.** The whole table is kept in memory by client ([`Sessions`], at most `sessions_max`
//! small rows); redb stores the records of each write transaction as one row ([`SESSIONS`]).
//! A write's session costs no redb read and no redb write of its own: one insert per write
//! transaction, and one remove when a row's last live entry is replaced or evicted.
//!
//! **Eviction.** The table holds at most `sessions_max` clients. Opening a new session when it
//! is full evicts the client whose last request has the smallest Raft index (least recently
//! seen). The rule depends only on the log, so every replica evicts the same client. Evicted
//! indexes never exceed the smallest index left in a full table, and nothing is evicted before
//! the table is full. So an unknown session whose proposer opened it after applying index `A`
//! (`Session::opened_after`; all its entries come after `A`) cannot have been evicted if the
//! table is not full or its smallest index is at most `A`; otherwise it is refused rather than
//! risk applying a retry twice. A fresh session is refused only if a whole table of sessions
//! (100,000 in the server) was seen between its opening and its first entry. Limit: a session
//! without `opened_after` (older proposers) at seq 1 is always applied, as before; and raising
//! `sessions_max` across a restart voids the "not full" half of the argument.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::{ReadableTable, Table, TableDefinition};

use crate::codec::{decode_result, encode_result, read_varint, Writer};
use crate::command::{Request, Response, Session};
use crate::error::{Error, KvError};
use crate::hash::IdMap;

/// `first index -> entries`: the sessions one write transaction recorded (or one chunk of a
/// loaded snapshot), as `{ client (varint) ++ Row::encode (length-prefixed) }*`, keyed by the
/// smallest index among them. An entry is live while its client's latest record is it and the
/// client was not evicted; a row is deleted once none of its entries is live. One insert per
/// write transaction, however many writes it applied.
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("session_batches");

/// A table of sessions, read-only or in a write transaction.
pub(crate) trait SessionTable: ReadableTable<u64, &'static [u8]> {}
impl<T: ReadableTable<u64, &'static [u8]>> SessionTable for T {}

/// A session table being written.
pub(crate) type SessionTableMut<'t> = Table<'t, u64, &'static [u8]>;

/// Most entries in one stored row written from a snapshot or a conversion.
const ENTRIES_PER_LOADED_ROW: usize = 1024;
/// About the most bytes of one such row.
const LOADED_ROW_BYTES_MAX: usize = 1 << 20;

/// [`Cached::row`] of a record made by the open write transaction, not stored yet.
const PENDING: u64 = u64::MAX;
/// `Cached::row` of a record [`Sessions::flush`] is storing (never seen outside it).
const TAKEN: u64 = u64::MAX - 1;

/// First byte of a replay outcome; a stored result starts with the codec version (1).
const REPLAY_TAG: u8 = 0xfe;
/// Largest answer a row stores as it is; a larger one (it carries key-values) is replayed.
/// Errors and the answers of puts and deletes without `prev_kv`, compactions and lease
/// requests are a few bytes.
const STORED_OUTCOME_BYTES_MAX: usize = 128;

/// How a retry of the session's last request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// With this result.
    Stored(Result<Response, KvError>),
    /// By running the request again as of the store revision it first saw.
    Replay {
        /// Store revision before the request was applied.
        rev_before: u64,
    },
}

impl Outcome {
    /// The encoded outcome to keep for `request`, applied at store revision `rev_before` with
    /// `result`: the result itself if small, else a replay. Encodes the result once (this
    /// runs for every write).
    pub(crate) fn encoded(
        request: &Request,
        result: &Result<Response, KvError>,
        rev_before: u64,
    ) -> Vec<u8> {
        let bytes = encode_result(result);
        if bytes.len() <= STORED_OUTCOME_BYTES_MAX {
            return bytes;
        }
        assert!(
            matches!(
                request,
                Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) | Request::Range(_)
            ),
            "only answers carrying key-values are large: {request:?}"
        );
        Outcome::Replay { rev_before }.encode()
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Outcome::Stored(result) => {
                let bytes = encode_result(result);
                assert!(
                    bytes.len() <= STORED_OUTCOME_BYTES_MAX,
                    "a stored outcome of {} bytes: only small answers are stored",
                    bytes.len()
                );
                bytes
            }
            Outcome::Replay { rev_before } => {
                let mut w = Writer(vec![REPLAY_TAG]);
                w.u64(*rev_before);
                w.0
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes.split_first() {
            Some((&REPLAY_TAG, rest)) => {
                let mut it = rest.iter();
                let rev_before = read_varint(|| {
                    it.next()
                        .copied()
                        .ok_or_else(|| Error::Corrupt("truncated session outcome".into()))
                })?;
                if it.next().is_some() {
                    return Err(Error::Corrupt("trailing bytes in a session outcome".into()));
                }
                if rev_before == 0 {
                    return Err(Error::Corrupt("a session outcome at revision 0".into()));
                }
                Ok(Outcome::Replay { rev_before })
            }
            _ => Ok(Outcome::Stored(decode_result(bytes)?)),
        }
    }
}

/// What to do with a command carrying a session.
pub(crate) enum Lookup {
    /// Apply it.
    Apply,
    /// A retry: answer it as the outcome says.
    Retry(Outcome),
    /// Refuse it without applying.
    Refuse(KvError),
}

/// One decoded session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// Last applied sequence number.
    pub(crate) seq: u64,
    /// Raft index of the client's last command.
    pub(crate) index: u64,
    /// Encoded outcome of that command.
    pub(crate) outcome: Vec<u8>,
}

impl Row {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.outcome.len());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.outcome);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Row, Error> {
        let corrupt = || Error::Corrupt(format!("session row of {} bytes", bytes.len()));
        let seq = bytes
            .get(0..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let index = bytes
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        Ok(Row {
            seq: u64::from_le_bytes(seq),
            index: u64::from_le_bytes(index),
            outcome: bytes[16..].to_vec(),
        })
    }
}

/// What memory keeps of a row: all of it, except the outcome of a row written before answers
/// were replayed (a whole stored response, possibly large), which stays in redb only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    seq: u64,
    index: u64,
    /// `None`: read it from the stored row.
    outcome: Option<Vec<u8>>,
    /// Key of the stored row holding this record, or [`PENDING`].
    row: u64,
}

impl Cached {
    fn of(row: Row, key: u64) -> Cached {
        Cached {
            seq: row.seq,
            index: row.index,
            outcome: (row.outcome.len() <= STORED_OUTCOME_BYTES_MAX).then_some(row.outcome),
            row: key,
        }
    }
}

/// Encodes entries for one stored row.
fn encode_entries<'a>(entries: impl IntoIterator<Item = (u64, &'a Row)>) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    for (client, row) in entries {
        w.u64(client);
        w.bytes(&row.encode());
    }
    w.0
}

/// Decodes a stored row's entries.
fn decode_entries(bytes: &[u8]) -> Result<Vec<(u64, Row)>, Error> {
    let corrupt = || Error::Corrupt("truncated session batch".into());
    let mut out = Vec::new();
    let mut pos = 0usize;
    let varint = |pos: &mut usize| {
        read_varint(|| {
            let b = bytes.get(*pos).copied().ok_or_else(corrupt)?;
            *pos += 1;
            Ok(b)
        })
    };
    while pos < bytes.len() {
        let client = varint(&mut pos)?;
        let len = usize::try_from(varint(&mut pos)?).map_err(|_| corrupt())?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(corrupt)?;
        out.push((client, Row::decode(&bytes[pos..end])?));
        pos = end;
    }
    Ok(out)
}

/// A live session: client, its latest record, the key of the stored row holding it.
pub(crate) type LiveSession = (u64, Row, u64);

/// The live sessions of a table: each client's latest record above `evicted` (the largest
/// index ever evicted: a full table's smallest index never goes down, so every evicted
/// record is at or below it and every live one above), then the newest `sessions_max` of
/// those (a smaller limit than the table was kept under evicts more), each with the key of
/// its row. Replicas agree on it whatever their batch boundaries, which decide which dead
/// records a stored row still holds.
///
/// Also returns the largest index the limit left out (0 if none), the new watermark.
pub(crate) fn live_rows(
    table: &impl SessionTable,
    sessions_max: usize,
    evicted: u64,
) -> Result<(Vec<LiveSession>, u64), Error> {
    let mut latest: HashMap<u64, (Row, u64)> = HashMap::new();
    for stored in table.iter()? {
        let (key, bytes) = stored?;
        for (client, row) in decode_entries(bytes.value())? {
            if row.index < key.value() {
                return Err(Error::Corrupt(format!(
                    "session of client {client} at {} in the row of {}",
                    row.index,
                    key.value()
                )));
            }
            match latest.get(&client) {
                Some((old, _)) if old.index >= row.index => {}
                _ => {
                    latest.insert(client, (row, key.value()));
                }
            }
        }
    }
    let mut live: Vec<LiveSession> = latest
        .into_iter()
        .filter(|(_, (row, _))| row.index > evicted)
        .map(|(client, (row, key))| (client, row, key))
        .collect();
    live.sort_unstable_by_key(|(_, row, _)| std::cmp::Reverse(row.index));
    let dropped = live.get(sessions_max).map_or(0, |(_, row, _)| row.index);
    live.truncate(sessions_max);
    Ok((live, dropped))
}

/// Writes `rows` (client, row) as stored rows of at most [`ENTRIES_PER_LOADED_ROW`] entries,
/// in index order.
pub(crate) fn store_rows(
    table: &mut SessionTableMut<'_>,
    mut rows: Vec<(u64, Row)>,
) -> Result<(), Error> {
    rows.sort_unstable_by_key(|(_, row)| row.index);
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        // Up to ENTRIES_PER_LOADED_ROW entries and about LOADED_ROW_BYTES_MAX bytes (old
        // formats could hold large outcomes), at least one entry.
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len()
            && n < ENTRIES_PER_LOADED_ROW
            && (n == 0 || bytes < LOADED_ROW_BYTES_MAX)
        {
            bytes += rest[n].1.outcome.len() + 32;
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        let key = chunk[0].1.index;
        let encoded = encode_entries(chunk.iter().map(|(c, r)| (*c, r)));
        table.insert(key, encoded.as_slice())?;
        rest = tail;
    }
    Ok(())
}

/// The session table in memory, mirroring [`SESSIONS`], so that a write's session costs no
/// redb read, and the sessions of a whole write transaction one redb insert
/// ([`Sessions::flush`]).
///
/// Only the apply thread changes it, inside a batch; [`Undo`] restores it when the batch is
/// aborted. Invariants: `by_index` holds exactly `(row.index, client)` of every row; once a
/// batch is flushed, every row is a live entry of [`SESSIONS`] and `stored` counts the live
/// entries of each stored row (rows whose count is 0 are deleted at the next flush).
#[derive(Debug, Default, Clone)]
pub(crate) struct Sessions {
    rows: IdMap<Cached>,
    by_index: BTreeSet<(u64, u64)>,
    /// Stored row key -> live entries in it.
    stored: BTreeMap<u64, u32>,
    /// Stored rows with no live entry, deleted at the next flush.
    dead: Vec<u64>,
    /// The largest index evicted so far (stored as `META_SESSIONS_EVICTED`): see
    /// [`live_rows`].
    pub(crate) evicted: u64,
}

/// The previous state of each session a batch changed, oldest change first, and the
/// eviction watermark before the batch.
#[derive(Debug, Default)]
pub(crate) struct Undo(Vec<(u64, Option<Cached>)>, Option<u64>);

impl Sessions {
    /// The live sessions of [`SESSIONS`] (see [`live_rows`]).
    pub(crate) fn load(
        table: &impl SessionTable,
        sessions_max: usize,
        evicted: u64,
    ) -> Result<Sessions, Error> {
        let mut s = Sessions {
            evicted,
            ..Sessions::default()
        };
        for stored in table.iter()? {
            s.stored.insert(stored?.0.value(), 0);
        }
        let (live, dropped) = live_rows(table, sessions_max, evicted)?;
        // A smaller limit than the table was kept under evicts the oldest now.
        s.evicted = evicted.max(dropped);
        for (client, row, key) in live {
            *s.stored.entry(key).or_default() += 1;
            s.put(client, Cached::of(row, key));
        }
        s.dead = s
            .stored
            .iter()
            .filter(|(_, &n)| n == 0)
            .map(|(&k, _)| k)
            .collect();
        Ok(s)
    }

    /// Whether two tables hold the same sessions in the same stored rows.
    pub(crate) fn same_as(&self, other: &Sessions) -> bool {
        let live = |s: &Sessions| -> BTreeMap<u64, u32> {
            s.stored
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(&k, &n)| (k, n))
                .collect()
        };
        self.rows == other.rows
            && self.by_index == other.by_index
            && live(self) == live(other)
            && self.evicted == other.evicted
    }

    /// Sessions held.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn put(&mut self, client: u64, row: Cached) -> Option<Cached> {
        let index = row.index;
        let old = self.rows.insert(client, row);
        if let Some(old) = &old {
            self.by_index.remove(&(old.index, client));
        }
        self.by_index.insert((index, client));
        old
    }

    fn remove(&mut self, client: u64) -> Option<Cached> {
        let old = self.rows.remove(&client)?;
        self.by_index.remove(&(old.index, client));
        Some(old)
    }

    /// Puts back what `undo` recorded, newest change first.
    pub(crate) fn undo(&mut self, undo: Undo) {
        if let Some(evicted) = undo.1 {
            self.evicted = evicted;
        }
        for (client, prev) in undo.0.into_iter().rev() {
            match prev {
                Some(row) => {
                    self.put(client, row);
                }
                None => {
                    self.remove(client);
                }
            }
        }
    }

    /// Stores what a batch changed, before it commits: one row with the records it made that
    /// are still live, fewer live entries in the rows of the records it replaced or evicted,
    /// and the deletion of rows left with none. Returns the eviction watermark if the batch
    /// raised it (the caller stores it with the meta).
    pub(crate) fn flush(
        &mut self,
        table: &mut SessionTableMut<'_>,
        undo: Undo,
    ) -> Result<Option<u64>, Error> {
        // Only a client's first change in the batch can replace a stored record: after it,
        // the client holds a record of this batch or none.
        let mut fresh: Vec<u64> = Vec::with_capacity(undo.0.len());
        let mut key = u64::MAX;
        for (client, prev) in undo.0 {
            if let Some(prev) = prev.filter(|p| p.row != PENDING) {
                let n = self.stored.get_mut(&prev.row).ok_or_else(|| {
                    Error::Corrupt(format!("session row {} not counted", prev.row))
                })?;
                *n = n.checked_sub(1).ok_or_else(|| {
                    Error::Corrupt(format!("session row {} counted below zero", prev.row))
                })?;
                if *n == 0 {
                    self.dead.push(prev.row);
                }
            }
            // A client changed twice in the batch is taken once: marked as taken here.
            if let Some(now) = self.rows.get_mut(&client).filter(|c| c.row == PENDING) {
                now.row = TAKEN;
                key = key.min(now.index);
                fresh.push(client);
            }
        }
        if !fresh.is_empty() {
            // The same bytes as `encode_entries`, written from the records in place.
            let mut w = Writer(Vec::with_capacity(fresh.len() * 48));
            for client in &fresh {
                let cached = self.rows.get_mut(client).expect("a fresh record is held");
                let outcome = cached
                    .outcome
                    .as_deref()
                    .expect("a record made in this batch keeps its outcome until stored");
                w.u64(*client);
                w.u64(16 + outcome.len() as u64);
                w.0.extend_from_slice(&cached.seq.to_le_bytes());
                w.0.extend_from_slice(&cached.index.to_le_bytes());
                w.0.extend_from_slice(outcome);
                cached.row = key;
                if outcome.len() > STORED_OUTCOME_BYTES_MAX {
                    cached.outcome = None; // an old format's large outcome: in the row now
                }
            }
            table.insert(key, w.0.as_slice())?;
            self.stored.insert(key, fresh.len() as u32);
        }
        for key in self.dead.drain(..) {
            table.remove(key)?;
            self.stored.remove(&key);
        }
        Ok(undo.1.map(|_| self.evicted))
    }

    /// Evicts least recently seen clients until a new one fits in `sessions_max`.
    fn make_room(&mut self, sessions_max: usize, undo: &mut Undo) {
        assert!(sessions_max >= 1, "validated by Options");
        while self.rows.len() >= sessions_max {
            let &(_, client) = self
                .by_index
                .first()
                .expect("a non-empty table has an eviction order");
            let old = self.remove(client);
            if let Some(old) = &old {
                undo.1.get_or_insert(self.evicted);
                self.evicted = self.evicted.max(old.index);
            }
            undo.0.push((client, old));
        }
    }

    /// Classifies a command of session `s` (see the module docs).
    ///
    /// `table` opens the stored rows; it is called only for a retry whose outcome is not in
    /// memory (a large outcome of an old format), so most commands open no table.
    pub(crate) fn lookup<T: SessionTable>(
        &self,
        table: impl FnOnce() -> Result<T, Error>,
        s: Session,
        sessions_max: usize,
    ) -> Result<Lookup, Error> {
        let row = match self.rows.get(&s.client_id) {
            None if s.seq == 1 => {
                let Some(after) = s.opened_after else {
                    return Ok(Lookup::Apply);
                };
                let full = self.rows.len() >= sessions_max;
                let oldest = self.by_index.first().map(|&(index, _)| index);
                return Ok(match oldest {
                    Some(oldest) if full && oldest > after => {
                        Lookup::Refuse(KvError::SessionExpired)
                    }
                    _ => Lookup::Apply,
                });
            }
            None => return Ok(Lookup::Refuse(KvError::SessionExpired)),
            Some(row) => row,
        };
        Ok(if s.seq == row.seq {
            let outcome = match &row.outcome {
                Some(bytes) => Outcome::decode(bytes)?,
                None => Outcome::decode(&stored_outcome(&table()?, row, s.client_id)?)?,
            };
            Lookup::Retry(outcome)
        } else if s.seq < row.seq {
            Lookup::Refuse(KvError::StaleSequence)
        } else {
            Lookup::Apply
        })
    }

    /// Records `outcome` as the last outcome of `s`, seen at `index`, evicting the least
    /// recently seen client if a new session would exceed `sessions_max`. Stored at
    /// [`Sessions::flush`].
    pub(crate) fn record(
        &mut self,
        s: Session,
        index: u64,
        outcome: Vec<u8>,
        sessions_max: usize,
        undo: &mut Undo,
    ) {
        match self.rows.get(&s.client_id) {
            Some(old) => assert!(
                old.index < index,
                "sessions are touched at increasing indexes"
            ),
            None => self.make_room(sessions_max, undo),
        }
        let cached = Cached {
            seq: s.seq,
            index,
            outcome: Some(outcome),
            row: PENDING,
        };
        let old = self.put(s.client_id, cached);
        undo.0.push((s.client_id, old));
    }

    /// Marks the session as seen at `index` without changing its outcome (for retries).
    /// `table` opens the stored rows, as for [`Sessions::lookup`].
    pub(crate) fn touch<T: SessionTable>(
        &mut self,
        table: impl FnOnce() -> Result<T, Error>,
        client_id: u64,
        index: u64,
        undo: &mut Undo,
    ) -> Result<(), Error> {
        let Some(cached) = self.rows.get(&client_id) else {
            return Ok(());
        };
        let outcome = match &cached.outcome {
            Some(o) => o.clone(),
            // A large outcome of an old format: kept in memory until this batch stores it.
            None => stored_outcome(&table()?, cached, client_id)?,
        };
        let touched = Cached {
            seq: cached.seq,
            index,
            outcome: Some(outcome),
            row: PENDING,
        };
        let old = self.put(client_id, touched);
        undo.0.push((client_id, old));
        Ok(())
    }
}

/// The outcome of a client's record, read from its stored row.
fn stored_outcome(
    table: &impl SessionTable,
    cached: &Cached,
    client: u64,
) -> Result<Vec<u8>, Error> {
    let bytes = table
        .get(cached.row)?
        .ok_or_else(|| Error::Corrupt(format!("session row {} missing", cached.row)))?;
    decode_entries(bytes.value())?
        .into_iter()
        .find(|(c, row)| *c == client && row.index == cached.index)
        .map(|(_, row)| row.outcome)
        .ok_or_else(|| Error::Corrupt(format!("session {client} missing from its row")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PutRequest;

    #[test]
    fn outcomes_round_trip_and_carry_no_payload() {
        let put = Request::Put(PutRequest::new("k", vec![7u8; 1 << 20]));
        let big = Ok(Response::Put(crate::types::PutResponse {
            revision: 9,
            prev_kv: Some(crate::types::KeyValue {
                key: b"k".to_vec(),
                value: vec![7u8; 1 << 20],
                ..Default::default()
            }),
        }));
        let replay = Outcome::encoded(&put, &big, 8);
        assert!(replay.len() <= 10);
        let replay = Outcome::decode(&replay).expect("decodes");
        assert_eq!(replay, Outcome::Replay { rev_before: 8 });
        let refused = Outcome::encoded(&put, &Err(KvError::LeaseNotFound), 8);
        let refused = Outcome::decode(&refused).expect("decodes");
        assert_eq!(refused, Outcome::Stored(Err(KvError::LeaseNotFound)));
        for o in [
            replay,
            refused,
            Outcome::Stored(Ok(Response::Compact { revision: 3 })),
        ] {
            assert_eq!(Outcome::decode(&o.encode()).expect("decodes"), o);
        }
        assert!(Outcome::decode(&[REPLAY_TAG]).is_err());
        assert!(Outcome::decode(&[REPLAY_TAG, 1, 0]).is_err());
    }
}
