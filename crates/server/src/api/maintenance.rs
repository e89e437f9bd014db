//! etcd's Maintenance service (`etcdserverpb.Maintenance`): Status, Alarm (in [`super::alarm`]),
//! Defragment, Hash and HashKV (in [`super::hash`]), MoveLeader and Snapshot (streamed by
//! [`super::backup`]).

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::{Api, API_VERSION};
use crate::pb::etcdserverpb as epb;
use crate::replica::AdminError;
use crate::rpctypes::{
    ERR_BAD_LEADER_TRANSFEREE, ERR_NOT_LEADER, ERR_NO_LEADER, ERR_STOPPED,
    ERR_TIMEOUT_LEADER_TRANSFER, ERR_TOO_MANY_REQUESTS,
};

/// How long MoveLeader waits for the target to take over when the client set no deadline
/// (etcd waits for the client's deadline; the core gives up a transfer after one election
/// timeout, so a wait this long only ends in failure if the cluster is in trouble).
const MOVE_LEADER_WAIT_MAX: Duration = Duration::from_secs(30);
/// Answer this much before the client's deadline, so that it gets etcd's error rather than
/// its own "deadline exceeded".
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);
/// How long a defragmentation waits for reads already under way before it gives up and asks
/// to be tried again; applies and new reads of the member wait meanwhile. (It does not start
/// at all while a snapshot or backup is being written.)
const DEFRAG_READS_WAIT_MAX: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for Api {
    type SnapshotStream = super::backup::SnapshotStream;

    /// etcd's Snapshot: a backup of this member's state machine (see [`super::backup`]).
    async fn snapshot(
        &self,
        request: Request<epb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&request).await?;
        self.snapshot_stream().await
    }

    /// etcd's HashKV (see [`super::hash`]).
    async fn hash_kv(
        &self,
        request: Request<epb::HashKvRequest>,
    ) -> Result<Response<epb::HashKvResponse>, Status> {
        self.admin(&request).await?;
        let mut answer = self.hash_kv_impl(request.into_inner()).await?;
        // etcd's store starts with compacted revision -1 ("never") and tells clients so
        // (members compare the store's own 0 among themselves).
        if answer.compact_revision == 0 {
            answer.compact_revision = -1;
        }
        Ok(Response::new(answer))
    }

    /// etcd's Hash (see [`super::hash`]).
    async fn hash(
        &self,
        request: Request<epb::HashRequest>,
    ) -> Result<Response<epb::HashResponse>, Status> {
        self.admin(&request).await?;
        Ok(Response::new(self.hash_impl().await?))
    }

    /// etcd's Alarm (see [`super::alarm`]).
    async fn alarm(
        &self,
        request: Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        // Listing is open; raising or clearing (a NOSPACE alarm guards the disk) is for an
        // administrator (etcd 3.4 checks neither), here and again at apply against the
        // caller's stamp.
        let stamp = if request.get_ref().action != epb::alarm_request::AlarmAction::Get as i32 {
            Some(self.admin(&request).await?.stamp())
        } else {
            None
        };
        Ok(Response::new(
            self.alarm_impl(request.into_inner(), stamp).await?,
        ))
    }

    /// etcd's MoveLeader: on the leader only; the target must be a voter. Returns once the
    /// target leads, as etcd does (`etcdctl move-leader` prints the change), or fails with
    /// etcd's timeout error if it did not take over in time. Writes meanwhile are refused by
    /// the core and retried by the server, so clients see no failure.
    async fn move_leader(
        &self,
        request: Request<epb::MoveLeaderRequest>,
    ) -> Result<Response<epb::MoveLeaderResponse>, Status> {
        // As etcd 3.5 (3.4 checks nothing): only an administrator moves the leader.
        self.admin(&request).await?;
        let deadline = Instant::now()
            + grpc_timeout(&request)
                .map_or(MOVE_LEADER_WAIT_MAX, |t| t.saturating_sub(DEADLINE_MARGIN))
                .min(MOVE_LEADER_WAIT_MAX);
        let target = request.into_inner().target_id;
        let node = &self.inner.node;
        let me = self.inner.member_id;
        let mut changes = node.status_changes();
        if node.status().leader.map(|l| l.get()) != Some(me) {
            return Err(Status::failed_precondition(ERR_NOT_LEADER));
        }
        let answer = || {
            Ok(Response::new(epb::MoveLeaderResponse {
                header: Some(self.header_now()),
            }))
        };
        // Already there (etcd answers at once too; the core refuses a transfer to itself).
        if target == me {
            return answer();
        }
        let to = raft::NodeId::new(target)
            .ok_or_else(|| Status::failed_precondition(ERR_BAD_LEADER_TRANSFEREE))?;
        match node.transfer_leader(to).await {
            Ok(Ok(())) => {}
            Ok(Err(raft::TransferError::NotLeader { .. })) => {
                return Err(Status::failed_precondition(ERR_NOT_LEADER))
            }
            Ok(Err(raft::TransferError::InvalidTarget(_))) => {
                return Err(Status::failed_precondition(ERR_BAD_LEADER_TRANSFEREE))
            }
            Err(AdminError::Busy) => return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS)),
            Err(AdminError::Stopped) => return Err(Status::unavailable(ERR_STOPPED)),
        }
        loop {
            if changes.borrow_and_update().leader == Some(to) {
                return answer();
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable(ERR_STOPPED)),
                Err(_) => return Err(Status::new(Code::Unknown, ERR_TIMEOUT_LEADER_TRANSFER)),
            }
        }
    }

    /// etcd's Defragment: gives the space that compaction freed back to the file system.
    /// This member's applies and reads wait while it runs (as etcd's do); the others go on.
    async fn defragment(
        &self,
        request: Request<epb::DefragmentRequest>,
    ) -> Result<Response<epb::DefragmentResponse>, Status> {
        self.admin(&request).await?;
        let started = Instant::now();
        // Within the client's deadline, so that it gets our answer rather than its own.
        let wait = grpc_timeout(&request)
            .map_or(DEFRAG_READS_WAIT_MAX, |t| {
                t.saturating_sub(DEADLINE_MARGIN) / 2
            })
            .min(DEFRAG_READS_WAIT_MAX);
        let done = self
            .read_kv(move |kv| kv.defragment(wait))
            .await
            .inspect_err(|e| tracing::warn!(error = %e.message(), "defragment failed"))?;
        tracing::info!(
            size_before = done.before,
            size_after = done.after,
            took = ?started.elapsed(),
            "defragmented the state machine"
        );
        Ok(Response::new(epb::DefragmentResponse {
            header: Some(self.header_now()),
        }))
    }

    async fn status(
        &self,
        _request: Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        let st = self.inner.node.status();
        // The applied index as of now: the status above is the node task's, refreshed once per
        // round, so a quiet follower's would lag behind its last apply.
        let applied = *self.inner.node.applied_changes().borrow();
        let (revision, db_size, db_size_in_use) = self
            .read_kv(|kv| Ok((kv.revision()?, kv.file_size()?, kv.size_in_use()?)))
            .await?;
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut errors = Vec::new();
        if st.leader.is_none() {
            errors.push(ERR_NO_LEADER.to_string());
        }
        errors.extend(self.alarm_errors());
        Ok(Response::new(epb::StatusResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            version: API_VERSION.to_string(),
            db_size: bytes(db_size),
            leader: st.leader.map_or(0, |l| l.get()),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: bytes(db_size_in_use),
            is_learner: self
                .inner
                .node
                .membership()
                .learners
                .iter()
                .any(|l| l.get() == self.inner.member_id),
        }))
    }
}

/// The client's deadline from the `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits
/// and a unit), if it sent a valid one.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> Option<Duration> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("grpc-timeout", v.parse().expect("ascii"));
        grpc_timeout(&r)
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_defines_them() {
        assert_eq!(with_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(with_timeout("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(with_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(with_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(with_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }
}
