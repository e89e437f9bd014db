//! The lease table: granted leases and the keys attached to them.
//!
//! Invariant (checked by [`crate::Store::check_invariants`]): a row `(lease, key)` exists in
//! [`LEASE_KEYS`] exactly when `key` is live at the current revision with `lease` as its lease,
//! and then `lease` is in [`LEASES`]. Expiry is not stored: the leader tracks deadlines and
//! proposes a revoke.

use redb::{ReadableTable, Table, TableDefinition};

use crate::error::{Error, KvError};
use crate::types::Lease;

/// Granted leases: `id -> ttl seconds`.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
/// Attached keys: `(lease id, key) -> ()`.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const LEASE_TTL_MAX: i64 = 9_000_000_000;

/// Every lease in id order.
pub(crate) fn all(t: &impl ReadableTable<i64, i64>) -> Result<Vec<Lease>, Error> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (id, ttl) = row?;
        out.push(Lease {
            id: id.value(),
            ttl: ttl.value(),
        });
    }
    Ok(out)
}

/// Keys attached to `id`, ascending.
pub(crate) fn keys_of(
    t: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: i64,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    let empty: &[u8] = &[];
    for row in t.range((id, empty)..)? {
        let (k, _) = row?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        out.push(key.to_vec());
    }
    Ok(out)
}

/// Records a new lease. Errors as etcd's lessor: id 0 is "not found" (etcd reserves it for "no
/// lease"; the leader picks the id before proposing), a known id exists, TTL above the maximum.
pub(crate) fn grant(t: &mut Table<'_, i64, i64>, id: i64, ttl: i64) -> Result<(), Error> {
    if id == 0 {
        return Err(KvError::LeaseNotFound.into());
    }
    if ttl > LEASE_TTL_MAX {
        return Err(KvError::LeaseTtlTooLarge.into());
    }
    if t.get(id)?.is_some() {
        return Err(KvError::LeaseExists.into());
    }
    t.insert(id, ttl)?;
    Ok(())
}

/// Fails with [`KvError::LeaseNotFound`] unless `id` is granted.
pub(crate) fn require(t: &impl ReadableTable<i64, i64>, id: i64) -> Result<(), Error> {
    if t.get(id)?.is_none() {
        return Err(KvError::LeaseNotFound.into());
    }
    Ok(())
}
