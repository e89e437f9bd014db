//! The etcd v3 API, one file per service: [`key`] (KV, as etcd's `v3rpc/key.go`), [`lease`] (Lease, with the leader's
//! expiry task in [`expiry`] and the deadlines in [`lessor`]), [`watch`] (Watch),
//! [`maintenance`] (Maintenance, with [`alarm`], [`hash`] and backups streamed by [`backup`]);
//! the space [`quota`] checked before writes; the periodic and initial [`corrupt`]ion checks;
//! the automatic
//! [`compactor`]; [`http`] (health, metrics and
//! the client port's routes); and [`leader`], the answers to requests followers forward here
//! (it implements [`crate::peer::LeaderApi`]).
//!
//! Writes are encoded as [`kv::Command`]s and proposed through the log; on a follower they go
//! to the leader through [`crate::peer::Forwarder`], since etcdctl does not retry writes on
//! another endpoint. Every write gets a session id where it arrives (Raft thesis §6.3), kept
//! across the retries of that loop (a lost answer from the leader, a leader change before
//! commit), so that a write retried inside its deadline is applied once. Limit: the state
//! machine remembers the last [`crate::replica::SESSIONS_MAX`] sessions, so a retry is
//! deduplicated only if fewer writes than that were applied since its first attempt (at
//! 10,000 writes/s that is 10 s, longer than [`crate::peer::REQUEST_TIMEOUT`]). Reads are linearizable by
//! default (ReadIndex, then a local read of the state machine) and served locally when
//! `serializable` is set. Errors carry etcd's gRPC codes and messages ([`crate::rpctypes`]),
//! so etcd clients react to them as they would to etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::peer::pipe::Forwarded;
use crate::peer::{Forwarder, Origin, Reached};
use crate::replica::{NodeHandle, ReadFailure, WriteError};
use crate::rpctypes::{
    kv_error_status, ERR_LEADER_CHANGED, ERR_NO_LEADER, ERR_STOPPED, ERR_TIMEOUT, ERR_TOO_LARGE,
    ERR_TOO_MANY_REQUESTS,
};

pub mod alarm;
pub mod auth;
pub mod auth_limit;
pub mod backup;
pub mod cluster;
pub mod compactor;
pub mod convert;
pub mod corrupt;
pub mod dashboard;
pub mod disk_space;
pub mod expiry;
pub mod hash;
pub mod http;
pub mod key;
pub mod leader;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod quota;
pub mod reconfigure;
pub mod watch;

/// etcd's default `--max-request-bytes`: larger requests are refused.
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// Version reported by `Status`: the etcd API level this server speaks.
pub const API_VERSION: &str = "3.5.0";

/// The client-facing services of one member.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeHandle,
    /// Runs requests on the leader (the one forward-and-retry loop).
    leader: Forwarder,
    cluster_id: u64,
    member_id: u64,
    /// Next session id for a write arriving here. Starts at a random point, so that ids of
    /// different members (and of restarts) do not meet in practice.
    next_session: AtomicU64,
    /// Lease expiry state (see [`lease`]).
    leases: lease::Leases,
    /// The initial cluster and this member's description (see [`cluster`]).
    members: cluster::MemberInfo,
    /// Removed members, and when each peer was last heard from.
    removal: Arc<crate::replica::Removal>,
    /// The space quota of this member's state machine file (see [`quota`]).
    quota: quota::Quota,
    /// The dashboard's latest state (see [`dashboard`]).
    dashboard: dashboard::Hub,
    /// The auth flags (see [`auth`]).
    auth: auth::AuthConfig,
    /// The budgets of Authenticate attempts (see [`auth_limit`]).
    auth_limiter: auth::AuthLimiter,
}

