//! The identity record: which cluster and node a data dir belongs to, so that a server started
//! with the wrong `--data-dir` refuses instead of joining one cluster with another's log.

use std::fmt;

use raft::NodeId;

/// Who owns a data dir. Written once when the dir is created, checked on every open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The cluster's id, chosen when the cluster was bootstrapped. Never changes.
    pub cluster_id: u64,
    /// This node's id within the cluster. Never changes.
    pub node_id: NodeId,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {:#x} node {}",
            self.cluster_id,
            self.node_id.get()
        )
    }
}
