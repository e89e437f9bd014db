//! [`Store`]: the state machine the server applies committed Raft entries to.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::Error;
use crate::index::Index;
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::REVS;
use crate::range;
use crate::session::{Sessions, SESSIONS};
use crate::txn;
use crate::types::{Lease, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::view::ReadView;

/// Scalar state: `name -> u64`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compact_revision";
pub(crate) const META_APPLIED: &str = "applied_index";
/// The largest index of an evicted session (see `session::live_rows`); absent means 0.
pub(crate) const META_SESSIONS_EVICTED: &str = "sessions_evicted";
/// Layout version of the tables; bump on any incompatible change.
pub(crate) const META_FORMAT: &str = "format";
/// 4: one table of rows by revision, an in-memory key index, and the sessions of each write
/// transaction stored as one row. Formats 1 and 2 (history by key) and 3 (rows by revision,
/// sessions one row each) are converted when they open; see `open`.
pub(crate) const FORMAT: u64 = 4;

/// What a member can tell of a token ([`Store::lookup_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// Live, the user's.
    Live(String),
    /// Unknown here, and never to be known: refuse it at once.
    Invalid,
    /// Unknown here yet: its entry may apply here later (wait for a read barrier).
    NotYet,
}

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every apply is fsynced before it returns (redb's default).
    #[default]
    Immediate,
    /// Only some commits, and [`Store::sync`], reach the disk: the first one after
    /// `commits_per_sync` commits or `interval` since the last durable one, whichever comes
    /// first. The others use redb's non-durable commits (visible to readers at once, no
    /// fsync). A crash loses the applies since the last durable commit, never tears one:
    /// after reopening, `applied_index()` says where to resume and the server replays the rest
    /// from its Raft log. So the server must call [`Store::sync`] before discarding log
    /// entries it has applied (log compaction), and must not answer clients from its own
    /// acknowledgement of apply alone (a Raft-committed entry is durable in the log anyway).
    ///
    /// Why both bounds: a durable commit costs an fsync that every request applied with it
    /// waits for, so it should be rare (the time bound keeps it under 1 in 1000 requests at
    /// 1000 sequential writes a second); but redb reuses the pages a non-durable commit frees
    /// only after the next durable one, so the file grows with the commits between two
    /// (the count bound caps that growth).
    Batched {
        /// Commits between two fsyncs, at most; at least 1 (1 behaves like `Immediate`).
        commits_per_sync: u32,
        /// Time between two fsyncs, at most (checked when a commit begins).
        interval: std::time::Duration,
    },
}

/// Store configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Commit durability.
    pub durability: Durability,
    /// Most client sessions kept for exactly-once application; at least 1.
    pub sessions_max: usize,
    /// Grouped commits (etcd's backend batch interval): applies share one redb write
    /// transaction, committed once it is this old (checked at each apply), when it holds
    /// `GROUP_ROWS_MAX` rows or `GROUP_BYTES_MAX` bytes, and before anything that reads
    /// the committed state whole (snapshots, audits, syncs, compactions, lease tables).
    /// Readers see the open transaction's rows through the index (see `pending`). Zero:
    /// every apply commits.
    ///
    /// Why: a redb commit copies the pages it touches, so committing every apply batch wrote
    /// about 19 KB per 300-byte put at one client, and the commits were 7% of a loaded
    /// cluster's CPU. Like [`Durability::Batched`], this relies on the caller replaying
    /// applied entries from its log after a crash.
    pub commit_delay: std::time::Duration,
}

/// Rows of an open grouped transaction that make the next apply commit it.
pub const GROUP_ROWS_MAX: usize = 50_000;
/// Row bytes of an open grouped transaction that make the next apply commit it.
pub const GROUP_BYTES_MAX: usize = 32 << 20;

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Immediate,
            sessions_max: 10_000,
            commit_delay: std::time::Duration::ZERO,
        }
    }
}

