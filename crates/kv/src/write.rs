//! [`Writer`]: the puts, deletes, lease changes and compaction of one request, all at one new
//! revision, inside the apply's redb write transaction.
//!
//! ```text
//!   base            revision before the request (store revision)
//!   base + 1        revision every change of the request is written at (sub 0, 1, ...)
//!   read_rev()      base, or base + 1 once something changed (reads see own writes)
//! ```
//!
//! Rows and their index entries go to the batch's [`Overlay`]; the batch appends the rows to
//! [`REVS`] when it ends, and the store merges the entries into the index.

use redb::{Table, WriteTransaction};

use crate::error::{Error, KvError};
use crate::index::{Index, Layered, LeaseChange, Live, Overlay};
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::{encode_row, KeySpan, PutHeader, Record, Rev, REVS};
use crate::range;
use crate::types::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
};
use crate::view::{key_value, put_value, value_in, View, Visit};

/// Open tables of a write transaction, the index view, and the request's revision bookkeeping.
pub(crate) struct Writer<'t> {
    /// The apply's write transaction.
    txn: &'t WriteTransaction,
    /// Rows by revision, opened on the first read of a row older than the batch (the batch's
    /// own rows are in the overlay until it ends; see [`Writer::append`]).
    revs: std::cell::OnceCell<Table<'t, (u64, u32), &'static [u8]>>,
    /// Granted leases, once a request needs them (most puts do not: opening a table per
    /// request was 2% of a loaded cluster's CPU).
    leases: Option<Table<'t, i64, i64>>,
    /// Keys attached to leases, once needed.
    lease_keys: Option<Table<'t, (i64, &'static [u8]), ()>>,
    /// Committed index; read only at revisions `<= cap`.
    index: &'t Index,
    /// Changes of the transaction so far (earlier requests of the batch, then this one).
    overlay: &'t mut Overlay,
    /// Highest revision read from `index`: the committed revision, or for a replay the
    /// revision it replays at.
    cap: u64,
    /// Store revision before this request; >= 1, >= cap.
    base: u64,
    /// Compacted revision; `<= base`.
    compacted: u64,
    /// Sub-revision of the next change at `base + 1`; > 0 once a row was written.
    next_sub: u32,
    /// Replaying a request to answer a retry (in a transaction that is never committed):
    /// lease checks, which it passed when it was applied, are skipped.
    pub(crate) replay: bool,
    /// A compaction this request asked for: the store applies it to the index and the rows.
    pub(crate) compact_to: Option<u64>,
}

impl<'t> Writer<'t> {
    /// Opens the tables of `txn` over the index as of `cap` and the transaction's `overlay`.
    pub(crate) fn new(
        txn: &'t WriteTransaction,
        index: &'t Index,
        overlay: &'t mut Overlay,
        cap: u64,
        base: u64,
        compacted: u64,
    ) -> Result<Self, Error> {
        assert!(base >= 1, "revisions start at 1");
        assert!(
            cap <= base,
            "the index is read at or below the base revision"
        );
        assert!(
            compacted <= base,
            "compacted {compacted} above revision {base}"
        );
        Ok(Writer {
            txn,
            revs: std::cell::OnceCell::new(),
            leases: None,
            lease_keys: None,
            index,
            overlay,
            cap,
            base,
            compacted,
            next_sub: 0,
            replay: false,
            compact_to: None,
        })
    }

