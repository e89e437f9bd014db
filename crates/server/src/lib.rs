//! # Skiff server
//!
//! The service edge around the Raft core: it moves bytes between [`raft::RawNode`], the durable
//! log ([`storage::Store`]), the key-value state machine ([`kv::Store`]) and the network. It owns
//! nothing of the protocol.
//!
//! ```text
//!   etcd clients --gRPC--> api (one file per etcd service) ----+
//!                            | writes, lease calls             | reads, proposals
//!                            v                                 v
//!   peers <--gRPC--> peer (codec, streams, forwarding) --> replica (node task, apply task,
//!                            ^  Outbox                           snapshots) --> storage, kv
//!                            +---------------------------------+
//! ```
//!
//! Rooms and the one-way rule: `api → peer → replica → {raft, storage, kv}`. [`replica`]
//! knows nothing of gRPC (its messages leave through the [`replica::Outbox`] trait the peer
//! layer implements); [`peer`] knows nothing of etcd's services (requests forwarded to the
//! leader reach the API through the [`peer::LeaderApi`] trait the API implements). Shared by
//! all: [`pb`] (generated types), [`rpctypes`] (etcd's errors), [`cluster`], [`ServerError`].
//! [`server`] and [`config`] wire them together ([`tls`]: the ports' TLS); [`restore`] makes a data dir from a backup.
#![deny(missing_docs)]

pub mod api;
mod budget;
pub mod cluster;
pub mod config;
mod error;
pub mod metrics;
pub mod pb;
pub mod peer;
pub mod replica;
pub mod restore;
pub mod rpctypes;
pub mod server;
pub mod tls;

pub use cluster::{ClusterSpec, Member};
pub use config::ServerConfig;
pub use error::ServerError;
pub use server::run;