impl Options {
    /// Explains what is wrong with the options, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions_max == 0 {
            return Err("sessions_max must be at least 1".into());
        }
        if let Durability::Batched {
            commits_per_sync: 0,
            ..
        } = self.durability
        {
            return Err("durability commits_per_sync must be at least 1".into());
        }
        if self.commit_delay > std::time::Duration::from_secs(10) {
            return Err("commit_delay must be at most 10 s".into());
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

/// The stored eviction watermark of the sessions.
pub(crate) fn sessions_evicted(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, Error> {
    Ok(meta.get(META_SESSIONS_EVICTED)?.map_or(0, |v| v.value()))
}

/// Told the duration of a state machine commit (see [`Store::observe_commits`]).
pub type CommitObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// The MVCC key-value state machine on a redb database.
///
/// Every method takes `&self`. The rows, leases and sessions live in redb; the key index
/// (`index` module) lives in memory behind a lock, with the meta of the last commit merged
/// into it. Readers hold the index's read lock while they open a redb read transaction, so
/// what they see is one consistent state; the apply thread commits to redb first and merges
/// the commit into the index after (a compaction removes from the index first). After a
/// storage fault ([`Error`] other than `Kv` and `AlreadyApplied`) the store must be dropped
/// and opened again, which rebuilds the index from what reached the disk.
pub struct Store {
    /// Rows, leases, sessions, meta. Behind a lock only so that [`Store::defragment`] can
    /// have redb alone (its compaction needs `&mut`); every other use takes the read side just
    /// to begin a transaction, which outlives the guard.
    pub(crate) db: RwLock<Database>,
    /// The file the store lives in; `None` in memory.
    pub(crate) path: Option<std::path::PathBuf>,
    /// Snapshot views alive (snapshots and backups being written): reads that may last
    /// minutes, which a defragmentation does not wait for.
    pub(crate) long_reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The last [`Store::size_in_use`] and when it was measured (it reads every page).
    pub(crate) in_use_measured: crate::defrag::Recent,
    /// The last [`Store::file_size_recent`] and when it was measured.
    pub(crate) file_size_measured: crate::defrag::Recent,
    /// Validated options.
    pub(crate) options: Options,
    /// Write transactions begun since the last durable one, and when that one began (for
    /// [`Durability::Batched`]; only the apply thread writes, so the lock is uncontended).
    unsynced: Mutex<Unsynced>,
    /// The key index and the meta of the last commit it reflects.
    pub(crate) index: RwLock<Index>,
    /// The session table in memory (changed only by the apply thread; see `session`).
    sessions: Mutex<Sessions>,
    /// The open grouped write transaction, if any (see [`Options::commit_delay`]), and when
    /// it began. An apply holds the lock for its whole batch; [`Store::settle`] commits it.
    /// Lock order: this, then the index, then the sessions.
    pub(crate) open: Mutex<Option<(WriteTransaction, std::time::Instant)>>,
    /// Set when an apply failed part-way (see [`Error::Failed`]); never cleared.
    failed: std::sync::atomic::AtomicBool,
    /// The active alarms as last committed (the `alarms` table's rows, at most
    /// [`crate::alarms::ALARMS_MAX`]): the apply gate reads them for every request, so they
    /// are kept here rather than read from redb. Changed only by the apply thread, right
    /// after the commit of the alarm request that changed them (such a request commits
    /// alone), and by a restore.
    alarms: RwLock<Vec<crate::alarms::AlarmMember>>,
    /// Told how long each commit of a write transaction took (etcd's backend commit
    /// duration), once set; see [`Store::observe_commits`].
    commit_observer: std::sync::OnceLock<CommitObserver>,
    /// The auth state as last committed (the row of [`crate::auth::AUTH`]): permission checks
    /// read it for every request. Changed only by the apply thread, right after the commit of
    /// the auth request that changed it (such a request commits alone), and by a restore.
    auth: RwLock<std::sync::Arc<crate::auth::AuthState>>,
    /// This member's simple tokens (not replicated state: assigned when an Authenticate
    /// applies, here as on every member; see [`crate::auth::tokens`]).
    tokens: Mutex<crate::auth::tokens::Tokens>,
    /// Requests whose execution took longer than [`crate::SLOW_APPLY`] since the store was
    /// opened (etcd's `slow_apply_total`, counted per request as etcd does, not per batch).
    /// Never decreases.
    pub(crate) slow_applies: std::sync::atomic::AtomicU64,
}

impl Drop for Store {
    /// Commits the open grouped transaction: a store closed in order keeps what it applied
    /// (a crash loses it, and the caller's log replays it). Not after a failure or during a
    /// panic: the transaction is then dropped, which aborts it.
    fn drop(&mut self) {
        if std::thread::panicking() || self.check_failed().is_err() {
            return;
        }
        let Ok(open) = self.open.get_mut() else {
            return;
        };
        if let Some((txn, _)) = open.take() {
            if let Err(e) = txn.commit() {
                tracing::warn!(error = %e, "closing the state machine: the last commit failed");
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Commits since the last durable one (see [`Durability::Batched`]).
#[derive(Debug)]
struct Unsynced {
    commits: u32,
    /// When the last durable commit began.
    since: std::time::Instant,
}

impl Unsynced {
    fn now() -> Unsynced {
        Unsynced {
            commits: 0,
            since: std::time::Instant::now(),
        }
    }
}

/// See [`Store::snapshot_view`].
pub struct SnapshotView {
    txn: ReadTransaction,
    /// The store's session limit: the view writes the live sessions under it.
    sessions_max: usize,
    /// Counts the view among the store's long reads while it lives (see
    /// [`Store::defragment`]).
    _long_read: crate::defrag::LongRead,
}

impl SnapshotView {
    /// The applied index the view is at.
    pub fn applied_index(&self) -> Result<u64, Error> {
        Ok(Meta::read(&self.txn.open_table(META)?)?.applied)
    }

    /// The store revision the view is at.
    pub fn revision(&self) -> Result<u64, Error> {
        Ok(Meta::read(&self.txn.open_table(META)?)?.revision)
    }

    /// The view as snapshot bytes (the format of [`Store::snapshot`]).
    pub fn bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Streams the serialized state into `out` a slice at a time (the rows are never whole in
    /// memory; the live sessions, at most `sessions_max` small records, are); returns the
    /// bytes written.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> Result<u64, Error> {
        crate::snapshot::write_to(&self.txn, self.sessions_max, out)
    }
}

impl Store {
    /// Opens (or creates) the store in the redb file at `path`, rebuilding the key index from
    /// its rows.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store, Error> {
        options.validate().map_err(Error::Config)?;
        let mut store = Store::init(Database::create(path.as_ref())?, options)?;
        store.path = Some(path.as_ref().to_path_buf());
        Ok(store)
    }

    /// A store held in memory (tests, simulation).
    pub fn in_memory(options: Options) -> Result<Store, Error> {
        options.validate().map_err(Error::Config)?;
        Store::init(
            Database::builder().create_with_backend(InMemoryBackend::new())?,
            options,
        )
    }

    pub(crate) fn init(db: Database, options: Options) -> Result<Store, Error> {
        crate::open::prepare(&db)?;
        let txn = db.begin_read()?;
        let index = crate::open::rebuild(&txn)?;
        let sessions = Sessions::load(
            &txn.open_table(SESSIONS)?,
            options.sessions_max,
            sessions_evicted(&txn.open_table(META)?)?,
        )?;
        let alarms = crate::alarms::all(&txn.open_table(crate::alarms::ALARMS)?)?;
        let auth = crate::auth::load(&txn.open_table(crate::auth::AUTH)?)?;
        drop(txn);
        Ok(Store {
            alarms: RwLock::new(alarms),
            auth: RwLock::new(std::sync::Arc::new(auth)),
            tokens: Default::default(),
            slow_applies: Default::default(),
            db: RwLock::new(db),
            path: None,
            long_reads: Default::default(),
            commit_observer: std::sync::OnceLock::new(),
            in_use_measured: Default::default(),
            file_size_measured: Default::default(),
            options,
            unsynced: Mutex::new(Unsynced::now()),
            open: Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
            index: RwLock::new(index),
            sessions: Mutex::new(sessions),
        })
    }

    /// The sessions in memory.
    pub(crate) fn lock_sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .expect("the session table lock is poisoned by an earlier panic")
    }

    /// The index, for reading.
    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .expect("the key index lock is poisoned by an earlier panic")
    }

    /// The index, for changing.
    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .expect("the key index lock is poisoned by an earlier panic")
    }

    /// A new redb write transaction. Callers other than an apply batch [`Store::settle`]
    /// first (redb has one writer at a time).
    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, Error> {
        Ok(self.lock_db().begin_write()?)
    }

    /// The database, to begin a transaction (see [`Store::db`]).
    fn lock_db(&self) -> RwLockReadGuard<'_, Database> {
        self.db
            .read()
            .expect("the database lock is poisoned by an earlier panic")
    }

    /// Commits `txn`, durably or not as [`Durability`] says.
    pub(crate) fn commit_txn(&self, mut txn: WriteTransaction) -> Result<(), Error> {
        if let Durability::Batched {
            commits_per_sync,
            interval,
        } = self.options.durability
        {
            // Write transactions are serialised by redb, so this count is exact.
            let mut unsynced = self.lock_unsynced();
            unsynced.commits += 1;
            if unsynced.commits >= commits_per_sync || unsynced.since.elapsed() >= interval {
                *unsynced = Unsynced::now();
            } else {
                // Not synced: not what etcd's backend commit histogram measures.
                drop(unsynced);
                txn.set_durability(redb::Durability::None);
                txn.commit()?;
                return Ok(());
            }
        }
        self.timed_commit(txn)?;
        Ok(())
    }

    /// Commits `txn` durably (an fsync, like every bolt commit in etcd), telling the commit
    /// observer how long it took.
    fn timed_commit(&self, txn: WriteTransaction) -> Result<(), redb::CommitError> {
        let began = std::time::Instant::now();
        let committed = txn.commit();
        if let Some(observe) = self.commit_observer.get() {
            observe(began.elapsed());
        }
        committed
    }

    /// Requests whose execution took longer than [`crate::SLOW_APPLY`] since the store was
    /// opened (each on its own, whatever the batch it was applied in).
    pub fn slow_applies(&self) -> u64 {
        self.slow_applies.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Has `observe` told the duration of every commit of the state machine's write
    /// transactions from now on (for metrics: etcd's
    /// `etcd_disk_backend_commit_duration_seconds`). Only the first observer set is kept.
    pub fn observe_commits(&self, observe: CommitObserver) {
        let _ = self.commit_observer.set(observe);
    }

    /// The open grouped transaction's slot.
    pub(crate) fn lock_open(
        &self,
    ) -> MutexGuard<'_, Option<(WriteTransaction, std::time::Instant)>> {
        self.open
            .lock()
            .expect("the open transaction lock is poisoned by an earlier panic")
    }

    /// Marks the store failed (see [`Error::Failed`]).
    pub(crate) fn fail(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// `Err(Error::Failed)` once the store has failed.
    pub(crate) fn check_failed(&self) -> Result<(), Error> {
        if self.failed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Failed);
        }
        Ok(())
    }

    /// Commits the open grouped transaction, if any (see [`Options::commit_delay`]), so that
    /// redb holds everything applied.
    pub fn settle(&self) -> Result<(), Error> {
        let mut open = self.lock_open();
        self.settle_locked(&mut open)
    }

    /// [`Store::settle`] if the open grouped transaction is at least `commit_delay` old:
    /// for a caller that has nothing to apply for a while (the group would otherwise stay
    /// open until the next apply).
    pub fn settle_if_due(&self) -> Result<(), Error> {
        let mut open = self.lock_open();
        match &*open {
            Some((_, began)) if began.elapsed() >= self.options.commit_delay => {
                self.settle_locked(&mut open)
            }
            _ => Ok(()),
        }
    }

    /// [`Store::settle`] with the slot held by the caller.
    pub(crate) fn settle_locked(
        &self,
        open: &mut Option<(WriteTransaction, std::time::Instant)>,
    ) -> Result<(), Error> {
        self.check_failed()?;
        if let Some((txn, _)) = open.take() {
            if let Err(e) = self.commit_txn(txn) {
                self.fail();
                return Err(e);
            }
            self.write_index().pending.clear();
        }
        Ok(())
    }

    fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced
            .lock()
            .expect("the sync counter lock is poisoned by an earlier panic")
    }

    /// Makes everything applied durable: commits the open grouped transaction, or an empty
    /// transaction if none is open, durably. Only needed with [`Durability::Batched`] or a
    /// [`Options::commit_delay`]; cheap otherwise.
    pub fn sync(&self) -> Result<(), Error> {
        let mut open = self.lock_open();
        self.sync_locked(&mut open)
    }

    /// [`Store::sync`] with the slot held by the caller.
    pub(crate) fn sync_locked(
        &self,
        open: &mut Option<(WriteTransaction, std::time::Instant)>,
    ) -> Result<(), Error> {
        self.check_failed()?;
        let txn = match open.take() {
            Some((txn, _)) => txn,
            None => self.begin_write()?,
        };
        // A transaction's durability is redb's default, Immediate, unless set otherwise.
        if let Err(e) = self.timed_commit(txn) {
            self.fail();
            return Err(e.into());
        }
        self.write_index().pending.clear();
        *self.lock_unsynced() = Unsynced::now();
        Ok(())
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, Error> {
        Ok(self.lock_db().begin_read()?)
    }

    /// A range read outside Raft (serializable, or linearizable after a ReadIndex round).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let view = self.read_view()?;
        range::range(&view, req, view.meta.revision, view.meta.compacted)
    }

    /// [`Store::range`], only if it can run without waiting for a lock: `None` while a
    /// writer holds or waits for the index or the database (a batch updating the index, a
    /// compaction, a snapshot install, a defragmentation), whether at the start or at a scan
    /// during the read, and the caller then reads again on a blocking thread. For small reads
    /// made on an async runtime's worker, which must not wait behind such a writer.
    pub fn try_range(&self, req: &RangeRequest) -> Option<Result<RangeResponse, Error>> {
        let view = match self.try_read_view()? {
            Ok(view) => view,
            Err(e) => return Some(Err(e)),
        };
        let read = range::range(&view, req, view.meta.revision, view.meta.compacted);
        if view.would_block.as_ref().is_some_and(|b| b.get()) {
            return None;
        }
        Some(read)
    }

    /// [`Store::read_view`] without waiting: `None` if a lock it needs is taken for writing.
    fn try_read_view(&self) -> Option<Result<ReadView<'_>, Error>> {
        let index = self.index.try_read().ok()?;
        let db = self.db.try_read().ok()?;
        Some(self.view_of(&index, &db, Some(std::cell::Cell::new(false))))
    }

    /// A consistent view for a reader: a redb read transaction opened under the index's read
    /// lock, so that it holds every row the index points to as of `meta`. The lock is taken
    /// again for each scan, never while values are read (see [`ReadView`]).
    pub(crate) fn read_view(&self) -> Result<ReadView<'_>, Error> {
        self.view_of(&self.read_index(), &self.lock_db(), None)
    }

    /// The view of `index` and `db`, whose read locks the caller holds while it is opened.
    fn view_of(
        &self,
        index: &Index,
        db: &Database,
        would_block: Option<std::cell::Cell<bool>>,
    ) -> Result<ReadView<'_>, Error> {
        let txn = db.begin_read()?;
        let revs = txn.open_table(REVS)?;
        Ok(ReadView {
            index: &self.index,
            meta: index.meta,
            epoch: index.epoch,
            revs,
            pending: index.pending.clone(),
            would_block,
        })
    }

    /// A read-only transaction ([`TxnRequest::is_read_only`]) served outside Raft, like a
    /// range (etcd serves these without a log entry): validated as any request, then run on
    /// one consistent view. Panics on a transaction that writes (the caller's check).
    pub fn txn_read_only(&self, t: &TxnRequest) -> Result<TxnResponse, Error> {
        assert!(
            t.is_read_only(),
            "txn_read_only given a transaction that writes"
        );
        txn::check_txn_request(t)?;
        let view = self.read_view()?;
        txn::execute_read_only(&view, t, view.meta.revision, view.meta.compacted)
    }

    pub(crate) fn meta(&self) -> Meta {
        self.read_index().meta
    }

    /// Current revision (1 for an empty store; +1 per write transaction that changed a key).
    pub fn revision(&self) -> Result<i64, Error> {
        Ok(self.meta().revision as i64)
    }

    /// Revision of the last compaction, 0 if none.
    pub fn compact_revision(&self) -> Result<i64, Error> {
        Ok(self.meta().compacted as i64)
    }

    /// Index of the last Raft entry applied; the server resumes at the next one.
    pub fn applied_index(&self) -> Result<u64, Error> {
        Ok(self.meta().applied)
    }

    /// Keys with any revision kept, and revisions kept (rows), in the key index.
    pub fn index_size(&self) -> (usize, u64) {
        let index = self.read_index();
        (index.keys(), index.len())
    }

    /// Keys not deleted as of the latest applied revision (etcd's
    /// `etcd_debugging_mvcc_keys_total`). Walks the key index under its read lock.
    pub fn live_keys(&self) -> usize {
        self.read_index().live_keys()
    }

    /// Client sessions held for exactly-once application (bounded by
    /// [`Options::sessions_max`]).
    pub fn sessions_len(&self) -> usize {
        self.lock_sessions().len()
    }

    /// Granted leases in id order.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        // No settle: an apply that changes the lease tables commits at once.
        lease::all(&self.begin_read()?.open_table(LEASES)?)
    }

    /// The member table (see [`crate::members`]), by id.
    pub fn members(&self) -> Result<Vec<crate::members::Member>, Error> {
        // No settle: an apply that changes the member table commits at once.
        crate::members::all(&self.begin_read()?.open_table(crate::members::MEMBERS)?)
    }

    /// The active alarms, by member then type (see [`crate::alarms`]).
    pub fn alarms(&self) -> Vec<crate::alarms::AlarmMember> {
        self.alarms
            .read()
            .expect("the alarms lock is poisoned by an earlier panic")
            .clone()
    }

    /// The auth state as last committed (see [`crate::auth`]).
    pub fn auth_state(&self) -> std::sync::Arc<crate::auth::AuthState> {
        self.auth
            .read()
            .expect("the auth lock is poisoned by an earlier panic")
            .clone()
    }

    /// Whether `user` (empty: none) may run `req` on the committed state now: for requests
    /// served without the log (reads, watches) and checked before they are proposed (lease
    /// revokes); see [`crate::auth::AuthState::check`].
    pub fn auth_check(&self, user: &str, req: &crate::Request) -> Result<(), Error> {
        self.auth_state()
            .check(user, req, &mut |id| self.lease_keys(id))
    }

    /// The user `token` was assigned to, if it is live on this member (refreshing it).
    pub fn token_user(&self, token: &str) -> Option<String> {
        let (key, _) = crate::auth::tokens::key_of(token)?;
        self.lock_tokens().user(&key, std::time::Instant::now())
    }

    /// What this member can tell of `token` now: live (refreshed), or unknown for good (not
    /// shaped like a token, or assigned by an entry this member has applied and since gone:
    /// expired, ended, or lost to a restart or snapshot), or not known yet (its entry is
    /// not applied here yet: a member ahead of this one may have assigned it).
    pub fn lookup_token(&self, token: &str) -> TokenLookup {
        let Some((key, index)) = crate::auth::tokens::key_of(token) else {
            return TokenLookup::Invalid;
        };
        // Read before the table: the store takes an applied batch's tokens before it shows
        // the batch's applied index, so an index read first covers every token it names.
        let applied = self.meta().applied;
        match self.lock_tokens().user(&key, std::time::Instant::now()) {
            Some(user) => TokenLookup::Live(user),
            None if index <= applied => TokenLookup::Invalid,
            None => TokenLookup::NotYet,
        }
    }

    /// Sets how long a token lives after its last use (`--auth-token-ttl`; non-zero).
    pub fn set_token_ttl(&self, ttl: std::time::Duration) {
        self.lock_tokens().set_ttl(ttl);
    }

    fn lock_tokens(&self) -> MutexGuard<'_, crate::auth::tokens::Tokens> {
        self.tokens
            .lock()
            .expect("the token lock is poisoned by an earlier panic")
    }

    /// Takes the effects of an applied auth request once its transaction committed: the new
    /// state, the token assigned, the tokens that go.
    pub(crate) fn auth_applied(&self, applied: crate::auth::Applied) {
        let mut tokens = self.lock_tokens();
        if let Some(user) = &applied.invalidated {
            tokens.invalidate_user(user);
        }
        if let Some(state) = applied.state {
            if !state.enabled {
                tokens.clear();
            }
            self.set_auth(state);
        }
        if let Some((token, user)) = applied.token {
            tokens.assign(token, user, std::time::Instant::now());
        }
    }

    /// Replaces the auth state in memory with one just committed, logging enable and
    /// disable.
    pub(crate) fn set_auth(&self, state: crate::auth::AuthState) {
        let mut current = self
            .auth
            .write()
            .expect("the auth lock is poisoned by an earlier panic");
        if state.enabled != current.enabled {
            tracing::warn!(
                enabled = state.enabled,
                revision = state.revision,
                "authentication switched"
            );
        }
        *current = std::sync::Arc::new(state);
    }

    /// The refusal the active alarms give `req`, if any (see [`crate::alarms::refusal`]).
    pub(crate) fn alarm_refusal(&self, req: &crate::Request) -> Option<crate::KvError> {
        let alarms = self
            .alarms
            .read()
            .expect("the alarms lock is poisoned by an earlier panic");
        crate::alarms::refusal(&alarms, req)
    }

    /// Replaces the alarms in memory with those just committed, logging each one raised or
    /// cleared (on every member, as etcd's appliers log them).
    pub(crate) fn set_alarms(&self, alarms: Vec<crate::alarms::AlarmMember>) {
        assert!(alarms.len() <= crate::alarms::ALARMS_MAX);
        let mut current = self
            .alarms
            .write()
            .expect("the alarms lock is poisoned by an earlier panic");
        for m in alarms.iter().filter(|m| !current.contains(m)) {
            tracing::warn!(alarm = m.alarm.name(), from = %format_args!("{:x}", m.member_id), "alarm raised");
        }
        for m in current.iter().filter(|m| !alarms.contains(m)) {
            tracing::warn!(alarm = m.alarm.name(), from = %format_args!("{:x}", m.member_id), "alarm disarmed");
        }
        *current = alarms;
    }

    /// Ids of the members removed from the cluster, ascending (see [`crate::members`]).
    pub fn removed_members(&self) -> Result<Vec<u64>, Error> {
        crate::members::removed(
            &self
                .begin_read()?
                .open_table(crate::members::MEMBERS_REMOVED)?,
        )
    }

    /// Keys attached to lease `id` (empty for an unknown lease), ascending.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, Error> {
        lease::keys_of(&self.begin_read()?.open_table(LEASE_KEYS)?, id)
    }

    /// The whole state as bytes, from one consistent read transaction (see [`crate::snapshot`]).
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        self.settle()?;
        let mut out = Vec::new();
        crate::snapshot::write_to(&self.begin_read()?, self.options.sessions_max, &mut out)?;
        Ok(out)
    }

    /// A consistent view of the current state that can be serialized later, on another
    /// thread, while writes go on (redb's MVCC keeps the view's pages alive until it is
    /// dropped).
    pub fn snapshot_view(&self) -> Result<SnapshotView, Error> {
        self.settle()?;
        Ok(SnapshotView {
            _long_read: crate::defrag::LongRead::new(&self.long_reads),
            txn: self.begin_read()?,
            sessions_max: self.options.sessions_max,
        })
    }

    /// Replaces the whole state (including the applied index) with a snapshot, atomically: on
    /// any error, including a corrupt snapshot, the store is unchanged.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), Error> {
        self.restore_from(&mut &snapshot[..])
    }

    /// [`Store::restore`] from a stream: rows go straight into one write transaction, and
    /// into a new key index, which replace the old ones only once the whole snapshot (and its
    /// checksum) has been read. Readers wait only for the commit.
    pub fn restore_from(&self, input: &mut dyn std::io::Read) -> Result<(), Error> {
        // Lock order, everywhere: the slot of the open transaction, the redb write
        // transaction, then the index. The slot is held throughout so that no group opens.
        let mut open = self.lock_open();
        self.settle_locked(&mut open)?;
        let txn = self.begin_write()?;
        txn.delete_table(REVS)?;
        txn.delete_table(LEASES)?;
        txn.delete_table(LEASE_KEYS)?;
        txn.delete_table(SESSIONS)?;
        txn.delete_table(crate::members::MEMBERS)?;
        txn.delete_table(crate::members::MEMBERS_REMOVED)?;
        txn.delete_table(crate::alarms::ALARMS)?;
        txn.delete_table(crate::auth::AUTH)?;
        crate::open::create_tables(&txn)?;
        let (loaded, sessions) =
            crate::snapshot::load_from(&txn, input, self.options.sessions_max)?;
        let alarms = crate::alarms::all(&txn.open_table(crate::alarms::ALARMS)?)?;
        let auth = crate::auth::load(&txn.open_table(crate::auth::AUTH)?)?;
        let mut index = self.write_index();
        txn.commit()?;
        self.set_alarms(alarms);
        // The snapshot skipped the entries that would have revoked tokens (a user deleted
        // and added again with another password): every client logs in again. The tokens
        // go before the new state is shown, under the token lock held across both, so that
        // no request resolves an old token against the new state: one that read the new
        // state waits for the lock and finds no token, one that resolved its token before
        // carries the old revision, which the new state refuses.
        let mut tokens = self.lock_tokens();
        tokens.clear();
        self.set_auth(auth);
        drop(tokens);
        let epoch = index.epoch + 1;
        *index = loaded;
        index.epoch = epoch;
        *self.lock_sessions() = sessions;
        Ok(())
    }
}

