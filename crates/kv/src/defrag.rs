//! Space: how big the store's file is, how much of it holds data, and [`Store::defragment`],
//! which gives the free pages back to the file system (etcd's `Defragment`).
//!
//! redb reuses the pages that deletes and compaction free, but never shrinks its file on its
//! own; after a large compaction the file stays at its high-water mark. Its own compaction
//! moves live pages toward the front and truncates the file, and needs the database alone
//! (no transaction open), so a defragmentation pauses this member's applies and reads while
//! it runs, as etcd's does.

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

impl Store {
    /// The size of the store's file, bytes (etcd's `dbSize`); 0 for a store in memory.
    pub fn file_size(&self) -> Result<u64, Error> {
        match &self.path {
            Some(p) => Ok(std::fs::metadata(p).map_err(Error::Io)?.len()),
            None => Ok(0),
        }
    }

    /// The bytes of the file that hold tables (etcd's `dbSizeInUse`): the pages of every
    /// table as redb counts them, stored, metadata and the unused ends of pages, as of the
    /// last commit. Walks every page, so linear in the size of the store: for status
    /// requests and metrics, not for every write.
    pub fn size_in_use(&self) -> Result<u64, Error> {
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
    /// reads of this store wait; read transactions already open (a range being read, a
    /// snapshot being streamed) are waited for up to `wait`, after which nothing has changed
    /// and [`Error::Busy`] says why. The data is unchanged: same rows, same index.
    pub fn defragment(&self, wait: Duration) -> Result<Defragmented, Error> {
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
                Err(CompactionError::TransactionInProgress) if Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(CompactionError::TransactionInProgress) => {
                    return Err(Error::Busy(format!(
                        "defragment: a read of the state machine (a snapshot being sent or \
                         saved?) was still open after {wait:?}; nothing was changed, try again"
                    )));
                }
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
        let full = store.size_in_use().expect("in use");
        index += 1;
        let compact = Command {
            session: None,
            request: Request::Compact {
                revision: revision - 100,
            },
        };
        store.apply(index, &compact).expect("compact");
        let (_, hash_compacted) = store.hash().expect("hash");
        assert_ne!(hash_before, hash_compacted, "compaction removed rows");
        let in_use_before = store.size_in_use().expect("in use");
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
        let reading = store.snapshot_view().expect("view");
        let err = store
            .defragment(std::time::Duration::from_millis(50))
            .expect_err("a read is open");
        assert!(matches!(err, crate::Error::Busy(_)), "{err}");
        // Nothing failed: the store goes on, and defragments once the read is over.
        put(&store, 101, "k101".into());
        drop(reading);
        store
            .defragment(std::time::Duration::from_millis(50))
            .expect("defragment");
        assert_eq!(store.applied_index().expect("applied"), 101);
    }
}
