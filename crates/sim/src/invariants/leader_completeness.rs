//! Leader Completeness (paper Figure 3, §5.4): if a log entry is committed in a given term, that
//! entry will be present in the logs of the leaders for all higher-numbered terms. An entry seen
//! committed by a node in term `t` was committed in a term `<= t`, so every leader of a term
//! above `t` must hold it; checked when a node is first seen leading a term.

use raft::{Index, RawNode};

use super::state_machine_safety::StateMachineSafety;
use super::{violation, Check};

/// Stateless: the committed entries live in [`StateMachineSafety`].
#[derive(Debug, Default)]
pub struct LeaderCompleteness;

impl LeaderCompleteness {
    /// `node` was just seen leading its current term.
    pub fn check_new_leader(&self, node: u64, raft: &RawNode, sms: &StateMachineSafety) -> Check {
        let term = raft.status().term;
        let log = raft.log();
        for (index, entry_term, seen_in) in sms.committed() {
            if seen_in >= term || index < log.first_index().0 {
                continue;
            }
            let have = log.term(Index(index));
            if have != Some(entry_term) {
                return violation(
                    crate::property::Property::LeaderCompleteness,
                    "Leader Completeness (§5.4)",
                    format!(
                        "node {node} leads term {term} but has {have:?} at index {index}, \
                         committed in term {entry_term} (seen committed in term {seen_in})"
                    ),
                );
            }
        }
        Ok(())
    }
}
