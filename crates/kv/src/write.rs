//! [`Writer`]: the puts, deletes, lease changes and compaction of one redb write transaction,
//! all at one new revision.
//!
//! ```text
//!   base            revision before the transaction (store revision)
//!   base + 1        revision every change of this transaction is written at
//!   read_rev()      base, or base + 1 once something changed (reads see own writes)
//! ```

use redb::{Table, WriteTransaction};

use crate::error::{Error, KvError};
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::{self, live, Record, BY_REV, HISTORY};
use crate::range;
use crate::types::{
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse,
};

/// Open tables of a write transaction plus its revision bookkeeping.
pub(crate) struct Writer<'t> {
    /// MVCC rows.
    history: Table<'t, (&'static [u8], u64), &'static [u8]>,
    /// The same rows by revision.
    by_rev: Table<'t, (u64, &'static [u8]), ()>,
    /// Granted leases.
    leases: Table<'t, i64, i64>,
    /// Keys attached to leases.
    lease_keys: Table<'t, (i64, &'static [u8]), ()>,
    /// Store revision before this transaction; >= 1.
    base: u64,
    /// Compacted revision; `<= base`.
    compacted: u64,
    /// Whether a row was written at `base + 1`.
    changed: bool,
    /// Replaying a request to answer a retry (in a transaction that is never committed):
    /// lease checks, which it passed when it was applied, are skipped.
    pub(crate) replay: bool,
}

impl<'t> Writer<'t> {
    /// Opens the tables of `txn`.
    pub(crate) fn new(txn: &'t WriteTransaction, base: u64, compacted: u64) -> Result<Self, Error> {
        assert!(base >= 1, "revisions start at 1");
        assert!(
            compacted <= base,
            "compacted {compacted} above revision {base}"
        );
        Ok(Writer {
            history: txn.open_table(HISTORY)?,
            by_rev: txn.open_table(BY_REV)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            base,
            compacted,
            changed: false,
            replay: false,
        })
    }

    /// The revision reads see, and the store revision once this transaction commits.
    pub(crate) fn read_rev(&self) -> u64 {
        self.base + u64::from(self.changed)
    }

    /// Compacted revision (possibly raised by [`Writer::compact`]).
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    fn write_rev(&self) -> u64 {
        self.base + 1
    }

    /// A range read that sees this transaction's earlier writes.
    pub(crate) fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        range::range(&self.history, req, self.read_rev(), self.compacted)
    }

    /// The live pairs of a span at the read revision.
    pub(crate) fn live_in(&self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, Error> {
        mvcc::live_in(&self.history, key, range_end, self.read_rev())
    }

    /// etcd's put: the caller has validated the request statically (`txn::check_put`).
    pub(crate) fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        if req.lease != 0 && !self.replay {
            lease::require(&self.leases, req.lease)?;
        }
        let prev = live(&self.history, &req.key, self.read_rev())?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound.into());
        }
        let (value, lease) = match &prev {
            Some(p) if req.ignore_value || req.ignore_lease => (
                if req.ignore_value {
                    p.value.clone()
                } else {
                    req.value.clone()
                },
                if req.ignore_lease { p.lease } else { req.lease },
            ),
            _ => (req.value.clone(), req.lease),
        };
        let rev = self.write_rev();
        let (create, version) = match &prev {
            Some(p) => (p.create_revision as u64, p.version as u64 + 1),
            None => (rev, 1),
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != lease {
            self.lease_keys.remove((old_lease, req.key.as_slice()))?;
        }
        if lease != 0 {
            self.lease_keys.insert((lease, req.key.as_slice()), ())?;
        }
        let record = Record::Put {
            create,
            version,
            lease,
            value,
        };
        mvcc::write_row(&mut self.history, &mut self.by_rev, &req.key, rev, &record)?;
        self.changed = true;
        Ok(PutResponse {
            revision: rev as i64,
            prev_kv: prev.filter(|_| req.prev_kv),
        })
    }

    /// etcd's delete range; nothing deleted leaves the revision alone.
    pub(crate) fn delete(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        if req.prev_kv {
            let doomed = self.live_in(&req.key, &req.range_end)?;
            for kv in &doomed {
                self.tombstone(&kv.key, kv.lease)?;
            }
            return Ok(DeleteRangeResponse {
                revision: self.read_rev() as i64,
                deleted: doomed.len() as i64,
                prev_kvs: doomed,
            });
        }
        // Without prev_kv no value is read, only keys and leases.
        let doomed = mvcc::live_keys_in(&self.history, &req.key, &req.range_end, self.read_rev())?;
        for (key, lease) in &doomed {
            self.tombstone(key, *lease)?;
        }
        Ok(DeleteRangeResponse {
            revision: self.read_rev() as i64,
            deleted: doomed.len() as i64,
            prev_kvs: Vec::new(),
        })
    }

    fn tombstone(&mut self, key: &[u8], lease: i64) -> Result<(), Error> {
        if lease != 0 {
            self.lease_keys.remove((lease, key))?;
        }
        let rev = self.write_rev();
        mvcc::write_row(
            &mut self.history,
            &mut self.by_rev,
            key,
            rev,
            &Record::Tombstone,
        )?;
        self.changed = true;
        Ok(())
    }

    /// Grants a lease (no revision change).
    pub(crate) fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), Error> {
        lease::grant(&mut self.leases, id, ttl)
    }

    /// Revokes a lease, deleting its keys at one new revision (none if it had no keys).
    pub(crate) fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        lease::require(&self.leases, id)?;
        for key in lease::keys_of(&self.lease_keys, id)? {
            let kv = live(&self.history, &key, self.read_rev())?
                .filter(|kv| kv.lease == id)
                .ok_or_else(|| {
                    Error::Corrupt(format!("lease {id} lists a key it does not hold"))
                })?;
            self.tombstone(&kv.key, kv.lease)?;
        }
        self.leases.remove(id)?;
        Ok(())
    }

    /// Logical compaction at `rev` (etcd's checks: at or below the compacted revision is
    /// "compacted", above the current one is "future").
    pub(crate) fn compact(&mut self, rev: i64) -> Result<(), Error> {
        if rev <= self.compacted as i64 {
            return Err(KvError::Compacted.into());
        }
        if rev > self.read_rev() as i64 {
            return Err(KvError::FutureRevision.into());
        }
        mvcc::compact(&mut self.history, &mut self.by_rev, rev as u64)?;
        self.compacted = rev as u64;
        Ok(())
    }
}
