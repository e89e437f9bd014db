//! Generated protobuf types and gRPC services (see `build.rs`). Module nesting mirrors the proto
//! packages, which the generated code relies on for cross-package references.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's `mvccpb` package.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `authpb` package.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's `etcdserverpb` package (the subset Skiff serves).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Skiff's internal packages.
pub mod skiff {
    /// Peer protocol.
    pub mod raft {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("skiff.raft.v1");
        }
    }
}