impl Api {
    /// The API of member `member_id`.
    pub fn new(
        node: NodeHandle,
        leader: Forwarder,
        cluster_id: u64,
        member_id: u64,
        members: cluster::MemberInfo,
        removal: Arc<crate::replica::Removal>,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                node,
                leader,
                cluster_id,
                member_id,
                next_session: AtomicU64::new(random_u64(member_id)),
                leases: lease::Leases::default(),
                members,
                removal,
                quota: quota::Quota::DEFAULT,
                dashboard: dashboard::Hub::default(),
                auth: auth::AuthConfig::default(),
                auth_limiter: auth::AuthLimiter::default(),
            }),
        }
    }

    /// The API with etcd's space quota and data checks set as `checks` says (etcd's default
    /// quota otherwise). Called once, before the API is shared.
    pub fn with_data_checks(mut self, checks: crate::config::DataChecks) -> Api {
        let inner = Arc::get_mut(&mut self.inner).expect("configured before it is shared");
        inner.quota = quota::Quota::from_flag(checks.quota_backend_bytes);
        self
    }

    /// The API with etcd's auth flags. Called once, before the API is shared.
    pub fn with_auth(mut self, config: auth::AuthConfig) -> Api {
        self.inner.node.kv.set_token_ttl(config.token_ttl);
        let inner = Arc::get_mut(&mut self.inner).expect("configured before it is shared");
        inner.auth = config;
        // The dummy hash unknown names are checked against (see `auth`), made now on a
        // thread of its own rather than by the first such login, which would take twice as
        // long as the others and tell.
        let dummy = inner.auth_limiter.dummy_hash.clone();
        let cost = config.bcrypt_cost;
        std::thread::spawn(move || {
            dummy.get_or_init(|| auth::dummy_hash(cost));
        });
        self
    }

    /// A fresh session for one write, opened after everything this member knows committed (so
    /// that the state machine can tell it from a session it evicted).
    fn new_session(&self) -> kv::Session {
        let mut id = 0;
        while id == 0 {
            id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        }
        // The commit index this member knows: every entry proposed from now on comes after
        // it, and it lags the cluster less than the applied index does.
        kv::Session::opened(id, 1, self.inner.node.status().commit)
    }

    /// The response header, without a revision: for responses that set their own (the
    /// key-value ones carry the revision they read or wrote).
    fn header(&self) -> epb::ResponseHeader {
        epb::ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision: 0,
            raft_term: self.inner.node.status().term,
        }
    }

    /// The response header with this member's store revision, as etcd fills every header
    /// (lease, alarm and maintenance answers too).
    fn header_now(&self) -> epb::ResponseHeader {
        epb::ResponseHeader {
            revision: self.inner.node.kv.revision().unwrap_or(0),
            ..self.header()
        }
    }

    /// The log entry of a write: the command under `session` (a fresh one for a client's
    /// write), refused if larger than etcd's request limit.
    fn command(
        &self,
        request: kv::Request,
        session: Option<kv::Session>,
        auth: Option<kv::AuthStamp>,
    ) -> Result<(kv::Session, Vec<u8>), Status> {
        let session = session.unwrap_or_else(|| self.new_session());
        let data = kv::codec::encode_command(&kv::Command {
            session: Some(session),
            request,
            auth,
        });
        if data.len() > REQUEST_BYTES_MAX {
            return Err(write_status(WriteError::TooLarge));
        }
        Ok((session, data))
    }

    /// Proposes an encoded write on this member, which leads.
    async fn propose_here(&self, data: &[u8]) -> Result<kv::Response, Status> {
        self.inner
            .node
            .propose(data.to_vec())
            .await
            .map_err(write_status)
    }

    /// Runs a compaction or lease change on the leader: proposed here if this member leads,
    /// else forwarded through `via_leader` (given a client of the leader and the write's
    /// session), whose answer is the leader's. `session` is `None` for a client's write (a
    /// fresh one is chosen) and the follower's for one forwarded here (`origin`
    /// [`Origin::Peer`]: run here once, never forwarded again). Their answers are small.
    /// `stamp` is the client's (see [`auth`]; `None` for the servers' own): the entry carries
    /// it, and `via_leader` forwards it ([`crate::peer::forwarded`]).
    async fn write<T, Fut>(
        &self,
        request: kv::Request,
        origin: Origin,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
        via_leader: impl Fn(LeaderClient, kv::Session) -> Fut,
    ) -> Result<Reached<kv::Response, T>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let (session, data) = self.command(request, session, stamp)?;
        self.inner
            .leader
            .on_leader(
                origin,
                || self.propose_here(&data),
                |client| via_leader(client, session),
            )
            .await
    }

    /// Runs a client's put, delete or transaction on the leader: proposed here if this member
    /// leads, else sent on the forwarding pipe ([`crate::peer::pipe`]) and answered with the
    /// leader's result, or, for an answer too large to ship, from this member's own apply of
    /// the entry.
    async fn write_kv(&self, request: kv::Request) -> Result<kv::Response, Status> {
        self.write_kv_as(request, None).await
    }

    /// [`Api::write_kv`] of a client's request, stamped with its sender (see [`auth`]): the
    /// applying member checks the sender's permission. `None` for the servers' own writes.
    async fn write_kv_as(
        &self,
        request: kv::Request,
        auth: Option<kv::AuthStamp>,
    ) -> Result<kv::Response, Status> {
        let (session, data) = self.command(request, None, auth)?;
        let node = &self.inner.node;
        let leader = &self.inner.leader;
        let via = |_client| {
            // Registered before the leader can propose the entry: if its answer is too large
            // to ship, this member answers from its own apply (see
            // `replica::session_waiters`). Without room to register, the leader is asked to
            // ship whatever it has.
            let wait = node.await_session(session.client_id).ok();
            let sent = leader.pipe(data.clone(), wait.is_some());
            async move {
                let answer = match sent.await? {
                    Forwarded::Answer(Ok(answer)) => answer,
                    Forwarded::Answer(Err(e)) => return Err(kv_error_status(e)),
                    Forwarded::LeftOut => {
                        let Some(wait) = wait else {
                            return Err(Status::internal(
                                "the leader left out an answer this member did not offer to compute",
                            ));
                        };
                        wait.applied().await.map_err(write_status)?
                    }
                };
                Ok(Response::new(answer))
            }
        };
        let reached = leader
            .on_leader(Origin::Client, || self.propose_here(&data), via)
            .await?;
        Ok(reached.into_answer())
    }

    /// Waits until a linearizable read may be served from this member's state machine
    /// (ReadIndex), retrying while the leader is unknown or changing.
    async fn linearizable_read(&self) -> Result<(), Status> {
        let policy = self.inner.leader.policy();
        let deadline = tokio::time::Instant::now() + policy.timeout;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.inner.node.read_index());
            match attempt.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(ReadFailure::Stopped)) => return Err(Status::unavailable(ERR_STOPPED)),
                Ok(Err(ReadFailure::Busy)) => {
                    return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))
                }
                Ok(Err(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(policy.pause).await;
                }
                Ok(Err(ReadFailure::NoLeader)) => return Err(Status::unavailable(ERR_NO_LEADER)),
                Ok(Err(_)) | Err(_) => {
                    return Err(if self.inner.node.status().leader.is_none() {
                        Status::unavailable(ERR_NO_LEADER)
                    } else {
                        Status::unavailable(ERR_TIMEOUT)
                    })
                }
            }
        }
    }

    /// A range of one key: an in-memory index lookup and at most one row, run here on the
    /// runtime's worker when no writer holds the state machine's locks. A hop to a blocking
    /// thread and back costs more than such a read (two thread wakeups per request: most of
    /// a linearizable get's cost under load, BENCHMARKS.md). If a writer holds or wants a
    /// lock, at the start or during the read ([`kv::Store::try_range`]), and for anything
    /// that scans, the read goes to a blocking thread ([`Api::read_kv`]): a worker must not
    /// wait behind a defragmentation or a snapshot install. (The row itself may come from
    /// the disk on a page-cache miss: one page's read, which a worker can afford.)
    async fn read_range(&self, req: kv::RangeRequest) -> Result<kv::RangeResponse, Status> {
        if req.range_end.is_empty() {
            if let Some(read) = self.inner.node.kv.try_range(&req) {
                return read.map_err(crate::rpctypes::kv_status);
            }
        }
        self.read_kv(move |kv| kv.range(&req)).await
    }

    /// Runs a state machine read on a blocking thread.
    async fn read_kv<T: Send + 'static>(
        &self,
        read: impl FnOnce(&kv::Store) -> Result<T, kv::Error> + Send + 'static,
    ) -> Result<T, Status> {
        let kv = self.inner.node.kv.clone();
        tokio::task::spawn_blocking(move || read(&kv))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::rpctypes::kv_status)
    }
}

