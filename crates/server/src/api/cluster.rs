//! etcd's Cluster service (`etcdserverpb.Cluster`): MemberList here, the configuration
//! changes (MemberAdd, MemberRemove, MemberPromote, MemberUpdate) in [`super::reconfigure`];
//! the publishing of this member's own description when it starts, as etcd's members publish
//! theirs; and the answer to a member joining with an empty data dir.
//!
//! Which members exist, and which are learners, is the consensus core's configuration in
//! force; what they are called and where they listen is the replicated member table
//! ([`kv::members`]). A member of the initial cluster that has not published yet is described
//! from `--initial-cluster` (the initial members share it; one that joined later has what
//! `member add` printed, which names the initial members the same way): listed with its name
//! and peer URL and no client URLs, as etcd lists it. A member added later is in the
//! table from the entry that added it, with its peer URLs and no name until it starts.

use std::sync::Arc;
use std::time::Duration;

use raft::{Membership, NodeId};
use tonic::{Request, Response, Status};

use super::Api;
use crate::cluster::ClusterSpec;
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1 as pb;
use crate::peer::{Origin, Peers};

/// Pause between attempts to publish while the cluster has no leader or refuses.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);
/// How long a join answer waits for a ReadIndex.
const JOIN_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the peer addresses are brought in line with the member table.
const ADDRESS_BOOK_PERIOD: Duration = Duration::from_millis(200);

/// What the API knows of the members besides the replicated table.
#[derive(Clone)]
pub struct MemberInfo {
    /// The initial cluster (`--initial-cluster`).
    pub initial: ClusterSpec,
    /// This member's description, as it publishes it.
    pub me: kv::members::Member,
    /// The election timeout: a peer not heard from for this long counts as disconnected.
    pub election: Duration,
    /// The voters every member's log starts from (the initial cluster's), told to members
    /// that join.
    pub bootstrap: Vec<u64>,
    /// Where the peers are: a member added here is reachable before its entry is applied.
    pub peers: Arc<Peers>,
}

/// The members as this member knows them: the configuration in force and the table.
pub(super) struct MemberState {
    pub(super) membership: Arc<Membership>,
    pub(super) table: Vec<kv::members::Member>,
    pub(super) revision: i64,
    /// Members added by configuration entries not applied yet (not in the table yet),
    /// with the peer URLs their entries carry.
    pub(super) pending: Arc<Vec<crate::replica::PendingMember>>,
}

/// What MemberList says of one member.
pub(super) struct Description {
    pub(super) name: String,
    pub(super) peer_urls: Vec<String>,
    pub(super) client_urls: Vec<String>,
}

