//! The test fault hook: peers whose traffic with this member is dropped in both directions,
//! as if the network were cut, set from a file the tests write (`--fault-file`). Empty in
//! normal operation; the outbound queues and the peer service consult it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::NodeId;

use crate::cluster::ClusterSpec;

/// How often the fault file is re-read.
pub const FAULT_FILE_POLL: Duration = Duration::from_millis(100);

/// A fault hook for tests: peers whose traffic is dropped in both directions, as if the network
/// between them and this member were cut. Empty in normal operation.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: std::sync::RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    /// Replaces the set of cut-off peers.
    pub fn set_blocked(&self, peers: BTreeSet<NodeId>) {
        match self.blocked.write() {
            Ok(mut b) => *b = peers,
            Err(poisoned) => *poisoned.into_inner() = peers,
        }
    }

    /// Whether traffic with `peer` is dropped.
    pub fn is_blocked(&self, peer: NodeId) -> bool {
        match self.blocked.read() {
            Ok(b) => b.contains(&peer),
            Err(poisoned) => poisoned.into_inner().contains(&peer),
        }
    }
}

/// The peers a fault file names: members of `--initial-cluster` by name, and any member by its
/// id in hex (as `etcdctl member list` prints it: members that joined later have no name in
/// `--initial-cluster`). Other words are ignored.
fn cut_off(text: &str, spec: &ClusterSpec) -> BTreeSet<NodeId> {
    text.split_whitespace()
        .filter_map(|word| {
            spec.member_by_name(word)
                .map(|m| m.id)
                .or_else(|| u64::from_str_radix(word, 16).ok().and_then(NodeId::new))
        })
        .collect()
}

/// Applies the fault file to `faults` until the server stops.
pub async fn watch_fault_file(path: PathBuf, spec: ClusterSpec, faults: Arc<Faults>) {
    let mut last = None;
    loop {
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if last.as_ref() != Some(&text) {
            let blocked = cut_off(&text, &spec);
            tracing::warn!(file = %path.display(), cut_off = %text.trim(), "fault hook: peers cut off");
            faults.set_blocked(blocked);
            last = Some(text);
        }
        tokio::time::sleep(FAULT_FILE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_file_names_members_by_name_or_by_hex_id() {
        let spec =
            ClusterSpec::parse("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").expect("valid");
        let a = spec.member_by_name("a").expect("a").id;
        let joined = NodeId::new(0x4d6a_1b2c).expect("non-zero");
        assert_eq!(
            cut_off("a 4d6a1b2c nobody 0", &spec),
            [a, joined].into_iter().collect()
        );
        assert!(cut_off("", &spec).is_empty());
    }
}
