//! etcd's Lease service (`etcdserverpb.Lease`), and the lease state of one member.
//!
//! Grants and revokes are writes: they go through the log like puts, under a session, and a
//! follower forwards them to the leader. Expiry is the leader's: its deadlines are in
//! [`super::lessor`] and the task that revokes expired leases in [`super::expiry`].
//! Keep-alives and time-to-live queries need those deadlines, so a follower forwards each one
//! to the leader over the peer port (`skiff.raft.v1.Raft/LeaseKeepAlive`, `LeaseTimeToLive`)
//! through the same forward-and-retry loop as writes ([`crate::peer::Forwarder`]). Limits: one
//! task per open keep-alive stream, at most [`KEEPALIVE_STREAMS_MAX`].

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::lessor::{Lessor, Renewal};
use super::{random_u64, unexpected, Api, LeaderClient};
use crate::pb::etcdserverpb as epb;
use crate::peer::{forwarded, with_session, Origin, Reached};
use crate::rpctypes::{is_kv_error, ERR_TOO_MANY_REQUESTS, ERR_TTL_TOO_LARGE};

/// Answers queued on one keep-alive stream.
const KEEPALIVE_QUEUE_MAX: usize = 16;
/// Keep-alive streams open on one member, at most (each holds a task); more are refused as
/// "too many requests".
pub const KEEPALIVE_STREAMS_MAX: usize = 10_000;
/// Attempts at a random lease id before giving up (a collision is a 1-in-2^63 event).
const GRANT_ATTEMPTS_MAX: usize = 8;

/// The lease state of one member: the minimum TTL and, on the leader, the deadlines.
#[derive(Debug)]
pub(super) struct Leases {
    /// etcd's minimum TTL in seconds; smaller requested TTLs are raised to it. Set by
    /// [`Api::start_lessor`]; 1 before.
    pub(super) min_ttl_secs: AtomicI64,
    /// Deadlines while leading. Locked briefly, never across an await.
    lessor: Mutex<Lessor>,
    /// Salt for random lease ids.
    id_salt: AtomicU64,
    /// One permit per open keep-alive stream.
    keepalive_streams: Arc<tokio::sync::Semaphore>,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            min_ttl_secs: AtomicI64::new(1),
            lessor: Mutex::default(),
            id_salt: AtomicU64::default(),
            keepalive_streams: Arc::new(tokio::sync::Semaphore::new(KEEPALIVE_STREAMS_MAX)),
        }
    }
}

impl Leases {
    pub(super) fn lessor(&self) -> std::sync::MutexGuard<'_, Lessor> {
        // A panic while holding the lock broke no invariant a later caller relies on (the
        // deadlines are rebuilt at the next promotion).
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn min_ttl(&self) -> i64 {
        self.min_ttl_secs.load(Ordering::Relaxed).max(1)
    }

