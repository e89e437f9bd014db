//! Core microbenchmarks (`cargo bench -p raft`): the consensus core alone, no IO. A 3-node
//! cluster in memory, messages delivered in order, persistence instantaneous.
//!
//! - commits/s of 100-byte entries with 1 and 64 proposals per batch;
//! - the cost of an election (campaign to a committed no-op);
//! - the cost of one idle ready/advance cycle.
//!
//! Figures are wall-clock on a shared machine; compare runs on the same machine only.

use std::time::{Duration, Instant};

use raft::{Config, InitialState, Message, NodeId, RawNode, Role};

struct Cluster {
    nodes: Vec<RawNode>,
    queue: Vec<Message>,
    applied: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::new(i).expect("non-zero")).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                cfg.seed = 1;
                RawNode::new(cfg, InitialState::new_cluster(ids.clone())).expect("valid")
            })
            .collect();
        Cluster {
            nodes,
            queue: Vec::new(),
            applied: 0,
        }
    }

    /// Handles every ready batch and delivers every message until nothing moves.
    fn stabilize(&mut self) {
        loop {
            let mut moved = false;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while n.has_ready() {
                    moved = true;
                    let rd = n.ready();
                    self.queue.extend(rd.messages);
                    self.queue.extend(rd.persisted_messages);
                    if i == 0 {
                        self.applied += rd.committed_entries.len() as u64;
                    }
                    n.advance(rd.number);
                }
            }
            if self.queue.is_empty() {
                if !moved {
                    return;
                }
                continue;
            }
            for m in std::mem::take(&mut self.queue) {
                let to = (m.to.get() - 1) as usize;
                self.nodes[to].step(m).expect("well addressed");
            }
        }
    }

    fn elect(&mut self) {
        self.nodes[0].campaign();
        self.stabilize();
        assert_eq!(self.nodes[0].status().role, Role::Leader);
    }
}

fn commits_per_second(batch: usize, total: usize) -> (f64, Duration) {
    let mut c = Cluster::new();
    c.elect();
    let start_applied = c.applied;
    let payload = vec![7u8; 100];
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < total {
        for _ in 0..batch {
            c.nodes[0]
                .propose(payload.clone())
                .expect("leader takes it");
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
