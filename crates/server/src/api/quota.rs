//! etcd's space quota (`etcdserver/quota.go`, `v3rpc/quota.go`): before a put, a transaction
//! with puts or a lease grant is proposed, the member it reached checks that its state
//! machine file plus the request's estimated cost stays under `--quota-backend-bytes`. If
//! not, it raises a NOSPACE alarm for itself through the log (which makes every member refuse
//! such requests at apply, see `kv::alarms`) and refuses the request with etcd's
//! `etcdserver: mvcc: database space exceeded`.
//!
//! The flag follows etcd: 0 means the 2 GiB default, a negative value turns the quota off,
//! and a value over 8 GiB is accepted with a warning. The cost estimate is etcd's: 256 bytes
//! of metadata plus key and value per put, the larger branch of a transaction, 64 bytes per
//! lease; a request of cost 0 always passes.

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::rpctypes::ERR_NO_SPACE;

/// etcd's `DefaultQuotaBytes`: the quota when the flag is 0.
pub const QUOTA_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's `MaxQuotaBytes`: larger quotas are accepted with a warning (etcd: "may lead to
/// degraded performance").
pub const QUOTA_BYTES_SUGGESTED_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// etcd's `kvOverhead`: estimated bytes of a key's metadata.
const PUT_OVERHEAD_BYTES: u64 = 256;
/// etcd's `leaseOverhead`: estimated bytes of a lease.
pub const LEASE_COST_BYTES: u64 = 64;

/// The quota of this member's state machine file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes the file plus a request may reach (exclusive); `None`: no quota.
    bytes_max: Option<u64>,
}

impl Quota {
    /// etcd's default quota, [`QUOTA_BYTES_DEFAULT`].
    pub const DEFAULT: Quota = Quota {
        bytes_max: Some(QUOTA_BYTES_DEFAULT),
    };

    /// The quota `--quota-backend-bytes` asks for, logged as etcd logs it.
    pub fn from_flag(quota_backend_bytes: i64) -> Quota {
        let bytes_max = match u64::try_from(quota_backend_bytes) {
            Err(_) => {
                tracing::info!(
                    quota_size_bytes = quota_backend_bytes,
                    "disabled backend quota"
                );
                None
            }
            Ok(0) => {
                tracing::info!(
                    quota_size_bytes = QUOTA_BYTES_DEFAULT,
                    "enabled backend quota with default value"
                );
                Some(QUOTA_BYTES_DEFAULT)
            }
            Ok(bytes) => {
                if bytes > QUOTA_BYTES_SUGGESTED_MAX {
                    tracing::warn!(
                        quota_size_bytes = bytes,
                        quota_maximum_size_bytes = QUOTA_BYTES_SUGGESTED_MAX,
                        "quota exceeds the maximum value"
                    );
                }
                tracing::info!(quota_size_bytes = bytes, "enabled backend quota");
                Some(bytes)
            }
        };
        Quota { bytes_max }
    }

    /// Whether a request of estimated `cost` fits when the file holds `size` bytes (etcd's
    /// `backendQuota.Available`).
    pub fn available(&self, size: u64, cost: u64) -> bool {
        match self.bytes_max {
            _ if cost == 0 => true,
            None => true,
            Some(max) => size.saturating_add(cost) < max,
        }
    }
}

/// etcd's `costPut`.
pub fn put_cost(r: &epb::PutRequest) -> u64 {
    PUT_OVERHEAD_BYTES + r.key.len() as u64 + r.value.len() as u64
}

/// etcd's `costTxn`: the costlier branch's puts. Unlike etcd 3.4, the puts of a nested
/// transaction count too (etcd counts them as 0, letting them past the quota).
pub fn txn_cost(r: &epb::TxnRequest) -> u64 {
    use epb::request_op::Request as Op;
    let branch = |ops: &[epb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestPut(p)) => put_cost(p),
                Some(Op::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

impl Api {
    /// etcd's `quotaAlarmer.check`: refuses a request of estimated `cost` that does not fit
    /// the quota, after raising this member's NOSPACE alarm through the log (unless this
    /// member already sees it raised, which would make the proposal a no-op).
    pub(super) async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        // Nothing to measure: no quota, or a request that adds nothing.
        if cost == 0 || self.inner.quota.bytes_max.is_none() {
            return Ok(());
        }
        // The state machine file's size (Status's `dbSize`), measured at most 50 ms ago; 0 if
        // it cannot be read (it then never trips the quota, as a missing file holds nothing).
        let size = self.inner.node.kv.file_size_recent().unwrap_or(0);
        if self.inner.quota.available(size, cost) {
            return Ok(());
        }
        let alarm = kv::AlarmMember {
            member_id: self.inner.member_id,
            alarm: kv::AlarmType::NoSpace,
        };
        if !self.inner.node.kv.alarms().contains(&alarm) {
            tracing::warn!(
                db_size_bytes = size,
                request_cost_bytes = cost,
                "database space exceeded; raising the NOSPACE alarm"
            );
            // As etcd, the request is refused whatever becomes of the alarm's proposal.
            if let Err(e) = self
                .propose_alarm(kv::AlarmAction::Activate, alarm, None)
                .await
            {
                tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
            }
        }
        Err(Status::resource_exhausted(ERR_NO_SPACE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_bytes: usize) -> epb::PutRequest {
        epb::PutRequest {
            key: key.into(),
            value: vec![0; value_bytes],
            ..Default::default()
        }
    }

    fn op(r: epb::request_op::Request) -> epb::RequestOp {
        epb::RequestOp { request: Some(r) }
    }

    #[test]
    fn the_flag_follows_etcd() {
        assert_eq!(Quota::from_flag(0).bytes_max, Some(QUOTA_BYTES_DEFAULT));
        assert_eq!(Quota::from_flag(-1).bytes_max, None);
        assert_eq!(Quota::from_flag(1 << 20).bytes_max, Some(1 << 20));
        let huge = 16 * 1024 * 1024 * 1024;
        assert_eq!(Quota::from_flag(huge).bytes_max, Some(huge as u64));
    }

    #[test]
    fn availability_and_costs_follow_etcd() {
        let q = Quota::from_flag(1000);
        assert!(q.available(999, 0), "no mutation always passes");
        assert!(q.available(700, 299));
        assert!(!q.available(700, 300), "the bound is exclusive");
        assert!(Quota::from_flag(-5).available(u64::MAX, u64::MAX));
        assert_eq!(put_cost(&put("ab", 10)), 256 + 2 + 10);
        use epb::request_op::Request as Op;
        let t = epb::TxnRequest {
            compare: vec![],
            success: vec![
                op(Op::RequestPut(put("a", 1))),
                op(Op::RequestDeleteRange(Default::default())),
            ],
            failure: vec![op(Op::RequestTxn(epb::TxnRequest {
                success: vec![
                    op(Op::RequestPut(put("b", 100))),
                    op(Op::RequestPut(put("c", 1))),
                ],
                ..Default::default()
            }))],
        };
        assert_eq!(txn_cost(&t), (256 + 101) + (256 + 2));
        let reads = epb::TxnRequest {
            success: vec![op(Op::RequestRange(Default::default()))],
            ..Default::default()
        };
        assert_eq!(txn_cost(&reads), 0);
    }
}
