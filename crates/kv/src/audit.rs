//! Checks of a store's state: [`Store::hash`] and [`Store::hash_kv`] to compare replicas
//! (etcd's Maintenance `Hash` and `HashKV`), and
//! [`Store::check_invariants`] for tests and the simulator.

use redb::{ReadableTable, ReadableTableMetadata};

use crate::error::{Error, KvError};
use crate::lease::{self, LEASES, LEASE_KEYS};
use crate::mvcc::{KeySpan, Rev, REVS};
use crate::session::{Sessions, SESSIONS};
use crate::store::{Meta, Store, META};

/// A hash of the key-value history up to a revision: what etcd's `HashKV` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 of the rows hashed.
    pub hash: u32,
    /// The store's current revision when it was computed.
    pub revision: i64,
    /// The store's compacted revision when it was computed.
    pub compact_revision: i64,
}

/// Feeds every row of `revs` up to store revision `upto` (inclusive) into `h`: its revision
/// and its bytes (key and record), length-prefixed.
fn hash_rows(
    h: &mut crc32fast::Hasher,
    revs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    upto: u64,
) -> Result<(), Error> {
    for row in revs.range(..=Rev::end_of(upto).key())? {
        let (k, v) = row?;
        let (main, sub) = k.value();
        h.update(&main.to_le_bytes());
        h.update(&sub.to_le_bytes());
        h.update(&(v.value().len() as u64).to_le_bytes());
        h.update(v.value());
    }
    Ok(())
}

impl Store {
    /// A CRC-32 of the whole replicated state at the current revision, for comparing
    /// replicas (etcd's Maintenance `Hash`): the revision, compacted revision, every row kept
    /// (by revision), every lease and the keys attached to it, the member table, the removed
    /// members, the alarms and the auth state (users, roles, password hashes, enabled, auth
    /// revision; hashed only once it differs from a new store's, so that the hash of a
    /// store without auth stays what it was). Sessions and the applied index are left out (they are
    /// bookkeeping of the log, not state a client sees). Returns `(revision, hash)`.
    pub fn hash(&self) -> Result<(i64, u32), Error> {
        self.settle()?;
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&meta.revision.to_le_bytes());
        h.update(&meta.compacted.to_le_bytes());
        hash_rows(&mut h, &txn.open_table(REVS)?, u64::MAX)?;
        for l in lease::all(&txn.open_table(LEASES)?)? {
            h.update(&l.id.to_le_bytes());
            h.update(&l.ttl.to_le_bytes());
        }
        for row in txn.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = row?;
            let (id, key) = k.value();
            h.update(&id.to_le_bytes());
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
        }
        for m in crate::members::all(&txn.open_table(crate::members::MEMBERS)?)? {
            h.update(&m.id.to_le_bytes());
            h.update(&(m.name.len() as u64).to_le_bytes());
            h.update(m.name.as_bytes());
            for urls in [&m.peer_urls, &m.client_urls] {
                h.update(&(urls.len() as u64).to_le_bytes());
                for u in urls {
                    h.update(&(u.len() as u64).to_le_bytes());
                    h.update(u.as_bytes());
                }
            }
        }
        for id in crate::members::removed(&txn.open_table(crate::members::MEMBERS_REMOVED)?)? {
            h.update(&id.to_le_bytes());
        }
        for a in crate::alarms::all(&txn.open_table(crate::alarms::ALARMS)?)? {
            h.update(&a.member_id.to_le_bytes());
            h.update(&[a.alarm.code()]);
        }
        let auth = crate::auth::load(&txn.open_table(crate::auth::AUTH)?)?;
        if auth != crate::auth::AuthState::default() {
            h.update(&auth.encode());
        }
        Ok((meta.revision as i64, h.finalize()))
    }

    /// A CRC-32 of the key-value history up to `revision` (etcd's `HashByRev`, behind
    /// Maintenance `HashKV`): every row kept whose store revision is at most `revision` (0:
    /// the current revision). Compaction removes rows through the log, so members at the
    /// same compacted revision keep the same rows, and their hashes at a revision both have
    /// reached are equal; the answer carries the compacted revision so that a checker
    /// compares only such members. A revision at or below the compacted one, or above the
    /// current one, is refused with etcd's errors; a negative one hashes no row (as etcd).
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, Error> {
        self.settle()?;
        let txn = self.begin_read()?;
        let meta = Meta::read(&txn.open_table(META)?)?;
        let (current, compacted) = (meta.revision as i64, meta.compacted as i64);
        if revision > 0 && revision <= compacted {
            return Err(KvError::Compacted.into());
        }
        if revision > current {
            return Err(KvError::FutureRevision.into());
        }
        let mut h = crc32fast::Hasher::new();
        let upto = match revision {
            0 => Some(meta.revision),
            r => u64::try_from(r).ok(),
        };
        if let Some(upto) = upto {
            hash_rows(&mut h, &txn.open_table(REVS)?, upto)?;
        }
        Ok(KvHash {
            hash: h.finalize(),
            revision: current,
            compact_revision: compacted,
        })
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
