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
//! **Cost.** redb stores the rows keyed by `(last index, client)`, the eviction order, and the
//! whole table is also kept in memory by client ([`Sessions`], at most `sessions_max` small
//! rows). A write's session costs no redb read, one insert at the right edge of the B-tree and,
//! when it evicts, one remove at the left edge: no random page is touched.
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

use std::collections::{BTreeSet, HashMap};

use redb::{ReadableTable, Table, TableDefinition};

use crate::codec::{decode_result, encode_result, read_varint, Writer};
use crate::command::{Request, Response, Session};
use crate::error::{Error, KvError};

/// `(last index, client_id) -> seq (u64 LE) ++ last index (u64 LE) ++ outcome` (see
/// [`Outcome::encode`]). Keyed in eviction order, so that a new session appends at the right
/// edge of the B-tree and an eviction removes at the left; lookups by client use the copy in
/// memory ([`Sessions`]).
pub(crate) const SESSIONS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("sessions_by_seen");

/// A table of sessions, read-only or in a write transaction.
pub(crate) trait SessionTable: ReadableTable<(u64, u64), &'static [u8]> {}
impl<T: ReadableTable<(u64, u64), &'static [u8]>> SessionTable for T {}

/// A session table being written.
pub(crate) type SessionTableMut<'t> = Table<'t, (u64, u64), &'static [u8]>;

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
    /// What to keep for `request`, applied at store revision `rev_before` with `result`.
    pub(crate) fn of(
        request: &Request,
        result: &Result<Response, KvError>,
        rev_before: u64,
    ) -> Self {
        if encode_result(result).len() <= STORED_OUTCOME_BYTES_MAX {
            return Outcome::Stored(result.clone());
        }
        assert!(
            matches!(
                request,
                Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) | Request::Range(_)
            ),
            "only answers carrying key-values are large: {request:?}"
        );
        Outcome::Replay { rev_before }
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
    /// `None`: read it from [`SESSIONS`].
    outcome: Option<Vec<u8>>,
}

impl Cached {
    fn of(row: Row) -> Cached {
        Cached {
            seq: row.seq,
            index: row.index,
            outcome: (row.outcome.len() <= STORED_OUTCOME_BYTES_MAX).then_some(row.outcome),
        }
    }
}

/// The session table in memory, mirroring [`SESSIONS`] (which is all redb stores: the
/// eviction order is rebuilt from the rows when the store opens), so that a write's session
/// costs no redb read and one or two redb writes.
///
/// Only the apply thread changes it, inside a batch; [`Undo`] restores it when the batch is
/// aborted. Invariant: `by_index` holds exactly `(row.index, client)` of every row, and the
/// rows are those of [`SESSIONS`] once the batch commits.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sessions {
    rows: HashMap<u64, Cached>,
    by_index: BTreeSet<(u64, u64)>,
}

/// The previous state of each session a batch changed, oldest change first.
#[derive(Debug, Default)]
pub(crate) struct Undo(Vec<(u64, Option<Cached>)>);

impl Sessions {
    /// Reads every row of [`SESSIONS`].
    pub(crate) fn load(table: &impl SessionTable) -> Result<Sessions, Error> {
        let mut s = Sessions::default();
        for row in table.iter()? {
            let (k, bytes) = row?;
            let (index, client) = k.value();
            let row = Row::decode(bytes.value())?;
            if row.index != index || s.rows.contains_key(&client) {
                return Err(Error::Corrupt(format!(
                    "session row of client {client} at {index}"
                )));
            }
            s.put(client, Cached::of(row));
        }
        Ok(s)
    }

