//! Skiff's key-value state machine: an etcd-compatible MVCC store on redb.
//!
//! The server applies committed Raft entries with [`Store::apply`], which runs one
//! [`Command`] and records the Raft index in the same redb transaction, so after a crash
//! [`Store::applied_index`] says exactly where to resume. Reads that skip the log use
//! [`Store::range`]. With [`Options::commit_delay`] applies share one redb transaction,
//! committed about that often (etcd's backend batch interval); readers see its rows at once.
//!
//! Semantics follow etcd v3 (`etcdserver/apply.go`, `mvcc/`):
//!
//! - The store revision starts at 1 and increases by one per write transaction that changed
//!   at least one key (a put, a delete that deleted something, a transaction with such ops, a
//!   lease revoke that deleted keys). Reads, compares, no-op deletes, lease grants and
//!   compactions leave it alone.
//! - Each key has `create_revision`, `mod_revision` and `version`; a delete writes a tombstone
//!   and a later put starts a new generation (`version` 1, new `create_revision`).
//! - History stays readable at any revision `>= compact_revision()` until compacted.
//! - Request failures are [`KvError`] values carrying etcd's exact messages.
//!
//! ```
//! use skiff_kv::{Command, Options, PutRequest, RangeRequest, Request, Response, Store};
//!
//! let store = Store::in_memory(Options::default())?;
//! // Apply committed entries in log order; a client write carries (client id, seq).
//! let put = Command::with_session(7, 1, Request::Put(PutRequest::new("foo", "bar")));
//! let bytes = skiff_kv::codec::encode_command(&put); // what the Raft log stores
//! let resp = store.apply(1, &skiff_kv::codec::decode_command(&bytes)?)?;
//! assert!(matches!(resp, Response::Put(ref p) if p.revision == 2));
//! // A retry of the same (client, seq) at a later index returns the stored response.
//! assert_eq!(store.apply(2, &put)?, resp);
//! assert_eq!((store.revision()?, store.applied_index()?), (2, 2));
//! // Reads outside the log.
//! let got = store.range(&RangeRequest::prefix("f"))?;
//! assert_eq!(got.kvs[0].value, b"bar");
//! # Ok::<(), skiff_kv::Error>(())
//! ```
//!
//! Layout: every change of a key is one row of an append-only redb table keyed by revision
//! (`mvcc`); an in-memory key index (`index`, etcd's `treeIndex`) maps each key to the
//! revisions of its rows and is rebuilt from them when the store opens. Puts and deletes append;
//! reads walk the index and read only the rows whose values they return; watches read the
//! rows by revision.
//!
//! Modules: [`types`] (requests/responses), `command` (log entries), [`codec`] (their bytes),
//! `mvcc` (rows), `index` (key index and the overlay of a write transaction), `view` (what
//! reads need), `range`, `write` (puts/deletes at one revision), `txn` (validation, compares),
//! `apply` (batches, replays), `lease`, `session` (exactly-once), [`snapshot`], [`backup`]
//! (backup files: a snapshot in etcd's envelope), `open` (formats, index rebuild), `audit`
//! (hashes, invariants), [`alarms`] (what the applier refuses while an alarm is raised),
//! [`auth`] (users, roles, permission checks and tokens),
//! `defrag` (space), `store`.
#![deny(missing_docs)]

pub mod alarms;
mod apply;
mod audit;
pub mod auth;
pub mod backup;
pub mod codec;
mod command;
mod defrag;
mod error;
mod hash;
mod index;
mod lease;
pub mod members;
mod mvcc;
mod open;
mod pending;
mod range;
mod session;
pub mod snapshot;
mod store;
mod txn;
pub mod types;
mod view;
mod watch;
mod write;

pub use alarms::{AlarmAction, AlarmMember, AlarmType};
pub use audit::KvHash;
pub use auth::{AuthRequest, AuthStamp, AuthState, PasswordHash, PermType, Permission};
pub use command::{Command, Request, Response, Session};
pub use defrag::Defragmented;
pub use error::{Error, KvError};
pub use lease::LEASE_TTL_MAX;
pub use store::{CommitObserver, Durability, Options, SnapshotView, Store, TokenLookup};
pub use types::*;
pub use watch::{Changes, Event, EventKind};

/// A request whose execution takes longer than this is slow (etcd's `warnApplyDuration`,
/// counted in `etcd_server_slow_apply_total`); see [`Store::slow_applies`].
pub const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// Most compares, or ops in one branch, of a transaction: etcd's `--max-txn-ops` default.
/// A nested transaction gets the budget its parent leaves.
pub const TXN_OPS_MAX: usize = 128;

/// Deepest nesting of transactions the codec accepts (the ops budget already limits it to
/// [`TXN_OPS_MAX`]); bounds recursion on untrusted bytes.
pub const TXN_DEPTH_MAX: usize = TXN_OPS_MAX;

// The server shares one store between the apply loop and read handlers.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
};
