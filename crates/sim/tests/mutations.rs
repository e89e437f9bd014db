//! Test the tester: with a mutation feature on (one re-introduced Raft bug compiled into the
//! core), the simulator must catch it within the hunt's seed bound, by a safety property the
//! bug breaks (the hunt's `caught_by`).
//!
//! ```text
//! cargo test -p skiff-sim --release --features mut-double-vote --test mutations -- --nocapture
//! ```
//!
//! Besides the details, each hunt prints one line starting with `MUTATION-ROW|` for
//! `crates/sim/mutations.sh`, which runs every mutation and prints the table.
#![cfg(feature = "mutations")]

use skiff_sim::mutations::{hunt, Report, HUNTS};
use skiff_sim::MUTATIONS;

/// Not-counted failures printed in full before the rest are summarised.
const NOT_COUNTED_SHOWN_MAX: usize = 12;

fn row(name: &str, h: &skiff_sim::mutations::Hunt, r: &Report) -> String {
    let guards: Vec<&str> = h.guards_off.iter().map(|g| g.name()).collect();
    let guards = if guards.is_empty() {
        "-".to_string()
    } else {
        guards.join(",")
    };
    let (caught, property, scenario, seed, guarded) = match &r.caught {
        Some(c) => (
            "yes",
            c.property.name().to_string(),
            c.scenario.to_string(),
            c.seed.to_string(),
            match c.with_guards_on {
                None => "-".to_string(),
                Some(None) => "passes".to_string(),
                Some(Some(p)) => p.name().to_string(),
            },
        ),
        None => (
            "NO",
            "-".to_string(),
            h.scenarios.join(","),
            format!("<{}", h.seeds_max),
            "-".to_string(),
        ),
    };
    format!(
        "MUTATION-ROW|{name}|{caught}|{property}|{scenario}|{seed}|{}|{:.1}|{guards}|{guarded}|{}",
        r.runs,
        r.elapsed.as_secs_f64(),
        r.not_counted.len()
    )
}

#[test]
fn every_enabled_mutation_is_caught() {
    let enabled: Vec<&str> = MUTATIONS
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    let mut missed = Vec::new();
    for name in &enabled {
        let h = HUNTS
            .iter()
            .find(|h| h.mutation == *name)
            .expect("every mutation has a hunt");
        let r = hunt(h);
        for n in r.not_counted.iter().take(NOT_COUNTED_SHOWN_MAX) {
            let why = if n.known_core_bug {
                " (known core bug)"
            } else {
                ""
            };
            eprintln!(
                "{name}: {} seed {}: {}{why} (not counted): {}",
                n.scenario, n.seed, n.property, n.first_line
            );
        }
        if r.not_counted.len() > NOT_COUNTED_SHOWN_MAX {
            eprintln!(
                "{name}: ... and {} more not counted",
                r.not_counted.len() - NOT_COUNTED_SHOWN_MAX
            );
        }
        match &r.caught {
            Some(c) => {
                eprintln!(
                    "{name}: caught by {} in {} seed {} after {} runs in {:.1?}:\n{}",
                    c.property, c.scenario, c.seed, r.runs, r.elapsed, c.message
                );
                if let Some(on) = c.with_guards_on {
                    let on = on.map_or("passes".to_string(), |p| p.name().to_string());
                    eprintln!(
                        "{name}: the same seed with every guard on: {on} (guards off for the \
                         hunt: {:?})",
                        h.guards_off
                    );
                }
            }
            None => {
                eprintln!(
                    "{name}: NOT caught by {:?} within {} seeds of {:?}",
                    h.caught_by, h.seeds_max, h.scenarios
                );
                missed.push(*name);
            }
        }
        eprintln!("{}", row(name, h, &r));
    }
    assert!(
        missed.is_empty(),
        "not caught by a counted property: {missed:?}"
    );
}

#[test]
fn every_mutation_has_a_hunt() {
    for (name, _) in MUTATIONS {
        assert!(HUNTS.iter().any(|h| h.mutation == *name), "{name}");
    }
    for h in HUNTS {
        assert!(!h.caught_by.is_empty(), "{}", h.mutation);
    }
}
