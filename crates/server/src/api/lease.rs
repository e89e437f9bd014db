//! The etcd v3 `Lease` service (`etcdserverpb.Lease`) and lease expiry.
//!
//! Grants and revokes are writes: they go through the log like puts, under a session, and a
//! follower forwards them to the leader. Expiry is the leader's ([`crate::lessor`]): a
//! background task keeps the deadlines of the leader's term, proposes a revoke for each
//! expired lease, and gives every lease a full TTL when this member becomes leader (as etcd).
//! Keep-alives and time-to-live queries need those deadlines, so a follower forwards each one
//! to the leader over the peer port (`skiff.raft.v1.Raft/LeaseKeepAlive`, `LeaseTimeToLive`)
//! and never further (no loops). Limits: [`REVOKES_PER_ROUND_MAX`] revokes per
//! [`EXPIRY_CHECK_INTERVAL`]; one task per open keep-alive stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::Role;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{
    random_u64, unexpected, with_session, Api, WriteOutcome, ERR_NO_LEADER, ERR_TIMEOUT,
    REQUEST_TIMEOUT, RETRY_PAUSE,
};
use crate::lessor::{Lessor, Renewal};
use crate::node::WriteError;
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;

/// How often the leader looks for expired leases.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Revokes proposed per check, at most (etcd rate-limits revokes too).
pub const REVOKES_PER_ROUND_MAX: usize = 64;
/// How often the leader compares its deadlines with the state machine's leases.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a new leader waits for the entries of earlier terms to be applied before it
/// loads the leases (retried at the next check).
const PROMOTE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers queued on one keep-alive stream.
const KEEPALIVE_QUEUE_MAX: usize = 16;
/// Keep-alive streams open on one member, at most (each holds a task); more are refused as
/// "too many requests".
pub const KEEPALIVE_STREAMS_MAX: usize = 10_000;
/// Attempts at a random lease id before giving up (a collision is a 1-in-2^63 event).
const GRANT_ATTEMPTS_MAX: usize = 8;

const ERR_NOT_LEADER: &str = "etcdserver: not leader";
const ERR_TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
const ERR_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

