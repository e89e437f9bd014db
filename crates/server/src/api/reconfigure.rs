//! Configuration changes through etcd's Cluster service: MemberAdd, MemberRemove and
//! MemberPromote run on the leader (forwarded there from a follower), whose core proposes
//! them one server at a time (paper §6; thesis §4.1); each answers once its entry is applied
//! on the member that ran it. MemberUpdate changes only the member table, through the log like
//! a write.
//!
//! The checks are etcd's (`ValidateConfigurationChange` and its strict reconfiguration check):
//! - MemberAdd: the peer URLs parse and no other member has them; one learner at most; a voter
//!   only while enough voters have started for the quorum of the configuration it makes, and
//!   while the leader hears from every voter.
//! - MemberRemove: the voters left have a connected majority.
//! - MemberPromote: the learner's log is within 10% of the leader's, and enough members have
//!   started.
//!
//! A change that a retry finds already made (its first answer was lost) is answered once the
//! configuration holding it is applied, never while a new leader could still truncate it.
//!
//! A MemberAdd carries the new member's id and peer URLs in its configuration entry (the
//! core's context), so that the configuration and the description are replicated together;
//! the id is chosen where the request arrives and travels with it when forwarded, so that a
//! retry after a lost answer finds the member added and answers, rather than adding it twice.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use raft::{Membership, MembershipChange, NodeId};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::Status;

