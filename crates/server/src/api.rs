//! The etcd v3 API: `etcdserverpb.KV` and `etcdserverpb.Maintenance` (`Lease` in [`lease`]).
//!
//! Writes are encoded as [`kv::Command`]s and proposed through the log; a follower forwards
//! them to the leader over the peer port, since etcdctl does not retry writes on another
//! endpoint. Every write gets a session id where it arrives (Raft thesis §6.3), kept across
//! the member's own retries (a lost answer from the leader, a leader change before commit),
//! so that a write retried inside its deadline is applied once. Limit: the state machine
//! remembers the last [`SESSIONS_MAX`] sessions, so a retry is deduplicated only if fewer
//! writes than that were applied since its first attempt (at 10,000 writes/s that is 10 s,
//! longer than [`REQUEST_TIMEOUT`]). Reads are linearizable by default (ReadIndex, then a local read of the state
//! machine) and served locally when `serializable` is set. Errors carry etcd's gRPC codes and
//! messages, so etcd clients react to them as they would to etcd.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};

use crate::convert;
use crate::node::{NodeHandle, ReadFailure, WriteError};
use crate::pb::etcdserverpb as epb;
use crate::transport::{ForwardedWrites, Peers, SESSION_HEADER};

pub mod compactor;
pub mod lease;
pub mod watch;

/// etcd's default `--max-request-bytes`: larger requests are refused.
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// How long a request may wait for a leader, a commit or a read confirmation.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// Sessions the state machine remembers for deduplicating retried writes.
pub const SESSIONS_MAX: usize = 100_000;
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Version reported by `Status`: the etcd API level this server speaks.
pub const API_VERSION: &str = "3.5.0";

// etcd's messages (etcdserver/api/v3rpc/rpctypes), which clients match on.
const ERR_NO_LEADER: &str = "etcdserver: no leader";
const ERR_KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
const ERR_TOO_LARGE: &str = "etcdserver: request is too large";
const ERR_TIMEOUT: &str = "etcdserver: request timed out";
const ERR_LEADER_CHANGED: &str = "etcdserver: leader changed";
const ERR_TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
const ERR_STOPPED: &str = "etcdserver: server stopped";

/// The client-facing services of one member.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeHandle,
    peers: Arc<Peers>,
    cluster_id: u64,
    member_id: u64,
    kv_path: PathBuf,
    /// Next session id for a write arriving here. Starts at a random point, so that ids of
    /// different members (and of restarts) do not meet in practice.
    next_session: AtomicU64,
    /// Lease expiry state (see [`lease`]).
    leases: lease::Leases,
}

