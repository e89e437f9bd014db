//! # Skiff's deterministic cluster simulator
//!
//! Runs whole clusters of the real `raft` core, plus a replicated state machine (a small KV
//! store with client sessions, or your own), in one thread under virtual time, driven by one `u64` seed (TigerBeetle's VOPR
//! and openraft's fuzzer are the models). The seed picks every fault: message loss, delay,
//! reordering and duplication, partitions, crashes that lose unsynced writes, pauses.
//!
//! Checks: after every step of every node, the safety properties of the Raft paper (one module
//! each in [`invariants`]); after a run, linearizability of the clients' history
//! ([`linearizability`]). Every failure names the property that failed ([`property`]), the
//! seed and the command that replays it.
//!
//! Scenarios ([`scenarios`]) port the MIT 6.5840 Raft lab tests with their structure and
//! constants (1 tick = 10 ms of virtual time), add KV scenarios and a swarm scenario.
//!
//! For your own system, three ways in:
//!
//! - **Your own state machine**: implement [`StateMachine`] (apply a committed command and
//!   answer its client, answer a read, snapshot and restore, make random operations) and
//!   [`Operation`] (the sequential model the checker compares histories against), and run
//!   it with [`Cluster::with_machine`]: the simulator's clients, retries, ReadIndex reads,
//!   crashes, snapshots and invariants stay the same, and [`linearizability::check`] judges
//!   what your clients saw. See [`machine`] for the contract, and
//!   `crates/sim/tests/own_state_machine.rs` for a counter checked on many seeds, next to a
//!   driver that reads without ReadIndex and a state machine that reads a stale copy, both
//!   reported as not linearizable.
//! - **Your own scenario**: against [`Cluster`] (the core's settings in [`ClusterConfig`],
//!   faults through [`Cluster::crash`] and [`Cluster::net`], clients through
//!   [`Cluster::add_client`]).
//! - **Your own history**: record what your own system's clients saw in a
//!   [`history::History`] of your [`Operation`] type and check it with
//!   [`linearizability::check`].
//!
//! The `skiff-raft` crate guide ("Testing your driver in the simulator") has a compiled
//! example of each. The driver is the simulator's own ([`host`], [`cluster`]): it follows the
//! core's `Ready` contract step by step, and [`DriverBug`] plants the classic driver mistakes
//! in it to show that the checks catch them.

#![deny(missing_docs)]

pub mod client;
mod client_driver;
pub mod cluster;
pub mod history;
pub mod host;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod machine;
#[cfg(feature = "mutations")]
pub mod mutations;
pub mod net;
pub mod property;
pub mod rng;
pub mod runner;
pub mod scenarios;
pub mod trace;

pub use cluster::{
    set_driver_bug, Cluster, ClusterConfig, DiskConfig, DriverBug, SimFailure, TICK_MS,
};
pub use machine::{Applied, Operation, StateMachine};
pub use property::{set_guards_off, Guard, Property};
pub use runner::{run_seed, run_seed_classified, Failure, Outcome};

/// The mutation features this crate knows, and whether each is compiled in. Each re-introduces
/// a known bug in `crates/raft` (see `mutations`), which the simulator must catch.
pub const MUTATIONS: &[(&str, bool)] = &[
    ("mut-double-vote", cfg!(feature = "mut-double-vote")),
    (
        "mut-no-election-restriction",
        cfg!(feature = "mut-no-election-restriction"),
    ),
    ("mut-commit-old-term", cfg!(feature = "mut-commit-old-term")),
    (
        "mut-send-before-persist",
        cfg!(feature = "mut-send-before-persist"),
    ),
    ("mut-apply-twice", cfg!(feature = "mut-apply-twice")),
    (
        "mut-truncate-committed",
        cfg!(feature = "mut-truncate-committed"),
    ),
    (
        "mut-read-without-quorum",
        cfg!(feature = "mut-read-without-quorum"),
    ),
    ("mut-forget-vote", cfg!(feature = "mut-forget-vote")),
    (
        "mut-install-stale-snapshot",
        cfg!(feature = "mut-install-stale-snapshot"),
    ),
    (
        "mut-apply-partial-snapshot",
        cfg!(feature = "mut-apply-partial-snapshot"),
    ),
    ("mut-skip-joint", cfg!(feature = "mut-skip-joint")),
    (
        "mut-joint-one-majority",
        cfg!(feature = "mut-joint-one-majority"),
    ),
    (
        "mut-read-skip-round-removing",
        cfg!(feature = "mut-read-skip-round-removing"),
    ),
    (
        "mut-lease-during-transfer",
        cfg!(feature = "mut-lease-during-transfer"),
    ),
    (
        "mut-restart-forgets-lease",
        cfg!(feature = "mut-restart-forgets-lease"),
    ),
    ("mut-sync-only-log", cfg!(feature = "mut-sync-only-log")),
];
