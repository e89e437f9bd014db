//! What the Raft log carries ([`Command`]) and what applying it yields ([`Response`]).

use crate::types::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};

/// Identifies one client request for exactly-once application.
///
/// A client uses a unique `client_id` and numbers its requests `seq = 1, 2, ...`, with at most
/// one request outstanding; a retry reuses the same pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Unique id of the client (for example chosen at random by the proposing server).
    pub client_id: u64,
    /// Sequence number of the request within the client; starts at 1.
    pub seq: u64,
    /// The proposing server's applied index when it opened the session: every entry of the
    /// session comes after it. It lets the store tell a new session from one it may have
    /// evicted (see `session`); `None` (older proposers) opens any unknown session at seq 1.
    pub opened_after: Option<u64>,
}

impl Session {
    /// Request `seq` of client `client_id`, opened by a server that had applied the log
    /// through `applied`.
    pub fn opened(client_id: u64, seq: u64, applied: u64) -> Self {
        Session {
            client_id,
            seq,
            opened_after: Some(applied),
        }
    }
}

/// One entry of the replicated log: a request, optionally deduplicated by a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Set for client writes that must apply exactly once; `None` for requests that are
    /// idempotent or issued by the leader itself (lease expiry, compaction).
    pub session: Option<Session>,
    /// What to do.
    pub request: Request,
    /// Who sent it, for a client's request (see [`crate::auth`]): the applying member
    /// checks its permission against the auth state it applies at. `None` for requests the
    /// servers make themselves (lease expiry, auto-compaction, a member's publish, an alarm
    /// raised by a member), which are not checked; the API layer stamps every client request
    /// it proposes, and a request only clients send ([`Request::only_clients_send`]) without
    /// a stamp is refused while auth is enabled.
    pub auth: Option<crate::auth::AuthStamp>,
}

impl Command {
    /// A command without session.
    pub fn new(request: Request) -> Self {
        Command {
            session: None,
            request,
            auth: None,
        }
    }

    /// A command deduplicated by `(client_id, seq)`.
    pub fn with_session(client_id: u64, seq: u64, request: Request) -> Self {
        Command {
            session: Some(Session {
                client_id,
                seq,
                opened_after: None,
            }),
            request,
            auth: None,
        }
    }
}

/// A state machine request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A read through the log (etcd's pre-ReadIndex linearizable read).
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact history below `revision`.
    Compact {
        /// Revision to compact at.
        revision: i64,
    },
    /// Grant a lease with a leader-chosen id.
    LeaseGrant {
        /// Lease id, non-zero.
        id: i64,
        /// Time to live, seconds.
        ttl: i64,
    },
    /// Revoke a lease, deleting its keys in one revision.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// A member's own name and client URLs, published when it starts (see
    /// [`crate::members`]); changes no key and no revision.
    MemberPublish(crate::members::Member),
    /// The members a configuration entry left out, once it committed (derived by the server
    /// from the entry and the configuration before it, never proposed): removed for good (see
    /// [`crate::members`]).
    MembersRemoved(Vec<u64>),
    /// A member added to the configuration (etcd's MemberAdd): its id and peer URLs, recorded
    /// whole, with no name or client URLs until it starts and publishes them. Carried in the
    /// configuration entry that adds it, so the two are one (never proposed on its own).
    MemberAdd(crate::members::Member),
    /// A member's new peer URLs (etcd's MemberUpdate); its name and client URLs are kept.
    MemberUpdate {
        /// The member.
        id: u64,
        /// Where its peers reach it from now on.
        peer_urls: Vec<String>,
    },
    /// Raise or clear an alarm (etcd's Alarm ACTIVATE/DEACTIVATE; see [`crate::alarms`]);
    /// changes no key and no revision, and is never refused by an alarm.
    Alarm {
        /// Raise or clear.
        action: crate::alarms::AlarmAction,
        /// Which alarm.
        alarm: crate::alarms::AlarmMember,
    },
    /// An auth management request or an Authenticate (see [`crate::auth`]); changes no key
    /// and no revision.
    Auth(crate::auth::AuthRequest),
}

