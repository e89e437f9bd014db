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

use redb::TableDefinition;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::codec::{decode_result, encode_result, read_varint, Writer};
use crate::command::{Request, Response, Session};
use crate::error::{Error, KvError};

/// `client_id -> seq (u64 LE) ++ last index (u64 LE) ++ outcome` (see [`Outcome::encode`]).
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// `(last index, client_id) -> ()`: the eviction order.
pub(crate) const SESSIONS_BY_INDEX: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("sessions_by_index");

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

/// Classifies a command of session `s` (see the module docs).
pub(crate) fn lookup(
    txn: &WriteTransaction,
    s: Session,
    sessions_max: usize,
) -> Result<Lookup, Error> {
    let table = txn.open_table(SESSIONS)?;
    let row = match table.get(s.client_id)? {
        None if s.seq == 1 => {
            let Some(after) = s.opened_after else {
                return Ok(Lookup::Apply);
            };
            let full = table.len()? >= sessions_max as u64;
            let oldest = txn
                .open_table(SESSIONS_BY_INDEX)?
                .first()?
                .map(|(k, _)| k.value().0);
            return Ok(match oldest {
                Some(oldest) if full && oldest > after => Lookup::Refuse(KvError::SessionExpired),
                _ => Lookup::Apply,
            });
        }
        None => return Ok(Lookup::Refuse(KvError::SessionExpired)),
        Some(bytes) => Row::decode(bytes.value())?,
    };
    Ok(if s.seq == row.seq {
        Lookup::Retry(Outcome::decode(&row.outcome)?)
    } else if s.seq < row.seq {
        Lookup::Refuse(KvError::StaleSequence)
    } else {
        Lookup::Apply
    })
}

/// Stores `outcome` as the last outcome of `s`, seen at `index`, evicting the least recently
/// seen client if a new session would exceed `sessions_max`.
pub(crate) fn record(
    txn: &WriteTransaction,
    s: Session,
    index: u64,
    outcome: &Outcome,
    sessions_max: usize,
) -> Result<(), Error> {
    assert!(sessions_max >= 1, "validated by Options");
    let mut table = txn.open_table(SESSIONS)?;
    let mut by_index = txn.open_table(SESSIONS_BY_INDEX)?;
    let old = table
        .get(s.client_id)?
        .map(|b| Row::decode(b.value()))
        .transpose()?;
    match old {
        Some(old) => {
            assert!(
                old.index < index,
                "sessions are touched at increasing indexes"
            );
            by_index.remove((old.index, s.client_id))?;
        }
        None => {
            while table.len()? >= sessions_max as u64 {
                let Some((k, _)) = by_index.pop_first()? else {
                    return Err(Error::Corrupt("session index shorter than sessions".into()));
                };
                let (_, client) = k.value();
                table.remove(client)?;
            }
        }
    }
    let row = Row {
        seq: s.seq,
        index,
        outcome: outcome.encode(),
    };
    table.insert(s.client_id, row.encode().as_slice())?;
    by_index.insert((index, s.client_id), ())?;
    Ok(())
}

/// Marks the session as seen at `index` without changing its outcome (for retries).
pub(crate) fn touch(txn: &WriteTransaction, client_id: u64, index: u64) -> Result<(), Error> {
    let mut table = txn.open_table(SESSIONS)?;
    let mut by_index = txn.open_table(SESSIONS_BY_INDEX)?;
    let Some(mut row) = table
        .get(client_id)?
        .map(|b| Row::decode(b.value()))
        .transpose()?
    else {
        return Ok(());
    };
    by_index.remove((row.index, client_id))?;
    row.index = index;
    table.insert(client_id, row.encode().as_slice())?;
    by_index.insert((index, client_id), ())?;
    Ok(())
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