    /// The lease table, opened on first use.
    fn leases(&mut self) -> Result<&mut Table<'t, i64, i64>, Error> {
        if self.leases.is_none() {
            self.leases = Some(self.txn.open_table(LEASES)?);
        }
        Ok(self.leases.as_mut().expect("opened above"))
    }

    /// The lease keys table, opened on first use.
    fn lease_keys(&mut self) -> Result<&mut Table<'t, (i64, &'static [u8]), ()>, Error> {
        if self.lease_keys.is_none() {
            self.lease_keys = Some(self.txn.open_table(LEASE_KEYS)?);
        }
        Ok(self.lease_keys.as_mut().expect("opened above"))
    }

    /// The revision reads see, and the store revision once this request is applied.
    pub(crate) fn read_rev(&self) -> u64 {
        self.base + u64::from(self.next_sub > 0)
    }

    /// Compacted revision (possibly raised by [`Writer::compact`]).
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    fn layered(&self) -> Layered<'_> {
        Layered {
            index: self.index,
            overlay: self.overlay,
            cap: self.cap,
        }
    }

    /// `key` as this request sees it now.
    fn current(&self, key: &[u8]) -> Option<Live> {
        self.layered().get(key, self.read_rev())
    }

    /// Takes the revision of the next change.
    fn next_rev(&mut self) -> Rev {
        let rev = Rev {
            main: self.base + 1,
            sub: self.next_sub,
        };
        self.next_sub = self
            .next_sub
            .checked_add(1)
            .expect("a request changes fewer than 2^32 keys");
        rev
    }

    /// A range read that sees this transaction's earlier writes.
    pub(crate) fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        range::range(self, req, self.read_rev(), self.compacted)
    }

    /// etcd's put: the caller has validated the request statically (`txn::check_put`).
    pub(crate) fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        if req.lease != 0 && !self.replay {
            lease::require(self.leases()?, req.lease)?;
        }
        let prev = self.current(&req.key);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound.into());
        }
        let lease = match prev {
            Some(p) if req.ignore_lease => p.lease,
            _ => req.lease,
        };
        let kept_value = match prev {
            Some(p) if req.ignore_value => Some(self.value(p.rev)?),
            _ => None,
        };
        let prev_kv = match prev {
            Some(p) if req.prev_kv => Some(key_value(self, &req.key, p, true)?),
            _ => None,
        };
        let rev = self.next_rev();
        let live = Live {
            rev,
            create: prev.map_or(rev.main, |p| p.create),
            version: prev.map_or(1, |p| p.version + 1),
            lease,
        };
        let old_lease = prev.map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != lease {
            self.detach(old_lease, &req.key)?;
        }
        if lease != 0
            && self
                .lease_keys()?
                .insert((lease, req.key.as_slice()), ())?
                .is_none()
        {
            let change = LeaseChange::Attached(lease, req.key.clone());
            self.overlay.lease_changes.push(change);
        }
        let value = kept_value.as_deref().unwrap_or(&req.value);
        let row = put_row(&req.key, live.header(), value);
        self.append(rev, row);
        self.overlay.push(&req.key, rev, Some(live));
        Ok(PutResponse {
            revision: rev.main as i64,
            prev_kv,
        })
    }

    /// etcd's delete range; nothing deleted leaves the revision alone. Without `prev_kv` no
    /// row is read: the index knows the keys and their leases.
    pub(crate) fn delete(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        let mut doomed: Vec<(Vec<u8>, Live)> = Vec::new();
        self.layered().scan(
            KeySpan::new(&req.key, &req.range_end),
            self.read_rev(),
            |k, live| {
                doomed.push((k.to_vec(), live));
                Ok::<_, Error>(true)
            },
        )?;
        let mut prev_kvs = Vec::new();
        if req.prev_kv {
            prev_kvs.reserve(doomed.len());
            for (key, live) in &doomed {
                prev_kvs.push(key_value(self, key, *live, true)?);
            }
        }
        for (key, live) in &doomed {
            self.tombstone(key, live.lease)?;
        }
        Ok(DeleteRangeResponse {
            revision: self.read_rev() as i64,
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }

    fn tombstone(&mut self, key: &[u8], lease: i64) -> Result<(), Error> {
        if lease != 0 {
            self.detach(lease, key)?;
        }
        let rev = self.next_rev();
        let row = encode_row(key, &Record::Tombstone);
        self.append(rev, row);
        self.overlay.push(key, rev, None);
        Ok(())
    }

    /// Adds the row at `rev` to the overlay, which the batch writes to redb when it ends
    /// (one table open and one run of appends per batch, instead of per request).
    fn append(&mut self, rev: Rev, row: Vec<u8>) {
        self.overlay.rows.push((rev, row));
    }

    /// Detaches `key` from `lease`.
    fn detach(&mut self, lease: i64, key: &[u8]) -> Result<(), Error> {
        if self.lease_keys()?.remove((lease, key))?.is_some() {
            let change = LeaseChange::Detached(lease, key.to_vec());
            self.overlay.lease_changes.push(change);
        }
        Ok(())
    }

    /// Grants a lease (no revision change).
    pub(crate) fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), Error> {
        lease::grant(self.leases()?, id, ttl)?;
        self.overlay.lease_changes.push(LeaseChange::Granted(id));
        Ok(())
    }

    /// Revokes a lease, deleting its keys at one new revision (none if it had no keys).
    pub(crate) fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        lease::require(self.leases()?, id)?;
        for key in lease::keys_of(self.lease_keys()?, id)? {
            let live = self
                .current(&key)
                .filter(|l| l.lease == id)
                .ok_or_else(|| {
                    Error::Corrupt(format!("lease {id} lists a key it does not hold"))
                })?;
            self.tombstone(&key, live.lease)?;
        }
        let ttl = self.leases()?.remove(id)?.map(|g| g.value());
        if let Some(ttl) = ttl {
            self.overlay
                .lease_changes
                .push(LeaseChange::Revoked { id, ttl });
        }
        Ok(())
    }

    /// Logical compaction at `rev` (etcd's checks: at or below the compacted revision is
    /// "compacted", above the current one is "future"). The store drops the unreachable
    /// revisions from the index and their rows before the transaction commits; it runs a
    /// compaction in a transaction of its own, so nothing of this one is in the overlay.
    pub(crate) fn compact(&mut self, rev: i64) -> Result<(), Error> {
        if rev <= self.compacted as i64 {
            return Err(KvError::Compacted.into());
        }
        if rev > self.read_rev() as i64 {
            return Err(KvError::FutureRevision.into());
        }
        assert!(
            self.overlay.is_empty() && self.cap == self.base,
            "a compaction runs alone in its write transaction"
        );
        self.compact_to = Some(rev as u64);
        self.compacted = rev as u64;
        Ok(())
    }
}