/// The lease state of one member: the minimum TTL and, on the leader, the deadlines.
#[derive(Debug)]
pub(super) struct Leases {
    /// etcd's minimum TTL in seconds; smaller requested TTLs are raised to it. Set by
    /// [`Api::start_lessor`]; 1 before.
    min_ttl_secs: AtomicI64,
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
    fn lessor(&self) -> std::sync::MutexGuard<'_, Lessor> {
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

/// Where a lease request runs.
enum Route {
    /// This member leads.
    Here,
    /// On the leader, through this client.
    Leader(RaftClient<tonic::transport::Channel>),
}

/// Lease requests a follower forwards to the leader. Implemented by the API.
#[tonic::async_trait]
pub trait ForwardedLeases: Send + Sync + 'static {
    /// A grant arriving from a follower, under the follower's session.
    async fn lease_grant_here(
        &self,
        r: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status>;
    /// A revoke arriving from a follower, under the follower's session.
    async fn lease_revoke_here(
        &self,
        r: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status>;
    /// One keep-alive arriving from a follower.
    async fn lease_keep_alive_here(
        &self,
        r: Request<epb::LeaseKeepAliveRequest>,
    ) -> Result<Response<epb::LeaseKeepAliveResponse>, Status>;
    /// A time-to-live query arriving from a follower.
    async fn lease_time_to_live_here(
        &self,
        r: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status>;
}

impl Api {
    /// Sets the minimum lease TTL from the election timeout and starts the expiry task. The
    /// caller aborts the task when the server stops.
    pub fn start_lessor(&self, election: Duration) -> tokio::task::JoinHandle<()> {
        let min = crate::lessor::min_ttl_secs(election);
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
        let expired = self
            .inner
            .leases
            .lessor()
            .expired(Instant::now(), REVOKES_PER_ROUND_MAX);
        for id in expired {
            // No session: a revoke is idempotent (a repeat finds the lease gone).
            let data =
                kv::codec::encode_command(&kv::Command::new(kv::Request::LeaseRevoke { id }));
            let attempt = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.node.propose(data));
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

    async fn stored_leases(&self) -> Result<Vec<kv::Lease>, Status> {
        let kv = self.inner.node.kv.clone();
        tokio::task::spawn_blocking(move || kv.leases())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(super::kv_status)
    }

    /// The stored TTL of lease `id`, if it exists.
    async fn stored_ttl(&self, id: i64) -> Result<Option<i64>, Status> {
        let leases = self.stored_leases().await?;
        Ok(leases.iter().find(|l| l.id == id).map(|l| l.ttl))
    }

    /// Where a lease request that needs the leader's deadlines runs, waiting for a leader
    /// until `deadline`. A `forwarded` request is never forwarded again.
    async fn route(
        &self,
        forwarded: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Route, Status> {
        loop {
            let st = self.inner.node.status();
            if st.role == Role::Leader {
                return Ok(Route::Here);
            }
            if forwarded {
                return Err(Status::unavailable(ERR_NOT_LEADER));
            }
            if let Some(leader) = st.leader.filter(|l| l.get() != self.inner.member_id) {
                return match self.inner.peers.client(leader) {
                    Some(c) => Ok(Route::Leader(c)),
                    None => Err(Status::unavailable(ERR_NO_LEADER)),
                };
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(Status::unavailable(ERR_NO_LEADER));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Runs `here` on the leader: locally if this member leads, else through `via_leader`,
    /// retrying transient failures (no leader, leader changed, leader unreachable) until
    /// [`REQUEST_TIMEOUT`]. Only for requests that are safe to repeat.
    async fn on_leader<T, Here, Via>(
        &self,
        forwarded: bool,
        here: impl Fn() -> Here,
        via_leader: impl Fn(RaftClient<tonic::transport::Channel>) -> Via,
    ) -> Result<T, Status>
    where
        Here: std::future::Future<Output = Result<T, Status>>,
        Via: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let failure = match self.route(forwarded, deadline).await {
                Ok(Route::Here) => return here().await,
                Ok(Route::Leader(c)) => {
                    match tokio::time::timeout_at(deadline, via_leader(c)).await {
                        Ok(Ok(resp)) => return Ok(resp.into_inner()),
                        Ok(Err(s)) => s,
                        Err(_) => return Err(Status::unavailable(ERR_TIMEOUT)),
                    }
                }
                Err(s) => s,
            };
            if forwarded
                || failure.code() != Code::Unavailable
                || tokio::time::Instant::now() + RETRY_PAUSE >= deadline
            {
                return Err(if failure.message().starts_with("etcdserver:") {
                    failure
                } else {
                    // A connection failure to the leader, reported as etcd does.
                    Status::unavailable(ERR_NO_LEADER)
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn lease_grant_impl(
        &self,
        r: epb::LeaseGrantRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseGrantResponse, Status> {
        if r.ttl > kv::LEASE_TTL_MAX {
            return Err(Status::out_of_range(ERR_TTL_TOO_LARGE));
        }
        // etcd raises short TTLs so that a lease outlives a leader change.
        let ttl = r.ttl.max(self.inner.leases.min_ttl());
        // A random id is retried on collision with a new session; a given one is not.
        let attempts = if r.id == 0 && session.is_none() {
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
            let outcome = self
                .write(
                    kv::Request::LeaseGrant { id, ttl },
                    session,
                    |mut c, sid| {
                        let r = with_session(fwd, sid);
                        async move { c.lease_grant(r).await }
                    },
                )
                .await;
            match outcome {
                Ok(WriteOutcome::Local(kv::Response::LeaseGrant { revision, id, ttl })) => {
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
                Ok(WriteOutcome::Local(other)) => return Err(unexpected(&other)),
                Ok(WriteOutcome::Forwarded(resp)) => return Ok(resp),
                Err(s) if is_kv_error(&s, kv::KvError::LeaseExists) => last = s,
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    async fn lease_revoke_impl(
        &self,
        r: epb::LeaseRevokeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseRevokeResponse, Status> {
        let id = r.id;
        let outcome = self
            .write(kv::Request::LeaseRevoke { id }, session, |mut c, sid| {
                let r = with_session(r, sid);
                async move { c.lease_revoke(r).await }
            })
            .await;
        match outcome {
            Ok(WriteOutcome::Local(kv::Response::LeaseRevoke { revision })) => {
                self.inner.leases.lessor().revoke(id);
                Ok(epb::LeaseRevokeResponse {
                    header: Some(epb::ResponseHeader {
                        revision,
                        ..self.header()
                    }),
                })
            }
            Ok(WriteOutcome::Local(other)) => Err(unexpected(&other)),
            Ok(WriteOutcome::Forwarded(resp)) => Ok(resp),
            Err(s) => {
                if is_kv_error(&s, kv::KvError::LeaseNotFound) {
                    self.inner.leases.lessor().revoke(id);
                }
                Err(s)
            }
        }
    }

    /// One keep-alive. An unknown or expired lease is answered with TTL 0, as etcd does.
    async fn keep_alive_one(
        &self,
        id: i64,
        forwarded: bool,
    ) -> Result<epb::LeaseKeepAliveResponse, Status> {
        self.on_leader(
            forwarded,
            || self.renew_here(id),
            |mut c| async move { c.lease_keep_alive(epb::LeaseKeepAliveRequest { id }).await },
        )
        .await
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
            header: Some(self.header()),
            id,
            ttl,
        })
    }

    async fn time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
        forwarded: bool,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        self.on_leader(
            forwarded,
            || self.time_to_live_here(r),
            |mut c| async move { c.lease_time_to_live(r).await },
        )
        .await
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
                header: Some(self.header()),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let remaining = self.inner.leases.lessor().remaining(r.id, Instant::now());
        let ttl = remaining.map_or(granted, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let keys = if r.keys {
            let kv = self.inner.node.kv.clone();
            let id = r.id;
            tokio::task::spawn_blocking(move || kv.lease_keys(id))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(super::kv_status)?
        } else {
            Vec::new()
        };
        Ok(epb::LeaseTimeToLiveResponse {
            header: Some(self.header()),
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
            header: Some(self.header()),
            leases: leases
                .into_iter()
                .map(|l| epb::LeaseStatus { id: l.id })
                .collect(),
        })
    }
}

/// Whether `s` carries the state machine's error `e`.
fn is_kv_error(s: &Status, e: kv::KvError) -> bool {
    s.message() == e.to_string()
}

type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::lease_server::Lease for Api {
    async fn lease_grant(
        &self,
        request: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        self.lease_grant_impl(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        self.lease_revoke_impl(request.into_inner(), None)
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
                let answer = api.keep_alive_one(req.id, false).await;
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
        self.time_to_live(request.into_inner(), false)
            .await
            .map(Response::new)
    }

    async fn lease_leases(
        &self,
        _request: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        self.leases_impl().await.map(Response::new)
    }
}

#[tonic::async_trait]
impl ForwardedLeases for Api {
    // A forwarded write always runs under a session (a fresh one if the follower sent none),
    // which also marks it as not to be forwarded again.
    async fn lease_grant_here(
        &self,
        r: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        let session = crate::transport::session_of(r.metadata())?;
        let session = session.unwrap_or_else(|| self.new_session());
        self.lease_grant_impl(r.into_inner(), Some(session))
            .await
            .map(Response::new)
    }

    async fn lease_revoke_here(
        &self,
        r: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        let session = crate::transport::session_of(r.metadata())?;
        let session = session.unwrap_or_else(|| self.new_session());
        self.lease_revoke_impl(r.into_inner(), Some(session))
            .await
            .map(Response::new)
    }

    async fn lease_keep_alive_here(
        &self,
        r: Request<epb::LeaseKeepAliveRequest>,
    ) -> Result<Response<epb::LeaseKeepAliveResponse>, Status> {
        self.keep_alive_one(r.into_inner().id, true)
            .await
            .map(Response::new)
    }

    async fn lease_time_to_live_here(
        &self,
        r: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        self.time_to_live(r.into_inner(), true)
            .await
            .map(Response::new)
    }
}
