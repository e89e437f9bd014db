//! Whole-state snapshots for Raft log compaction.
//!
//! Format (all integers varints, byte strings length-prefixed, see [`crate::codec`]):
//!
//! ```text
//!   "SKIFFKV\0"  version(1)
//!   revision compacted applied
//!   n_history  { key rev row }*        rows as stored in the history table (the index by
//!                                      revision is rebuilt from them)
//!   n_leases   { id ttl }*
//!   n_attached { lease key }*
//!   n_sessions { client_id row }*      the eviction index is rebuilt from the rows
//!   crc32 (4 bytes LE) of everything before it
//! ```
//!
//! Both directions stream: [`write_to`] sends the state to any `Write` a slice at a time, and
//! [`load_from`] decodes from any `Read` straight into the tables of one write transaction,
//! checking the CRC at the end. Neither holds the whole state in memory. A corrupt snapshot
//! fails before the caller commits, so it never half-replaces the state.

use std::io::{Read, Write};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::codec::{read_varint, unzigzag, Writer};
use crate::error::Error;
use crate::lease::{LEASES, LEASE_KEYS};
use crate::mvcc::{Record, BY_REV, HISTORY};
use crate::session::{Row, SESSIONS, SESSIONS_BY_INDEX};
use crate::store::{Meta, META};

const MAGIC: &[u8; 8] = b"SKIFFKV\0";
const VERSION: u8 = 1;
/// Encoded bytes buffered before they are handed to the writer.
const FLUSH_BYTES: usize = 1 << 20;
/// Bytes reserved up front for one byte string; a longer one grows as its bytes arrive, so
/// that a corrupt length costs no more memory than the input holds, up to the limit below.
const FIELD_PREALLOC_MAX: u64 = 1 << 20;
/// Largest byte string (key, value, row) a snapshot may hold. The writer refuses to write a
/// longer one and the reader to read it: a reader that refused what the writer wrote would make
/// the snapshot, and every member needing it, unrecoverable. Values and keys come from
/// requests of at most a few MiB; only session rows written before answers were replayed
/// could be larger.
pub const FIELD_BYTES_MAX: u64 = 256 << 20;

fn bad(m: &str) -> Error {
    Error::Decode(format!("snapshot: {m}"))
}

/// Encodes into a bounded buffer, handing full slices to `out` with a running CRC.
struct Sink<'a> {
    w: Writer,
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    total: u64,
}

impl Sink<'_> {
    /// A byte string, refused if longer than [`FIELD_BYTES_MAX`] (no reader would load it).
    fn field(&mut self, v: &[u8]) -> Result<(), Error> {
        if v.len() as u64 > FIELD_BYTES_MAX {
            return Err(Error::Corrupt(format!(
                "a row of {} bytes is longer than a snapshot may hold",
                v.len()
            )));
        }
        self.w.bytes(v);
        Ok(())
    }

    fn flush(&mut self, force: bool) -> Result<(), Error> {
        if force || self.w.0.len() >= FLUSH_BYTES {
            self.crc.update(&self.w.0);
            self.out.write_all(&self.w.0).map_err(Error::Io)?;
            self.total += self.w.0.len() as u64;
            self.w.0.clear();
        }
        Ok(())
    }
}

/// Serialises the state seen by `txn` into `out`; returns the bytes written.
pub(crate) fn write_to(txn: &ReadTransaction, out: &mut dyn Write) -> Result<u64, Error> {
    let mut s = Sink {
        w: Writer(Vec::with_capacity(FLUSH_BYTES + 4096)),
        out,
        crc: crc32fast::Hasher::new(),
        total: 0,
    };
    s.w.0.extend_from_slice(MAGIC);
    s.w.u8(VERSION);
    let meta = Meta::read(&txn.open_table(META)?)?;
    s.w.u64(meta.revision);
    s.w.u64(meta.compacted);
    s.w.u64(meta.applied);
    let history = txn.open_table(HISTORY)?;
    s.w.u64(history.len()?);
    for row in history.iter()? {
        let (k, v) = row?;
        let (key, rev) = k.value();
        s.field(key)?;
        s.w.u64(rev);
        s.field(v.value())?;
        s.flush(false)?;
    }
    let leases = txn.open_table(LEASES)?;
    s.w.u64(leases.len()?);
    for row in leases.iter()? {
        let (id, ttl) = row?;
        s.w.i64(id.value());
        s.w.i64(ttl.value());
        s.flush(false)?;
    }
    let attached = txn.open_table(LEASE_KEYS)?;
    s.w.u64(attached.len()?);
    for row in attached.iter()? {
        let (k, _) = row?;
        let (id, key) = k.value();
        s.w.i64(id);
        s.field(key)?;
        s.flush(false)?;
    }
    let sessions = txn.open_table(SESSIONS)?;
    s.w.u64(sessions.len()?);
    for row in sessions.iter()? {
        let (id, v) = row?;
        s.w.u64(id.value());
        s.field(v.value())?;
        s.flush(false)?;
    }
    s.flush(true)?;
    let crc = s.crc.clone().finalize();
    s.out.write_all(&crc.to_le_bytes()).map_err(Error::Io)?;
    Ok(s.total + 4)
}

