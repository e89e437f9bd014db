//! # Skiff server
//!
//! The service edge around the Raft core: it moves bytes between [`raft::RawNode`], the durable
//! log ([`storage::Store`]), the key-value state machine ([`kv::Store`]) and the network. It owns
//! nothing of the protocol.
//!
//! ```text
//!   etcd clients --gRPC--> api (KV, Maintenance) --bounded channels--> node task --> RawNode
//!                                   ^                                    |  Ready
//!   peers ------gRPC--> transport --+-- inbound messages ---------------+  |
//!                          ^                                               v
//!                          +---- per-peer bounded send queues <-- messages; persist (storage);
//!                                                                 apply (kv); answer waiters
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod apply;
pub mod cluster;
pub mod codec;
pub mod convert;
mod error;
pub mod lessor;
pub mod node;
pub mod pb;
pub mod server;
pub mod transport;

pub use cluster::{ClusterSpec, Member};
pub use error::ServerError;
pub use server::{run, ServerConfig};
