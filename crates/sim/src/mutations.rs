//! The mutation harness ("test the tester"): with a mutation compiled into `crates/raft`, hunt
//! seeds of the scenarios most likely to expose it until a run fails on a property the
//! mutation breaks, and require that to happen within a bound.
//!
//! Enable with a sim feature, e.g. `cargo test -p skiff-sim --release --features mut-double-vote
//! --test mutations`. Each `mut-*` feature of this crate forwards to the same feature of `raft`
//! (see this crate's Cargo.toml). Enable one at a time: with several, any of them may be the
//! one caught. `crates/sim/mutations.sh` runs them all and prints a table.
//!
//! A failure counts as a catch only if its property is in the hunt's `caught_by`: the safety
//! properties the bug breaks. Anything else (a core assertion, a guard, a scenario expectation,
//! one of [`crate::runner::KNOWN_CORE_BUGS`], a linearizability search that gave up) is
//! reported as not counted and the hunt goes on. Where a guard would fire before the damage is
//! visible (the disk's refusal of a partial snapshot, the quorum module's checks, the core's
//! invariant checks), the hunt turns that guard off (`guards_off`) so the run goes on to the
//! consequence; the catching seed is then replayed with every guard on, to show what fires
//! first when they are.

use std::time::{Duration, Instant};

use crate::property::{set_guards_off, Guard, Property};
use crate::runner::{is_known_core_bug, run_seed_classified};
use crate::scenarios::find;

use Property::{
    AckedEntries, ElectionSafety, LeaderCompleteness, Linearizability, LogMatching,
    StateMachineSafety,
};

/// Where to look for one mutation, how long, and what counts as catching it.
#[derive(Clone, Copy, Debug)]
pub struct Hunt {
    /// The cargo feature.
    pub mutation: &'static str,
    /// Scenarios to run, round robin.
    pub scenarios: &'static [&'static str],
    /// Seeds per scenario before the hunt counts as failed.
    pub seeds_max: u64,
    /// The safety properties the mutation breaks: only a failure of one of these is a catch.
    pub caught_by: &'static [Property],
    /// Guards turned off for the hunt, because they would stop the run before the damage
    /// reaches a property in `caught_by`.
    pub guards_off: &'static [Guard],
}

/// Consequences of two leaders in one term or of an entry committed without a real quorum:
/// the committed log diverges (State Machine Safety), a leader lacks a committed entry (Leader
/// Completeness), clients see it (linearizability).
const DIVERGED: &[Property] = &[
    ElectionSafety,
    LeaderCompleteness,
    StateMachineSafety,
    Linearizability,
];

/// The hunts, one per mutation feature.
pub const HUNTS: &[Hunt] = &[
    // Two votes in one term: two leaders in one term.
    Hunt {
        mutation: "mut-double-vote",
        scenarios: &[
            "Swarm",
            "ManyElections",
            "UnreliableChurn",
            "Figure8Unreliable",
        ],
        seeds_max: 200,
        caught_by: &[ElectionSafety],
        guards_off: &[Guard::CoreInvariants, Guard::Monotonic],
    },
    // A leader without every committed entry overwrites them.
    Hunt {
        mutation: "mut-no-election-restriction",
        scenarios: &["Figure8", "Backup", "Swarm", "Figure8Unreliable"],
        seeds_max: 200,
        caught_by: &[LeaderCompleteness, StateMachineSafety, Linearizability],
        guards_off: &[],
    },
    // Figure 8: an old-term entry committed by counting replicas is overwritten.
    Hunt {
        mutation: "mut-commit-old-term",
        scenarios: &["Figure8Split", "Figure8", "Figure8Unreliable", "Swarm"],
        seeds_max: 200,
        caught_by: &[LeaderCompleteness, StateMachineSafety, Linearizability],
        guards_off: &[],
    },
    // A vote or an acknowledgement sent before it is durable is forgotten by a crash.
    Hunt {
        mutation: "mut-send-before-persist",
        scenarios: &["Swarm"],
        seeds_max: 400,
        caught_by: &[
            ElectionSafety,
            AckedEntries,
            LeaderCompleteness,
            StateMachineSafety,
            Linearizability,
        ],
        guards_off: &[Guard::QuorumCount],
    },
    Hunt {
        mutation: "mut-apply-twice",
        scenarios: &["BasicAgree", "Swarm"],
        seeds_max: 50,
        caught_by: &[StateMachineSafety],
        guards_off: &[],
    },
    // A stale append truncates entries the follower acknowledged (and committed ones, which
    // may then be replaced).
    Hunt {
        mutation: "mut-truncate-committed",
        scenarios: &["Figure8Unreliable", "Swarm", "Backup"],
        seeds_max: 200,
        caught_by: &[
            AckedEntries,
            LogMatching,
            LeaderCompleteness,
            StateMachineSafety,
            Linearizability,
        ],
        guards_off: &[],
    },
    Hunt {
        mutation: "mut-read-without-quorum",
        scenarios: &["KvStaleLeader", "KvConcurrentPartitions", "Swarm"],
        seeds_max: 200,
        caught_by: &[Linearizability],
        guards_off: &[],
    },
    // A restarted node votes again in the term it voted in.
    Hunt {
        mutation: "mut-forget-vote",
        scenarios: &["Swarm", "Persist2", "Figure8", "ReliableChurn"],
        seeds_max: 2000,
        caught_by: &[ElectionSafety],
        guards_off: &[Guard::Monotonic],
    },
    // A snapshot at or below commit rolls the state machine back.
    Hunt {
        mutation: "mut-install-stale-snapshot",
        scenarios: &[
            "SnapshotInstallUnreliable",
            "KvSnapshotCrashAll",
            "SnapshotInstallUnCrash",
        ],
        seeds_max: 100,
        caught_by: &[StateMachineSafety, Linearizability],
        guards_off: &[Guard::Monotonic],
    },
    // The state machine is restored from the first chunk of a snapshot.
    Hunt {
        mutation: "mut-apply-partial-snapshot",
        scenarios: &["SnapshotInstall", "KvSnapshotCrashAll"],
        seeds_max: 50,
        caught_by: &[StateMachineSafety, Linearizability],
        guards_off: &[Guard::DiskSnapshot],
    },
    // Two voters replaced at once: C_old and C_new majorities may be disjoint.
    Hunt {
        mutation: "mut-skip-joint",
        scenarios: &["JointPartition", "MembershipChurn"],
        seeds_max: 20,
        caught_by: DIVERGED,
        guards_off: &[Guard::QuorumShape],
    },
    // A joint configuration decided by C_new alone.
    Hunt {
        mutation: "mut-joint-one-majority",
        scenarios: &["JointPartition", "MembershipChurn"],
        seeds_max: 50,
        caught_by: DIVERGED,
        guards_off: &[Guard::QuorumCount],
    },
    // A leader removing itself serves reads as if it were the sole voter.
    Hunt {
        mutation: "mut-read-skip-round-removing",
        scenarios: &["MembershipShrink", "Swarm"],
        seeds_max: 50,
        caught_by: &[Linearizability],
        guards_off: &[],
    },
    // Lease reads after TimeoutNow: the target is elected inside the lease.
    Hunt {
        mutation: "mut-lease-during-transfer",
        scenarios: &["KvLeaseTransfers", "Swarm"],
        seeds_max: 20,
        caught_by: &[Linearizability],
        guards_off: &[],
    },
    // A restarted node votes inside a lease it acknowledged before the crash.
    Hunt {
        mutation: "mut-restart-forgets-lease",
        scenarios: &["KvLeaseTransfers", "Swarm"],
        seeds_max: 20,
        caught_by: &[Linearizability],
        guards_off: &[],
    },
    // A new term or vote written without a sync is lost by a crash: the node votes twice in
    // one term. The disk refuses an unsynced batch that changes more than the commit index;
    // off, it keeps such a batch in the page cache, where a crash loses it.
    Hunt {
        mutation: "mut-sync-only-log",
        scenarios: &["Swarm"],
        seeds_max: 2000,
        caught_by: DIVERGED,
        guards_off: &[Guard::DiskSnapshot, Guard::QuorumCount],
    },
];

