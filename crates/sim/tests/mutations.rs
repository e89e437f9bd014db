//! Test the tester: with a mutation feature on (one re-introduced Raft bug compiled into the
//! core), the simulator must catch it within the hunt's seed bound.
//!
//! ```text
//! cargo test -p sim --release --features mut-double-vote --test mutations
//! ```
#![cfg(feature = "mutations")]

use sim::mutations::{hunt, HUNTS};
use sim::MUTATIONS;

#[test]
fn every_enabled_mutation_is_caught() {
    let enabled: Vec<&str> = MUTATIONS
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    for name in &enabled {
        let h = HUNTS
            .iter()
            .find(|h| h.mutation == *name)
            .expect("every mutation has a hunt");
        let started = std::time::Instant::now();
        match hunt(h) {
            Some(c) => eprintln!(
                "{name}: caught by {} seed {} after {} runs in {:.1?}:\n{}",
                c.scenario,
                c.seed,
                c.runs,
                started.elapsed(),
                c.message
            ),
            None => panic!(
                "{name} was not caught within {} seeds of {:?}",
                h.seeds_max, h.scenarios
            ),
        }
    }
}

#[test]
fn every_mutation_has_a_hunt() {
    for (name, _) in MUTATIONS {
        assert!(HUNTS.iter().any(|h| h.mutation == *name), "{name}");
    }
}