impl MemberState {
    /// Member `id`, described by the table, else by `--initial-cluster`, else by nothing.
    pub(super) fn describe(&self, initial: &ClusterSpec, id: NodeId) -> Description {
        let described = self.table.iter().find(|m| m.id == id.get());
        let spec = initial.members.get(&id);
        match (described, spec) {
            // Recorded by MemberUpdate before the member published: its name is still the
            // initial cluster's.
            (Some(m), Some(s)) if m.name.is_empty() => Description {
                name: s.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            },
            (Some(m), _) => Description {
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            },
            (None, Some(s)) => Description {
                name: s.name.clone(),
                peer_urls: vec![s.peer_url.clone()],
                client_urls: Vec::new(),
            },
            (None, None) => Description {
                name: String::new(),
                peer_urls: self
                    .pending
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.peer_urls.clone())
                    .unwrap_or_default(),
                client_urls: Vec::new(),
            },
        }
    }

    /// Every member of the configuration in force, by id, as etcd lists them.
    pub(super) fn listed(&self, initial: &ClusterSpec) -> Vec<epb::Member> {
        self.membership
            .members()
            .into_iter()
            .map(|id| {
                let d = self.describe(initial, id);
                epb::Member {
                    id: id.get(),
                    name: d.name,
                    peer_ur_ls: d.peer_urls,
                    client_ur_ls: d.client_urls,
                    is_learner: self.membership.learners.contains(&id),
                }
            })
            .collect()
    }
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
        let (header, members) = self.members_answer().await?;
        Ok(Response::new(epb::MemberListResponse { header, members }))
    }

    /// etcd's MemberAdd: a voter, or a learner with `is_learner`; answers once the
    /// configuration with it is applied here, with the new member and all of them.
    async fn member_add(
        &self,
        request: Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        // etcd's `checkMembershipOperationPermission`; the leader checks the stamp again.
        let stamp = self.admin(&request).await?.stamp();
        self.member_add_impl(request.into_inner(), Origin::Client, None, Some(stamp))
            .await
            .map(Response::new)
    }

    /// etcd's MemberRemove: answers once the configuration without the member is applied
    /// here, with the members left.
    async fn member_remove(
        &self,
        request: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        // etcd's `checkMembershipOperationPermission`; the leader checks the stamp again.
        let stamp = self.admin(&request).await?.stamp();
        let id = request.into_inner().id;
        self.member_remove_impl(id, Origin::Client, Some(stamp))
            .await
            .map(Response::new)
    }

    /// etcd's MemberUpdate: new peer URLs for a member.
    async fn member_update(
        &self,
        request: Request<epb::MemberUpdateRequest>,
    ) -> Result<Response<epb::MemberUpdateResponse>, Status> {
        // etcd's `checkMembershipOperationPermission`; checked again at apply.
        let stamp = self.admin(&request).await?.stamp();
        self.member_update_impl(request.into_inner(), stamp)
            .await
            .map(Response::new)
    }

    /// etcd's MemberPromote: a learner whose log is within 10% of the leader's becomes a
    /// voter.
    async fn member_promote(
        &self,
        request: Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        // etcd's `checkMembershipOperationPermission`; the leader checks the stamp again.
        let stamp = self.admin(&request).await?.stamp();
        let id = request.into_inner().id;
        self.member_promote_impl(id, Origin::Client, Some(stamp))
            .await
            .map(Response::new)
    }
}

impl Api {
    /// The members as this member knows them now.
    pub(super) async fn member_state(&self) -> Result<MemberState, Status> {
        let membership = self.inner.node.membership();
        let pending = self.inner.node.pending_members();
        let (table, revision) = self
            .read_kv(|kv| Ok((kv.members()?, kv.revision()?)))
            .await?;
        Ok(MemberState {
            membership,
            table,
            revision,
            pending,
        })
    }

    /// Every member of the configuration in force, by id, described (see the module docs),
    /// with the header of an answer that lists them: cluster, member and term, and no store
    /// revision, as etcd's Cluster service answers (`etcdctl member list -w json` shows none).
    pub(super) async fn members_answer(
        &self,
    ) -> Result<(Option<epb::ResponseHeader>, Vec<epb::Member>), Status> {
        let state = self.member_state().await?;
        Ok((
            Some(self.header()),
            state.listed(&self.inner.members.initial),
        ))
    }

