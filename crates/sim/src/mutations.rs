//! The mutation harness ("test the tester"): with a mutation compiled into `crates/raft`, hunt
//! seeds of the scenarios most likely to expose it until a run fails, and require that to
//! happen within a bound.
//!
//! Enable with a sim feature, e.g. `cargo test -p sim --release --features mut-double-vote
//! --test mutations`. Each `mut-*` feature of this crate forwards to the same feature of `raft`
//! (see this crate's Cargo.toml). Enable one at a time: with several, any of them may be the
//! one caught.
//!
//! A failure counts as a catch unless it is one of [`crate::runner::KNOWN_CORE_BUGS`], which fail without any
//! mutation and would otherwise make every hunt succeed trivially.

use crate::runner::{run_seed, KNOWN_CORE_BUGS};
use crate::scenarios::find;

/// Where to look for one mutation, and how long.
#[derive(Clone, Copy, Debug)]
pub struct Hunt {
    /// The cargo feature.
    pub mutation: &'static str,
    /// Scenarios to run, round robin.
    pub scenarios: &'static [&'static str],
    /// Seeds per scenario before the hunt counts as failed.
    pub seeds_max: u64,
}

/// The hunts, one per mutation feature.
pub const HUNTS: &[Hunt] = &[
    Hunt {
        mutation: "mut-double-vote",
        scenarios: &[
            "Swarm",
            "ManyElections",
            "UnreliableChurn",
            "Figure8Unreliable",
        ],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-no-election-restriction",
        scenarios: &["Figure8", "Backup", "Swarm", "Figure8Unreliable"],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-commit-old-term",
        scenarios: &["Figure8Split", "Figure8", "Figure8Unreliable", "Swarm"],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-send-before-persist",
        scenarios: &["Swarm"],
        seeds_max: 400,
    },
    Hunt {
        mutation: "mut-apply-twice",
        scenarios: &["BasicAgree", "Swarm"],
        seeds_max: 50,
    },
    Hunt {
        mutation: "mut-truncate-committed",
        scenarios: &["Figure8Unreliable", "Swarm", "Backup"],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-read-without-quorum",
        scenarios: &["KvStaleLeader", "KvConcurrentPartitions", "Swarm"],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-forget-vote",
        scenarios: &["Persist2", "Figure8", "Swarm", "ReliableChurn"],
        seeds_max: 200,
    },
    Hunt {
        mutation: "mut-install-stale-snapshot",
        scenarios: &[
            "SnapshotInstallUnreliable",
            "KvSnapshotCrashAll",
            "SnapshotInstallUnCrash",
        ],
        seeds_max: 100,
    },
    Hunt {
        mutation: "mut-apply-partial-snapshot",
        scenarios: &["SnapshotInstall", "KvSnapshotCrashAll"],
        seeds_max: 50,
    },
    Hunt {
        mutation: "mut-skip-joint",
        scenarios: &["JointPartition", "MembershipChurn"],
        seeds_max: 20,
    },
    Hunt {
        mutation: "mut-joint-one-majority",
        scenarios: &["JointPartition", "MembershipChurn"],
        seeds_max: 50,
    },
];

/// A run that caught the mutation.
#[derive(Clone, Debug)]
pub struct Caught {
    /// Scenario.
    pub scenario: &'static str,
    /// Seed.
    pub seed: u64,
    /// Runs it took.
    pub runs: u64,
    /// The failure message.
    pub message: String,
}

/// Runs the hunt; `None` if no seed within the bound failed.
pub fn hunt(h: &Hunt) -> Option<Caught> {
    let mut runs = 0;
    for seed in 0..h.seeds_max {
        for name in h.scenarios {
            let s = find(name).expect("hunt names a known scenario");
            runs += 1;
            if let Err(message) = run_seed(s, seed) {
                if KNOWN_CORE_BUGS.iter().any(|k| message.contains(k)) {
                    continue;
                }
                return Some(Caught {
                    scenario: s.name,
                    seed,
                    runs,
                    message,
                });
            }
        }
    }
    None
}
