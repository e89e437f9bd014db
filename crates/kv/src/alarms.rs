//! The cluster's alarms (etcd's `alarm` bucket and `v3alarm.AlarmStore`): which member raised
//! which alarm, replicated through the log ([`crate::Request::Alarm`]) and kept in snapshots,
//! so that every member refuses the same requests while an alarm is active.
//!
//! An alarm is a `(member, type)` pair, recorded at most once. While one is active the
//! applier refuses what etcd's refuses (`etcdserver/apply.go` `applierV3Capped`,
//! `etcdserver/corrupt.go` `applierV3Corrupt`):
//!
//! - NOSPACE: puts, transactions with puts, lease grants ([`KvError::NoSpace`]); deletes,
//!   compactions, lease revokes and reads still run, so that an operator can free space.
//! - CORRUPT: every put, delete, transaction, range through the log, compaction, lease grant
//!   and revoke ([`KvError::Corrupt`]); reads served without the log still run.
//!
//! The refusal is decided when the entry is applied, from the replicated table, so every
//! member refuses the same entries. The table is bounded: one row per member and type, and
//! at most [`ALARMS_MAX`] rows (the server accepts alarms only for members of the
//! configuration, so the cap is a second line).

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::command::Request;
use crate::error::{Error, KvError};
use crate::types::{RequestOp, TxnRequest};

/// `(member id, alarm type code) -> ()`.
pub(crate) const ALARMS: TableDefinition<(u64, u8), ()> = TableDefinition::new("alarms");

/// Most alarms the table holds: two types for each of 64 members, far more than any
/// cluster's configuration (etcd's clusters have at most a handful of members).
pub const ALARMS_MAX: usize = 128;

/// What went wrong (etcd's `AlarmType`; the codes are etcd's enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmType {
    /// A member's state machine file is over its `--quota-backend-bytes` (etcd's NOSPACE).
    NoSpace,
    /// Members' state machines differ at the same revision (etcd's CORRUPT).
    Corrupt,
}

impl AlarmType {
    /// etcd's enum value (`NONE` is 0 and is never stored).
    pub fn code(self) -> u8 {
        match self {
            AlarmType::NoSpace => 1,
            AlarmType::Corrupt => 2,
        }
    }

    /// Inverse of [`AlarmType::code`].
    pub fn from_code(code: u8) -> Option<AlarmType> {
        match code {
            1 => Some(AlarmType::NoSpace),
            2 => Some(AlarmType::Corrupt),
            _ => None,
        }
    }

    /// etcd's name of the type, as its text format prints it.
    pub fn name(self) -> &'static str {
        match self {
            AlarmType::NoSpace => "NOSPACE",
            AlarmType::Corrupt => "CORRUPT",
        }
    }
}

/// One active alarm (etcd's `AlarmMember`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmMember {
    /// The member that raised it (0: raised for the cluster, as etcd's corruption checker
    /// does when it cannot tell which member is wrong).
    pub member_id: u64,
    /// What it is about.
    pub alarm: AlarmType,
}

impl std::fmt::Display for AlarmMember {
    /// etcd's compact text format of an `AlarmMember` (what `Status.errors` carries and
    /// `etcdctl alarm list` prints): fields with their zero value are left out, and every
    /// field is followed by a space.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.member_id != 0 {
            write!(f, "memberID:{} ", self.member_id)?;
        }
        write!(f, "alarm:{} ", self.alarm.name())
    }
}

/// What an alarm request does (etcd's `AlarmRequest_AlarmAction`, less GET, which reads the
/// table without the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmAction {
    /// Raise the alarm (a no-op if it is active).
    Activate,
    /// Clear the alarm (a no-op if it is not active).
    Deactivate,
}

/// Applies an alarm request; returns what etcd answers with: the alarm raised or cleared,
/// the alarm itself when raising one already active (a no-op), `None` when clearing one
/// that is not.
pub(crate) fn apply(
    table: &mut redb::Table<'_, (u64, u8), ()>,
    action: AlarmAction,
    m: AlarmMember,
) -> Result<Result<Option<AlarmMember>, KvError>, Error> {
    let key = (m.member_id, m.alarm.code());
    let present = table.get(key)?.is_some();
    match action {
        AlarmAction::Activate if present => Ok(Ok(Some(m))),
        AlarmAction::Activate => {
            if table.len()? as usize >= ALARMS_MAX {
                return Ok(Err(KvError::TooManyAlarms));
            }
            table.insert(key, ())?;
            Ok(Ok(Some(m)))
        }
        AlarmAction::Deactivate if present => {
            table.remove(key)?;
            Ok(Ok(Some(m)))
        }
        AlarmAction::Deactivate => Ok(Ok(None)),
    }
}

/// Every active alarm, by member then type.
pub(crate) fn all(table: &impl ReadableTable<(u64, u8), ()>) -> Result<Vec<AlarmMember>, Error> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (member_id, code) = row?.0.value();
        let alarm = AlarmType::from_code(code)
            .ok_or_else(|| Error::Corrupt(format!("alarm of unknown type {code}")))?;
        out.push(AlarmMember { member_id, alarm });
    }
    Ok(out)
}

/// Replaces the table's rows with `alarms` (a snapshot's).
pub(crate) fn replace(
    table: &mut redb::Table<'_, (u64, u8), ()>,
    alarms: &[AlarmMember],
) -> Result<(), Error> {
    table.retain(|_, _| false)?;
    for m in alarms {
        table.insert((m.member_id, m.alarm.code()), ())?;
    }
    Ok(())
}