    /// A random positive lease id.
    fn random_id(&self) -> i64 {
        loop {
            let salt = self.id_salt.fetch_add(1, Ordering::Relaxed);
            let id = (random_u64(salt) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

impl Api {
    /// The leases the state machine holds.
    pub(super) async fn stored_leases(&self) -> Result<Vec<kv::Lease>, Status> {
        self.read_kv(|kv| kv.leases()).await
    }

    /// The stored TTL of lease `id`, if it exists.
    pub(super) async fn stored_ttl(&self, id: i64) -> Result<Option<i64>, Status> {
        let leases = self.stored_leases().await?;
        Ok(leases.iter().find(|l| l.id == id).map(|l| l.ttl))
    }

    pub(super) async fn lease_grant_impl(
        &self,
        r: epb::LeaseGrantRequest,
        origin: Origin,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseGrantResponse, Status> {
        if r.ttl > kv::LEASE_TTL_MAX {
            return Err(Status::out_of_range(ERR_TTL_TOO_LARGE));
        }
        // Checked where the client's request arrives (etcd's quota wraps its gRPC server), not
        // again where a follower forwards it.
        if origin == Origin::Client {
            self.check_quota(super::quota::LEASE_COST_BYTES).await?;
        }
        // etcd raises short TTLs so that a lease outlives a leader change.
        let ttl = r.ttl.max(self.inner.leases.min_ttl());
        // A random id is retried on collision with a new session; a given one is not.
        let attempts = if r.id == 0 && origin == Origin::Client {
            GRANT_ATTEMPTS_MAX
        } else {
            1
        };
        let mut last = Status::internal("no grant attempt");
        for _ in 0..attempts {
            let id = if r.id == 0 {
                self.inner.leases.random_id()
            } else {
                r.id
            };
            let fwd = epb::LeaseGrantRequest { ttl, id };
            let via = |mut c: LeaderClient, s| {
                let r = with_session(fwd, s);
                async move { c.lease_grant(r).await }
            };
            let grant = kv::Request::LeaseGrant { id, ttl };
            let outcome = self.write(grant, origin, session, None, via).await;
            match outcome {
                Ok(Reached::Here(kv::Response::LeaseGrant { revision, id, ttl })) => {
                    self.inner.leases.lessor().grant(id, ttl, Instant::now());
                    return Ok(epb::LeaseGrantResponse {
                        header: Some(epb::ResponseHeader {
                            revision,
                            ..self.header()
                        }),
                        id,
                        ttl,
                        error: String::new(),
                    });
                }
                Ok(Reached::Here(other)) => return Err(unexpected(&other)),
                Ok(Reached::Leader(resp)) => return Ok(resp),
                Err(s) if is_kv_error(&s, kv::KvError::LeaseExists) => last = s,
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    pub(super) async fn lease_revoke_impl(
        &self,
        r: epb::LeaseRevokeRequest,
        origin: Origin,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::LeaseRevokeResponse, Status> {
        let id = r.id;
        let via = |mut c: LeaderClient, s| {
            let r = forwarded(r, s, stamp.as_ref());
            async move { c.lease_revoke(r).await }
        };
        let revoke = kv::Request::LeaseRevoke { id };
        let outcome = self
            .write(revoke, origin, session, stamp.clone(), via)
            .await;
        match outcome {
            Ok(Reached::Here(kv::Response::LeaseRevoke { revision })) => {
                self.inner.leases.lessor().revoke(id);
                Ok(epb::LeaseRevokeResponse {
                    header: Some(epb::ResponseHeader {
                        revision,
                        ..self.header()
                    }),
                })
            }
            Ok(Reached::Here(other)) => Err(unexpected(&other)),
            Ok(Reached::Leader(resp)) => Ok(resp),
            Err(s) => {
                if is_kv_error(&s, kv::KvError::LeaseNotFound) {
                    self.inner.leases.lessor().revoke(id);
                }
                Err(s)
            }
        }
    }

    /// One keep-alive. An unknown or expired lease is answered with TTL 0, as etcd does.
    pub(super) async fn keep_alive_one(
        &self,
        id: i64,
        origin: Origin,
    ) -> Result<epb::LeaseKeepAliveResponse, Status> {
        let here = || self.renew_here(id);
        let via = |mut c: LeaderClient| async move {
            c.lease_keep_alive(epb::LeaseKeepAliveRequest { id }).await
        };
        let reached = self.inner.leader.on_leader(origin, here, via).await?;
        Ok(reached.into_answer())
    }

    async fn renew_here(&self, id: i64) -> Result<epb::LeaseKeepAliveResponse, Status> {
        let renewal = self.inner.leases.lessor().renew(id, Instant::now());
        let ttl = match renewal {
            Renewal::Renewed { ttl_secs } => ttl_secs,
            Renewal::Expired => 0,
            Renewal::Untracked => match self.stored_ttl(id).await? {
                Some(ttl) => {
                    self.inner.leases.lessor().grant(id, ttl, Instant::now());
                    ttl
                }
                None => 0,
            },
        };
        Ok(epb::LeaseKeepAliveResponse {
            header: Some(self.header_now()),
            id,
            ttl,
        })
    }

    pub(super) async fn time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
        origin: Origin,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        let here = || self.time_to_live_here(r);
        let via = |mut c: LeaderClient| async move { c.lease_time_to_live(r).await };
        let reached = self.inner.leader.on_leader(origin, here, via).await?;
        Ok(reached.into_answer())
    }

    /// TimeToLive on the leader: remaining seconds from its deadline (truncated, as etcd);
    /// TTL -1 for an unknown lease, as etcd.
    async fn time_to_live_here(
        &self,
        r: epb::LeaseTimeToLiveRequest,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        self.linearizable_read().await?;
        let Some(granted) = self.stored_ttl(r.id).await? else {
            return Ok(epb::LeaseTimeToLiveResponse {
                header: Some(self.header_now()),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let remaining = self.inner.leases.lessor().remaining(r.id, Instant::now());
        let ttl = remaining.map_or(granted, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let keys = if r.keys {
            let id = r.id;
            self.read_kv(move |kv| kv.lease_keys(id)).await?
        } else {
            Vec::new()
        };
        Ok(epb::LeaseTimeToLiveResponse {
            header: Some(self.header_now()),
            id: r.id,
            ttl,
            granted_ttl: granted,
            keys,
        })
    }

    async fn leases_impl(&self) -> Result<epb::LeaseLeasesResponse, Status> {
        self.linearizable_read().await?;
        let leases = self.stored_leases().await?;
        Ok(epb::LeaseLeasesResponse {
            header: Some(self.header_now()),
            leases: leases
                .into_iter()
                .map(|l| epb::LeaseStatus { id: l.id })
                .collect(),
        })
    }
}

type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::lease_server::Lease for Api {
    async fn lease_grant(
        &self,
        request: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        self.lease_grant_impl(request.into_inner(), Origin::Client, None)
            .await
            .map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        // etcd's `checkLeasePuts`: the caller needs write on every key of the lease. Checked
        // here, against this member's applied state, so that a denied revoke costs no entry,
        // and again at apply, where the entry carries the caller's stamp: a key attached to
        // the lease, or a permission revoked, in between is seen there.
        let caller = self.caller_of(&request).await?;
        let id = request.get_ref().id;
        self.check_permission(&caller, || kv::Request::LeaseRevoke { id })?;
        self.lease_revoke_impl(
            request.into_inner(),
            Origin::Client,
            None,
            Some(caller.stamp()),
        )
        .await
        .map(Response::new)
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each keep-alive of the stream in order. An error ends the stream (the client
    /// reopens it, as with etcd).
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let Ok(permit) = self
            .inner
            .leases
            .keepalive_streams
            .clone()
            .try_acquire_owned()
        else {
            return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS));
        };
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let next = tokio::select! {
                    m = input.message() => m,
                    _ = tx.closed() => break,
                };
                let Ok(Some(req)) = next else {
                    break;
                };
                let answer = api.keep_alive_one(req.id, Origin::Client).await;
                let end = answer.is_err();
                if tx.send(answer).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let answer = self
            .time_to_live(request.into_inner(), Origin::Client)
            .await?;
        // The keys attached to a lease are data: with auth on, the caller must be allowed to
        // read each of them (etcd's fix for CVE-2023-32082, `checkLeaseTimeToLive`).
        for key in &answer.keys {
            self.check_permission(&caller, || {
                kv::Request::Range(kv::RangeRequest::range(key.clone(), Vec::new()))
            })?;
        }
        Ok(Response::new(answer))
    }

    async fn lease_leases(
        &self,
        _request: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        self.leases_impl().await.map(Response::new)
    }
}
