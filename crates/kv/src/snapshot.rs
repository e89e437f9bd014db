//! Whole-state snapshots for Raft log compaction.
//!
//! Format (all integers varints, byte strings length-prefixed, see [`crate::codec`]):
//!
//! ```text
//!   "SKIFFKV\0"  version(1)
//!   revision compacted applied
//!   n_history  { key rev row }*        rows as stored in the history table
//!   n_leases   { id ttl }*
//!   n_attached { lease key }*
//!   n_sessions { client_id row }*      the eviction index is rebuilt from the rows
//!   crc32 (4 bytes LE) of everything before it
//! ```
//!
//! The snapshot is built in memory from one read transaction (simple; fine for the sizes a
//! Raft snapshot of this store reaches today). Reading checks the CRC, then decodes everything
//! before the store is touched, so a corrupt snapshot never half-replaces the state.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::codec::{Reader, Writer};
use crate::error::Error;
use crate::lease::{LEASES, LEASE_KEYS};
use crate::mvcc::{Record, HISTORY};
use crate::session::{Row, SESSIONS, SESSIONS_BY_INDEX};
use crate::store::{Meta, META};

const MAGIC: &[u8; 8] = b"SKIFFKV\0";
const VERSION: u8 = 1;

/// A decoded snapshot, validated, not yet loaded.
pub(crate) struct Image {
    meta: Meta,
    history: Vec<(Vec<u8>, u64, Vec<u8>)>,
    leases: Vec<(i64, i64)>,
    attached: Vec<(i64, Vec<u8>)>,
    sessions: Vec<(u64, Vec<u8>)>,
}

/// Serialises the state seen by `txn`.
pub(crate) fn write(txn: &ReadTransaction) -> Result<Vec<u8>, Error> {
    let mut w = Writer(MAGIC.to_vec());
    w.u8(VERSION);
    let meta = Meta::read(&txn.open_table(META)?)?;
    w.u64(meta.revision);
    w.u64(meta.compacted);
    w.u64(meta.applied);
    let history = txn.open_table(HISTORY)?;
    w.u64(history.len()?);
    for row in history.iter()? {
        let (k, v) = row?;
        let (key, rev) = k.value();
        w.bytes(key);
        w.u64(rev);
        w.bytes(v.value());
    }
    let leases = txn.open_table(LEASES)?;
    w.u64(leases.len()?);
    for row in leases.iter()? {
        let (id, ttl) = row?;
        w.i64(id.value());
        w.i64(ttl.value());
    }
    let attached = txn.open_table(LEASE_KEYS)?;
    w.u64(attached.len()?);
    for row in attached.iter()? {
        let (k, _) = row?;
        let (id, key) = k.value();
        w.i64(id);
        w.bytes(key);
    }
    let sessions = txn.open_table(SESSIONS)?;
    w.u64(sessions.len()?);
    for row in sessions.iter()? {
        let (id, v) = row?;
        w.u64(id.value());
        w.bytes(v.value());
    }
    let crc = crc32fast::hash(&w.0);
    w.0.extend_from_slice(&crc.to_le_bytes());
    Ok(w.0)
}

/// Checks and decodes a snapshot.
pub(crate) fn read(bytes: &[u8]) -> Result<Image, Error> {
    let bad = |m: &str| Error::Decode(format!("snapshot: {m}"));
    if bytes.len() < MAGIC.len() + 1 + 4 {
        return Err(bad("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| bad("crc"))?);
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err(bad("not a Skiff kv snapshot"));
    }
    let mut r = Reader::raw(&body[MAGIC.len()..]);
    if r.u8()? != VERSION {
        return Err(bad("unknown version"));
    }
    let meta = Meta {
        revision: r.u64()?,
        compacted: r.u64()?,
        applied: r.u64()?,
    };
    if meta.revision == 0 || meta.compacted > meta.revision {
        return Err(bad("revisions out of order"));
    }
    let mut history = Vec::new();
    for _ in 0..r.len()? {
        let (key, rev, row) = (r.bytes()?, r.u64()?, r.bytes()?);
        Record::decode(&row)?;
        if rev > meta.revision {
            return Err(bad("history row above the revision"));
        }
        history.push((key, rev, row));
    }
    let mut leases = Vec::new();
    for _ in 0..r.len()? {
        leases.push((r.i64()?, r.i64()?));
    }
    let mut attached = Vec::new();
    for _ in 0..r.len()? {
        attached.push((r.i64()?, r.bytes()?));
    }
    let mut sessions = Vec::new();
    for _ in 0..r.len()? {
        let (id, row) = (r.u64()?, r.bytes()?);
        Row::decode(&row)?;
        sessions.push((id, row));
    }
    r.finish()?;
    Ok(Image {
        meta,
        history,
        leases,
        attached,
        sessions,
    })
}

/// Writes an image into freshly emptied tables. Sessions beyond `sessions_max` (a snapshot
/// from a node configured with more) are evicted by the usual rule, least recently seen first.
pub(crate) fn load(
    txn: &WriteTransaction,
    image: &Image,
    sessions_max: usize,
) -> Result<(), Error> {
    image.meta.write(txn)?;
    let mut history = txn.open_table(HISTORY)?;
    for (key, rev, row) in &image.history {
        history.insert((key.as_slice(), *rev), row.as_slice())?;
    }
    let mut leases = txn.open_table(LEASES)?;
    for (id, ttl) in &image.leases {
        leases.insert(*id, *ttl)?;
    }
    let mut attached = txn.open_table(LEASE_KEYS)?;
    for (id, key) in &image.attached {
        attached.insert((*id, key.as_slice()), ())?;
    }
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut by_index = txn.open_table(SESSIONS_BY_INDEX)?;
    for (id, row) in &image.sessions {
        sessions.insert(*id, row.as_slice())?;
        by_index.insert((Row::decode(row)?.index, *id), ())?;
    }
    while sessions.len()? > sessions_max as u64 {
        let Some((k, _)) = by_index.pop_first()? else {
            break;
        };
        sessions.remove(k.value().1)?;
    }
    Ok(())
}
