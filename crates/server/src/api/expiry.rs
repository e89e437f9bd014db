//! The leader's lease expiry task (etcd's lessor loop): while this member leads, it keeps the
//! deadlines of its term ([`super::lessor`]), proposes a revoke through the log for each lease
//! past its deadline, and, on becoming leader, gives every stored lease a full TTL (as etcd).
//! Limits: [`REVOKES_PER_ROUND_MAX`] revokes per [`EXPIRY_CHECK_INTERVAL`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::Role;

use super::Api;
use crate::replica::WriteError;

/// How often the leader looks for expired leases.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Revokes proposed per check, at most (etcd rate-limits revokes too).
pub const REVOKES_PER_ROUND_MAX: usize = 64;
/// How often the leader compares its deadlines with the state machine's leases.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a new leader waits for the entries of earlier terms to be applied before it
/// loads the leases (retried at the next check).
const PROMOTE_READ_TIMEOUT: Duration = Duration::from_secs(2);

impl Api {
    /// Sets the minimum lease TTL from the election timeout and starts the expiry task. The
    /// caller aborts the task when the server stops.
    pub fn start_lessor(&self, election: Duration) -> tokio::task::JoinHandle<()> {
        let min = super::lessor::min_ttl_secs(election);
        self.inner.leases.min_ttl_secs.store(min, Ordering::Relaxed);
        let api = self.clone();
        tokio::spawn(async move { api.expiry_loop().await })
    }

    async fn expiry_loop(self) {
        let mut ticker = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reconcile = Instant::now();
        loop {
            ticker.tick().await;
            let st = self.inner.node.status();
            if st.role != Role::Leader {
                self.inner.leases.lessor().demote();
                continue;
            }
            let primary = self.inner.leases.lessor().primary_term();
            if primary != Some(st.term) {
                if self.promote(st.term).await {
                    last_reconcile = Instant::now();
                }
                continue;
            }
            if last_reconcile.elapsed() >= RECONCILE_INTERVAL {
                last_reconcile = Instant::now();
                if let Ok(leases) = self.stored_leases().await {
                    self.inner
                        .leases
                        .lessor()
                        .reconcile(&leases, Instant::now());
                }
            }
            self.revoke_expired().await;
        }
    }

    /// Takes over expiry in `term`: once every entry of earlier terms is applied (a ReadIndex
    /// round succeeds only after this term's first entry commits), every stored lease gets a
    /// full TTL. Returns whether it did.
    async fn promote(&self, term: u64) -> bool {
        let read = tokio::time::timeout(PROMOTE_READ_TIMEOUT, self.inner.node.read_index()).await;
        if !matches!(read, Ok(Ok(()))) {
            return false;
        }
        let Ok(leases) = self.stored_leases().await else {
            return false;
        };
        let st = self.inner.node.status();
        if st.role != Role::Leader || st.term != term {
            return false;
        }
        tracing::info!(
            term,
            leases = leases.len(),
            "leading: lease deadlines reset"
        );
        self.inner
            .leases
            .lessor()
            .promote(term, &leases, Instant::now());
        true
    }

    /// Proposes revokes for up to [`REVOKES_PER_ROUND_MAX`] expired leases.
    async fn revoke_expired(&self) {
        // A CORRUPT alarm refuses every revoke at apply (etcd's corrupt applier): proposing
        // them would only fill the log. They are revoked once the alarm is disarmed.
        let alarms = self.inner.node.kv.alarms();
        if alarms.iter().any(|a| a.alarm == kv::AlarmType::Corrupt) {
            return;
        }
        let expired = self
            .inner
            .leases
            .lessor()
            .expired(Instant::now(), REVOKES_PER_ROUND_MAX);
        for id in expired {
            // No session: a revoke is idempotent (a repeat finds the lease gone).
            let data =
                kv::codec::encode_command(&kv::Command::new(kv::Request::LeaseRevoke { id }));
            let timeout = self.inner.leader.policy().timeout;
            let attempt = tokio::time::timeout(timeout, self.inner.node.propose(data));
            match attempt.await {
                Ok(Ok(_)) | Ok(Err(WriteError::Kv(kv::KvError::LeaseNotFound))) => {
                    tracing::debug!(lease = id, "lease expired and revoked");
                    self.inner.leases.lessor().revoke(id);
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = id, error = %e, "revoking an expired lease failed; retrying");
                    return;
                }
                Err(_) => return,
            }
        }
    }
}
