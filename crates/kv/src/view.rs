//! [`View`]: what range reads, compares and watches need from the state, whether they run in
//! a read transaction ([`ReadView`]) or inside the apply's write transaction
//! ([`crate::write::Writer`]).

use redb::{ReadOnlyTable, ReadableTable};

use crate::error::Error;
use crate::index::{Index, Live};
use crate::mvcc::{row_value, KeySpan, Rev};
use crate::types::KeyValue;

/// What a scan calls for each live key: return `false` to stop.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], Live) -> Result<bool, Error> + 'a;

/// A consistent view of the keys: the index answers which row holds what, rows give values.
pub(crate) trait View {
    /// Calls `visit` for every key of `span` live at store revision `main`, in key order;
    /// stops when it returns `false`.
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
    row_value(row.value())?
        .ok_or_else(|| Error::Corrupt(format!("the index points to a tombstone {rev:?}")))
}

/// A reader's view: the index (read-locked by the caller) and a redb read transaction opened
/// while that lock was held, so it holds every row the index points to.
pub(crate) struct ReadView<'a> {
    pub(crate) index: &'a Index,
    pub(crate) revs: ReadOnlyTable<(u64, u32), &'static [u8]>,
}

impl View for ReadView<'_> {
    fn scan(&self, span: KeySpan<'_>, main: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        self.index.scan(span, main, visit)
    }

    fn value(&self, rev: Rev) -> Result<Vec<u8>, Error> {
        value_in(&self.revs, rev)
    }
}