use super::cluster::MemberState;
use super::{write_status, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::peer::{set_stamp, Origin, REQUEST_TIMEOUT, RETRY_PAUSE};
use crate::replica::{AdminError, AppliedReceiver};
use crate::rpctypes::{
    ERR_LEARNER_NOT_READY, ERR_MEMBER_BAD_URLS, ERR_MEMBER_EXIST, ERR_MEMBER_NOT_ENOUGH_STARTED,
    ERR_MEMBER_NOT_FOUND, ERR_MEMBER_NOT_LEARNER, ERR_NOT_LEADER, ERR_NO_LEADER,
    ERR_PEER_URL_EXIST, ERR_STOPPED, ERR_TIMEOUT, ERR_TOO_MANY_LEARNERS, ERR_TOO_MANY_REQUESTS,
    ERR_UNHEALTHY,
};

/// Metadata naming the id a forwarded MemberAdd gives the new member.
pub const MEMBER_ID_HEADER: &str = "skiff-member-id";
/// Learners a cluster may have at once (etcd's `maxLearners`).
pub const LEARNERS_MAX: usize = 1;
/// A learner may be promoted once its log is within this fraction of the leader's (etcd's
/// `readyPercent`).
const LEARNER_READY: f64 = 0.9;
/// How often a change that may answer once durable looks whether it is.
const DURABLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

impl Api {
    /// Runs MemberAdd on the leader: here if this member leads, forwarded otherwise. `id` is
    /// the id a forwarding member chose (`None` when a client asked here); `stamp` the
    /// client's, forwarded for the leader to check (so for remove and promote).
    pub(super) async fn member_add_impl(
        &self,
        r: epb::MemberAddRequest,
        origin: Origin,
        id: Option<u64>,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberAddResponse, Status> {
        check_urls(&r.peer_ur_ls)?;
        let id = match id {
            Some(id) => id,
            None => self.fresh_member_id().await?,
        };
        let reached = self
            .inner
            .leader
            .on_leader(
                origin,
                || self.member_add_here(&r, id),
                |mut client| {
                    let mut request = tonic::Request::new(r.clone());
                    set_member_id(request.metadata_mut(), id);
                    if let Some(stamp) = &stamp {
                        set_stamp(request.metadata_mut(), stamp);
                    }
                    async move { client.member_add(request).await }
                },
            )
            .await?;
        Ok(reached.into_answer())
    }

    /// MemberAdd on this member, which leads.
    async fn member_add_here(
        &self,
        r: &epb::MemberAddRequest,
        id: u64,
    ) -> Result<epb::MemberAddResponse, Status> {
        let target = NodeId::new(id).ok_or_else(|| Status::invalid_argument("member id 0"))?;
        let urls = r.peer_ur_ls.clone();
        // Decide on everything committed (a MemberUpdate that took the URL, say), as etcd
        // checks a change against the applied member store.
        self.linearizable_read().await?;
        let context = kv::codec::encode_command(&kv::Command::new(kv::Request::MemberAdd(
            kv::members::Member {
                id,
                name: String::new(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
            },
        )));
        let result = self
            .reconfigure_here(|state| {
                let initial = &self.inner.members.initial;
                if state.membership.members().contains(&target) {
                    // A retry of this very addition, whose first answer was lost.
                    if state.describe(initial, target).peer_urls == urls {
                        return Ok(None);
                    }
                    return Err(Status::failed_precondition(ERR_MEMBER_EXIST));
                }
                if self.inner.removal.is_removed(id) {
                    // etcd answers a removed id (`ErrIDRemoved`) with "member not found".
                    return Err(Status::not_found(ERR_MEMBER_NOT_FOUND));
                }
                let taken = state.membership.members().into_iter().any(|m| {
                    state
                        .describe(initial, m)
                        .peer_urls
                        .iter()
                        .any(|u| urls.contains(u))
                });
                if taken {
                    return Err(Status::failed_precondition(ERR_PEER_URL_EXIST));
                }
                let voters = voters_of(&state.membership);
                let sole_voter_grows = !r.is_learner && voters.len() == 1;
                let change = if r.is_learner {
                    if state.membership.learners.len() >= LEARNERS_MAX {
                        return Err(Status::failed_precondition(ERR_TOO_MANY_LEARNERS));
                    }
                    MembershipChange::AddLearner(target)
                } else {
                    self.check_enough_started(state)?;
                    MembershipChange::AddVoter(target)
                };
                // etcd's `isConnectedFullySince`, for learners too.
                if voters.iter().any(|&v| !self.connected(v)) {
                    return Err(Status::unavailable(ERR_UNHEALTHY));
                }
                Ok(Some(Plan {
                    durable_is_enough: sole_voter_grows,
                    ..Plan::new(change, context.clone())
                }))
            })
            .await;
        result?;
        let (header, members) = self.members_answer().await?;
        Ok(epb::MemberAddResponse {
            header,
            member: Some(epb::Member {
                id,
                name: String::new(),
                peer_ur_ls: urls,
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members,
        })
    }

    /// An id for a new member: random, never 0, and not one the cluster has or had.
    async fn fresh_member_id(&self) -> Result<u64, Status> {
        let state = self.member_state().await?;
        let mut salt = self.inner.member_id ^ state.revision as u64;
        loop {
            let id = super::random_u64(salt);
            salt = salt.wrapping_add(1);
            let known = state.table.iter().any(|m| m.id == id)
                || NodeId::new(id).is_none_or(|n| state.membership.members().contains(&n));
            if !known && !self.inner.removal.is_removed(id) {
                return Ok(id);
            }
        }
    }

    /// etcd's `IsReadyToAddVotingMember`: with the new voter, a quorum of the voters must have
    /// started.
    fn check_enough_started(&self, state: &MemberState) -> Result<(), Status> {
        let voters = voters_of(&state.membership);
        let started = self.started(state, &voters);
        let members = voters.len() + 1;
        // etcd's exception: growing a cluster of one member (restoring from a backup).
        let restoring = started == 1 && members == 2;
        if !restoring && started < quorum(members) {
            return Err(Status::failed_precondition(ERR_MEMBER_NOT_ENOUGH_STARTED));
        }
        Ok(())
    }

    /// How many of `ids` have started: published their name (etcd's `IsStarted`), or are
    /// members of the initial cluster, which have names from the start.
    fn started(&self, state: &MemberState, ids: &[NodeId]) -> usize {
        let initial = &self.inner.members.initial;
        ids.iter()
            .filter(|&&id| !state.describe(initial, id).name.is_empty())
            .count()
    }

    /// Whether this member heard from `id` within an election timeout (itself: always).
    fn connected(&self, id: NodeId) -> bool {
        id.get() == self.inner.member_id
            || self
                .inner
                .removal
                .last_heard(id.get())
                .is_some_and(|t| t.elapsed() <= self.inner.members.election)
    }

    /// Runs MemberPromote on the leader: here if this member leads, forwarded otherwise.
    pub(super) async fn member_promote_impl(
        &self,
        id: u64,
        origin: Origin,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberPromoteResponse, Status> {
        let (reached, ambiguous) = self
            .on_leader_tracked(
                origin,
                || self.member_promote_here(id),
                |mut client| {
                    let request = stamped(epb::MemberPromoteRequest { id }, stamp.as_ref());
                    async move { client.member_promote(request).await }
                },
            )
            .await;
        match reached {
            // Promoted by the earlier attempt, as this member's own state says once it has
            // applied everything committed: the promotion succeeded.
            Err(s) if ambiguous && s.message() == ERR_MEMBER_NOT_LEARNER => {
                self.linearizable_read().await?;
                let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
                self.wait_configuration_applied(deadline).await?;
                let promoted = NodeId::new(id).is_some_and(|t| {
                    let m = self.inner.node.membership();
                    m.is_voter(t)
                });
                if !promoted {
                    return Err(s);
                }
                let (header, members) = self.members_answer().await?;
                Ok(epb::MemberPromoteResponse { header, members })
            }
            r => r,
        }
    }

    /// [`crate::peer::Forwarder::on_leader`] for a configuration change, also saying whether
    /// an attempt failed without an answer (the leader crashed or changed after proposing):
    /// then the change may have taken effect, and a retry that finds it done succeeded.
    async fn on_leader_tracked<T, HereFut, ViaFut>(
        &self,
        origin: Origin,
        mut here: impl FnMut() -> HereFut,
        mut via: impl FnMut(RaftClient<Channel>) -> ViaFut,
    ) -> (Result<T, Status>, bool)
    where
        HereFut: std::future::Future<Output = Result<T, Status>>,
        ViaFut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        // Retried failures that say nothing was proposed (no leader, not the leader) leave
        // nothing in doubt; a lost connection or a leader change after proposing does.
        let ambiguous = AtomicBool::new(false);
        let note = |failed: Option<&Status>| {
            let in_doubt = failed.is_some_and(|s| {
                crate::peer::RetryPolicy::retryable(s)
                    && ![ERR_NO_LEADER, ERR_NOT_LEADER].contains(&s.message())
            });
            if in_doubt {
                ambiguous.store(true, Ordering::Relaxed);
            }
        };
        let reached = self
            .inner
            .leader
            .on_leader(
                origin,
                || {
                    let attempt = here();
                    async {
                        let r = attempt.await;
                        note(r.as_ref().err());
                        r
                    }
                },
                |client| {
                    let attempt = via(client);
                    async {
                        let r = attempt.await;
                        note(r.as_ref().err());
                        r
                    }
                },
            )
            .await
            .map(|r| r.into_answer());
        (reached, ambiguous.load(Ordering::Relaxed))
    }

    /// MemberPromote on this member, which leads.
    async fn member_promote_here(&self, id: u64) -> Result<epb::MemberPromoteResponse, Status> {
        let membership = self.inner.node.membership();
        let target = NodeId::new(id)
            .filter(|t| membership.members().contains(t))
            .ok_or_else(|| Status::not_found(ERR_MEMBER_NOT_FOUND))?;
        if !membership.learners.contains(&target) {
            return Err(Status::failed_precondition(ERR_MEMBER_NOT_LEARNER));
        }
        // etcd's `isLearnerReady`: only the leader knows how far the learner's log is.
        let progress = match self.inner.node.match_index(target).await {
            Ok(p) => p,
            Err(AdminError::Busy) => return Err(Status::resource_exhausted(ERR_TOO_MANY_REQUESTS)),
            Err(AdminError::Stopped) => return Err(Status::unavailable(ERR_STOPPED)),
        };
        let Some((leader_match, learner_match)) = progress else {
            return Err(Status::unavailable(ERR_NOT_LEADER));
        };
        if (learner_match.unwrap_or(0) as f64) < leader_match as f64 * LEARNER_READY {
            return Err(Status::failed_precondition(ERR_LEARNER_NOT_READY));
        }
        self.reconfigure_here(|state| {
            if !state.membership.learners.contains(&target) {
                // A retry of this very promotion, whose first answer was lost.
                if state.membership.is_voter(target) {
                    return Ok(None);
                }
                return Err(Status::not_found(ERR_MEMBER_NOT_FOUND));
            }
            // etcd's `IsReadyToPromoteMember`: the learner counts as started.
            let voters = voters_of(&state.membership);
            let started = self.started(state, &voters) + 1;
            if started < quorum(voters.len() + 1) {
                return Err(Status::failed_precondition(ERR_MEMBER_NOT_ENOUGH_STARTED));
            }
            Ok(Some(Plan::new(
                MembershipChange::PromoteLearner(target),
                Vec::new(),
            )))
        })
        .await?;
        let (header, members) = self.members_answer().await?;
        Ok(epb::MemberPromoteResponse { header, members })
    }

    /// MemberUpdate: checked against this member's state after a ReadIndex, then written
    /// through the log as any write (the leader proposes it); answered with the members once
    /// applied here.
    pub(super) async fn member_update_impl(
        &self,
        r: epb::MemberUpdateRequest,
        stamp: kv::AuthStamp,
    ) -> Result<epb::MemberUpdateResponse, Status> {
        check_urls(&r.peer_ur_ls)?;
        self.linearizable_read().await?;
        let state = self.member_state().await?;
        let initial = &self.inner.members.initial;
        let target = NodeId::new(r.id)
            .filter(|t| state.membership.members().contains(t))
            .ok_or_else(|| Status::not_found(ERR_MEMBER_NOT_FOUND))?;
        let taken = state.membership.members().into_iter().any(|m| {
            m != target
                && state
                    .describe(initial, m)
                    .peer_urls
                    .iter()
                    .any(|u| r.peer_ur_ls.contains(u))
        });
        if taken {
            return Err(Status::failed_precondition(ERR_PEER_URL_EXIST));
        }
        let update = kv::Request::MemberUpdate {
            id: r.id,
            peer_urls: r.peer_ur_ls,
        };
        self.write_kv_as(update, Some(stamp)).await?;
        self.linearizable_read().await?;
        let (header, members) = self.members_answer().await?;
        Ok(epb::MemberUpdateResponse { header, members })
    }

    /// Runs MemberRemove on the leader: here if this member leads, forwarded otherwise.
    pub(super) async fn member_remove_impl(
        &self,
        id: u64,
        origin: Origin,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberRemoveResponse, Status> {
        let (reached, ambiguous) = self
            .on_leader_tracked(
                origin,
                || self.member_remove_here(id),
                |mut client| {
                    let request = stamped(epb::MemberRemoveRequest { id }, stamp.as_ref());
                    async move { client.member_remove(request).await }
                },
            )
            .await;
        match reached {
            // Removed by the earlier attempt, as this member's own state says once it has
            // applied everything committed: the removal succeeded.
            Err(s) if s.code() == tonic::Code::NotFound && ambiguous => {
                self.linearizable_read().await?;
                if !self.inner.removal.is_removed(id) {
                    return Err(s);
                }
                self.members_left().await
            }
            r => r,
        }
    }

    /// MemberRemove on this member, which leads.
    async fn member_remove_here(&self, id: u64) -> Result<epb::MemberRemoveResponse, Status> {
        self.reconfigure_here(|state| {
            let Some(target) = NodeId::new(id).filter(|t| state.membership.members().contains(t))
            else {
                return Err(Status::not_found(ERR_MEMBER_NOT_FOUND));
            };
            if state.membership.is_voter(target) {
                self.check_connected_majority_without(&state.membership, target)?;
            }
            Ok(Some(Plan::new(
                MembershipChange::Remove(target),
                Vec::new(),
            )))
        })
        .await?;
        self.members_left().await
    }

    /// MemberRemove's answer: the members left, as this member lists them.
    async fn members_left(&self) -> Result<epb::MemberRemoveResponse, Status> {
        let (header, members) = self.members_answer().await?;
        Ok(epb::MemberRemoveResponse { header, members })
    }

    /// etcd's strict reconfiguration check for removing voter `target`: the voters left must
    /// have a connected majority among them (this leader and the peers it heard from within
    /// an election timeout). A voter that is down can be removed whenever the others are
    /// healthy; one that merely looks down (late answers) is never a reason to skip the check,
    /// unlike etcd's exemption of targets without a stream, which could leave the cluster
    /// without a quorum.
    fn check_connected_majority_without(
        &self,
        membership: &Membership,
        target: NodeId,
    ) -> Result<(), Status> {
        let left: Vec<NodeId> = voters_of(membership)
            .into_iter()
            .filter(|&v| v != target)
            .collect();
        let up = left.iter().filter(|&&v| self.connected(v)).count();
        if up < quorum(left.len()) {
            return Err(Status::unavailable(ERR_UNHEALTHY));
        }
        Ok(())
    }

    /// Proposes the change `decide` makes of the members as they are, on this member, which
    /// leads, and waits until its entry is applied here (or, for a [`Plan`] that says so,
    /// durable here). While the core refuses for a reason that passes (a new leader's first
    /// commit, another change or a leader transfer in progress: etcd serializes configuration
    /// changes the same way), it asks again. All within [`REQUEST_TIMEOUT`]. `decide` answers
    /// `None` when there is nothing left to do.
    async fn reconfigure_here(
        &self,
        mut decide: impl FnMut(&MemberState) -> Result<Option<Plan>, Status>,
    ) -> Result<(), Status> {
        let node = &self.inner.node;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let state = self.member_state().await?;
            let Some(plan) = decide(&state)? else {
                // Nothing to do: the change is in the configuration in force, perhaps made by
                // an earlier attempt whose answer was lost. Done once that configuration is
                // applied here (so committed), not while a new leader could still truncate it.
                self.wait_configuration_applied(deadline).await?;
                if decide(&self.member_state().await?)?.is_none() {
                    return Ok(());
                }
                continue;
            };
            tracing::info!(change = ?plan.change, "proposing a configuration change");
            let refused = match node.change_membership(plan.change, plan.context).await {
                Ok(Ok((entry, applied))) => {
                    return self
                        .wait_applied(entry, applied, plan.durable_is_enough, deadline)
                        .await
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
    }

    /// Waits until the configuration in force is applied here (its entry committed), by
    /// `deadline`; "request timed out" (outcome unknown, as etcd means it) after.
    async fn wait_configuration_applied(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(), Status> {
        let node = &self.inner.node;
        loop {
            let st = node.status();
            if *node.applied_changes().borrow() >= st.membership_index {
                return Ok(());
            }
            if tokio::time::Instant::now() + DURABLE_POLL >= deadline {
                return Err(Status::unavailable(ERR_TIMEOUT));
            }
            tokio::time::sleep(DURABLE_POLL).await;
        }
    }

    /// Waits until the configuration entry at `entry` is applied here (`applied` answers), or
    /// with `durable_is_enough` until it is durable on this leader, by `deadline`.
    async fn wait_applied(
        &self,
        entry: raft::EntryId,
        mut applied: AppliedReceiver,
        durable_is_enough: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), Status> {
        let me = NodeId::new(self.inner.member_id)
            .ok_or_else(|| Status::internal("this member's id is 0"))?;
        let mut poll = tokio::time::interval(DURABLE_POLL);
        loop {
            tokio::select! {
                answer = &mut applied => {
                    return match answer {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(write_status(e)),
                        Err(_) => Err(Status::unavailable(ERR_STOPPED)),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Status::unavailable(ERR_TIMEOUT));
                }
                _ = poll.tick(), if durable_is_enough => {
                    // Still leading the term that appended it, with it on disk: nothing can
                    // take it out of the log (see `Plan::durable_is_enough`).
                    let own = self.inner.node.match_index(me).await.ok().flatten();
                    let leading = self.inner.node.status().term == entry.term.0;
                    if leading && own.is_some_and(|(durable, _)| durable >= entry.index.0) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A configuration change to propose.
struct Plan {
    change: MembershipChange,
    /// Stored in the entry (a new member's description).
    context: Vec<u8>,
    /// Answer once the entry is durable on this leader rather than applied: for a voter added
    /// to a cluster of one (etcd's exception for restoring a cluster from one member). The
    /// configuration is in force from its append (paper §6), so the entry commits only once
    /// the new member has joined, which it can do only after `member add` answered. Nothing
    /// can remove the entry meanwhile: no other node can be elected without this one's vote,
    /// and this one votes only for a log that holds it.
    durable_is_enough: bool,
}

impl Plan {
    fn new(change: MembershipChange, context: Vec<u8>) -> Plan {
        Plan {
            change,
            context,
            durable_is_enough: false,
        }
    }
}

/// A majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Every voter, of both halves of a joint configuration.
fn voters_of(m: &Membership) -> Vec<NodeId> {
    m.voters
        .iter()
        .chain(&m.voters_outgoing)
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// etcd's `types.NewURLs` check, for the URLs this server can reach: one URL (a member
/// listens on one peer URL here), `http://HOST:PORT` (an IP or a DNS name), within the member
/// table's limits.
fn check_urls(urls: &[String]) -> Result<(), Status> {
    let bad = || Status::invalid_argument(ERR_MEMBER_BAD_URLS);
    if urls.len() != 1 {
        return Err(bad());
    }
    for u in urls {
        if u.len() > kv::members::MEMBER_URL_BYTES_MAX || crate::cluster::check_url(u).is_err() {
            return Err(bad());
        }
    }
    Ok(())
}

/// Puts the id a forwarded MemberAdd gives the new member in the request's metadata.
/// `request` with the client's `stamp` (if any), to forward it to the leader.
fn stamped<T>(request: T, stamp: Option<&kv::AuthStamp>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request);
    if let Some(stamp) = stamp {
        set_stamp(r.metadata_mut(), stamp);
    }
    r
}

fn set_member_id(metadata: &mut MetadataMap, id: u64) {
    if let Ok(v) = id.to_string().parse() {
        metadata.insert(MEMBER_ID_HEADER, v);
    }
}

/// The id a forwarding member chose for a MemberAdd; refused if missing or malformed.
pub fn member_id_of(metadata: &MetadataMap) -> Result<u64, Status> {
    metadata
        .get(MEMBER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&id| id != 0)
        .ok_or_else(|| Status::invalid_argument(format!("missing or bad {MEMBER_ID_HEADER}")))
}
