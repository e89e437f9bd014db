//! etcd's gRPC errors (etcd's `etcdserver/api/v3rpc/rpctypes`): the codes and messages etcd
//! clients match on, and how the state machine's errors map to them. Shared by the peer layer
//! (whose retry policy reads them off forwarded answers) and the API.

use tonic::{Code, Status};

/// No leader is known, or it cannot be reached.
pub const ERR_NO_LEADER: &str = "etcdserver: no leader";
/// A request that needs the leader reached a member that does not lead.
pub const ERR_NOT_LEADER: &str = "etcdserver: not leader";
/// A range, put or delete without a key.
pub const ERR_KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
/// The request exceeds `--max-request-bytes`.
pub const ERR_TOO_LARGE: &str = "etcdserver: request is too large";
/// The deadline passed; the write may still be applied.
pub const ERR_TIMEOUT: &str = "etcdserver: request timed out";
/// The leader changed before the request committed.
pub const ERR_LEADER_CHANGED: &str = "etcdserver: leader changed";
/// A queue is full: nothing was done.
pub const ERR_TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
/// The member is stopping.
pub const ERR_STOPPED: &str = "etcdserver: server stopped";
/// A message from a member that was removed from the cluster (etcd's rafthttp answer to
/// one); the member stops when it gets it.
pub const ERR_MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";
/// A member id that is not in the cluster (or was removed from it).
pub const ERR_MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
/// A configuration change that would leave too few connected voters (etcd's strict
/// reconfiguration check).
pub const ERR_UNHEALTHY: &str = "etcdserver: unhealthy cluster";
/// MoveLeader's target is not a voting member (or is unknown).
pub const ERR_BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
/// MoveLeader's target did not take over before the deadline (etcd sends it as `Unknown`: it
/// is missing from etcd's map of gRPC errors, and clients match on the message).
pub const ERR_TIMEOUT_LEADER_TRANSFER: &str =
    "etcdserver: request timed out, leader transfer took too long";
/// MemberAdd's peer URLs do not parse.
pub const ERR_MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
/// MemberAdd of an id the cluster has (or had).
pub const ERR_MEMBER_EXIST: &str = "etcdserver: member ID already exist";
/// MemberAdd or MemberUpdate with a peer URL another member has.
pub const ERR_PEER_URL_EXIST: &str = "etcdserver: Peer URLs already exists";
/// Adding or promoting a voter while too few voters have started (published) for a quorum
/// of the configuration it would make (etcd's strict reconfiguration check).
pub const ERR_MEMBER_NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
/// MemberPromote of a voter.
pub const ERR_MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
/// MemberPromote of a learner whose log is not within 10% of the leader's.
pub const ERR_LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
/// MemberAdd of a learner when the cluster has as many as it may.
pub const ERR_TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";
/// A put, transaction with puts or lease grant over the space quota, or while a NOSPACE
/// alarm is active (etcd's ErrGRPCNoSpace, gRPC ResourceExhausted).
pub const ERR_NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// A lease TTL over the maximum.
pub const ERR_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

/// A state machine refusal with etcd's code (its message is already etcd's).
pub fn kv_error_status(e: kv::KvError) -> Status {
    use kv::KvError as K;
    let code = match e {
        K::EmptyKey
        | K::ValueProvided
        | K::LeaseProvided
        | K::DuplicateKey
        | K::TooManyOps
        | K::BadMember => Code::InvalidArgument,
        K::Compacted | K::FutureRevision | K::LeaseTtlTooLarge => Code::OutOfRange,
        K::LeaseNotFound | K::KeyNotFound => Code::NotFound,
        K::LeaseExists | K::AnswerLost | K::PeerUrlExists => Code::FailedPrecondition,
        // etcd's ErrGRPCNoSpace and ErrGRPCCorrupt.
        K::NoSpace | K::TooManyAlarms => Code::ResourceExhausted,
        K::Corrupt => Code::DataLoss,
        // etcd's auth errors (`rpctypes/error.go`).
        K::PermissionDenied => Code::PermissionDenied,
        K::InvalidAuthToken => Code::Unauthenticated,
        K::UserEmpty | K::AuthOldRevision | K::AuthFailed | K::RoleEmpty | K::InvalidAuthMgmt => {
            Code::InvalidArgument
        }
        K::AuthNotEnabled
        | K::RootUserNotExist
        | K::RootRoleNotExist
        | K::UserAlreadyExist
        | K::UserNotFound
        | K::RoleAlreadyExist
        | K::RoleNotFound
        | K::RoleNotGranted
        | K::PermissionNotGranted => Code::FailedPrecondition,
        K::AuthStateFull => Code::ResourceExhausted,
        // A retry the state machine could not match to its first attempt (the session was
        // evicted): whether the write happened is unknown, which etcd reports as a timeout.
        K::SessionExpired | K::StaleSequence => return Status::unavailable(ERR_TIMEOUT),
    };
    Status::new(code, e.to_string())
}

/// A state machine failure: a refusal as etcd's, anything else internal.
pub fn kv_status(e: kv::Error) -> Status {
    match e {
        kv::Error::Kv(e) => kv_error_status(e),
        kv::Error::Busy(why) => Status::unavailable(why),
        other => Status::internal(other.to_string()),
    }
}

/// Whether `s` carries the state machine's error `e`.
pub fn is_kv_error(s: &Status, e: kv::KvError) -> bool {
    s.message() == e.to_string()
}
