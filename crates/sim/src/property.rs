//! What a failed run broke: every failure carries a [`Property`] as data, and its message starts
//! with the property's name and a colon (`election_safety: ...`), so a failure can be matched
//! both ways (the mutation hunts count a catch only for the properties a mutation breaks).
//!
//! Guards are checks that are not themselves safety properties: the core's own invariant
//! checks, the simulated disk's refusal of impossible writes, the quorum module's checks of
//! configuration shape and counting. They fire first, before the damage a bug does is visible
//! to clients or to other nodes. A mutation hunt may turn some of them off ([`set_guards_off`])
//! to show the consequence is caught by the property itself; they stay on everywhere else.

use std::cell::Cell;

/// The property (or guard, or scenario expectation) a failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// One leader per term; one vote per voter per term (§5.2).
    ElectionSafety,
    /// A leader's log only grows within its term (§5.3).
    LeaderAppendOnly,
    /// Same `(index, term)`, same content and history (§5.3).
    LogMatching,
    /// A new leader holds every entry committed in an earlier term (§5.4).
    LeaderCompleteness,
    /// One entry per committed index, applied in order; a restored snapshot is the committed
    /// prefix (§5.4.3, §7).
    StateMachineSafety,
    /// Term, commit and durable state never go backwards (Figure 2).
    Monotonic,
    /// An acknowledged entry stays in the follower's log for that term (Figure 2).
    AckedEntries,
    /// Commit and election quorums of the node's configuration, and configuration shapes (§6).
    Quorum,
    /// The KV clients' history is linearizable.
    Linearizability,
    /// The linearizability search hit its step bound: nothing was proven, and the run fails.
    LinearizabilityInconclusive,
    /// A panic inside the core (`RawNode::check_invariants`, an `assert!`) or an error the core
    /// returned where none is allowed.
    CoreAssertion,
    /// The simulated disk refused a write the core asked for (a chunk out of order, an install
    /// of an incompletely staged snapshot).
    DiskGuard,
    /// A panic in the simulator itself (a bug in the tester).
    SimulatorPanic,
    /// A scenario's own expectation (6.5840's "one() failed", "apply error", liveness).
    Scenario,
}

/// Every property, in the order of the enum.
pub const ALL: &[Property] = &[
    Property::ElectionSafety,
    Property::LeaderAppendOnly,
    Property::LogMatching,
    Property::LeaderCompleteness,
    Property::StateMachineSafety,
    Property::Monotonic,
    Property::AckedEntries,
    Property::Quorum,
    Property::Linearizability,
    Property::LinearizabilityInconclusive,
    Property::CoreAssertion,
    Property::DiskGuard,
    Property::SimulatorPanic,
    Property::Scenario,
];

impl Property {
    /// The stable name a failure message starts with (before a colon).
    pub fn name(self) -> &'static str {
        match self {
            Property::ElectionSafety => "election_safety",
            Property::LeaderAppendOnly => "leader_append_only",
            Property::LogMatching => "log_matching",
            Property::LeaderCompleteness => "leader_completeness",
            Property::StateMachineSafety => "state_machine_safety",
            Property::Monotonic => "monotonic",
            Property::AckedEntries => "acked_entries",
            Property::Quorum => "quorum",
            Property::Linearizability => "linearizability",
            Property::LinearizabilityInconclusive => "linearizability_inconclusive",
            Property::CoreAssertion => "core assertion",
            Property::DiskGuard => "disk guard",
            Property::SimulatorPanic => "simulator panic",
            Property::Scenario => "scenario",
        }
    }

    /// The property a failure message is about, from its leading `name:`. Messages that do not
    /// start with a known name are scenario failures.
    pub fn classify(message: &str) -> Property {
        let head = message.split(':').next().unwrap_or("");
        ALL.iter()
            .copied()
            .find(|p| p.name() == head)
            .unwrap_or(Property::Scenario)
    }
}

impl std::fmt::Display for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A check that guards against a bug before the safety properties can see its consequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guard {
    /// The simulator's calls to `RawNode::check_invariants` (and the log's full check at the
    /// end of a run). The core's own `assert!`s cannot be turned off.
    CoreInvariants,
    /// The disk's refusal of a chunk out of order, of an install of an incompletely staged
    /// snapshot, and of an unsynced batch that changes more than the commit index. Off, the
    /// disk writes chunks where they say (a file written at offsets, zeros in gaps), installs
    /// what is staged, padded with zeros to the announced size, and keeps any unsynced hard
    /// state in the page cache, where a crash loses it.
    DiskSnapshot,
    /// The quorum module's configuration-shape check (single-server steps or joint consensus).
    QuorumShape,
    /// The quorum module's commit-quorum and election-quorum checks.
    QuorumCount,
    /// The `monotonic` module: term and commit never decrease on a node, committed entries are
    /// never removed from it, its durable term and vote never regress and survive a restart.
    /// These watch one node's own state; the damage they foresee (two votes, two entries
    /// committed at one index) is what the safety properties see.
    Monotonic,
}

impl Guard {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Guard::CoreInvariants => "core-invariants",
            Guard::DiskSnapshot => "disk-snapshot",
            Guard::QuorumShape => "quorum-shape",
            Guard::QuorumCount => "quorum-count",
            Guard::Monotonic => "monotonic",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of guards turned off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardsOff(u8);

impl GuardsOff {
    /// The set of `guards`.
    pub fn of(guards: &[Guard]) -> GuardsOff {
        GuardsOff(guards.iter().fold(0, |b, g| b | g.bit()))
    }

    /// Whether `g` is off.
    pub fn off(self, g: Guard) -> bool {
        self.0 & g.bit() != 0
    }

    /// Whether `g` is on.
    pub fn on(self, g: Guard) -> bool {
        !self.off(g)
    }
}

thread_local! {
    static GUARDS_OFF: Cell<GuardsOff> = const { Cell::new(GuardsOff(0)) };
}

/// Turns `guards` off (and every other guard on) for clusters created afterwards on this
/// thread. For the mutation hunts only.
pub fn set_guards_off(guards: &[Guard]) {
    GUARDS_OFF.with(|g| g.set(GuardsOff::of(guards)));
}

/// The guards turned off on this thread.
pub fn guards_off() -> GuardsOff {
    GUARDS_OFF.with(|g| g.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_classifies_back() {
        for &p in ALL {
            assert_eq!(Property::classify(&format!("{p}: detail: more")), p);
        }
        assert_eq!(Property::classify("one() failed"), Property::Scenario);
    }

    #[test]
    fn guard_sets() {
        let g = GuardsOff::of(&[Guard::DiskSnapshot, Guard::QuorumShape]);
        assert!(g.off(Guard::DiskSnapshot) && g.off(Guard::QuorumShape));
        assert!(g.on(Guard::CoreInvariants) && g.on(Guard::QuorumCount));
    }
}
