//! [`Store`]: the state machine the server applies committed Raft entries to.

use std::path::Path;

use redb::backends::InMemoryBackend;
use redb::{
    Database, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::command::{Command, Request, Response};
use crate::error::{Error, KvError};
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::{scan_live, KeySpan, Record, BY_REV, HISTORY};
use crate::range;
use crate::session::{self, Lookup, Outcome, SESSIONS, SESSIONS_BY_INDEX};
use crate::txn;
use crate::types::{Lease, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::write::Writer;

/// Scalar state: `name -> u64`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compact_revision";
pub(crate) const META_APPLIED: &str = "applied_index";
/// Layout version of the tables; bump on any incompatible change.
const META_FORMAT: &str = "format";
/// 2: adds the history index by revision (built from the history when a format-1 store opens).
const FORMAT: u64 = 2;

/// Whether a request runs for real or is replayed to answer a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    No,
    Yes,
}

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every apply is fsynced before it returns (redb's default).
    #[default]
    Immediate,
    /// Only every `commits_per_sync`-th commit, and [`Store::sync`], reach the disk; the others
    /// use redb's non-durable commits (visible to readers at once, no fsync). A crash loses
    /// the applies since the last durable commit, never tears one: after reopening,
    /// `applied_index()` says where to resume and the server replays the rest from its Raft
    /// log. So the server must call [`Store::sync`] before discarding log entries it has
    /// applied (log compaction), and must not answer clients from its own acknowledgement of
    /// apply alone (a Raft-committed entry is durable in the log anyway).
    Batched {
        /// Commits between two fsyncs; at least 1 (1 behaves like `Immediate`).
        commits_per_sync: u32,
    },
}

/// Store configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Commit durability.
    pub durability: Durability,
    /// Most client sessions kept for exactly-once application; at least 1.
    pub sessions_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Immediate,
            sessions_max: 10_000,
        }
    }
}

impl Options {
    /// Explains what is wrong with the options, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions_max == 0 {
            return Err("sessions_max must be at least 1".into());
        }
        if self.durability
            == (Durability::Batched {
                commits_per_sync: 0,
            })
        {
            return Err("durability commits_per_sync must be at least 1".into());
        }
        Ok(())
    }
}

/// The scalar state of the store.
///
/// Invariants: `1 <= revision`; `compacted <= revision`; `applied` only grows (except through
/// [`Store::restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Current store revision; 1 for an empty store, as in etcd.
    pub(crate) revision: u64,
    /// Compacted revision; 0 before any compaction.
    pub(crate) compacted: u64,
    /// Index of the last Raft entry applied.
    pub(crate) applied: u64,
}

impl Meta {
    pub(crate) fn read(t: &impl ReadableTable<&'static str, u64>) -> Result<Meta, Error> {
        let get = |name: &str| -> Result<u64, Error> {
            t.get(name)?
                .map(|v| v.value())
                .ok_or_else(|| Error::Corrupt(format!("meta {name} missing")))
        };
        let meta = Meta {
            revision: get(META_REVISION)?,
            compacted: get(META_COMPACTED)?,
            applied: get(META_APPLIED)?,
        };
        if meta.revision == 0 || meta.compacted > meta.revision {
            return Err(Error::Corrupt(format!("meta out of order: {meta:?}")));
        }
        Ok(meta)
    }

    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), Error> {
        let mut t = txn.open_table(META)?;
        t.insert(META_REVISION, self.revision)?;
        t.insert(META_COMPACTED, self.compacted)?;
        t.insert(META_APPLIED, self.applied)?;
        Ok(())
    }
}

/// The MVCC key-value state machine on a redb database.
///
/// Every method takes `&self`: redb serialises write transactions and gives readers a
/// consistent snapshot, so reads may run on other threads while entries are applied.
pub struct Store {
    /// The database; all state lives in it (nothing is cached).
    db: Database,
    /// Validated options.
    options: Options,
    /// Write transactions begun since the last durable one (for [`Durability::Batched`]).
    commits_unsynced: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// See [`Store::snapshot_view`].
pub struct SnapshotView {
    txn: ReadTransaction,
}

impl SnapshotView {
    /// The applied index the view is at.
    pub fn applied_index(&self) -> Result<u64, Error> {
        Ok(Meta::read(&self.txn.open_table(META)?)?.applied)
    }

