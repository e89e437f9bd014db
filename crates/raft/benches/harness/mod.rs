//! The in-memory 3-node cluster the core microbenchmarks drive: messages delivered in order,
//! persistence instantaneous. Shared with `bench/raft-rs`, which runs the same workload through
//! raft-rs.

use skiff_raft::{Config, InitialState, Message, NodeId, RawNode, Role};

pub struct Cluster {
    pub nodes: Vec<RawNode>,
    queue: Vec<Message>,
    /// Entries node 1 (the leader after [`Cluster::elect`]) has been handed to apply.
    pub applied: u64,
}

impl Cluster {
    pub fn new() -> Cluster {
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
    pub fn stabilize(&mut self) {
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

    pub fn elect(&mut self) {
        self.nodes[0].campaign();
        self.stabilize();
        assert_eq!(self.nodes[0].status().role, Role::Leader);
    }

    /// Proposes `data` to the leader.
    pub fn propose(&mut self, data: Vec<u8>) {
        self.nodes[0].propose(data).expect("leader takes it");
    }
}