impl View for Writer<'_> {
    fn scan(&self, span: KeySpan<'_>, main: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        self.layered().scan(span, main, visit)
    }

    fn value(&self, rev: Rev) -> Result<Vec<u8>, Error> {
        if let Some(row) = self.overlay.row(rev) {
            return put_value(row, rev);
        }
        if self.revs.get().is_none() {
            let table = self.txn.open_table(REVS)?;
            let _ = self.revs.set(table);
        }
        value_in(self.revs.get().expect("opened above"), rev)
    }
}

/// A put row, written from the request's value without copying it into a `Record` first.
fn put_row(key: &[u8], h: PutHeader, value: &[u8]) -> Vec<u8> {
    let mut w = crate::codec::Writer(Vec::with_capacity(key.len() + 30 + value.len()));
    w.bytes(key);
    w.0.push(0); // the put tag of `Record::encode_into`
    w.0.extend_from_slice(&h.create.to_le_bytes());
    w.0.extend_from_slice(&h.version.to_le_bytes());
    w.0.extend_from_slice(&h.lease.to_le_bytes());
    w.0.extend_from_slice(value);
    w.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_rows_match_the_record_encoding() {
        let h = PutHeader {
            create: 3,
            version: 2,
            lease: 9,
        };
        let record = Record::Put {
            create: 3,
            version: 2,
            lease: 9,
            value: b"value".to_vec(),
        };
        assert_eq!(put_row(b"k", h, b"value"), encode_row(b"k", &record));
    }
}