/// Reads encoded values from a stream, feeding every byte to a CRC.
struct Source<'a> {
    input: std::io::BufReader<&'a mut dyn Read>,
    crc: crc32fast::Hasher,
}

impl Source<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("truncated")
            } else {
                Error::Io(e)
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, Error> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u64(&mut self) -> Result<u64, Error> {
        read_varint(|| self.u8())
    }

    fn i64(&mut self) -> Result<i64, Error> {
        Ok(unzigzag(self.u64()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.u64()?;
        if len > FIELD_BYTES_MAX {
            return Err(bad("field longer than any snapshot holds"));
        }
        let mut v = Vec::with_capacity(len.min(FIELD_PREALLOC_MAX) as usize);
        let got = (&mut self.input)
            .take(len)
            .read_to_end(&mut v)
            .map_err(Error::Io)?;
        if got as u64 != len {
            return Err(bad("truncated"));
        }
        self.crc.update(&v);
        Ok(v)
    }
}

/// One decoded part of a snapshot, in stream order.
enum Item {
    Meta(Meta),
    History {
        key: Vec<u8>,
        rev: u64,
        row: Vec<u8>,
    },
    Lease {
        id: i64,
        ttl: i64,
    },
    Attached {
        id: i64,
        key: Vec<u8>,
    },
    Session {
        id: u64,
        row: Vec<u8>,
        index: u64,
    },
}

/// Decodes a whole snapshot, checking every row and the CRC, handing each part to `take` in
/// order. `Ok` only if the snapshot is complete and intact.
fn decode(
    input: &mut dyn Read,
    take: &mut dyn FnMut(Item) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut r = Source {
        input: std::io::BufReader::with_capacity(1 << 20, input),
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a Skiff kv snapshot"));
    }
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
    take(Item::Meta(meta))?;
    for _ in 0..r.u64()? {
        let (key, rev, row) = (r.bytes()?, r.u64()?, r.bytes()?);
        Record::decode(&row)?;
        if rev > meta.revision {
            return Err(bad("history row above the revision"));
        }
        take(Item::History { key, rev, row })?;
    }
    for _ in 0..r.u64()? {
        let (id, ttl) = (r.i64()?, r.i64()?);
        take(Item::Lease { id, ttl })?;
    }
    for _ in 0..r.u64()? {
        let (id, key) = (r.i64()?, r.bytes()?);
        take(Item::Attached { id, key })?;
    }
    for _ in 0..r.u64()? {
        let (id, row) = (r.u64()?, r.bytes()?);
        let index = Row::decode(&row)?.index;
        take(Item::Session { id, row, index })?;
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.input
        .read_exact(&mut stored)
        .map_err(|_| bad("truncated"))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(bad("checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.input.read(&mut rest).map_err(Error::Io)? != 0 {
        return Err(bad("trailing bytes"));
    }
    Ok(())
}

/// Checks that `input` is a complete, intact snapshot this build can load, writing nothing
/// (so that a staged snapshot is known good before it replaces the previous one). Returns the
/// applied index it restores.
pub fn verify(input: &mut dyn Read) -> Result<u64, Error> {
    let mut applied = 0;
    decode(input, &mut |item| {
        if let Item::Meta(m) = item {
            applied = m.applied;
        }
        Ok(())
    })?;
    Ok(applied)
}

/// Decodes a snapshot from `input` into freshly emptied tables of `txn`, checking every row
/// and the CRC; the caller commits only if this returns `Ok`. Sessions beyond `sessions_max`
/// (a snapshot from a node configured with more) are evicted by the usual rule, least
/// recently seen first.
pub(crate) fn load_from(
    txn: &WriteTransaction,
    input: &mut dyn Read,
    sessions_max: usize,
) -> Result<(), Error> {
    let mut history = txn.open_table(HISTORY)?;
    let mut by_rev = txn.open_table(BY_REV)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut attached = txn.open_table(LEASE_KEYS)?;
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut by_index = txn.open_table(SESSIONS_BY_INDEX)?;
    decode(input, &mut |item| {
        match item {
            Item::Meta(meta) => meta.write(txn)?,
            Item::History { key, rev, row } => {
                history.insert((key.as_slice(), rev), row.as_slice())?;
                by_rev.insert((rev, key.as_slice()), ())?;
            }
            Item::Lease { id, ttl } => {
                leases.insert(id, ttl)?;
            }
            Item::Attached { id, key } => {
                attached.insert((id, key.as_slice()), ())?;
            }
            Item::Session { id, row, index } => {
                sessions.insert(id, row.as_slice())?;
                by_index.insert((index, id), ())?;
            }
        }
        Ok(())
    })?;
    while sessions.len()? > sessions_max as u64 {
        let Some((k, _)) = by_index.pop_first()? else {
            break;
        };
        sessions.remove(k.value().1)?;
    }
    Ok(())
}
