//! Running one seed of one scenario: catches the failure (a [`SimFailure`] or a panic inside
//! the core), runs the end-of-run checks, and reports the trace digest and virtual time.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::cluster::SimFailure;
use crate::scenarios::Scenario;

/// What a passing run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Digest of every event processed.
    pub trace: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
    /// Log indexes known committed at the end.
    pub committed: usize,
    /// KV operations completed by clients.
    pub ops_completed: usize,
    /// What the scenario chose from the seed (e.g. the swarm parameters), if anything.
    pub context: String,
}

/// Substrings of failures that occur without any mutation: open bugs in `crates/raft` found by
/// this simulator (see the crate README). The mutation hunts skip them, and the
/// `*_beyond_known_core_bugs` tests fail on anything else. Remove an entry when its bug is
/// fixed. (Fixed so far: the stale probe rejection setting `next == matched` and the empty
/// append on every commit advance that broke 6.5840's Count bound, in 896ec6c; lease reads
/// served up to two election timeouts after the last quorum contact, KvLeasePartitions seed
/// 150, in 7a34ef1.)
pub const KNOWN_CORE_BUGS: &[&str] = &[
    // A leader that removed itself and stepped down before C_new reached the other voters
    // blocks every election (MembershipShrink seed 11).
    crate::scenarios::membership_shrink::REMOVED_LEADER_STUCK,
    // With PreVote and CheckQuorum off, a voter left in an old configuration (without the
    // leader) and a higher term drops the leader's appends unanswered (Swarm seed 5754).
    crate::scenarios::swarm::STALE_MEMBER_UNREACHED,
    // Fixed: correlated election-jitter streams across nodes, Swarm seed 387;
    // install_snapshot over a conflicting durable suffix keeping persisted >= unstable_from,
    // MembershipChurn seed 1.
];

/// Whether a failure message is one of [`KNOWN_CORE_BUGS`].
pub fn is_known_core_bug(message: &str) -> bool {
    KNOWN_CORE_BUGS.iter().any(|k| message.contains(k))
}

/// The cargo flags that select the mutation features compiled in, for replay commands.
pub fn feature_flags() -> String {
    let on: Vec<&str> = crate::MUTATIONS
        .iter()
        .filter(|(_, enabled)| *enabled)
        .map(|(name, _)| *name)
        .collect();
    if on.is_empty() {
        String::new()
    } else {
        format!(" --features {}", on.join(","))
    }
}

/// Runs `scenario` on `seed`. `Err` carries the failure message, which names the seed and the
/// command that replays it.
pub fn run_seed(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut c = (scenario.run)(seed);
        c.final_checks();
        Outcome {
            trace: c.trace_digest(),
            events: c.events(),
            virtual_ms: c.now_ms(),
            committed: c.committed_len(),
            ops_completed: c.history.completed(),
            context: c.context.clone(),
        }
    }));
    result.map_err(|payload| {
        if let Some(f) = payload.downcast_ref::<SimFailure>() {
            return f.message.clone();
        }
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        format!(
            "panic (inside the core or the simulator): {what}\n  scenario {} seed {seed}\n  \
             replay: cargo run -p sim --release{} -- --scenario {} --seed {seed}",
            scenario.name,
            feature_flags(),
            scenario.name
        )
    })
}
