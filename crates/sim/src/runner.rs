//! Running one seed of one scenario: catches the failure (a [`SimFailure`] or a panic inside
//! the core), runs the end-of-run checks, and reports the trace digest and virtual time.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::cluster::SimFailure;
use crate::property::Property;
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
    // Fixed: correlated election-jitter streams across nodes, Swarm seed 387;
    // install_snapshot over a conflicting durable suffix keeping persisted >= unstable_from,
    // MembershipChurn seed 1; a leader that removed itself and stepped down before C_new
    // reached the other voter blocked every election (MembershipShrink seed 11, fixed by
    // letting voters of the committed configuration campaign, Swarm seed 102983); a voter
    // left in an old configuration with a higher term dropped the leader's appends unanswered
    // (Swarm seed 5754, fixed by always answering stale appends, Swarm seed 221436).
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

/// A failed run: the property that failed, and the message (which starts with the property's
/// name, and names the seed and the command that replays it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What failed.
    pub property: Property,
    /// The message.
    pub message: String,
}

thread_local! {
    /// Where the last panic on this thread happened (`file:line`), to tell a core assertion
    /// from a panic in the simulator.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records the panic's location on its thread,
/// then runs the previous hook (except for a [`SimFailure`], which the runner reports).
fn record_panic_locations() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_AT.with(|p| *p.borrow_mut() = at);
            // A simulator failure is reported by whoever runs the seed; print other panics.
            if !info.payload().is::<SimFailure>() {
                previous(info);
            }
        }));
    });
}

/// Whether a panic at `file` is inside the core (`crates/raft`, or the `raft` crate as a
/// dependency).
fn in_core(file: &str) -> bool {
    file.contains("crates/raft/") || file.contains("raft/src/")
}

/// Runs `scenario` on `seed`. `Err` carries the failure message, which starts with the property
/// that failed and names the seed and the command that replays it.
pub fn run_seed(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    run_seed_classified(scenario, seed).map_err(|f| f.message)
}

/// [`run_seed`], with the failed property as data.
pub fn run_seed_classified(scenario: Scenario, seed: u64) -> Result<Outcome, Failure> {
    record_panic_locations();
    PANIC_AT.with(|p| *p.borrow_mut() = None);
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
            return Failure {
                property: f.property,
                message: f.message.clone(),
            };
        }
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        let at = PANIC_AT.with(|p| p.borrow_mut().take()).unwrap_or_default();
        let property = if in_core(&at) {
            Property::CoreAssertion
        } else {
            Property::SimulatorPanic
        };
        Failure {
            property,
            message: format!(
                "{property}: {what} (at {at})\n  scenario {} seed {seed}\n  \
                 replay: cargo run -p skiff-sim --release{} -- --scenario {} --seed {seed}",
                scenario.name,
                feature_flags(),
                scenario.name
            ),
        }
    })
}
