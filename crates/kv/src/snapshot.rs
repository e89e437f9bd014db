//! Whole-state snapshots for Raft log compaction.
//!
//! Format (all integers varints, byte strings length-prefixed, see [`crate::codec`]):
//!
//! ```text
//!   "SKIFFKV\0"  version(5)
//!   revision compacted applied
//!   n_rows     { main sub row }*       rows by revision as stored (key and record); the
//!                                      key index is rebuilt from them
//!   n_leases   { id ttl }*
//!   n_attached { lease key }*
//!   n_sessions { client_id row }*      the eviction index is rebuilt from the rows
//!   n_members  { member }*             the member table (`crate::members`), by id, each
//!                                      length-prefixed
//!   n_removed  { id }*                 removed members, ascending
//!   n_alarms   { member type }*        active alarms (`crate::alarms`), ascending
//!   auth                               the auth state (`crate::auth`), length-prefixed
//!   crc32 (4 bytes LE) of everything before it
//! ```
//!
//! Both directions stream: `write_to` sends the state to any `Write` a slice at a time, and
//! `load_from` decodes from any `Read` straight into the tables of one write transaction,
//! checking the CRC at the end. Neither holds the whole state in memory (the loader builds the
//! key index, as opening a store does). A corrupt snapshot, or one whose rows contradict each
//! other, fails before the caller commits, so it never half-replaces the state.
//!
//! Version 4 had no auth state (it restores auth disabled, with no users or roles). Version 3 had no alarms (it restores none). Version 2 had no member table (it restores an empty one). Version 1 (format 2 stores) held `{ key rev record }*` in key order, one row per key and
//! revision; it is still read, converted as a format 2 store is when it opens.

use std::io::{Read, Write};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::alarms::{AlarmMember, AlarmType, ALARMS, ALARMS_MAX};
use crate::codec::Reader;
use crate::codec::{read_varint, unzigzag, Writer};
use crate::error::Error;
use crate::index::Index;
use crate::lease::{LEASES, LEASE_KEYS};
use crate::members::{Member, MEMBERS, MEMBERS_REMOVED};
use crate::mvcc::{Rev, REVS};
use crate::open::{add_row, HistoryConverter};
use crate::session::{live_rows, store_rows, Row, Sessions, SESSIONS};
use crate::store::{Meta, META};