impl Api {
    /// The API of member `member_id`.
    pub fn new(
        node: NodeHandle,
        peers: Arc<Peers>,
        cluster_id: u64,
        member_id: u64,
        kv_path: PathBuf,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                node,
                peers,
                cluster_id,
                member_id,
                kv_path,
                next_session: AtomicU64::new(random_u64(member_id)),
                leases: lease::Leases::default(),
            }),
        }
    }

    /// A fresh session for one write.
    fn new_session(&self) -> kv::Session {
        let mut id = 0;
        while id == 0 {
            id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        }
        kv::Session {
            client_id: id,
            seq: 1,
        }
    }

    fn header(&self) -> epb::ResponseHeader {
        epb::ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision: 0,
            raft_term: self.inner.node.status().term,
        }
    }

    /// Proposes `request` under `session` here and waits for its result, retrying while no
    /// leader is known, until `deadline`. `NotLeader(Some(l))` is returned to the caller, who
    /// may forward.
    async fn propose(
        &self,
        request: &kv::Request,
        session: kv::Session,
        deadline: tokio::time::Instant,
    ) -> Result<kv::Response, WriteError> {
        let data = kv::codec::encode_command(&kv::Command {
            session: Some(session),
            request: request.clone(),
        });
        if data.len() > REQUEST_BYTES_MAX {
            return Err(WriteError::TooLarge);
        }
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.inner.node.propose(data.clone()));
            match attempt.await {
                Err(_) => return Err(WriteError::Timeout),
                Ok(Err(WriteError::NotLeader(None))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(other) => return other,
            }
        }
    }

    async fn linearizable_read(&self) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.inner.node.read_index());
            match attempt.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(ReadFailure::Stopped)) => return Err(Status::unavailable(ERR_STOPPED)),
                Ok(Err(ReadFailure::Busy)) => {
                    return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))
                }
                Ok(Err(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
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

    async fn range_inner(&self, r: epb::RangeRequest) -> Result<epb::RangeResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        let req = convert::range_request(&r).map_err(|e| Status::invalid_argument(e.0))?;
        if !r.serializable {
            self.linearizable_read().await?;
        }
        let kv = self.inner.node.kv.clone();
        let resp = tokio::task::spawn_blocking(move || kv.range(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(kv_status)?;
        Ok(convert::range_response(resp, self.header()))
    }

    /// Runs a write: here if this node leads, else on the leader. `session` is `None` for a
    /// client's write (a new session is chosen) and the follower's session for a forwarded
    /// one, which is never forwarded again (no loops). A write that arrived here is retried
    /// under its session until [`REQUEST_TIMEOUT`] when the leader changed before it
    /// committed or the leader's answer was lost; the session makes the retry safe.
    async fn write<T, Fut>(
        &self,
        request: kv::Request,
        session: Option<kv::Session>,
        via_leader: impl Fn(
            crate::pb::skiff::raft::v1::raft_client::RaftClient<tonic::transport::Channel>,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        ) -> Fut,
    ) -> Result<WriteOutcome<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let originated_here = session.is_none();
        let session = session.unwrap_or_else(|| self.new_session());
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let retry = match self.propose(&request, session, deadline).await {
                Ok(resp) => return Ok(WriteOutcome::Local(resp)),
                Err(WriteError::NotLeader(Some(leader))) if originated_here => {
                    match self.forward(leader, session, &via_leader, deadline).await {
                        Ok(resp) => return Ok(WriteOutcome::Forwarded(resp)),
                        Err(status) if retryable(&status) => status,
                        Err(status) => return Err(status),
                    }
                }
                Err(WriteError::LeaderChanged) if originated_here => {
                    Status::unavailable(ERR_LEADER_CHANGED)
                }
                Err(e) => return Err(write_status(e)),
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(retry);
            }
            tracing::debug!(session = session.client_id, error = %retry.message(), "retrying a write");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sends a write to the leader with its session id, until `deadline`.
    async fn forward<T, Fut>(
        &self,
        leader: raft::NodeId,
        session: kv::Session,
        via_leader: &impl Fn(
            crate::pb::skiff::raft::v1::raft_client::RaftClient<tonic::transport::Channel>,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        ) -> Fut,
        deadline: tokio::time::Instant,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let Some(client) = self.inner.peers.client(leader) else {
            return Err(Status::unavailable(ERR_NO_LEADER));
        };
        let id = tonic::metadata::MetadataValue::from(session.client_id);
        let resp = tokio::time::timeout_at(deadline, via_leader(client, id))
            .await
            .map_err(|_| Status::unavailable(ERR_TIMEOUT))?
            .map_err(|s| {
                // A connection failure to the leader says nothing about the request's fate;
                // report it as etcd does for an unreachable leader.
                if s.code() == Code::Unavailable && !s.message().starts_with("etcdserver:") {
                    Status::unavailable(ERR_NO_LEADER)
                } else {
                    s
                }
            })?;
        Ok(resp.into_inner())
    }
}

/// Whether a forwarded write may be retried under its session: the leader was unreachable,
/// had stepped down or lost the entry to a new leader.
fn retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && [ERR_NO_LEADER, ERR_LEADER_CHANGED].contains(&status.message())
}

/// A random 64-bit number (the process's hash seed mixed with `salt`).
fn random_u64(salt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(salt)
}

/// `request` with the session id of a forwarded write attached.
fn with_session<T>(
    request: T,
    id: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Request<T> {
    let mut r = Request::new(request);
    r.metadata_mut().insert(SESSION_HEADER, id);
    r
}

enum WriteOutcome<T> {
    Local(kv::Response),
    Forwarded(T),
}

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

fn kv_error_status(e: kv::KvError) -> Status {
    use kv::KvError as K;
    let code = match e {
        K::EmptyKey | K::ValueProvided | K::LeaseProvided | K::DuplicateKey | K::TooManyOps => {
            Code::InvalidArgument
        }
        K::Compacted | K::FutureRevision | K::LeaseTtlTooLarge => Code::OutOfRange,
        K::LeaseNotFound | K::KeyNotFound => Code::NotFound,
        K::LeaseExists => Code::FailedPrecondition,
        _ => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

fn kv_status(e: kv::Error) -> Status {
    match e {
        kv::Error::Kv(e) => kv_error_status(e),
        other => Status::internal(other.to_string()),
    }
}

fn unexpected(resp: &kv::Response) -> Status {
    Status::internal(format!("state machine answered with {resp:?}"))
}

impl Api {
    async fn put_impl(
        &self,
        r: epb::PutRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::PutResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        let req = kv::Request::Put(convert::put_request(&r));
        match self
            .write(req, session, |mut c, id| {
                let r = with_session(r.clone(), id);
                async move { c.put(r).await }
            })
            .await?
        {
            WriteOutcome::Local(kv::Response::Put(p)) => {
                Ok(convert::put_response(p, self.header()))
            }
            WriteOutcome::Local(other) => Err(unexpected(&other)),
            WriteOutcome::Forwarded(resp) => Ok(resp),
        }
    }

    async fn delete_impl(
        &self,
        r: epb::DeleteRangeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::DeleteRangeResponse, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(ERR_KEY_NOT_PROVIDED));
        }
        let req = kv::Request::DeleteRange(convert::delete_request(&r));
        match self
            .write(req, session, |mut c, id| {
                let r = with_session(r.clone(), id);
                async move { c.delete_range(r).await }
            })
            .await?
        {
            WriteOutcome::Local(kv::Response::DeleteRange(d)) => {
                Ok(convert::delete_response(d, self.header()))
            }
            WriteOutcome::Local(other) => Err(unexpected(&other)),
            WriteOutcome::Forwarded(resp) => Ok(resp),
        }
    }

    async fn txn_impl(
        &self,
        r: epb::TxnRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::TxnResponse, Status> {
        let txn = convert::txn_request(&r).map_err(|e| Status::invalid_argument(e.0))?;
        let req = kv::Request::Txn(txn);
        match self
            .write(req, session, |mut c, id| {
                let r = with_session(r.clone(), id);
                async move { c.txn(r).await }
            })
            .await?
        {
            WriteOutcome::Local(kv::Response::Txn(t)) => {
                Ok(convert::txn_response(t, self.header()))
            }
            WriteOutcome::Local(other) => Err(unexpected(&other)),
            WriteOutcome::Forwarded(resp) => Ok(resp),
        }
    }

    async fn compact_impl(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::CompactionResponse, Status> {
        let req = kv::Request::Compact {
            revision: r.revision,
        };
        match self
            .write(req, session, |mut c, id| {
                let r = with_session(r, id);
                async move { c.compact(r).await }
            })
            .await?
        {
            WriteOutcome::Local(kv::Response::Compact { revision }) => {
                Ok(epb::CompactionResponse {
                    header: Some(epb::ResponseHeader {
                        revision,
                        ..self.header()
                    }),
                })
            }
            WriteOutcome::Local(other) => Err(unexpected(&other)),
            WriteOutcome::Forwarded(resp) => Ok(resp),
        }
    }
}

#[tonic::async_trait]
impl epb::kv_server::Kv for Api {
    async fn range(
        &self,
        request: Request<epb::RangeRequest>,
    ) -> Result<Response<epb::RangeResponse>, Status> {
        self.range_inner(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(
        &self,
        request: Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        self.put_impl(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        self.delete_impl(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn txn(
        &self,
        request: Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        self.txn_impl(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        self.compact_impl(request.into_inner(), None)
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl ForwardedWrites for Api {
    // A forwarded write always runs under a session (a fresh one if the follower sent none),
    // which also marks it as not to be forwarded again.
    async fn put_here(
        &self,
        r: epb::PutRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::PutResponse, Status> {
        let session = session.unwrap_or_else(|| self.new_session());
        self.put_impl(r, Some(session)).await
    }
    async fn delete_here(
        &self,
        r: epb::DeleteRangeRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::DeleteRangeResponse, Status> {
        let session = session.unwrap_or_else(|| self.new_session());
        self.delete_impl(r, Some(session)).await
    }
    async fn txn_here(
        &self,
        r: epb::TxnRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::TxnResponse, Status> {
        let session = session.unwrap_or_else(|| self.new_session());
        self.txn_impl(r, Some(session)).await
    }
    async fn compact_here(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::CompactionResponse, Status> {
        let session = session.unwrap_or_else(|| self.new_session());
        self.compact_impl(r, Some(session)).await
    }
}

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for Api {
    async fn alarm(
        &self,
        _request: Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        // No alarms are raised yet (no space quota, no corruption checker).
        Ok(Response::new(epb::AlarmResponse {
            header: Some(self.header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        let st = self.inner.node.status();
        let kv = self.inner.node.kv.clone();
        let revision = tokio::task::spawn_blocking(move || kv.revision())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(kv_status)?;
        let db_size = std::fs::metadata(&self.inner.kv_path)
            .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut errors = Vec::new();
        if st.leader.is_none() {
            errors.push(ERR_NO_LEADER.to_string());
        }
        Ok(Response::new(epb::StatusResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            version: API_VERSION.to_string(),
            db_size,
            leader: st.leader.map_or(0, |l| l.get()),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}

impl Api {
    /// `GET /health`, as etcd answers it: a linearizable read must succeed (within a short
    /// timeout). Returns whether healthy and the JSON body.
    pub async fn http_health(&self) -> (bool, String) {
        let read = tokio::time::timeout(Duration::from_secs(3), self.linearizable_read()).await;
        match read {
            Ok(Ok(())) => (true, r#"{"health":"true","reason":""}"#.to_string()),
            Ok(Err(s)) => (
                false,
                format!(r#"{{"health":"false","reason":"{}"}}"#, s.message()),
            ),
            Err(_) => (
                false,
                r#"{"health":"false","reason":"timed out waiting for read index"}"#.to_string(),
            ),
        }
    }

    /// `GET /metrics`: Prometheus text format. Names follow etcd's where one exists, so
    /// dashboards built for etcd find them.
    pub fn http_metrics(&self) -> String {
        let st = self.inner.node.status();
        let is_leader = st.leader.map(|l| l.get()) == Some(self.inner.member_id);
        let gauges: [(&str, &str, u64); 6] = [
            (
                "etcd_server_has_leader",
                "Whether a leader is known (1) or not (0).",
                u64::from(st.leader.is_some()),
            ),
            (
                "etcd_server_is_leader",
                "Whether this member is the leader (1) or not (0).",
                u64::from(is_leader),
            ),
            ("skiff_raft_term", "Current Raft term.", st.term),
            ("skiff_raft_commit_index", "Raft commit index.", st.commit),
            (
                "skiff_raft_applied_index",
                "Raft applied index.",
                st.applied,
            ),
            (
                "skiff_member_id",
                "This member's id (constant; for joining series).",
                self.inner.member_id,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
