//! The peer layer: everything that crosses the peer port. The wire codec for Raft messages,
//! the outbound streams (the replica's [`crate::replica::Outbox`]), the peer gRPC service,
//! forwarding to the leader with the one retry policy (key-value writes in batches on one
//! stream, [`pipe`]), and the test fault hook.
//!
//! Depends on the replica (its handle and status, to know who leads); the API depends on it
//! and implements [`LeaderApi`] for the requests followers forward.

pub mod codec;
pub mod faults;
pub mod forward;
pub mod join;
pub mod outbound;
pub mod pipe;
pub mod probe;
pub mod service;

pub use faults::Faults;
pub use forward::{
    forwarded, session_of, set_stamp, stamp_of, with_session, Forwarder, Origin, Reached,
    RetryPolicy, AUTH_STAMP_HEADER, REQUEST_TIMEOUT, RETRY_PAUSE, SESSION_HEADER,
};
pub use outbound::{PeerTimeouts, Peers, PEER_MSG_BYTES_MAX};
pub use service::{LeaderApi, RaftService};
