//! Checks of a store's state: [`Store::hash`] to compare replicas, and
//! [`Store::check_invariants`] for tests and the simulator.

use redb::{ReadableTable, ReadableTableMetadata};

use crate::error::Error;
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::{KeySpan, REVS};
use crate::session::{Sessions, SESSIONS};
use crate::store::{Meta, Store, META};

impl Store {
    /// A CRC-32 of the replicated state at the current revision, for comparing replicas: the
    /// revision, compacted revision, every row kept (by revision) and every lease. Sessions
    /// and the applied index are left out (they are bookkeeping, not keyspace). Returns
    /// `(revision, hash)`.
    pub fn hash(&self) -> Result<(i64, u32), Error> {
        self.settle()?;
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&meta.revision.to_le_bytes());
        h.update(&meta.compacted.to_le_bytes());
        for row in txn.open_table(REVS)?.iter()? {
            let (k, v) = row?;
            let (main, sub) = k.value();
            h.update(&main.to_le_bytes());
            h.update(&sub.to_le_bytes());
            h.update(&(v.value().len() as u64).to_le_bytes());
            h.update(v.value());
        }
        for l in lease::all(&txn.open_table(LEASES)?)? {
            h.update(&l.id.to_le_bytes());
            h.update(&l.ttl.to_le_bytes());
        }
        Ok((meta.revision as i64, h.finalize()))
    }

    /// Checks the cross-table invariants and that the in-memory index is exactly the one the
    /// rows rebuild; a violation is a bug and panics. Linear in the size of the store, and
    /// expects no concurrent apply: for tests and the simulator.
    pub fn check_invariants(&self) -> Result<(), Error> {
        self.settle()?;
        let index = self.read_index();
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        assert_eq!(meta, index.meta, "the index's meta is the stored meta");
        index.check();
        let rebuilt = crate::open::rebuild(&txn)?;
        assert!(
            rebuilt.same_state(&index),
            "the key index differs from the one its rows rebuild"
        );
        assert_eq!(txn.open_table(REVS)?.len()?, index.len(), "rows vs index");
        let leases = txn.open_table(LEASES)?;
        let lease_keys = txn.open_table(LEASE_KEYS)?;
        let mut attached = 0u64;
        index.scan(KeySpan::From(&[]), meta.revision, |key, live| {
            if live.lease != 0 {
                attached += 1;
                assert!(
                    leases.get(live.lease)?.is_some(),
                    "live key on a revoked lease"
                );
                assert!(
                    lease_keys.get((live.lease, key))?.is_some(),
                    "key missing from its lease"
                );
            }
            Ok::<_, Error>(true)
        })?;
        assert_eq!(
            lease_keys.iter()?.count() as u64,
            attached,
            "stale lease attachments"
        );
        let evicted = crate::store::sessions_evicted(&txn.open_table(META)?)?;
        let sessions = Sessions::load(
            &txn.open_table(SESSIONS)?,
            self.options.sessions_max,
            evicted,
        )?;
        assert!(
            sessions.same_as(&self.lock_sessions()),
            "the sessions in memory differ from the stored ones: {:?} vs {sessions:?}",
            *self.lock_sessions()
        );
        assert!(sessions.len() <= self.options.sessions_max);
        Ok(())
    }
}