impl Request {
    /// Whether only a client sends this request, never a server on its own: while auth is
    /// enabled, such a request must carry the stamp of its sender ([`Command::auth`]): the
    /// leader refuses one forwarded without ("permission denied"), and the applying member
    /// refuses those of [`Request::stamped_by_every_version`], so that a request reaching the
    /// peer port unstamped cannot skip the permission check. The servers' own requests (a
    /// lease's expiry, the leader's auto-compaction, a member publishing itself, an alarm a
    /// member raises) are not of this kind; a client's compaction, lease revoke or alarm
    /// raise is stamped all the same, and checked at apply.
    pub fn only_clients_send(&self) -> bool {
        match self {
            Request::Range(_)
            | Request::Put(_)
            | Request::DeleteRange(_)
            | Request::Txn(_)
            | Request::Auth(_)
            | Request::MemberUpdate { .. } => true,
            Request::Alarm { action, .. } => *action == crate::alarms::AlarmAction::Deactivate,
            Request::Compact { .. }
            | Request::LeaseGrant { .. }
            | Request::LeaseRevoke { .. }
            | Request::MemberPublish(_)
            | Request::MembersRemoved(_)
            | Request::MemberAdd(_) => false,
        }
    }

    /// Whether every version that writes auth stamps stamped this request: key-value
    /// requests and auth requests other than Authenticate. The apply-time refusal of an
    /// unstamped client request covers these only: the first version with auth wrote
    /// Authenticate, MemberUpdate and alarm disarms without a stamp, and its entries must
    /// apply alike on every member whichever version replays them (a member restarted on a
    /// newer binary re-applies its log past its last durable apply). The leader still refuses
    /// all of [`Request::only_clients_send`] forwarded without a stamp, before proposing.
    pub fn stamped_by_every_version(&self) -> bool {
        match self {
            Request::Auth(a) => !matches!(a, crate::auth::AuthRequest::Authenticate { .. }),
            Request::Range(_) | Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) => true,
            _ => false,
        }
    }

    /// Whether this changes the member table (not the key space).
    pub fn is_member_change(&self) -> bool {
        matches!(
            self,
            Request::MemberPublish(_)
                | Request::MembersRemoved(_)
                | Request::MemberAdd(_)
                | Request::MemberUpdate { .. }
        )
    }
}

/// The result of applying a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Result of [`Request::Range`].
    Range(RangeResponse),
    /// Result of [`Request::Put`].
    Put(PutResponse),
    /// Result of [`Request::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Result of [`Request::Txn`].
    Txn(TxnResponse),
    /// Result of [`Request::Compact`].
    Compact {
        /// Store revision.
        revision: i64,
    },
    /// Result of [`Request::LeaseGrant`].
    LeaseGrant {
        /// Store revision.
        revision: i64,
        /// Lease id granted.
        id: i64,
        /// TTL granted, seconds.
        ttl: i64,
    },
    /// Result of [`Request::LeaseRevoke`].
    LeaseRevoke {
        /// Store revision after deleting the lease's keys.
        revision: i64,
    },
    /// Result of [`Request::MemberPublish`], [`Request::MembersRemoved`],
    /// [`Request::MemberAdd`] and [`Request::MemberUpdate`].
    Members {
        /// Store revision (unchanged by member changes).
        revision: i64,
    },
    /// Result of [`Request::Alarm`].
    Alarm {
        /// Store revision (unchanged by alarms).
        revision: i64,
        /// The alarm raised (or already raised) or cleared; `None` if clearing one that was not
        /// raised (etcd answers with no alarm then).
        changed: Option<crate::alarms::AlarmMember>,
    },
    /// Result of [`Request::Auth`].
    Auth {
        /// Store revision (unchanged by auth requests).
        revision: i64,
        /// The key of the token an Authenticate assigned (`<SHA-256 of its random part, in
        /// hex>.<index>`; see [`crate::auth::tokens::key_of`]): never the token itself, which
        /// only the member that chose the random part can make of it.
        token: Option<String>,
    },
}

impl Response {
    /// The store revision the response carries in its header.
    pub fn revision(&self) -> i64 {
        match self {
            Response::Range(r) => r.revision,
            Response::Put(r) => r.revision,
            Response::DeleteRange(r) => r.revision,
            Response::Txn(r) => r.revision,
            Response::Compact { revision }
            | Response::LeaseGrant { revision, .. }
            | Response::LeaseRevoke { revision }
            | Response::Members { revision }
            | Response::Alarm { revision, .. }
            | Response::Auth { revision, .. } => *revision,
        }
    }
}