const MAGIC: &[u8; 8] = b"SKIFFKV\0";
const VERSION: u8 = 5;
/// The version before the auth state.
const VERSION_NO_AUTH: u8 = 4;
/// The version before the alarms.
const VERSION_NO_ALARMS: u8 = 3;
/// The version before the member table.
const VERSION_NO_MEMBERS: u8 = 2;
/// The version before rows by revision.
const VERSION_HISTORY_BY_KEY: u8 = 1;
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
pub(crate) fn write_to(
    txn: &ReadTransaction,
    sessions_max: usize,
    out: &mut dyn Write,
) -> Result<u64, Error> {
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
    let revs = txn.open_table(REVS)?;
    s.w.u64(revs.len()?);
    for row in revs.iter()? {
        let (k, v) = row?;
        let (main, sub) = k.value();
        s.w.u64(main);
        s.w.u64(u64::from(sub));
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
    // The live sessions only (a stored row may still hold replaced or evicted records).
    let evicted = crate::store::sessions_evicted(&txn.open_table(META)?)?;
    let (sessions, _) = live_rows(&txn.open_table(SESSIONS)?, sessions_max, evicted)?;
    s.w.u64(sessions.len() as u64);
    for (client, row, _) in sessions {
        s.w.u64(client);
        s.field(&row.encode())?;
        s.flush(false)?;
    }
    let members = crate::members::all(&txn.open_table(MEMBERS)?)?;
    s.w.u64(members.len() as u64);
    for m in &members {
        let mut one = Writer(Vec::new());
        m.encode_into(&mut one);
        s.field(&one.0)?;
        s.flush(false)?;
    }
    let removed = crate::members::removed(&txn.open_table(MEMBERS_REMOVED)?)?;
    s.w.u64(removed.len() as u64);
    for id in removed {
        s.w.u64(id);
        s.flush(false)?;
    }
    let alarms = crate::alarms::all(&txn.open_table(ALARMS)?)?;
    s.w.u64(alarms.len() as u64);
    for m in alarms {
        s.w.u64(m.member_id);
        s.w.u8(m.alarm.code());
    }
    let auth = crate::auth::load(&txn.open_table(crate::auth::AUTH)?)?;
    s.field(&auth.encode())?;
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
    Row { rev: Rev, row: Vec<u8> },
    Lease { id: i64, ttl: i64 },
    Attached { id: i64, key: Vec<u8> },
    Session { id: u64, row: Vec<u8> },
    Member(Member),
    Removed(u64),
    Alarm(AlarmMember),
    Auth(crate::auth::AuthState),
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
    let version = r.u8()?;
    let known = [
        VERSION,
        VERSION_NO_AUTH,
        VERSION_NO_ALARMS,
        VERSION_NO_MEMBERS,
        VERSION_HISTORY_BY_KEY,
    ];
    if !known.contains(&version) {
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
    let mut convert = HistoryConverter::default();
    for _ in 0..r.u64()? {
        let (rev, row) = if version != VERSION_HISTORY_BY_KEY {
            let (main, sub, row) = (r.u64()?, r.u64()?, r.bytes()?);
            let sub = u32::try_from(sub).map_err(|_| bad("sub-revision out of range"))?;
            (Rev { main, sub }, row)
        } else {
            let (key, main, record) = (r.bytes()?, r.u64()?, r.bytes()?);
            let converted = convert.row(&key, main, &record).map_err(|e| match e {
                Error::Corrupt(why) => bad(&why),
                other => other,
            })?;
            match converted {
                Some(converted) => converted,
                None => continue,
            }
        };
        take(Item::Row { rev, row })?;
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
        Row::decode(&row)?;
        take(Item::Session { id, row })?;
    }
    if version >= VERSION_NO_ALARMS {
        let mut last = 0;
        for _ in 0..r.u64()? {
            let m = Member::decode_from(&mut Reader::raw(&r.bytes()?))?;
            if m.id <= last {
                return Err(bad("members out of order"));
            }
            m.check().map_err(|_| bad("a member over the limits"))?;
            last = m.id;
            take(Item::Member(m))?;
        }
        let mut last = 0;
        for _ in 0..r.u64()? {
            let id = r.u64()?;
            if id <= last {
                return Err(bad("removed members out of order"));
            }
            last = id;
            take(Item::Removed(id))?;
        }
    }
    if version >= VERSION_NO_AUTH {
        let n = r.u64()?;
        if n > ALARMS_MAX as u64 {
            return Err(bad("more alarms than a store holds"));
        }
        let mut last = None;
        for _ in 0..n {
            let member_id = r.u64()?;
            let code = r.u8()?;
            let alarm = AlarmType::from_code(code).ok_or_else(|| bad("unknown alarm type"))?;
            let m = AlarmMember { member_id, alarm };
            if last.is_some_and(|l| l >= m) {
                return Err(bad("alarms out of order"));
            }
            last = Some(m);
            take(Item::Alarm(m))?;
        }
    }
    if version >= VERSION {
        let bytes = r.bytes()?;
        if bytes.len() > crate::auth::AUTH_BYTES_MAX {
            return Err(bad("an auth state over its limit"));
        }
        let auth = crate::auth::AuthState::decode(&bytes).map_err(|e| match e {
            Error::Decode(why) => bad(&why),
            other => other,
        })?;
        take(Item::Auth(auth))?;
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

/// Adds a snapshot's row to the index being built: a row that contradicts the others is a
/// bad snapshot.
fn add_snapshot_row(index: Option<&mut Index>, rev: Rev, row: &[u8]) -> Result<(), Error> {
    let index = index.expect("decode hands the meta first");
    add_row(index, rev, row).map_err(|e| match e {
        Error::Corrupt(why) => bad(&why),
        other => other,
    })
}

/// Checks that `input` is a complete, intact snapshot this build can load, writing nothing
/// (so that a staged snapshot is known good before it replaces the previous one). Returns the
/// applied index it restores.
pub fn verify(input: &mut dyn Read) -> Result<u64, Error> {
    Ok(verify_summary(input)?.applied)
}

/// What a verified snapshot holds (see [`verify_summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The store revision it restores.
    pub revision: u64,
    /// Its compacted revision.
    pub compacted: u64,
    /// The applied index it restores.
    pub applied: u64,
    /// Rows (key revisions, puts and tombstones) it holds.
    pub rows: u64,
    /// Keys with at least one revision kept.
    pub keys: usize,
    /// Granted leases.
    pub leases: u64,
}

/// [`verify`], also counting what the snapshot holds.
pub fn verify_summary(input: &mut dyn Read) -> Result<Summary, Error> {
    let mut index: Option<Index> = None;
    let mut leases = 0;
    decode(input, &mut |item| {
        match item {
            Item::Meta(m) => index = Some(Index::new(m)),
            Item::Row { rev, row } => add_snapshot_row(index.as_mut(), rev, &row)?,
            Item::Lease { .. } => leases += 1,
            _ => {}
        }
        Ok(())
    })?;
    let index = index.expect("a decoded snapshot has meta");
    Ok(Summary {
        revision: index.meta.revision,
        compacted: index.meta.compacted,
        applied: index.meta.applied,
        rows: index.len(),
        keys: index.keys(),
        leases,
    })
}

/// Decodes a snapshot from `input` into freshly emptied tables of `txn`, checking every row
/// and the CRC; the caller commits only if this returns `Ok`. Sessions beyond `sessions_max`
/// (a snapshot from a node configured with more) are evicted by the usual rule, least
/// recently seen first.
pub(crate) fn load_from(
    txn: &WriteTransaction,
    input: &mut dyn Read,
    sessions_max: usize,
) -> Result<(Index, Sessions), Error> {
    let mut revs = txn.open_table(REVS)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut attached = txn.open_table(LEASE_KEYS)?;
    let mut sessions = Vec::new();
    let mut members = Vec::new();
    let mut removed = Vec::new();
    let mut alarms = Vec::new();
    let mut auth = crate::auth::AuthState::default();
    let mut clients = std::collections::HashSet::new();
    let mut index: Option<Index> = None;
    decode(input, &mut |item| {
        match item {
            Item::Meta(meta) => {
                meta.write(txn)?;
                index = Some(Index::new(meta));
            }
            Item::Row { rev, row } => {
                add_snapshot_row(index.as_mut(), rev, &row)?;
                revs.insert(rev.key(), row.as_slice())?;
            }
            Item::Lease { id, ttl } => {
                leases.insert(id, ttl)?;
            }
            Item::Attached { id, key } => {
                attached.insert((id, key.as_slice()), ())?;
            }
            Item::Session { id, row } => {
                if !clients.insert(id) {
                    return Err(bad("a session twice"));
                }
                sessions.push((id, Row::decode(&row)?));
            }
            Item::Member(m) => members.push(m),
            Item::Removed(id) => removed.push(id),
            Item::Alarm(m) => alarms.push(m),
            Item::Auth(state) => auth = state,
        }
        Ok(())
    })?;
    crate::alarms::replace(&mut txn.open_table(ALARMS)?, &alarms)?;
    crate::auth::store(&mut txn.open_table(crate::auth::AUTH)?, &auth)?;
    crate::members::replace(
        &mut txn.open_table(MEMBERS)?,
        &mut txn.open_table(MEMBERS_REMOVED)?,
        &members,
        &removed,
    )?;
    let mut table = txn.open_table(SESSIONS)?;
    store_rows(&mut table, sessions)?;
    // The rows hold live sessions only: nothing below them needs a watermark, unless this
    // member keeps fewer.
    let memory = Sessions::load(&table, sessions_max, 0)?;
    txn.open_table(META)?
        .insert(crate::store::META_SESSIONS_EVICTED, memory.evicted)?;
    Ok((index.expect("a decoded snapshot has meta"), memory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Record;
    use crate::store::{Options, Store};
    use crate::types::RangeRequest;

    /// A version 1 snapshot (rows by key, one per key and revision), as format 2 stores wrote.
    fn version_1() -> Vec<u8> {
        let mut w = Writer(MAGIC.to_vec());
        w.u8(VERSION_HISTORY_BY_KEY);
        w.u64(4); // revision
        w.u64(0); // compacted
        w.u64(9); // applied
        let put = |create, version, v: &str| {
            let mut out = Vec::new();
            Record::Put {
                create,
                version,
                lease: 0,
                value: v.as_bytes().to_vec(),
            }
            .encode_into(&mut out);
            out
        };
        let mut tomb = Vec::new();
        Record::Tombstone.encode_into(&mut tomb);
        let rows = [
            (&b"a"[..], 2u64, put(2, 1, "1")),
            (b"a", 3, put(2, 2, "2")),
            (b"b", 3, put(3, 1, "3")),
            (b"c", 4, tomb), // put and deleted in revision 4
        ];
        w.u64(rows.len() as u64);
        for (key, rev, row) in &rows {
            w.bytes(key);
            w.u64(*rev);
            w.bytes(row);
        }
        w.u64(0); // leases
        w.u64(0); // attached
        w.u64(0); // sessions
        let crc = crc32fast::hash(&w.0);
        w.0.extend_from_slice(&crc.to_le_bytes());
        w.0
    }

    #[test]
    fn a_version_1_snapshot_still_loads() {
        let snap = version_1();
        assert_eq!(verify(&mut &snap[..]).expect("verifies"), 9);
        let store = Store::in_memory(Options::default()).expect("store");
        store.restore(&snap).expect("restores");
        store.check_invariants().expect("invariants");
        let r = store
            .range(&RangeRequest::range("\0", "\0"))
            .expect("range");
        let got: Vec<(&[u8], &[u8], i64)> = r
            .kvs
            .iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice(), kv.version))
            .collect();
        assert_eq!(got, vec![(&b"a"[..], &b"2"[..], 2), (b"b", b"3", 1)]);
        assert_eq!(store.revision().expect("rev"), 4);
        // Written back, it is a version 2 snapshot of the same state.
        let again = store.snapshot().expect("snapshot");
        assert_eq!(again[MAGIC.len()], VERSION);
        let copy = Store::in_memory(Options::default()).expect("store");
        copy.restore(&again).expect("restores");
        assert_eq!(copy.hash().expect("hash"), store.hash().expect("hash"));
    }

    /// The auth section of a snapshot of a store that never saw an auth request: the
    /// default state, length-prefixed.
    fn default_auth_field() -> Vec<u8> {
        let state = crate::auth::AuthState::default().encode();
        let mut w = Writer(Vec::new());
        w.bytes(&state);
        w.0
    }

    /// `snapshot` (current version, default auth state) as the older `version` would have
    /// written it: without its last `strip` bytes before the auth section, under that
    /// version and its own CRC.
    fn older(snapshot: &[u8], version: u8, strip: usize) -> Vec<u8> {
        let auth = default_auth_field();
        let body = &snapshot[..snapshot.len() - 4];
        assert!(body.ends_with(&auth), "ends with the default auth state");
        let body = &body[..body.len() - auth.len()];
        let mut old = body[..body.len() - strip].to_vec();
        old[MAGIC.len()] = version;
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        old
    }

    /// A version 3 snapshot (before alarms) still loads, with no alarm; a version 4 one
    /// (before auth) restores its alarms.
    #[test]
    fn a_version_3_snapshot_still_loads_and_alarms_round_trip() {
        use crate::alarms::{AlarmAction, AlarmMember, AlarmType};
        use crate::{Command, PutRequest, Request};
        let store = Store::in_memory(Options::default()).expect("store");
        store
            .apply(1, &Command::new(Request::Put(PutRequest::new("k", "v"))))
            .expect("put");
        // Without alarms, the alarms end with a zero count: a version 3 snapshot is that
        // without the count (nor the auth state), under version 3 and its own CRC.
        let v5 = store.snapshot().expect("snapshot");
        let v3 = older(&v5, VERSION_NO_ALARMS, 1);
        let copy = Store::in_memory(Options::default()).expect("store");
        let raised = AlarmMember {
            member_id: 4,
            alarm: AlarmType::NoSpace,
        };
        let raise = Command::new(Request::Alarm {
            action: AlarmAction::Activate,
            alarm: raised,
        });
        copy.apply(1, &raise).expect("raise");
        copy.restore(&v3).expect("version 3 restores");
        assert!(copy.alarms().is_empty());
        assert_eq!(copy.hash().expect("hash"), store.hash().expect("hash"));

        store.apply(2, &raise).expect("raise");
        let with = store.snapshot().expect("snapshot");
        let v4 = older(&with, VERSION_NO_AUTH, 0);
        copy.restore(&v4).expect("version 4 restores");
        assert_eq!(copy.alarms(), vec![raised]);
        // Alarms out of order or over the bound are a bad snapshot.
        let mut bad = v4[..v4.len() - 4].to_vec();
        let n = bad.len() - 3; // count, member 4, type 1
        bad[n] = 200;
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        assert!(verify(&mut &bad[..]).is_err());
    }

    /// The auth state travels in a version 5 snapshot; a version 4 one restores auth
    /// disabled with no users, whatever the store held before.
    #[test]
    fn the_auth_state_round_trips_and_a_version_4_snapshot_clears_it() {
        use crate::auth::AuthRequest;
        use crate::{Command, Request};
        let store = Store::in_memory(Options::default()).expect("store");
        let plain = store.snapshot().expect("snapshot");
        let v4 = older(&plain, VERSION_NO_AUTH, 0);
        let requests = [
            AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: Some("$2b$10$x".into()),
            },
            AuthRequest::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::Enable,
        ];
        for (i, r) in requests.into_iter().enumerate() {
            store
                .apply(i as u64 + 1, &Command::new(Request::Auth(r)))
                .expect("auth request");
        }
        let state = store.auth_state();
        assert!(state.enabled);
        let snap = store.snapshot().expect("snapshot");
        let copy = Store::in_memory(Options::default()).expect("store");
        copy.restore(&snap).expect("restores");
        assert_eq!(*copy.auth_state(), *state);
        assert_eq!(copy.hash().expect("hash"), store.hash().expect("hash"));
        copy.restore(&v4).expect("version 4 restores");
        assert_eq!(*copy.auth_state(), crate::auth::AuthState::default());
        assert_ne!(
            copy.hash().expect("hash"),
            store.hash().expect("hash"),
            "the auth state is part of the replicated state's hash"
        );
        // A state that breaks an invariant (enabled without root) is a bad snapshot.
        let broken = crate::auth::AuthState {
            enabled: true,
            ..Default::default()
        };
        let mut w = Writer(Vec::new());
        w.bytes(&broken.encode());
        let body = &plain[..plain.len() - 4];
        let mut bad = body[..body.len() - default_auth_field().len()].to_vec();
        bad.extend_from_slice(&w.0);
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        assert!(verify(&mut &bad[..]).is_err());
    }
}
