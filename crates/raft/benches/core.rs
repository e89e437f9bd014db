//! Core microbenchmarks (`cargo bench -p skiff-raft`): the consensus core alone, no IO. A 3-node
//! cluster in memory, messages delivered in order, persistence instantaneous.
//!
//! - commits/s of 100-byte entries with 1 and 64 proposals per batch;
//! - the cost of an election (campaign to a committed no-op);
//! - the cost of one idle ready/advance cycle.
//!
//! Figures are wall-clock on a shared machine; compare runs on the same machine only.

use std::time::{Duration, Instant};

mod harness;

use harness::Cluster;

fn commits_per_second(batch: usize, total: usize) -> (f64, Duration) {
    let mut c = Cluster::new();
    c.elect();
    let start_applied = c.applied;
    let payload = vec![7u8; 100];
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < total {
        for _ in 0..batch {
            c.propose(payload.clone());
        }
        proposed += batch;
        c.stabilize();
    }
    // Followers learn the last commit from a heartbeat; the leader's count is what matters.
    let elapsed = start.elapsed();
    let committed = c.applied - start_applied;
    assert_eq!(committed, total as u64, "every proposal committed");
    (committed as f64 / elapsed.as_secs_f64(), elapsed)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing special: keep the
    // work small when not benchmarking for real.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total = if quick { 2_000 } else { 200_000 };
    println!("raft core microbenchmarks (3 nodes in memory, 100-byte entries)");
    for batch in [1usize, 64] {
        let n = if batch == 1 { total / 4 } else { total };
        let (rate, elapsed) = commits_per_second(batch, n);
        println!(
            "  batch {batch:>3}: {rate:>12.0} commits/s  ({n} entries in {:.3} s)",
            elapsed.as_secs_f64()
        );
    }
    let rounds = if quick { 100 } else { 5_000 };
    let start = Instant::now();
    for _ in 0..rounds {
        let mut c = Cluster::new();
        c.elect();
    }
    println!(
        "  election (campaign to committed no-op, incl. cluster setup): {:.1} µs",
        start.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    let mut c = Cluster::new();
    c.elect();
    let cycles = if quick { 1_000 } else { 1_000_000 };
    let start = Instant::now();
    for _ in 0..cycles {
        let n = &mut c.nodes[1];
        n.tick();
        if n.has_ready() {
            let rd = n.ready();
            n.advance(rd.number);
        }
    }
    println!(
        "  follower tick + ready/advance cycle: {:.0} ns",
        start.elapsed().as_secs_f64() * 1e9 / cycles as f64
    );
}
