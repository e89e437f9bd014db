//! The same workload as `cargo bench -p skiff-raft` (crates/raft/benches/core.rs) run through both
//! Skiff's core and raft-rs: a 3-node cluster in memory, messages delivered in order,
//! persistence instantaneous (raft-rs's `MemStorage`), 100-byte entries proposed to the
//! leader in batches of 1 and 64, each batch driven until nothing moves. Wall-clock figures;
//! compare within one run only.

use std::time::Instant;

/// Skiff's core, through the harness of `cargo bench -p skiff-raft`.
#[path = "../../../crates/raft/benches/harness/mod.rs"]
mod skiff;

mod tikv {
    use raftrs::prelude::*;
    use raftrs::storage::MemStorage;
    use raftrs::{Config, RawNode, StateRole};

    pub struct Cluster {
        nodes: Vec<RawNode<MemStorage>>,
        queue: Vec<Message>,
        pub applied: u64,
    }

    impl Cluster {
        pub fn new() -> Cluster {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = (1..=3u64)
                .map(|id| {
                    let storage =
                        MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
                    let cfg = Config {
                        id,
                        election_tick: 10,
                        heartbeat_tick: 1,
                        max_inflight_msgs: 256,
                        max_size_per_msg: 1024 * 1024,
                        pre_vote: true,
                        check_quorum: true,
                        ..Default::default()
                    };
                    RawNode::new(&cfg, storage, &logger).expect("valid")
                })
                .collect();
            Cluster {
                nodes,
                queue: Vec::new(),
                applied: 0,
            }
        }

        pub fn stabilize(&mut self) {
            loop {
                let mut moved = false;
                for (i, n) in self.nodes.iter_mut().enumerate() {
                    while n.has_ready() {
                        moved = true;
                        let mut rd = n.ready();
                        self.queue.extend(rd.take_messages());
                        let store = n.store().clone();
                        if !rd.entries().is_empty() {
                            store.wl().append(rd.entries()).expect("append");
                        }
                        if let Some(hs) = rd.hs() {
                            store.wl().set_hardstate(hs.clone());
                        }
                        if i == 0 {
                            self.applied += rd.take_committed_entries().len() as u64;
                        }
                        self.queue.extend(rd.take_persisted_messages());
                        let mut light = n.advance(rd);
                        if let Some(commit) = light.commit_index() {
                            store.wl().mut_hard_state().set_commit(commit);
                        }
                        self.queue.extend(light.take_messages());
                        if i == 0 {
                            self.applied += light.take_committed_entries().len() as u64;
                        }
                        n.advance_apply();
                    }
                }
                if self.queue.is_empty() {
                    if !moved {
                        return;
                    }
                    continue;
                }
                for m in std::mem::take(&mut self.queue) {
                    let to = (m.to - 1) as usize;
                    self.nodes[to].step(m).expect("well addressed");
                }
            }
        }

        pub fn elect(&mut self) {
            self.nodes[0].campaign().expect("campaign");
            self.stabilize();
            assert_eq!(self.nodes[0].raft.state, StateRole::Leader);
        }

        pub fn propose(&mut self, data: Vec<u8>) {
            self.nodes[0]
                .propose(vec![], data)
                .expect("leader takes it");
        }
    }
}

macro_rules! commits_per_second {
    ($cluster:ty, $batch:expr, $total:expr) => {{
        let mut c = <$cluster>::new();
        c.elect();
        let start_applied = c.applied;
        let payload = vec![7u8; 100];
        let start = Instant::now();
        let mut proposed = 0;
        while proposed < $total {
            for _ in 0..$batch {
                c.propose(payload.clone());
            }
            proposed += $batch;
            c.stabilize();
        }
        let elapsed = start.elapsed();
        let committed = c.applied - start_applied;
        assert_eq!(committed, $total as u64, "every proposal committed");
        committed as f64 / elapsed.as_secs_f64()
    }};
}

macro_rules! election_us {
    ($cluster:ty, $rounds:expr) => {{
        let start = Instant::now();
        for _ in 0..$rounds {
            let mut c = <$cluster>::new();
            c.elect();
        }
        start.elapsed().as_secs_f64() * 1e6 / $rounds as f64
    }};
}

fn main() {
    println!("3 nodes in memory, 100-byte entries; same harness for both libraries");
    println!("| benchmark | skiff raft | raft-rs 0.7 | skiff / raft-rs |");
    println!("|---|---:|---:|---:|");
    for (batch, total) in [(1usize, 50_000usize), (64, 200_000)] {
        let s = commits_per_second!(skiff::Cluster, batch, total);
        let t = commits_per_second!(tikv::Cluster, batch, total);
        println!(
            "| commits/s, batch {batch} | {s:.0} | {t:.0} | {:.2} |",
            s / t
        );
    }
    let s = election_us!(skiff::Cluster, 2_000);
    let t = election_us!(tikv::Cluster, 2_000);
    println!(
        "| election incl. setup (µs, lower is better) | {s:.1} | {t:.1} | {:.2} |",
        s / t
    );
}