/// A client of the leader's peer port, to forward a request.
type LeaderClient = RaftClient<Channel>;

/// A random 64-bit number (the process's hash seed mixed with `salt`).
fn random_u64(salt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(salt)
}

/// The state machine answered a request with a response of another kind: a bug.
fn unexpected(resp: &kv::Response) -> Status {
    Status::internal(format!("state machine answered with {resp:?}"))
}

/// A write's failure as etcd reports it.
fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader(_) => Status::unavailable(ERR_NO_LEADER),
        // As etcd: a full queue is "too many requests" (nothing was done); a deadline that
        // passed is "request timed out" (the write may still happen).
        WriteError::Busy => Status::resource_exhausted(ERR_TOO_MANY_REQUESTS),
        WriteError::Timeout => Status::unavailable(ERR_TIMEOUT),
        WriteError::TooLarge => Status::invalid_argument(ERR_TOO_LARGE),
        WriteError::LeaderChanged => Status::unavailable(ERR_LEADER_CHANGED),
        WriteError::Kv(e) => kv_error_status(e),
        WriteError::Stopped => Status::unavailable(ERR_STOPPED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn write_errors_get_etcds_codes_and_messages() {
        let cases = [
            (
                WriteError::Busy,
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                WriteError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                WriteError::NotLeader(None),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                WriteError::TooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                WriteError::LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
        ];
        for (e, code, message) in cases {
            let s = write_status(e);
            assert_eq!((s.code(), s.message()), (code, message));
        }
    }
}