#[cfg(test)]
mod try_range_tests {
    use crate::types::{PutRequest, RangeRequest};
    use crate::{Command, Options, Request, Store};

    /// `try_range` reads what `range` reads, and steps aside (None) rather than wait while a
    /// writer holds the index or the database: its caller is an async worker.
    #[test]
    fn try_range_reads_like_range_and_never_waits_for_a_writer() {
        let store = Store::in_memory(Options::default()).expect("a store");
        for (i, v) in ["one", "two"].iter().enumerate() {
            let put = Command::new(Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: v.as_bytes().to_vec(),
                ..Default::default()
            }));
            store.apply(i as u64 + 1, &put).expect("applied");
        }
        let now = RangeRequest::key(b"k".to_vec());
        let then = RangeRequest {
            revision: 2,
            ..RangeRequest::key(b"k".to_vec())
        };
        for req in [&now, &then] {
            let fast = store.try_range(req).expect("no writer").expect("read");
            assert_eq!(fast, store.range(req).expect("read"));
        }
        let got = store.try_range(&now).expect("no writer").expect("read");
        assert_eq!(got.kvs[0].value, b"two");

        {
            let _index = store.write_index();
            assert!(
                store.try_range(&now).is_none(),
                "the index is being written"
            );
        }
        {
            let _db = store.db.write().expect("not poisoned");
            assert!(
                store.try_range(&now).is_none(),
                "the database is being moved"
            );
        }
        assert!(store.try_range(&now).is_some(), "free again");

        // A writer that comes after the read began: the read's scan steps aside too, rather
        // than wait for the index.
        let view = store.try_read_view().expect("no writer").expect("a view");
        let main = view.meta.revision;
        {
            let _index = store.write_index();
            assert!(view.with_index(main, |_| ()).is_err(), "steps aside");
        }
        assert!(view.would_block.as_ref().is_some_and(|b| b.get()));
        let waiting = store.read_view().expect("a view");
        assert!(
            waiting.would_block.is_none(),
            "a blocking thread's view waits"
        );
    }
}