    /// Answers a member starting with an empty data dir (`--initial-cluster-state existing`)
    /// that says it is reached at `peer_url`: its id (given by MemberAdd), the cluster's,
    /// where its log starts, and who the members are. After a ReadIndex, so that what this
    /// member says is current (an addition the client saw answered is applied here, and a
    /// member that has started is known to have); without one (no leader), only for a member
    /// whose addition nothing can take back: a sole voter's own (a cluster that grows from
    /// one voter has no leader until the new member joins).
    pub async fn join_answer(&self, peer_url: &str) -> Result<pb::JoinResponse, Status> {
        let read = tokio::time::timeout(JOIN_READ_TIMEOUT, self.linearizable_read()).await;
        let current = matches!(read, Ok(Ok(())));
        let state = self.member_state().await?;
        let initial = &self.inner.members.initial;
        let matching: Vec<NodeId> = state
            .membership
            .members()
            .into_iter()
            .filter(|&id| {
                state
                    .describe(initial, id)
                    .peer_urls
                    .iter()
                    .any(|u| u == peer_url)
            })
            .collect();
        let id = match matching.as_slice() {
            [id] => *id,
            [] => {
                return Err(Status::not_found(format!(
                    "no member of cluster {:#x} has peer URL {peer_url}: add it first \
                     (etcdctl member add NAME --peer-urls={peer_url})",
                    self.inner.cluster_id
                )))
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "more than one member has peer URL {peer_url}"
                )))
            }
        };
        // Only a member that was added and never started may take an empty data dir: one that
        // ran has a term, a vote and a log its peers count on (a voter coming back empty
        // could vote twice in a term, or lose entries it acknowledged).
        let described = state.table.iter().find(|m| m.id == id.get());
        let started =
            initial.members.contains_key(&id) || described.is_some_and(|m| !m.name.is_empty());
        if started {
            return Err(Status::failed_precondition(format!(
                "member {:x} has started before; to give it an empty data dir, remove it and \
                 add it again (etcdctl member remove, etcdctl member add)",
                id.get()
            )));
        }
        // Not applied yet: only an addition nothing can take back, a sole voter's own entry
        // (no one else can be elected without this member's vote, and it votes only for a log
        // that holds it). Otherwise the entry may still be truncated by another leader.
        if described.is_none() || !current {
            let me = NodeId::new(self.inner.member_id);
            let certain = state.pending.iter().find(|p| p.id == id).is_some_and(|p| {
                p.voters_before.len() == 1 && p.voters_before.iter().next() == me.as_ref()
            });
            if !certain {
                return Err(Status::unavailable(format!(
                    "member {:x} is being added, or this member cannot confirm it is current \
                     (no leader); ask again",
                    id.get()
                )));
            }
        }
        let members = state
            .membership
            .members()
            .into_iter()
            .map(|id| {
                let d = state.describe(initial, id);
                pb::JoinMember {
                    id: id.get(),
                    name: d.name,
                    peer_urls: d.peer_urls,
                }
            })
            .collect();
        Ok(pb::JoinResponse {
            cluster_id: self.inner.cluster_id,
            member_id: id.get(),
            bootstrap_voters: self.inner.members.bootstrap.clone(),
            members,
        })
    }

    /// Keeps the peer layer's addresses in line with the members: every member of the
    /// configuration in force is sent to at its described peer URL (a MemberUpdate moves it;
    /// a member just added, at the URL its entry carries), and no one else is. Looks whenever
    /// the configuration changes and every `ADDRESS_BOOK_PERIOD`.
    pub fn start_address_book(&self) -> tokio::task::JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ADDRESS_BOOK_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changes = api.inner.node.membership_changes();
            loop {
                // At once when the configuration changes (a member added must be reachable
                // from its entry's append), and periodically for the table's changes.
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                let Ok(state) = api.member_state().await else {
                    continue;
                };
                api.update_addresses(&state);
            }
        })
    }

    fn update_addresses(&self, state: &MemberState) {
        let info = &self.inner.members;
        for id in state.membership.members() {
            if id.get() == self.inner.member_id {
                continue;
            }
            let described = state.describe(&info.initial, id);
            let Some(url) = described.peer_urls.first() else {
                continue;
            };
            if let Err(e) = info.peers.set(id, url) {
                tracing::warn!(peer = format!("{:x}", id.get()), error = %e, "peer URL unusable");
            }
        }
        // Links to anyone else (a removed member, an addition that was truncated, an id the
        // initial cluster names but the cluster never had) are dropped; but not while this
        // member's own configuration is behind: a member that just joined, or restarted after
        // changes it has not replayed yet, must keep answering a leader it does not know of
        // yet (heard from within an election timeout).
        let members = state.membership.members();
        let me = NodeId::new(self.inner.member_id);
        let current = me.is_some_and(|me| members.contains(&me));
        for id in info.peers.ids() {
            let heard = self
                .inner
                .removal
                .last_heard(id.get())
                .is_some_and(|t| t.elapsed() <= info.election);
            let removed = self.inner.removal.is_removed(id.get());
            if !members.contains(&id) && (removed || (current && !heard)) {
                info.peers.remove(id);
            }
        }
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
            // Look at the table only once it holds what the cluster committed: a restarted
            // member replays its log after it starts, and must not publish again for lack of
            // a row it is about to replay.
            if self.linearizable_read().await.is_err() {
                tokio::time::sleep(PUBLISH_RETRY).await;
                continue;
            }
            let stored = self.read_kv(|kv| kv.members()).await;
            let published = stored.as_ref().is_ok_and(|table| {
                table
                    .iter()
                    .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls)
            });
            if published {
                tracing::debug!(attempts, "member description already published");
                return;
            }
            if self.inner.node.status().leader.is_some() {
                attempts += 1;
                match self.write_kv(kv::Request::MemberPublish(me.clone())).await {
                    Ok(_) => {
                        tracing::info!(attempts, "member description published");
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
