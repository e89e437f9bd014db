//! etcd's Cluster service (`etcdserverpb.Cluster`): MemberList so far; and the publishing of
//! this member's own description when it starts, as etcd's members publish theirs.
//!
//! Which members exist, and which are learners, is the consensus core's configuration in
//! force; what they are called and where they listen is the replicated member table
//! ([`kv::members`]). A member of the initial cluster that has not published yet is described
//! from `--initial-cluster`, which every member shares (it names the cluster): listed with its
//! name and peer URL and no client URLs, as etcd lists it.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::Api;
use crate::cluster::ClusterSpec;
use crate::pb::etcdserverpb as epb;

/// Pause between attempts to publish while the cluster has no leader or refuses.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// What the API knows of the members besides the replicated table.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// The initial cluster (`--initial-cluster`).
    pub initial: ClusterSpec,
    /// This member's description, as it publishes it.
    pub me: kv::members::Member,
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
        Ok(Response::new(epb::MemberListResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            members,
        }))
    }
}

impl Api {
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