/// The refusal `req` gets while `active` alarms are raised, if any. CORRUPT outranks
/// NOSPACE: it refuses a superset.
pub(crate) fn refusal(active: &[AlarmMember], req: &Request) -> Option<KvError> {
    let raised = |t: AlarmType| active.iter().any(|m| m.alarm == t);
    if raised(AlarmType::Corrupt) {
        let refused = matches!(
            req,
            Request::Range(_)
                | Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Txn(_)
                | Request::Compact { .. }
                | Request::LeaseGrant { .. }
                | Request::LeaseRevoke { .. }
        );
        if refused {
            return Some(KvError::Corrupt);
        }
    }
    if raised(AlarmType::NoSpace) {
        let refused = match req {
            Request::Put(_) | Request::LeaseGrant { .. } => true,
            Request::Txn(t) => txn_puts(t),
            _ => false,
        };
        if refused {
            return Some(KvError::NoSpace);
        }
    }
    None
}

/// Whether either branch of `t`, or of a transaction nested in it, holds a put (etcd's
/// `costTxn > 0`; etcd 3.4 does not look into nested transactions, which would let one slip
/// past the quota).
pub fn txn_puts(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(inner) => txn_puts(inner),
        RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn alarm(member_id: u64, alarm: AlarmType) -> AlarmMember {
        AlarmMember { member_id, alarm }
    }

    #[test]
    fn activate_and_deactivate_are_idempotent_and_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = redb::Database::create(dir.path().join("a.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(ALARMS).expect("table");
            let a = alarm(7, AlarmType::NoSpace);
            assert_eq!(
                apply(&mut t, AlarmAction::Activate, a).expect("io"),
                Ok(Some(a))
            );
            // Again: the table is unchanged, and the answer names it (as etcd's).
            assert_eq!(
                apply(&mut t, AlarmAction::Activate, a).expect("io"),
                Ok(Some(a))
            );
            assert_eq!(all(&t).expect("all"), vec![a]);
            let c = alarm(7, AlarmType::Corrupt);
            apply(&mut t, AlarmAction::Activate, c)
                .expect("io")
                .expect("room");
            assert_eq!(all(&t).expect("all"), vec![a, c]);
            assert_eq!(
                apply(&mut t, AlarmAction::Deactivate, a).expect("io"),
                Ok(Some(a))
            );
            assert_eq!(
                apply(&mut t, AlarmAction::Deactivate, a).expect("io"),
                Ok(None)
            );
            assert_eq!(all(&t).expect("all"), vec![c]);
            for id in 100..(100 + ALARMS_MAX as u64 - 1) {
                apply(&mut t, AlarmAction::Activate, alarm(id, AlarmType::NoSpace))
                    .expect("io")
                    .expect("room");
            }
            assert_eq!(
                apply(&mut t, AlarmAction::Activate, alarm(1, AlarmType::NoSpace)).expect("io"),
                Err(KvError::TooManyAlarms)
            );
            replace(&mut t, &[a]).expect("replace");
            assert_eq!(all(&t).expect("all"), vec![a]);
        }
    }

    #[test]
    fn refusals_follow_etcds_capped_and_corrupt_appliers() {
        let put = Request::Put(PutRequest::new("k", "v"));
        let del = Request::DeleteRange(DeleteRangeRequest::range("a", "z"));
        let read_txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Range(RangeRequest::prefix("p"))],
            failure: vec![RequestOp::DeleteRange(DeleteRangeRequest::range("a", "b"))],
        };
        let nested_put = TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![],
                failure: vec![RequestOp::Put(PutRequest::new("k", "v"))],
            })],
            failure: vec![],
        };
        let grant = Request::LeaseGrant { id: 1, ttl: 5 };
        let revoke = Request::LeaseRevoke { id: 1 };
        let compact = Request::Compact { revision: 3 };
        let all_requests = [
            put.clone(),
            del.clone(),
            Request::Txn(read_txn.clone()),
            Request::Txn(nested_put.clone()),
            grant.clone(),
            revoke.clone(),
            compact.clone(),
        ];
        for r in &all_requests {
            assert_eq!(refusal(&[], r), None, "{r:?}");
        }
        let nospace = [alarm(1, AlarmType::NoSpace)];
        let refused: Vec<_> = all_requests
            .iter()
            .map(|r| refusal(&nospace, r).is_some())
            .collect();
        assert_eq!(refused, [true, false, false, true, true, false, false]);
        assert_eq!(refusal(&nospace, &put), Some(KvError::NoSpace));
        let corrupt = [alarm(0, AlarmType::Corrupt), alarm(2, AlarmType::NoSpace)];
        for r in &all_requests {
            assert_eq!(refusal(&corrupt, r), Some(KvError::Corrupt), "{r:?}");
        }
        let publish = Request::MembersRemoved(vec![3]);
        assert_eq!(refusal(&corrupt, &publish), None, "member changes go on");
    }

    #[test]
    fn alarms_print_as_etcds_text_format() {
        assert_eq!(
            alarm(13803658152347727308, AlarmType::NoSpace).to_string(),
            "memberID:13803658152347727308 alarm:NOSPACE "
        );
        assert_eq!(alarm(0, AlarmType::Corrupt).to_string(), "alarm:CORRUPT ");
    }
}