    /// The view as snapshot bytes (the format of [`Store::snapshot`]).
    pub fn bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Streams the serialized state into `out` a slice at a time (never whole in memory);
    /// returns the bytes written.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> Result<u64, Error> {
        crate::snapshot::write_to(&self.txn, out)
    }
}

impl Store {
    /// Opens (or creates) the store in the redb file at `path`.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store, Error> {
        options.validate().map_err(Error::Config)?;
        Store::init(Database::create(path)?, options)
    }

    /// A store held in memory (tests, simulation).
    pub fn in_memory(options: Options) -> Result<Store, Error> {
        options.validate().map_err(Error::Config)?;
        Store::init(
            Database::builder().create_with_backend(InMemoryBackend::new())?,
            options,
        )
    }

    fn init(db: Database, options: Options) -> Result<Store, Error> {
        let store = Store {
            db,
            options,
            commits_unsynced: std::sync::atomic::AtomicU32::new(0),
        };
        let txn = store.begin_write()?;
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
                txn.open_table(META)?.insert(META_FORMAT, FORMAT)?;
            }
            Some(FORMAT) => {}
            Some(1) => {
                let history = txn.open_table(HISTORY)?;
                let mut by_rev = txn.open_table(BY_REV)?;
                for row in history.iter()? {
                    let (k, _) = row?;
                    let (key, rev) = k.value();
                    by_rev.insert((rev, key), ())?;
                }
                txn.open_table(META)?.insert(META_FORMAT, FORMAT)?;
            }
            Some(other) => {
                return Err(Error::Corrupt(format!(
                    "store format {other}, this build reads format {FORMAT}"
                )))
            }
        }
        txn.commit()?;
        Ok(store)
    }

    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, Error> {
        let mut txn = self.db.begin_write()?;
        if let Durability::Batched { commits_per_sync } = self.options.durability {
            use std::sync::atomic::Ordering::Relaxed;
            // Write transactions are serialised by redb, so this count is exact.
            let unsynced = self.commits_unsynced.fetch_add(1, Relaxed) + 1;
            if unsynced >= commits_per_sync {
                self.commits_unsynced.store(0, Relaxed);
            } else {
                txn.set_durability(redb::Durability::None);
            }
        }
        Ok(txn)
    }

    /// Makes every commit so far durable (one empty durable commit). Only needed with
    /// [`Durability::Batched`]; cheap otherwise.
    pub fn sync(&self) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        txn.commit()?;
        self.commits_unsynced
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, Error> {
        Ok(self.db.begin_read()?)
    }

    /// Applies the committed Raft entry `index` carrying `cmd`, atomically with recording
    /// `index` as the applied index.
    ///
    /// Returns the response, or `Err(Error::Kv(_))` for a deterministic request failure (also
    /// applied: the index advances and a session remembers it). `Err(Error::AlreadyApplied)`
    /// means `index <= applied_index()` and nothing happened; other errors are storage faults
    /// after which nothing was applied and the server should stop.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Response, Error> {
        let txn = self.begin_write()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        if index <= meta.applied {
            return Err(Error::AlreadyApplied {
                index,
                applied: meta.applied,
            });
        }
        if let Some(answer) = session_answer(&txn, cmd, index, self.options.sessions_max)? {
            Meta {
                applied: index,
                ..meta
            }
            .write(&txn)?;
            txn.commit()?;
            return self.answer(&cmd.request, answer)?.map_err(Error::Kv);
        }
        let rev_before = meta.revision;
        let (txn, meta, result) = match execute(&txn, meta, &cmd.request) {
            Ok((resp, after)) => (txn, after, Ok(resp)),
            Err(Error::Kv(e)) => {
                // Undo the partial writes; the failure itself is still applied.
                txn.abort()?;
                (self.begin_write()?, meta, Err(e))
            }
            Err(other) => return Err(other),
        };
        if let Some(s) = cmd.session {
            let outcome = Outcome::of(&cmd.request, &result, rev_before);
            session::record(&txn, s, index, &outcome, self.options.sessions_max)?;
        }
        Meta {
            applied: index,
            ..meta
        }
        .write(&txn)?;
        txn.commit()?;
        result.map_err(Error::Kv)
    }

    /// Applies a run of committed Raft entries in one write transaction (one commit, so the
    /// pages and the sync are shared; etcd's backend batches the same way). `None` marks an
    /// entry without a command (no-op, configuration): only the applied index moves.
    ///
    /// Results match calling [`Store::apply`] / [`Store::advance_applied`] on each entry in
    /// order, with `None` for entries at or below the applied index (already applied) and for
    /// entries without a command. If a request fails (`KvError`), it may have written part
    /// of its effect before failing, so the batch is abandoned and redone one transaction per
    /// entry, which undoes a failed request alone. Storage faults return `Err` with nothing
    /// of the uncommitted part of the batch applied.
    pub fn apply_batch(
        &self,
        entries: &[(u64, Option<&Command>)],
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        self.apply_batch_answering(entries, |_, _| true)
    }

    /// [`Store::apply_batch`], computing the answer of a retry that must be replayed (see
    /// `session`) only where `wanted(index, command)` says someone waits for it; elsewhere its
    /// result is `None`. A replay runs after the entries before it are committed, so it sees
    /// exactly the state applying entry by entry would show it.
    pub fn apply_batch_answering(
        &self,
        entries: &[(u64, Option<&Command>)],
        wanted: impl Fn(u64, &Command) -> bool,
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = self.begin_write()?;
        let mut meta = Meta::read(&txn.open_table(META)?)?;
        let mut out = Vec::with_capacity(entries.len());
        // Entries before this position are committed.
        let mut committed = 0;
        for (pos, &(index, cmd)) in entries.iter().enumerate() {
            if index <= meta.applied {
                out.push(None);
                continue;
            }
            let Some(cmd) = cmd else {
                meta.applied = index;
                out.push(None);
                continue;
            };
            if let Some(answer) = session_answer(&txn, cmd, index, self.options.sessions_max)? {
                meta.applied = index;
                match answer {
                    Outcome::Stored(result) => out.push(Some(result)),
                    Outcome::Replay { rev_before } if wanted(index, cmd) => {
                        // A replay needs its own transaction: commit what came before.
                        meta.write(&txn)?;
                        txn.commit()?;
                        committed = pos + 1;
                        out.push(Some(self.replay(&cmd.request, rev_before)?));
                        txn = self.begin_write()?;
                        meta = Meta::read(&txn.open_table(META)?)?;
                    }
                    Outcome::Replay { .. } => out.push(None),
                }
                continue;
            }
            match execute(&txn, meta, &cmd.request) {
                Ok((resp, after)) => {
                    let result = Ok(resp);
                    if let Some(s) = cmd.session {
                        let outcome = Outcome::of(&cmd.request, &result, meta.revision);
                        session::record(&txn, s, index, &outcome, self.options.sessions_max)?;
                    }
                    meta = Meta {
                        applied: index,
                        ..after
                    };
                    out.push(Some(result));
                }
                Err(Error::Kv(_)) => {
                    txn.abort()?;
                    out.truncate(committed);
                    out.extend(self.apply_each(&entries[committed..])?);
                    return Ok(out);
                }
                Err(other) => return Err(other),
            }
        }
        meta.write(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// The answer to a retry: as stored, or replayed.
    fn answer(
        &self,
        request: &Request,
        outcome: Outcome,
    ) -> Result<Result<Response, KvError>, Error> {
        match outcome {
            Outcome::Stored(result) => Ok(result),
            Outcome::Replay { rev_before } => self.replay(request, rev_before),
        }
    }

    /// Answers a retry of `request`, first applied when the store revision was `rev_before`,
    /// by running it again as of that revision in a write transaction that is never
    /// committed: the history after `rev_before` is removed first, so the request sees what it
    /// saw then, and lease checks are skipped (it passed them then; only its answer is
    /// wanted). If what it read was compacted away since, the answer is
    /// [`KvError::AnswerLost`] (applied; the answer is gone). Runs only for retries whose
    /// answer someone waits for, which are rare; costs one delete per row written since.
    fn replay(
        &self,
        request: &Request,
        rev_before: u64,
    ) -> Result<Result<Response, KvError>, Error> {
        let txn = self.db.begin_write()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        if rev_before < meta.compacted || rev_before > meta.revision {
            txn.abort()?;
            return Ok(Err(KvError::AnswerLost));
        }
        {
            let mut history = txn.open_table(HISTORY)?;
            let mut by_rev = txn.open_table(BY_REV)?;
            loop {
                let (rev, key) = match by_rev.last()? {
                    Some((k, _)) => {
                        let (rev, key) = k.value();
                        (rev, key.to_vec())
                    }
                    None => break,
                };
                if rev <= rev_before {
                    break;
                }
                by_rev.remove((rev, key.as_slice()))?;
                history.remove((key.as_slice(), rev))?;
            }
        }
        let then = Meta {
            revision: rev_before,
            ..meta
        };
        let r = execute_as(&txn, then, request, Replay::Yes);
        txn.abort()?;
        match r {
            Ok((resp, _)) => Ok(Ok(resp)),
            // It succeeded when it was applied (only successes are replayed): what it read
            // then is gone (a range at a revision compacted since).
            Err(Error::Kv(_)) => Ok(Err(KvError::AnswerLost)),
            Err(other) => Err(other),
        }
    }

    /// [`Store::apply_batch`] one transaction per entry.
    fn apply_each(
        &self,
        entries: &[(u64, Option<&Command>)],
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        let mut out = Vec::with_capacity(entries.len());
        for &(index, cmd) in entries {
            let r = match cmd {
                Some(cmd) => self.apply(index, cmd).map(Some),
                None => self.advance_applied(index).map(|()| None),
            };
            match r {
                Ok(resp) => out.push(resp.map(Ok)),
                Err(Error::AlreadyApplied { .. }) => out.push(None),
                Err(Error::Kv(e)) => out.push(Some(Err(e))),
                Err(other) => return Err(other),
            }
        }
        Ok(out)
    }

    /// Records that Raft entry `index`, which carries no command (an election no-op, a
    /// configuration change), has been applied. Same skipping rule as [`Store::apply`].
    pub fn advance_applied(&self, index: u64) -> Result<(), Error> {
        let txn = self.begin_write()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        if index <= meta.applied {
            return Err(Error::AlreadyApplied {
                index,
                applied: meta.applied,
            });
        }
        Meta {
            applied: index,
            ..meta
        }
        .write(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// A range read outside Raft (serializable, or linearizable after a ReadIndex round).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        range::range(
            &txn.open_table(HISTORY)?,
            req,
            meta.revision,
            meta.compacted,
        )
    }

    /// A read-only transaction ([`TxnRequest::is_read_only`]) served outside Raft, like a
    /// range (etcd serves these without a log entry): validated as any request, then run on
    /// one consistent read view. Panics on a transaction that writes (the caller's check).
    pub fn txn_read_only(&self, t: &TxnRequest) -> Result<TxnResponse, Error> {
        assert!(
            t.is_read_only(),
            "txn_read_only given a transaction that writes"
        );
        txn::check_txn_request(t)?;
        let rtxn = self.begin_read()?;
        let meta = Meta::read(&rtxn.open_table(META)?)?;
        txn::execute_read_only(&rtxn.open_table(HISTORY)?, t, meta.revision, meta.compacted)
    }

    fn meta(&self) -> Result<Meta, Error> {
        Meta::read(&self.begin_read()?.open_table(META)?)
    }

    /// Current revision (1 for an empty store; +1 per write transaction that changed a key).
    pub fn revision(&self) -> Result<i64, Error> {
        Ok(self.meta()?.revision as i64)
    }

    /// Revision of the last compaction, 0 if none.
    pub fn compact_revision(&self) -> Result<i64, Error> {
        Ok(self.meta()?.compacted as i64)
    }

    /// Index of the last Raft entry applied; the server resumes at the next one.
    pub fn applied_index(&self) -> Result<u64, Error> {
        Ok(self.meta()?.applied)
    }

    /// Granted leases in id order.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        lease::all(&self.begin_read()?.open_table(LEASES)?)
    }

    /// Keys attached to lease `id` (empty for an unknown lease), ascending.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, Error> {
        lease::keys_of(&self.begin_read()?.open_table(LEASE_KEYS)?, id)
    }

    /// A CRC-32 of the replicated state at the current revision, for comparing replicas: the
    /// revision, compacted revision, every history row kept and every lease. Sessions and the
    /// applied index are left out (they are bookkeeping, not keyspace). Returns
    /// `(revision, hash)`.
    pub fn hash(&self) -> Result<(i64, u32), Error> {
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&meta.revision.to_le_bytes());
        h.update(&meta.compacted.to_le_bytes());
        for row in txn.open_table(HISTORY)?.iter()? {
            let (k, v) = row?;
            let (key, rev) = k.value();
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(&rev.to_le_bytes());
            h.update(&(v.value().len() as u64).to_le_bytes());
            h.update(v.value());
        }
        for l in lease::all(&txn.open_table(LEASES)?)? {
            h.update(&l.id.to_le_bytes());
            h.update(&l.ttl.to_le_bytes());
        }
        Ok((meta.revision as i64, h.finalize()))
    }

    /// Checks the cross-table invariants; a violation is a bug and panics. Linear in the size
    /// of the store: for tests and the simulator.
    pub fn check_invariants(&self) -> Result<(), Error> {
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let history = txn.open_table(HISTORY)?;
        let leases = txn.open_table(LEASES)?;
        let lease_keys = txn.open_table(LEASE_KEYS)?;
        for row in history.iter()? {
            let (k, _) = row?;
            assert!(
                k.value().1 <= meta.revision,
                "history row above the store revision"
            );
        }
        let mut attached = 0u64;
        scan_live(
            &history,
            KeySpan::From(&[]),
            meta.revision,
            |key, _, bytes| {
                if let Record::Put { lease, .. } = Record::decode(bytes)? {
                    if lease != 0 {
                        attached += 1;
                        assert!(leases.get(lease)?.is_some(), "live key on a revoked lease");
                        assert!(
                            lease_keys.get((lease, key))?.is_some(),
                            "key missing from its lease"
                        );
                    }
                }
                Ok(true)
            },
        )?;
        assert_eq!(
            lease_keys.iter()?.count() as u64,
            attached,
            "stale lease attachments"
        );
        let by_rev = txn.open_table(BY_REV)?;
        assert_eq!(
            by_rev.len()?,
            history.len()?,
            "index by revision out of step with history"
        );
        for row in by_rev.iter()? {
            let (k, _) = row?;
            let (rev, key) = k.value();
            assert!(
                history.get((key, rev))?.is_some(),
                "index by revision lists a missing row"
            );
        }
        let sessions = txn.open_table(SESSIONS)?.iter()?.count();
        assert_eq!(sessions, txn.open_table(SESSIONS_BY_INDEX)?.iter()?.count());
        assert!(sessions <= self.options.sessions_max);
        Ok(())
    }

    /// The whole state as bytes, from one consistent read transaction (see [`crate::snapshot`]).
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        crate::snapshot::write_to(&self.begin_read()?, &mut out)?;
        Ok(out)
    }

    /// A consistent view of the current state that can be serialized later, on another
    /// thread, while writes go on (redb's MVCC keeps the view's pages alive until it is
    /// dropped).
    pub fn snapshot_view(&self) -> Result<SnapshotView, Error> {
        Ok(SnapshotView {
            txn: self.begin_read()?,
        })
    }

    /// Replaces the whole state (including the applied index) with a snapshot, atomically: on
    /// any error, including a corrupt snapshot, the store is unchanged.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), Error> {
        self.restore_from(&mut &snapshot[..])
    }

    /// [`Store::restore`] from a stream: rows go straight into one write transaction, which
    /// commits only once the whole snapshot (and its checksum) has been read.
    pub fn restore_from(&self, input: &mut dyn std::io::Read) -> Result<(), Error> {
        let txn = self.begin_write()?;
        txn.delete_table(HISTORY)?;
        txn.delete_table(BY_REV)?;
        txn.delete_table(LEASES)?;
        txn.delete_table(LEASE_KEYS)?;
        txn.delete_table(SESSIONS)?;
        txn.delete_table(SESSIONS_BY_INDEX)?;
        create_tables(&txn)?;
        crate::snapshot::load_from(&txn, input, self.options.sessions_max)?;
        txn.commit()?;
        Ok(())
    }
}

