//! The crate's error type for starting and running a server.

/// Why a server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration or cluster definition is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The durable Raft log failed.
    #[error("raft storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// The key-value state machine failed.
    #[error("state machine: {0}")]
    Kv(#[from] kv::Error),
    /// The Raft core refused to start.
    #[error("raft: {0}")]
    Raft(#[from] raft::StartError),
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Something the server does not support yet was required.
    #[error("unsupported: {0}")]
    Unsupported(String),
}
