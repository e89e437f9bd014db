//! etcd's Cluster service (`etcdserverpb.Cluster`): MemberList and MemberRemove so far; and
//! the publishing of this member's own description when it starts, as etcd's members publish
//! theirs.
//!
//! MemberRemove runs on the leader (forwarded there from a follower): its core proposes the
//! configuration change (paper §6, one server at a time), and the call returns once the entry
//! is applied here. It is refused, as etcd's strict reconfiguration check refuses it, when the
//! voters left would not have a connected majority. The removed member stops when it applies
//! the entry or when a peer refuses its traffic (see [`crate::replica::Removal`]).
//!
//! Which members exist, and which are learners, is the consensus core's configuration in
//! force; what they are called and where they listen is the replicated member table
//! ([`kv::members`]). A member of the initial cluster that has not published yet is described
//! from `--initial-cluster`, which every member shares (it names the cluster): listed with its
//! name and peer URL and no client URLs, as etcd lists it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{write_status, Api};
use crate::cluster::ClusterSpec;
use crate::pb::etcdserverpb as epb;
use crate::peer::{Origin, REQUEST_TIMEOUT, RETRY_PAUSE};
use crate::replica::AdminError;
use crate::rpctypes::{
    ERR_MEMBER_NOT_FOUND, ERR_NOT_LEADER, ERR_STOPPED, ERR_TIMEOUT, ERR_TOO_MANY_REQUESTS,
    ERR_UNHEALTHY,
};

/// Pause between attempts to publish while the cluster has no leader or refuses.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// What the API knows of the members besides the replicated table.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// The initial cluster (`--initial-cluster`).
    pub initial: ClusterSpec,
    /// This member's description, as it publishes it.
    pub me: kv::members::Member,
    /// The election timeout: a peer not heard from for this long counts as disconnected.
    pub election: Duration,
}

#[tonic::async_trait]
impl epb::cluster_server::Cluster for Api {
    /// Every member of the configuration in force, by id. Served from this member's state,
    /// as etcd does; `linearizable` waits for a ReadIndex first (etcd 3.5's field).
    async fn member_list(
        &self,
        request: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.linearizable_read().await?;
        }
        let (members, revision) = self.members_now().await?;
        Ok(Response::new(epb::MemberListResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            members,
        }))
    }

    /// etcd's MemberRemove: answers once the configuration without the member is applied
    /// here, with the members left.
    async fn member_remove(
        &self,
        request: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.member_remove_impl(id, Origin::Client)
            .await
            .map(Response::new)
    }
}

impl Api {
    /// Runs MemberRemove on the leader: here if this member leads, forwarded otherwise.
    pub(super) async fn member_remove_impl(
        &self,
        id: u64,
        origin: Origin,
    ) -> Result<epb::MemberRemoveResponse, Status> {
        // An attempt that failed without an answer (the leader crashed or changed after
        // proposing) may have removed the member: a retry then finds no such member.
        let ambiguous = AtomicBool::new(false);
        let note = |failed: Option<&Status>| {
            if failed.is_some_and(crate::peer::RetryPolicy::retryable) {
                ambiguous.store(true, Ordering::Relaxed);
            }
        };
        let reached = self
            .inner
            .leader
            .on_leader(
                origin,
                || async {
                    let r = self.member_remove_here(id).await;
                    note(r.as_ref().err());
                    r
                },
                |mut client| async move {
                    let r = client.member_remove(epb::MemberRemoveRequest { id }).await;
                    note(r.as_ref().err());
                    r
                },
            )
            .await;
        match reached {
            Ok(reached) => Ok(reached.into_answer()),
            // Removed by the earlier attempt, as this member's own state says once it has
            // applied everything committed: the removal succeeded.
            Err(s) if s.code() == tonic::Code::NotFound && ambiguous.load(Ordering::Relaxed) => {
                self.linearizable_read().await?;
                if !self.inner.removal.is_removed(id) {
                    return Err(s);
                }
                self.members_left().await
            }
            Err(s) => Err(s),
        }
    }

