//! Errors: [`KvError`] for deterministic request failures (etcd's messages, replicated and stored
//! in sessions), [`Error`] for everything the caller may see, including storage faults.

/// A request failure with etcd's exact message. Deterministic: every replica applying the same
/// command reaches the same `KvError`, so it is a response, not a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Empty key (gRPC InvalidArgument).
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// Read or compaction at or below the compacted revision (gRPC OutOfRange).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// Read or compaction above the current revision (gRPC OutOfRange).
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// Unknown lease (gRPC NotFound).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// Lease id already granted (gRPC FailedPrecondition).
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// TTL above etcd's maximum of 9,000,000,000 seconds (gRPC OutOfRange).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// `ignore_value`/`ignore_lease` on a missing key (gRPC InvalidArgument).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A value together with `ignore_value` (gRPC InvalidArgument).
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A lease together with `ignore_lease` (gRPC InvalidArgument).
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Overlapping writes in one transaction (gRPC InvalidArgument).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// More than [`crate::TXN_OPS_MAX`] compares or ops in one branch, or nesting deeper than
    /// [`crate::TXN_DEPTH_MAX`] (gRPC InvalidArgument).
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A retry of a request older than the client's last applied one: its response is gone
    /// (Skiff-specific; gRPC FailedPrecondition).
    #[error("skiff: request sequence number is older than the client's last applied request")]
    StaleSequence,
    /// The client's session was evicted (or never existed) and `seq > 1`: the request may be a
    /// retry of one already applied, so it is refused rather than risk applying it twice
    /// (Skiff-specific; gRPC FailedPrecondition; the client must start a new client id).
    #[error("skiff: client session expired; retry with a new client id")]
    SessionExpired,
    /// A retry of a request that was applied, whose answer can no longer be rebuilt (what it
    /// read was compacted since). The request took effect (Skiff-specific; gRPC
    /// FailedPrecondition).
    #[error("skiff: the request was applied, but its answer was compacted away")]
    AnswerLost,
    /// A member description over the limits of [`crate::members`] (Skiff-specific; only
    /// members publish descriptions: a bug or a hostile peer).
    #[error("skiff: member description over the limits")]
    BadMember,
    /// A MemberUpdate to peer URLs another member has (etcd's check, repeated where the
    /// update is applied so that concurrent updates cannot both take one URL).
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// A put, transaction with puts or lease grant while a NOSPACE alarm is active (gRPC
    /// ResourceExhausted; see [`crate::alarms`]).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A write (or a read through the log) while a CORRUPT alarm is active (gRPC DataLoss).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// An alarm raised when the table holds [`crate::alarms::ALARMS_MAX`] (Skiff-specific;
    /// gRPC ResourceExhausted).
    #[error("skiff: too many alarms")]
    TooManyAlarms,
    /// The user may not do this (gRPC PermissionDenied).
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Auth is enabled and the request names no user, or a user name is empty (gRPC InvalidArgument).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// The auth state changed between the check of a request and its apply (gRPC InvalidArgument).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Authenticate while auth is disabled (gRPC FailedPrecondition).
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// Unknown user, wrong password or a user without password (gRPC InvalidArgument).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Auth enable without a user `root` (gRPC FailedPrecondition).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// Auth enable while user `root` lacks role `root` (gRPC FailedPrecondition).
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// (gRPC InvalidArgument).
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// (gRPC FailedPrecondition).
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Deleting user or role `root`, or revoking `root` from `root`, while enabled (gRPC InvalidArgument).
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A name longer than `auth::NAME_BYTES_MAX`, or more users, roles or permissions than `crate::auth` allows (Skiff-specific; gRPC ResourceExhausted).
    #[error("skiff: auth state over its limits")]
    AuthStateFull,
    /// A token this member does not know: garbled, expired, or from before a restart (gRPC
    /// Unauthenticated; never applied, only answered).
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
}

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request failed deterministically; reply with this to the client.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// `apply` was called with an index at or below the applied index; the entry must be skipped.
    #[error("raft entry {index} already applied (applied index {applied})")]
    AlreadyApplied {
        /// Index passed in.
        index: u64,
        /// Applied index in the store.
        applied: u64,
    },
    /// Bytes that are not a valid command, response or snapshot.
    #[error("decode: {0}")]
    Decode(String),
    /// Invalid [`crate::Options`]; says what is wrong.
    #[error("invalid options: {0}")]
    Config(String),
    /// The database holds something this code did not write.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Reading or writing a snapshot stream failed.
    #[error("snapshot io: {0}")]
    Io(std::io::Error),
    /// An earlier apply failed part-way (a storage fault, or corruption found) while applies
    /// shared an open transaction; the store refuses to apply, commit or snapshot any more,
    /// and must be opened again (which replays from what reached the disk).
    #[error("the state machine failed earlier and must be reopened")]
    Failed,
    /// A maintenance operation could not run now and changed nothing (the message says why);
    /// it may succeed if tried again.
    #[error("{0}")]
    Busy(String),
    /// redb failed (IO, full disk, ...). The caller should stop applying. Boxed to keep
    /// `Result<_, Error>` small.
    #[error("storage: {0}")]
    Storage(Box<redb::Error>),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl KvError {
    /// Stable one-byte code used by the codec; never reuse a retired code.
    pub(crate) fn code(self) -> u8 {
        match self {
            KvError::EmptyKey => 1,
            KvError::Compacted => 2,
            KvError::FutureRevision => 3,
            KvError::LeaseNotFound => 4,
            KvError::LeaseExists => 5,
            KvError::LeaseTtlTooLarge => 6,
            KvError::KeyNotFound => 7,
            KvError::ValueProvided => 8,
            KvError::LeaseProvided => 9,
            KvError::DuplicateKey => 10,
            KvError::TooManyOps => 11,
            KvError::StaleSequence => 12,
            KvError::SessionExpired => 13,
            KvError::AnswerLost => 14,
            KvError::BadMember => 15,
            KvError::PeerUrlExists => 16,
            KvError::NoSpace => 17,
            KvError::Corrupt => 18,
            KvError::TooManyAlarms => 19,
            KvError::PermissionDenied => 20,
            KvError::UserEmpty => 21,
            KvError::AuthOldRevision => 22,
            KvError::AuthNotEnabled => 23,
            KvError::AuthFailed => 24,
            KvError::RootUserNotExist => 25,
            KvError::RootRoleNotExist => 26,
            KvError::UserAlreadyExist => 27,
            KvError::UserNotFound => 28,
            KvError::RoleAlreadyExist => 29,
            KvError::RoleNotFound => 30,
            KvError::RoleEmpty => 31,
            KvError::RoleNotGranted => 32,
            KvError::PermissionNotGranted => 33,
            KvError::InvalidAuthMgmt => 34,
            KvError::AuthStateFull => 35,
            KvError::InvalidAuthToken => 36,
        }
    }

    /// Inverse of [`KvError::code`].
    pub(crate) fn from_code(code: u8) -> Option<KvError> {
        const ALL: [KvError; 36] = [
            KvError::EmptyKey,
            KvError::Compacted,
            KvError::FutureRevision,
            KvError::LeaseNotFound,
            KvError::LeaseExists,
            KvError::LeaseTtlTooLarge,
            KvError::KeyNotFound,
            KvError::ValueProvided,
            KvError::LeaseProvided,
            KvError::DuplicateKey,
            KvError::TooManyOps,
            KvError::StaleSequence,
            KvError::SessionExpired,
            KvError::AnswerLost,
            KvError::BadMember,
            KvError::PeerUrlExists,
            KvError::NoSpace,
            KvError::Corrupt,
            KvError::TooManyAlarms,
            KvError::PermissionDenied,
            KvError::UserEmpty,
            KvError::AuthOldRevision,
            KvError::AuthNotEnabled,
            KvError::AuthFailed,
            KvError::RootUserNotExist,
            KvError::RootRoleNotExist,
            KvError::UserAlreadyExist,
            KvError::UserNotFound,
            KvError::RoleAlreadyExist,
            KvError::RoleNotFound,
            KvError::RoleEmpty,
            KvError::RoleNotGranted,
            KvError::PermissionNotGranted,
            KvError::InvalidAuthMgmt,
            KvError::AuthStateFull,
            KvError::InvalidAuthToken,
        ];
        ALL.into_iter().find(|e| e.code() == code)
    }
}
