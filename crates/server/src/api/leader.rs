//! The answers to requests followers forward to this member as leader
//! ([`crate::peer::LeaderApi`]): each runs here once, under the session the follower chose (a
//! fresh one if it sent none; a key-value write arrives encoded with its session), and is never
//! forwarded again.

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::pb::skiff::raft::v1 as pb;
use crate::peer::REQUEST_TIMEOUT;
use crate::peer::{LeaderApi, Origin};
use crate::replica::WriteError;
use crate::rpctypes::ERR_TOO_LARGE;

#[tonic::async_trait]
impl LeaderApi for Api {
    async fn forwarded_command(
        &self,
        command: Vec<u8>,
    ) -> Result<Result<kv::Response, kv::KvError>, Status> {
        if command.len() > super::REQUEST_BYTES_MAX {
            return Err(Status::invalid_argument(ERR_TOO_LARGE));
        }
        let cmd = kv::codec::decode_command(&command)
            .map_err(|e| Status::invalid_argument(format!("a forwarded write: {e}")))?;
        let kv_write = matches!(
            cmd.request,
            kv::Request::Put(_)
                | kv::Request::DeleteRange(_)
                | kv::Request::Txn(_)
                | kv::Request::MemberPublish(_)
                | kv::Request::MemberUpdate { .. }
                | kv::Request::Alarm { .. }
                | kv::Request::Auth(_)
        );
        if cmd.session.is_none() || !kv_write {
            return Err(Status::invalid_argument(
                "a forwarded write must be a put, delete, txn, member change, alarm or auth request with a session",
            ));
        }
        // A client's request travels with its sender's stamp; one without would be refused
        // at apply anyway, but costs no entry this way.
        if cmd.auth.is_none() && cmd.request.only_clients_send() {
            self.forwarded_stamp(None)?;
        }
        // Only members are described: rows stay bounded by the configuration.
        let described = match &cmd.request {
            kv::Request::MemberPublish(m) => Some(m.id),
            kv::Request::MemberUpdate { id, .. } => Some(*id),
            // Alarms are raised for members (or 0, the cluster); cleared for anyone.
            kv::Request::Alarm {
                action: kv::AlarmAction::Activate,
                alarm,
            } if alarm.member_id != 0 => Some(alarm.member_id),
            _ => None,
        };
        if let Some(described) = described {
            let membership = self.inner.node.membership();
            if !membership.members().iter().any(|id| id.get() == described) {
                return Err(Status::failed_precondition(format!(
                    "member {described:x} is not in the configuration"
                )));
            }
        }
        // Bounded as the forwarding member bounds it: past its deadline nobody waits for the
        // answer (the entry may still commit; a retry under the same session is answered
        // once).
        let proposed = self.inner.node.propose_queued(command);
        match tokio::time::timeout(REQUEST_TIMEOUT, proposed).await {
            Ok(Ok(answer)) => Ok(Ok(answer)),
            Ok(Err(WriteError::Kv(e))) => Ok(Err(e)),
            Ok(Err(e)) => Err(super::write_status(e)),
            Err(_) => Err(super::write_status(WriteError::Timeout)),
        }
    }

    async fn forwarded_compact(
        &self,
        r: epb::CompactionRequest,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::CompactionResponse, Status> {
        let stamp = self.forwarded_stamp(stamp)?;
        self.compact_impl(r, Origin::Peer, session, stamp).await
    }

    async fn forwarded_lease_grant(
        &self,
        r: epb::LeaseGrantRequest,
        session: Option<kv::Session>,
    ) -> Result<epb::LeaseGrantResponse, Status> {
        self.lease_grant_impl(r, Origin::Peer, session).await
    }

    async fn forwarded_lease_revoke(
        &self,
        r: epb::LeaseRevokeRequest,
        session: Option<kv::Session>,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::LeaseRevokeResponse, Status> {
        let stamp = self.forwarded_stamp(stamp)?;
        self.lease_revoke_impl(r, Origin::Peer, session, stamp)
            .await
    }

    async fn forwarded_lease_keep_alive(
        &self,
        r: epb::LeaseKeepAliveRequest,
    ) -> Result<epb::LeaseKeepAliveResponse, Status> {
        self.keep_alive_one(r.id, Origin::Peer).await
    }

    async fn forwarded_lease_time_to_live(
        &self,
        r: epb::LeaseTimeToLiveRequest,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        self.time_to_live(r, Origin::Peer).await
    }

    async fn forwarded_member_add(
        &self,
        r: epb::MemberAddRequest,
        id: u64,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberAddResponse, Status> {
        self.check_forwarded_admin(stamp.as_ref()).await?;
        self.member_add_impl(r, Origin::Peer, Some(id), None).await
    }

    async fn forwarded_member_promote(
        &self,
        r: epb::MemberPromoteRequest,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberPromoteResponse, Status> {
        self.check_forwarded_admin(stamp.as_ref()).await?;
        self.member_promote_impl(r.id, Origin::Peer, None).await
    }

    async fn peer_hash_kv(&self, r: epb::HashKvRequest) -> Result<epb::HashKvResponse, Status> {
        self.hash_kv_impl(r).await
    }

    async fn member_state(&self, r: pb::MemberStateRequest) -> Result<pb::MemberState, Status> {
        self.peer_member_state(&r)
    }

    async fn join(&self, r: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        self.join_answer(&r.peer_url).await
    }

    async fn forwarded_member_remove(
        &self,
        r: epb::MemberRemoveRequest,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::MemberRemoveResponse, Status> {
        self.check_forwarded_admin(stamp.as_ref()).await?;
        self.member_remove_impl(r.id, Origin::Peer, None).await
    }
}