/// The answer a command gets from its session without being executed: the outcome of a retry
/// (the session is touched at `index`) or a refusal. `None`: execute it.
fn session_answer(
    txn: &WriteTransaction,
    cmd: &Command,
    index: u64,
    sessions_max: usize,
) -> Result<Option<Outcome>, Error> {
    let Some(s) = cmd.session else {
        return Ok(None);
    };
    Ok(match session::lookup(txn, s, sessions_max)? {
        Lookup::Apply => None,
        Lookup::Retry(outcome) => {
            session::touch(txn, s.client_id, index)?;
            Some(outcome)
        }
        Lookup::Refuse(e) => Some(Outcome::Stored(Err(e))),
    })
}

/// Creates every table so that read transactions can open them.
fn create_tables(txn: &WriteTransaction) -> Result<(), Error> {
    txn.open_table(META)?;
    txn.open_table(HISTORY)?;
    txn.open_table(BY_REV)?;
    txn.open_table(LEASES)?;
    txn.open_table(LEASE_KEYS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(SESSIONS_BY_INDEX)?;
    Ok(())
}

/// Validates and runs one request in `txn`, returning the response and the new meta
/// (`applied` unchanged). On `Err` the transaction may hold partial writes: abort it.
fn execute(txn: &WriteTransaction, meta: Meta, req: &Request) -> Result<(Response, Meta), Error> {
    execute_as(txn, meta, req, Replay::No)
}

/// [`execute`], or its replay for a retry's answer (see [`Store::replay`]).
fn execute_as(
    txn: &WriteTransaction,
    meta: Meta,
    req: &Request,
    replay: Replay,
) -> Result<(Response, Meta), Error> {
    txn::check_request(req)?;
    let mut w = Writer::new(txn, meta.revision, meta.compacted)?;
    w.replay = replay == Replay::Yes;
    let resp = match req {
        Request::Range(r) => Response::Range(w.range(r)?),
        Request::Put(p) => Response::Put(w.put(p)?),
        Request::DeleteRange(d) => Response::DeleteRange(w.delete(d)?),
        Request::Txn(t) => Response::Txn(txn::execute(&mut w, t)?),
        Request::Compact { revision } => {
            w.compact(*revision)?;
            Response::Compact {
                revision: w.read_rev() as i64,
            }
        }
        Request::LeaseGrant { id, ttl } => {
            w.lease_grant(*id, *ttl)?;
            Response::LeaseGrant {
                revision: w.read_rev() as i64,
                id: *id,
                ttl: *ttl,
            }
        }
        Request::LeaseRevoke { id } => {
            w.lease_revoke(*id)?;
            Response::LeaseRevoke {
                revision: w.read_rev() as i64,
            }
        }
    };
    let after = Meta {
        revision: w.read_rev(),
        compacted: w.compacted(),
        applied: meta.applied,
    };
    drop(w);
    assert!(after.revision == meta.revision || after.revision == meta.revision + 1);
    if after != meta {
        after.write(txn)?;
    }
    Ok((resp, after))
}