/// A failure the hunt did not count.
#[derive(Clone, Debug)]
pub struct NotCounted {
    /// Scenario.
    pub scenario: &'static str,
    /// Seed.
    pub seed: u64,
    /// What failed.
    pub property: Property,
    /// Whether it is one of the known core bugs.
    pub known_core_bug: bool,
    /// The message's first line.
    pub first_line: String,
}

/// The run that caught the mutation.
#[derive(Clone, Debug)]
pub struct Caught {
    /// Scenario.
    pub scenario: &'static str,
    /// Seed.
    pub seed: u64,
    /// The property that failed (one of the hunt's `caught_by`).
    pub property: Property,
    /// The failure message.
    pub message: String,
    /// What the same seed fails on with every guard on (`None`: it passes), when the hunt
    /// turned guards off.
    pub with_guards_on: Option<Option<Property>>,
}

/// What a hunt found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The catch, if any.
    pub caught: Option<Caught>,
    /// Runs made (the catching one included).
    pub runs: u64,
    /// Failures not counted, in order.
    pub not_counted: Vec<NotCounted>,
    /// Wall time of the hunt.
    pub elapsed: Duration,
}

/// Runs the hunt with its guards off (and restores them on after).
pub fn hunt(h: &Hunt) -> Report {
    let started = Instant::now();
    let mut runs = 0;
    let mut not_counted = Vec::new();
    set_guards_off(h.guards_off);
    let mut caught = None;
    'seeds: for seed in 0..h.seeds_max {
        for name in h.scenarios {
            let s = find(name).expect("hunt names a known scenario");
            runs += 1;
            let Err(f) = run_seed_classified(s, seed) else {
                continue;
            };
            let known_core_bug = is_known_core_bug(&f.message);
            if known_core_bug || !h.caught_by.contains(&f.property) {
                not_counted.push(NotCounted {
                    scenario: s.name,
                    seed,
                    property: f.property,
                    known_core_bug,
                    first_line: f.message.lines().next().unwrap_or("").to_string(),
                });
                continue;
            }
            caught = Some(Caught {
                scenario: s.name,
                seed,
                property: f.property,
                message: f.message,
                with_guards_on: None,
            });
            break 'seeds;
        }
    }
    set_guards_off(&[]);
    if let (Some(c), false) = (caught.as_mut(), h.guards_off.is_empty()) {
        let s = find(c.scenario).expect("known scenario");
        c.with_guards_on = Some(run_seed_classified(s, c.seed).err().map(|f| f.property));
    }
    Report {
        caught,
        runs,
        not_counted,
        elapsed: started.elapsed(),
    }
}
