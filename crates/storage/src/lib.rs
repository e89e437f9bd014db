//! # Skiff storage
//!
//! Durable storage for one Raft node: the log, the hard state (term, vote, commit), the
//! membership, an identity record (cluster id and node id), and snapshot files. It implements
//! the persistence half of the core's output batch (`raft::Ready`): [`Store::write`] makes a
//! batch's hard state and entries durable with one sync before it returns, so the server may
//! then send `persisted_messages` and call `advance`.
//!
//! The log lives in our own segmented write-ahead log ([`wal`]): checksummed records in
//! zero-filled segment files, one synced record per write. Snapshots are plain files written
//! atomically. See [`store`] for the layout and invariants.
//!
//! ```no_run
//! # use skiff_storage::{Identity, Options, Store};
//! # fn main() -> Result<(), skiff_storage::StorageError> {
//! let id = Identity { cluster_id: 1, node_id: raft::NodeId::new(1).unwrap() };
//! let (mut store, recovered) = Store::open("/var/lib/skiff".as_ref(), Options::new(id))?;
//! let state = skiff_storage::initial_state(&store, recovered.log_start.index)?;
//! // ... RawNode::new(config, state); for each Ready:
//! // store.write(rd.hard_state.as_ref(), &rd.entries)?; then send rd.persisted_messages.
//! # let _ = state; Ok(()) }
//! ```
#![deny(missing_docs)]

mod cache;
mod codec;
mod error;
mod identity;
mod options;
mod snapshot;
mod staging;
pub mod store;
pub mod wal;

pub use error::StorageError;
pub use identity::Identity;
pub use options::{Options, SEGMENT_BYTES_MIN};
pub use snapshot::{
    write_durable as write_snapshot_file, SnapshotMeta, SnapshotReader, SnapshotWriter,
};
pub use staging::{StagedProgress, StagedReader, CHUNK_BYTES_MAX};
pub use store::{initial_state, Recovered, Store};
