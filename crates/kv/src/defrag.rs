//! Space: how big the store's file is, how much of it holds data, and [`Store::defragment`],
//! which gives the free pages back to the file system (etcd's `Defragment`).
//!
//! redb reuses the pages that deletes and compaction free, but never shrinks its file on its
//! own; after a large compaction the file stays at its high-water mark. Its own compaction
//! moves live pages toward the front and truncates the file, and needs the database alone
//! (no transaction open), so a defragmentation pauses this member's applies and reads while
//! it runs, as etcd's does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{CompactionError, ReadableTableMetadata};

use crate::error::Error;
use crate::store::Store;

/// What [`Store::defragment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defragmented {
    /// The file's size before, bytes.
    pub before: u64,
    /// The file's size after, bytes.
    pub after: u64,
}

/// How long [`Store::defragment`] polls for the last open read transaction to end.
const POLL: Duration = Duration::from_millis(5);
/// How old a [`Store::size_in_use`] may be before it is measured again.
const IN_USE_MAX_AGE: Duration = Duration::from_secs(5);
/// How old a [`Store::file_size_recent`] may be: a `stat` per write is measurable at tens of
/// thousands of writes a second, and the file grows only when a group of applies commits
/// (about every 100 ms), as etcd's backend size changes with its batch commits.
const FILE_SIZE_MAX_AGE: Duration = Duration::from_millis(50);

/// A measure of the store's space and when it was taken, reused while young enough.
#[derive(Debug, Default)]
pub(crate) struct Recent(std::sync::Mutex<Option<(Instant, u64)>>);

impl Recent {
    /// The last measure if younger than `max_age`, else a new one from `measure`.
    fn get(
        &self,
        max_age: Duration,
        measure: impl FnOnce() -> Result<u64, Error>,
    ) -> Result<u64, Error> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, value)) = *last {
            if at.elapsed() < max_age {
                return Ok(value);
            }
        }
        let value = measure()?;
        *last = Some((Instant::now(), value));
        Ok(value)
    }

    /// Forgets the last measure (the space just changed).
    fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One long read alive (a [`crate::SnapshotView`]): counted while it lives.
pub(crate) struct LongRead(Arc<AtomicUsize>);

impl LongRead {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> LongRead {
        count.fetch_add(1, Ordering::AcqRel);
        LongRead(count.clone())
    }
}

impl Drop for LongRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store {
    /// The size of the store's file, bytes (etcd's `dbSize`); 0 for a store in memory.
    pub fn file_size(&self) -> Result<u64, Error> {
        match &self.path {
            Some(p) => Ok(std::fs::metadata(p).map_err(Error::Io)?.len()),
            None => Ok(0),
        }
    }

    /// [`Store::file_size`] as measured at most `FILE_SIZE_MAX_AGE` ago: for checks on
    /// every write (the space quota).
    pub fn file_size_recent(&self) -> Result<u64, Error> {
        self.file_size_measured
            .get(FILE_SIZE_MAX_AGE, || self.file_size())
    }

    /// The bytes of the file that hold tables (etcd's `dbSizeInUse`): the pages of every
    /// table as redb counts them, stored, metadata and the unused ends of pages, as of the
    /// last commit. Measuring walks every page (about 0.3 s for a GiB), so a measure up to
    /// `IN_USE_MAX_AGE` old is answered instead (a defragmentation takes a new one).
    pub fn size_in_use(&self) -> Result<u64, Error> {
        self.in_use_measured
            .get(IN_USE_MAX_AGE, || self.measure_in_use())
    }

    pub(crate) fn measure_in_use(&self) -> Result<u64, Error> {
        let txn = self.begin_read()?;
        let mut bytes = 0u64;
        for handle in txn.list_tables()? {
            let table = txn.open_untyped_table(handle)?;
            let s = table.stats()?;
            bytes += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        }
        Ok(bytes)
    }

