//! Client sessions for exactly-once application (Raft thesis §6.3).
//!
//! For each client id the store keeps the sequence number of its last applied request, the
//! result of that request, and the Raft index at which the client was last seen. A command
//! whose `(client_id, seq)` is:
//!
//! - `seq == last`: a retry; the stored result is returned and nothing is applied;
//! - `seq < last`: older than the stored result; refused with [`KvError::StaleSequence`];
//! - `seq > last`: applied, and its result replaces the stored one;
//! - unknown client with `seq == 1`: a new session; applied;
//! - unknown client with `seq > 1`: refused with [`KvError::SessionExpired`], because the
//!   session may have been evicted after this very request was applied.
//!
//! Eviction rule: the table holds at most `sessions_max` clients. Opening a new session when it
//! is full evicts the client whose last request has the smallest Raft index (least recently
//! seen). The rule depends only on the log, so every replica evicts the same client.
//!
//! Limit of the rule: an evicted client retrying its *first* request (`seq == 1`) cannot be
//! told from a new client and is applied again. Clients should therefore use a fresh client id
//! per process lifetime and keep the table large enough (`sessions_max`) for the number of
//! clients active within a retry window.

use redb::TableDefinition;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::codec::{decode_result, encode_result};
use crate::command::{Response, Session};
use crate::error::{Error, KvError};

/// `client_id -> seq (u64 LE) ++ last index (u64 LE) ++ encoded result`.
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// `(last index, client_id) -> ()`: the eviction order.
pub(crate) const SESSIONS_BY_INDEX: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("sessions_by_index");

/// What to do with a command carrying a session.
pub(crate) enum Lookup {
    /// Apply it.
    Apply,
    /// A retry: answer with the stored result.
    Retry(Result<Response, KvError>),
    /// Refuse it without applying.
    Refuse(KvError),
}

/// One decoded session row.
pub(crate) struct Row {
    /// Last applied sequence number.
    pub(crate) seq: u64,
    /// Raft index of the client's last command.
    pub(crate) index: u64,
    /// Encoded result of that command.
    pub(crate) result: Vec<u8>,
}

impl Row {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.result.len());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.result);
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
            result: bytes[16..].to_vec(),
        })
    }
}

/// Classifies a command of session `s`.
pub(crate) fn lookup(txn: &WriteTransaction, s: Session) -> Result<Lookup, Error> {
    let table = txn.open_table(SESSIONS)?;
    let row = match table.get(s.client_id)? {
        None if s.seq == 1 => return Ok(Lookup::Apply),
        None => return Ok(Lookup::Refuse(KvError::SessionExpired)),
        Some(bytes) => Row::decode(bytes.value())?,
    };
    Ok(if s.seq == row.seq {
        Lookup::Retry(decode_result(&row.result)?)
    } else if s.seq < row.seq {
        Lookup::Refuse(KvError::StaleSequence)
    } else {
        Lookup::Apply
    })
}

/// Stores `result` as the last result of `s`, seen at `index`, evicting the least recently
/// seen client if a new session would exceed `sessions_max`.
pub(crate) fn record(
    txn: &WriteTransaction,
    s: Session,
    index: u64,
    result: &Result<Response, KvError>,
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
        result: encode_result(result),
    };
    table.insert(s.client_id, row.encode().as_slice())?;
    by_index.insert((index, s.client_id), ())?;
    Ok(())
}

/// Marks the session as seen at `index` without changing its result (for retries).
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
