//! The crate's error type for starting and running a server. Wrapped errors are displayed
//! inline and not exposed as `source()`, so that `{:#}` chains do not print them twice.

/// Why a server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration or cluster definition is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The durable Raft log failed.
    #[error("raft storage: {0}")]
    Storage(storage::StorageError),
    /// The key-value state machine failed.
    #[error("state machine (kv.redb in the data dir): {0}")]
    Kv(kv::Error),
    /// The Raft core refused to start.
    #[error("raft: {0}")]
    Raft(raft::StartError),
    /// A listener could not be bound or served.
    #[error("{what}: {error}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error (shown inline).
        error: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(tonic::transport::Error),
    /// The core, the log and the state machine disagree: a bug, reported instead of
    /// carrying on with state that may be wrong.
    #[error("internal invariant broken: {0}")]
    Invariant(String),
    /// This member was removed from the cluster (etcd: "the member has been permanently
    /// removed from the cluster"); its data dir can never rejoin.
    #[error("this member was removed from the cluster; its data dir cannot rejoin it")]
    Removed,
    /// The initial corruption check found this member's state machine differs from its
    /// peers' (`--experimental-initial-corrupt-check`).
    #[error("{0}")]
    Corrupt(String),
    /// Something the server does not support yet was required.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

macro_rules! from_inline {
    ($($variant:ident($t:ty)),*) => {$(
        impl From<$t> for ServerError {
            fn from(e: $t) -> Self {
                ServerError::$variant(e)
            }
        }
    )*};
}

from_inline!(
    Storage(storage::StorageError),
    Kv(kv::Error),
    Raft(raft::StartError),
    Transport(tonic::transport::Error)
);