    /// Rewrites the file without its free pages and truncates it; returns its size before and
    /// after. Everything applied is committed durably first. While it runs, applies and new
    /// reads of this store wait. It does not start while a snapshot or backup is being
    /// written (a read that may last minutes, which would hold every apply meanwhile); other
    /// reads already open are waited for up to `wait`. Either way [`Error::Busy`] then says
    /// why, and nothing has changed. The data is unchanged: same rows, same index.
    pub fn defragment(&self, wait: Duration) -> Result<Defragmented, Error> {
        let busy = || {
            Error::Busy(
                "defragment: a snapshot or backup of the state machine is being written; \
                 nothing was changed, try again once it is done"
                    .into(),
            )
        };
        if self.long_reads.load(Ordering::Acquire) > 0 {
            return Err(busy());
        }
        // The slot first (the lock order is slot, then database): no apply batch can open a
        // write transaction while the database is being moved.
        // Durably: redb keeps the pages of non-durable commits pinned (as an open read) until
        // the next durable one, and would refuse to compact.
        let mut slot = self.lock_open();
        self.sync_locked(&mut slot)?;
        let before = self.file_size()?;
        let mut db = self
            .db
            .write()
            .expect("the database lock is poisoned by an earlier panic");
        let deadline = Instant::now() + wait;
        loop {
            match db.compact() {
                Ok(_) => break,
                Err(CompactionError::TransactionInProgress)
                    if Instant::now() < deadline
                        && self.long_reads.load(Ordering::Acquire) == 0 =>
                {
                    std::thread::sleep(POLL);
                }
                Err(CompactionError::TransactionInProgress) => {
                    if self.long_reads.load(Ordering::Acquire) > 0 {
                        return Err(busy());
                    }
                    return Err(Error::Busy(format!(
                        "defragment: reads of the state machine were still open after \
                         {wait:?}; nothing was changed, try again"
                    )));
                }
                // Refused before anything moved (this store makes no savepoints).
                Err(
                    e @ (CompactionError::PersistentSavepointExists
                    | CompactionError::EphemeralSavepointExists),
                ) => return Err(Error::Busy(format!("defragment: {e}"))),
                Err(e) => {
                    // A failed compaction may have committed part of its moves; redb keeps
                    // the file consistent, but this store's view is no longer trusted.
                    self.fail();
                    return Err(Error::Storage(Box::new(e.into())));
                }
            }
        }
        drop(db);
        drop(slot);
        self.in_use_measured.forget();
        self.file_size_measured.forget();
        Ok(Defragmented {
            before,
            after: self.file_size()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::types::{PutRequest, RangeRequest};
    use crate::{Command, Options, Request, Store};

    /// Durable only now and then, as the server runs it (an fsync per put is slow).
    fn fast() -> Options {
        Options {
            durability: crate::Durability::Batched {
                commits_per_sync: 1000,
                interval: std::time::Duration::from_secs(1),
            },
            ..Options::default()
        }
    }

    fn put(store: &Store, index: u64, key: String) {
        let cmd = Command {
            session: None,
            request: Request::Put(PutRequest {
                key: key.into_bytes(),
                value: vec![7u8; 1000],
                ..Default::default()
            }),
            auth: None,
        };
        store.apply(index, &cmd).expect("apply");
    }

    #[test]
    fn defragment_gives_compacted_space_back_and_keeps_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("kv.redb"), fast()).expect("open");
        let mut index = 0;
        // Ten versions of 2,000 keys, then everything but the last compacted away.
        for _ in 0..10 {
            for k in 0..2000 {
                index += 1;
                put(&store, index, format!("key-{k:05}"));
            }
        }
        let (revision, hash_before) = store.hash().expect("hash");
        let full = store.measure_in_use().expect("in use");
        index += 1;
        let compact = Command {
            session: None,
            request: Request::Compact {
                revision: revision - 100,
            },
            auth: None,
        };
        store.apply(index, &compact).expect("compact");
        let (_, hash_compacted) = store.hash().expect("hash");
        assert_ne!(hash_before, hash_compacted, "compaction removed rows");
        let in_use_before = store.measure_in_use().expect("in use");
        assert!(in_use_before * 4 < full, "compaction freed most pages");
        let done = store
            .defragment(std::time::Duration::from_secs(5))
            .expect("defragment");
        assert!(
            done.after * 2 < done.before,
            "the file shrank by more than half: {done:?}"
        );
        assert_eq!(done.after, store.file_size().expect("size"));
        assert!(store.size_in_use().expect("in use") <= done.after);
        assert!(
            in_use_before <= done.after,
            "{in_use_before} in use, {done:?}"
        );
        // Same data, same index; and the store still applies and reads.
        assert_eq!(store.hash().expect("hash").1, hash_compacted);
        store.check_invariants().expect("invariants");
        put(&store, index + 1, "after".into());
        let got = store
            .range(&RangeRequest {
                key: b"key-00000".to_vec(),
                ..Default::default()
            })
            .expect("range");
        assert_eq!(got.kvs.len(), 1);
        drop(store);
        let reopened = Store::open(dir.path().join("kv.redb"), Options::default()).expect("reopen");
        assert_eq!(reopened.applied_index().expect("applied"), index + 1);
    }

    #[test]
    fn defragment_waits_for_open_reads_and_gives_up_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("kv.redb"), Options::default()).expect("open");
        for i in 1..=100 {
            put(&store, i, format!("k{i}"));
        }
        // A snapshot being written: refused at once, whatever the wait.
        let reading = store.snapshot_view().expect("view");
        let t = std::time::Instant::now();
        let err = store
            .defragment(std::time::Duration::from_secs(30))
            .expect_err("a snapshot is being written");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert!(matches!(err, crate::Error::Busy(_)), "{err}");
        // A short read: waited for.
        let short = store.begin_read().expect("read");
        let ends = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(short);
        });
        drop(reading);
        store
            .defragment(std::time::Duration::from_secs(30))
            .expect("defragment after the short read");
        ends.join().expect("reader");
        // One that outlasts the wait: refused, nothing changed.
        let long = store.begin_read().expect("read");
        let err = store
            .defragment(std::time::Duration::from_millis(50))
            .expect_err("a read is open");
        assert!(matches!(err, crate::Error::Busy(_)), "{err}");
        drop(long);
        // Nothing failed: the store goes on, and defragments once the read is over.
        put(&store, 101, "k101".into());
        store
            .defragment(std::time::Duration::from_millis(50))
            .expect("defragment");
        assert_eq!(store.applied_index().expect("applied"), 101);
    }
}