    /// MemberRemove on this member, which leads.
    async fn member_remove_here(&self, id: u64) -> Result<epb::MemberRemoveResponse, Status> {
        let node = &self.inner.node;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let membership = node.membership();
            let Some(target) = raft::NodeId::new(id).filter(|t| membership.members().contains(t))
            else {
                return Err(Status::not_found(ERR_MEMBER_NOT_FOUND));
            };
            if membership.is_voter(target) {
                self.check_connected_majority_without(&membership, target)?;
            }
            let refused = match node
                .change_membership(raft::MembershipChange::Remove(target))
                .await
            {
                Ok(Ok(applied)) => {
                    match applied.await {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => return Err(write_status(e)),
                        Err(_) => return Err(Status::unavailable(ERR_STOPPED)),
                    };
                }
                Ok(Err(e)) => e,
                Err(AdminError::Busy) => {
                    return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))
                }
                Err(AdminError::Stopped) => return Err(Status::unavailable(ERR_STOPPED)),
            };
            match refused {
                // Forwarded here, or leadership moved: the forwarder retries on the leader.
                raft::MembershipError::NotLeader { .. } => {
                    return Err(Status::unavailable(ERR_NOT_LEADER))
                }
                // A new leader's first commit, another change or a leader transfer in
                // progress: etcd serializes configuration changes the same way.
                raft::MembershipError::NotReady
                | raft::MembershipError::ChangeInProgress
                | raft::MembershipError::LeadershipTransfer { .. }
                    if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                raft::MembershipError::Invalid(why) => {
                    return Err(Status::failed_precondition(format!("etcdserver: {why}")))
                }
                _ => return Err(Status::unavailable(ERR_TIMEOUT)),
            }
        }
        self.members_left().await
    }

    /// MemberRemove's answer: the members left, as this member lists them.
    async fn members_left(&self) -> Result<epb::MemberRemoveResponse, Status> {
        let (members, revision) = self.members_now().await?;
        Ok(epb::MemberRemoveResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            members,
        })
    }

    /// etcd's strict reconfiguration check for removing voter `target`: the voters left must
    /// have a connected majority among them (this leader and the peers it heard from within
    /// an election timeout). A voter that is down can be removed whenever the others are
    /// healthy; one that merely looks down (late answers) is never a reason to skip the check,
    /// unlike etcd's exemption of targets without a stream, which could leave the cluster
    /// without a quorum.
    fn check_connected_majority_without(
        &self,
        membership: &raft::Membership,
        target: raft::NodeId,
    ) -> Result<(), Status> {
        let me = self.inner.member_id;
        let window = self.inner.members.election;
        let connected = |id: raft::NodeId| {
            id.get() == me
                || self
                    .inner
                    .removal
                    .last_heard(id.get())
                    .is_some_and(|t| t.elapsed() <= window)
        };
        let left: Vec<raft::NodeId> = membership
            .voters
            .iter()
            .chain(&membership.voters_outgoing)
            .copied()
            .filter(|&v| v != target)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let up = left.iter().filter(|&&v| connected(v)).count();
        if up < left.len() / 2 + 1 {
            return Err(Status::unavailable(ERR_UNHEALTHY));
        }
        Ok(())
    }

    /// Every member of the configuration in force, by id, described (see the module docs),
    /// with the store revision.
    async fn members_now(&self) -> Result<(Vec<epb::Member>, i64), Status> {
        let membership = self.inner.node.membership();
        let (table, revision) = self
            .read_kv(|kv| Ok((kv.members()?, kv.revision()?)))
            .await?;
        let members = membership
            .members()
            .into_iter()
            .map(|id| {
                let described = table.iter().find(|m| m.id == id.get());
                let initial = self.inner.members.initial.members.get(&id);
                let (name, peer_urls, client_urls) = match (described, initial) {
                    (Some(m), _) => (m.name.clone(), m.peer_urls.clone(), m.client_urls.clone()),
                    (None, Some(m)) => (m.name.clone(), vec![m.peer_url.clone()], Vec::new()),
                    (None, None) => (String::new(), Vec::new(), Vec::new()),
                };
                epb::Member {
                    id: id.get(),
                    name,
                    peer_ur_ls: peer_urls,
                    client_ur_ls: client_urls,
                    is_learner: membership.learners.contains(&id),
                }
            })
            .collect();
        Ok((members, revision))
    }
    /// Publishes this member's name and client URLs through the log unless the table already
    /// holds them, retrying until the leader applied it once (etcd's `publish`). Runs until
    /// done. (A follower's own apply of it may come later: it does not look again, which
    /// would publish twice.)
    pub fn start_publisher(&self) -> tokio::task::JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move { api.publish_loop().await })
    }

    async fn publish_loop(self) {
        let me = self.inner.members.me.clone();
        let mut attempts = 0u64;
        loop {
            let stored = self.read_kv(|kv| kv.members()).await;
            let published = stored.as_ref().is_ok_and(|table| {
                table
                    .iter()
                    .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls)
            });
            if published {
                tracing::debug!(attempts, "member description published");
                return;
            }
            if self.inner.node.status().leader.is_some() {
                attempts += 1;
                match self.write_kv(kv::Request::MemberPublish(me.clone())).await {
                    Ok(_) => {
                        tracing::debug!(attempts, "member description published");
                        return;
                    }
                    Err(e) if attempts % 20 == 1 => {
                        tracing::warn!(error = %e.message(), "publishing this member failed; retrying")
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(PUBLISH_RETRY).await;
        }
    }
}
