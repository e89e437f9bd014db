//! [`View`]: what range reads, compares and watches need from the state, whether they run in
//! a read transaction ([`ReadView`]) or inside the apply's write transaction
//! ([`crate::write::Writer`]).

use std::sync::RwLock;

use redb::{ReadOnlyTable, ReadableTable};

use crate::error::{Error, KvError};
use crate::index::{Index, Live};
use crate::mvcc::{row_value, KeySpan, Rev};
use crate::pending::Pending;
use crate::store::Meta;
use crate::types::KeyValue;

/// What a scan calls for each live key: return `false` to stop.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], Live) -> Result<bool, Error> + 'a;

/// A consistent view of the keys: the index answers which row holds what, rows give values.
pub(crate) trait View {
    /// Calls `visit` for every key of `span` live at store revision `main`, in key order;
    /// stops when it returns `false`. `visit` must not call [`View::value`] (a reader's scan
    /// holds the index lock): collect, then read values.
    fn scan(&self, span: KeySpan<'_>, main: u64, visit: &mut Visit<'_>) -> Result<(), Error>;

    /// The value of the put row at `rev`.
    fn value(&self, rev: Rev) -> Result<Vec<u8>, Error>;
}

/// The client-visible pair of `key` in state `live`, with its value if `with_value`.
pub(crate) fn key_value(
    view: &(impl View + ?Sized),
    key: &[u8],
    live: Live,
    with_value: bool,
) -> Result<KeyValue, Error> {
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: live.create as i64,
        mod_revision: live.rev.main as i64,
        version: live.version as i64,
        value: if with_value {
            view.value(live.rev)?
        } else {
            Vec::new()
        },
        lease: live.lease,
    })
}

/// The value of the row at `rev` in `revs`; a missing row or a tombstone where the index says
/// a put is corruption.
pub(crate) fn value_in(
    revs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    rev: Rev,
) -> Result<Vec<u8>, Error> {
    let row = revs
        .get(rev.key())?
        .ok_or_else(|| Error::Corrupt(format!("the index points to a missing row {rev:?}")))?;
    put_value(row.value(), rev)
}

/// The value of `row`, found at `rev` where the index says a put is; a tombstone there is
/// corruption.
pub(crate) fn put_value(row: &[u8], rev: Rev) -> Result<Vec<u8>, Error> {
    row_value(row)?
        .ok_or_else(|| Error::Corrupt(format!("the index points to a tombstone {rev:?}")))
}

/// A reader's view: a redb read transaction opened while the index's read lock was held
/// (so it holds every row the index pointed to, as of `meta`), and the index itself, locked
/// again for each scan only: values are read without the lock, so a long read never holds up
/// the apply thread's merges. Between scans the index may have moved on: appends are above
/// `meta.revision` and invisible to reads at or below it; a compaction past the revision read,
/// or a restore (a new epoch), makes the scan fail as "compacted", and the reader reads again.
pub(crate) struct ReadView<'a> {
    pub(crate) index: &'a RwLock<Index>,
    /// The store's meta when the view was opened.
    pub(crate) meta: Meta,
    /// The index's epoch then.
    pub(crate) epoch: u64,
    pub(crate) revs: ReadOnlyTable<(u64, u32), &'static [u8]>,
    /// The rows of the open grouped transaction then, which `revs` does not hold.
    pub(crate) pending: Pending,
    /// `Some` for a reader that must not wait (an async worker, [`crate::Store::try_range`]):
    /// a scan then takes the index only if it is free, and otherwise fails and sets this,
    /// so that the reader reads again where it may wait. `None`: scans wait for the lock.
    pub(crate) would_block: Option<std::cell::Cell<bool>>,
}

impl ReadView<'_> {
    /// Runs `f` on the index under its read lock, if it still holds the state this view reads
    /// at `main`.
    pub(crate) fn with_index<T>(&self, main: u64, f: impl FnOnce(&Index) -> T) -> Result<T, Error> {
        let index = match &self.would_block {
            None => self
                .index
                .read()
                .expect("the key index lock is poisoned by an earlier panic"),
            Some(blocked) => match self.index.try_read() {
                Ok(index) => index,
                Err(std::sync::TryLockError::WouldBlock) => {
                    blocked.set(true);
                    return Err(Error::Busy("the key index is being written".into()));
                }
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    panic!("the key index lock is poisoned by an earlier panic")
                }
            },
        };
        if index.epoch != self.epoch || index.meta.compacted > main {
            return Err(KvError::Compacted.into());
        }
        Ok(f(&index))
    }
}

impl View for ReadView<'_> {
    /// Runs `visit` under the index's read lock: it must not read values.
    fn scan(&self, span: KeySpan<'_>, main: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        self.with_index(main, |index| index.scan(span, main, visit))?
    }

    fn value(&self, rev: Rev) -> Result<Vec<u8>, Error> {
        if self.pending.is_empty() {
            return value_in(&self.revs, rev);
        }
        match self.pending.get(rev) {
            Some(row) => put_value(row, rev),
            None => value_in(&self.revs, rev),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Request};
    use crate::error::{Error, KvError};
    use crate::range::range;
    use crate::store::{Options, Store};
    use crate::types::{PutRequest, RangeRequest};

    fn put(s: &Store, index: u64, v: &str) {
        let cmd = Command::new(Request::Put(PutRequest::new("a", v)));
        s.apply(index, &cmd).expect("put");
    }

    fn value_at(view: &super::ReadView<'_>) -> Result<Vec<u8>, Error> {
        let req = RangeRequest::key("a");
        let r = range(view, &req, view.meta.revision, view.meta.compacted)?;
        Ok(r.kvs[0].value.clone())
    }

    #[test]
    fn a_view_holds_no_lock_between_scans_and_notices_compaction_and_restore() {
        let s = Store::in_memory(Options::default()).expect("store");
        put(&s, 1, "1"); // revision 2
        put(&s, 2, "2"); // revision 3
        let view = s.read_view().expect("view");
        // Applies go on while the view is open (a held lock would block their merge), and
        // the view still reads its own revision.
        put(&s, 3, "3"); // revision 4
        assert_eq!(value_at(&view).expect("read"), b"2");
        // A compaction past the view's revision: its scans fail as "compacted".
        let compact = Command::new(Request::Compact { revision: 4 });
        s.apply(4, &compact).expect("compact");
        assert!(matches!(
            value_at(&view),
            Err(Error::Kv(KvError::Compacted))
        ));
        // A restore replaces the state: a view from before it fails the same way.
        let view = s.read_view().expect("view");
        let snapshot = s.snapshot().expect("snapshot");
        s.restore(&snapshot).expect("restore");
        assert!(matches!(
            value_at(&view),
            Err(Error::Kv(KvError::Compacted))
        ));
        assert_eq!(value_at(&s.read_view().expect("view")).expect("read"), b"3");
    }
}