    /// Sessions held.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn put(&mut self, client: u64, row: Cached) -> Option<Cached> {
        self.by_index.insert((row.index, client));
        let old = self.rows.insert(client, row);
        if let Some(old) = &old {
            self.by_index.remove(&(old.index, client));
        }
        old
    }

    fn remove(&mut self, client: u64) -> Option<Cached> {
        let old = self.rows.remove(&client)?;
        self.by_index.remove(&(old.index, client));
        Some(old)
    }

    /// Puts back what `undo` recorded, newest change first.
    pub(crate) fn undo(&mut self, undo: Undo) {
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

    /// Evicts least recently seen clients until a new one fits in `sessions_max`.
    fn make_room(
        &mut self,
        table: &mut SessionTableMut<'_>,
        sessions_max: usize,
        undo: &mut Undo,
    ) -> Result<(), Error> {
        assert!(sessions_max >= 1, "validated by Options");
        while self.rows.len() >= sessions_max {
            let &(index, client) = self
                .by_index
                .first()
                .expect("a non-empty table has an eviction order");
            let old = self.remove(client);
            table.remove((index, client))?;
            undo.0.push((client, old));
        }
        Ok(())
    }

    /// Classifies a command of session `s` (see the module docs).
    pub(crate) fn lookup(
        &self,
        table: &impl SessionTable,
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
                None => Outcome::decode(&stored_row(table, row.index, s.client_id)?.outcome)?,
            };
            Lookup::Retry(outcome)
        } else if s.seq < row.seq {
            Lookup::Refuse(KvError::StaleSequence)
        } else {
            Lookup::Apply
        })
    }

    /// Stores `outcome` as the last outcome of `s`, seen at `index`, evicting the least
    /// recently seen client if a new session would exceed `sessions_max`.
    pub(crate) fn record(
        &mut self,
        table: &mut SessionTableMut<'_>,
        s: Session,
        index: u64,
        outcome: &Outcome,
        sessions_max: usize,
        undo: &mut Undo,
    ) -> Result<(), Error> {
        match self.rows.get(&s.client_id) {
            Some(old) => {
                assert!(
                    old.index < index,
                    "sessions are touched at increasing indexes"
                );
                table.remove((old.index, s.client_id))?;
            }
            None => self.make_room(table, sessions_max, undo)?,
        }
        let row = Row {
            seq: s.seq,
            index,
            outcome: outcome.encode(),
        };
        table.insert((index, s.client_id), row.encode().as_slice())?;
        let old = self.put(s.client_id, Cached::of(row));
        undo.0.push((s.client_id, old));
        Ok(())
    }

    /// Marks the session as seen at `index` without changing its outcome (for retries).
    pub(crate) fn touch(
        &mut self,
        table: &mut SessionTableMut<'_>,
        client_id: u64,
        index: u64,
        undo: &mut Undo,
    ) -> Result<(), Error> {
        let Some(cached) = self.rows.get(&client_id) else {
            return Ok(());
        };
        let row = Row {
            seq: cached.seq,
            index,
            outcome: match &cached.outcome {
                Some(o) => o.clone(),
                None => stored_row(table, cached.index, client_id)?.outcome,
            },
        };
        table.remove((cached.index, client_id))?;
        table.insert((index, client_id), row.encode().as_slice())?;
        let old = self.put(client_id, Cached::of(row));
        undo.0.push((client_id, old));
        Ok(())
    }

    /// Keeps at most `sessions_max` rows, evicting by the usual rule (after loading a snapshot
    /// from a member configured with more).
    pub(crate) fn trim(
        &mut self,
        table: &mut SessionTableMut<'_>,
        sessions_max: usize,
    ) -> Result<(), Error> {
        let mut undo = Undo::default();
        if self.rows.len() > sessions_max {
            self.make_room(table, sessions_max + 1, &mut undo)?;
        }
        Ok(())
    }
}

/// The stored row of a client the memory knows, last seen at `index`.
fn stored_row(table: &impl SessionTable, index: u64, client: u64) -> Result<Row, Error> {
    let bytes = table
        .get((index, client))?
        .ok_or_else(|| Error::Corrupt(format!("session {client} missing from its table")))?;
    Row::decode(bytes.value())
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
        let replay = Outcome::of(&put, &big, 8);
        assert_eq!(replay, Outcome::Replay { rev_before: 8 });
        assert!(replay.encode().len() <= 10);
        let refused = Outcome::of(&put, &Err(KvError::LeaseNotFound), 8);
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
