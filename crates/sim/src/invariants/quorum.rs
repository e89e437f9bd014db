//! Quorum-based properties, judged against the configuration in force at the node (paper §6,
//! thesis §4.3): in a joint configuration `C_old,new` every decision needs a majority of
//! **both** `C_old` and `C_new`; learners never count.
//!
//! - **Commit quorum** (§5.3, §5.4.2, §6): when a leader advances its commit index to an entry
//!   of its own term, that entry is durable (on disk, or covered by a snapshot) on a quorum of
//!   the leader's configuration.
//! - **Election quorum** (§5.2, §6): a node that becomes leader of a term was granted votes (as
//!   sent, plus its own) by a quorum of its configuration.
//! - **Configuration transitions** (§6, thesis §4.1, §4.3): each configuration entry differs
//!   from the one before it by at most one voter, or enters a joint configuration whose
//!   `C_old` is the previous configuration, or leaves a joint configuration for its `C_new`;
//!   no joint-to-joint step; no empty voter set; no voter that is also a learner.

use std::collections::BTreeSet;

use raft::{EntryId, EntryKind, Index, Membership, NodeId, RawNode};

use super::{violation, Check};

fn majority(set: &BTreeSet<NodeId>, has: impl Fn(u64) -> bool) -> bool {
    set.iter().filter(|id| has(id.get())).count() * 2 > set.len()
}

/// Whether `has` covers a quorum of `m` (both majorities when joint).
pub fn is_quorum(m: &Membership, has: impl Fn(u64) -> bool) -> bool {
    majority(&m.voters, &has)
        && (m.voters_outgoing.is_empty() || majority(&m.voters_outgoing, &has))
}

fn show(m: &Membership) -> String {
    let ids = |s: &BTreeSet<NodeId>| s.iter().map(|i| i.get()).collect::<Vec<_>>();
    if m.is_joint() {
        format!(
            "joint {:?}/{:?} learners {:?}",
            ids(&m.voters),
            ids(&m.voters_outgoing),
            ids(&m.learners)
        )
    } else {
        format!("{:?} learners {:?}", ids(&m.voters), ids(&m.learners))
    }
}

/// The commit quorum check for a leader whose commit index moved. `before` is the
/// configuration it had before this step (a step may both commit under the old configuration
/// and append a new one, e.g. leaving a joint configuration).
pub fn check_commit(
    node: u64,
    raft: &RawNode,
    before: Option<&Membership>,
    holds: &dyn Fn(u64, EntryId) -> bool,
) -> Check {
    let log = raft.log();
    let status = raft.status();
    let index = status.commit;
    let Some(term) = log.term(index) else {
        return Ok(());
    };
    if term != status.term {
        return Ok(());
    }
    let id = EntryId { term, index };
    // The configuration the commit was computed with: the one in force, unless this very
    // step appended a new one after the committed index (e.g. leaving a joint configuration
    // once it commits), in which case the one before the step.
    let now = match before {
        Some(b) if b != log.membership() && log.membership_index() > index => b,
        _ => log.membership(),
    };
    let ok = |m: &Membership| is_quorum(m, |n| holds(n, id));
    if ok(now) {
        return Ok(());
    }
    let holders: BTreeSet<u64> = now
        .voters
        .iter()
        .chain(&now.voters_outgoing)
        .chain(&now.learners)
        .map(|i| i.get())
        .filter(|&n| holds(n, id))
        .collect();
    violation(
        crate::property::Property::Quorum,
        "commit needs a quorum of the configuration (§5.3, §6: joint = both majorities)",
        format!(
            "leader {node} of term {} committed {index}@{term}, durable only on {holders:?} \
             under configuration {}",
            status.term,
            show(now),
        ),
    )
}

/// The election quorum check for a node that just became leader; `voters_for` are the nodes
/// seen granting it their vote in its term.
pub fn check_election(node: u64, raft: &RawNode, voters_for: &BTreeSet<u64>) -> Check {
    let m = raft.log().membership();
    let has = |n: u64| n == node || voters_for.contains(&n);
    if is_quorum(m, has) {
        return Ok(());
    }
    violation(
        crate::property::Property::Quorum,
        "leader elected by a quorum of its configuration (§5.2, §6: joint = both majorities)",
        format!(
            "node {node} leads term {} with votes from {voters_for:?} (and itself) under \
             configuration {}",
            raft.status().term,
            show(m)
        ),
    )
}

/// Checks every configuration entry among `new_entries` against the configuration before it.
pub fn check_transitions(node: u64, raft: &RawNode, new_entries: &[raft::Entry]) -> Check {
    let log = raft.log();
    for e in new_entries {
        let EntryKind::Membership(next) = &e.kind else {
            continue;
        };
        if e.index.0 <= 1 || Index(e.index.0 - 1) < log.offset().index {
            continue;
        }
        let prev = log.membership_at(Index(e.index.0 - 1));
        let bad = |why: &str| {
            violation(
                crate::property::Property::Quorum,
                "configuration changes are single-server or go through joint consensus (§6)",
                format!(
                    "node {node} appended {}@{} {} after {}: {why}",
                    e.index,
                    e.term,
                    show(next),
                    show(prev)
                ),
            )
        };
        if next.voters.is_empty() {
            return bad("no voters");
        }
        if next
            .learners
            .iter()
            .any(|l| next.voters.contains(l) || next.voters_outgoing.contains(l))
        {
            return bad("a voter is also a learner");
        }
        match (prev.is_joint(), next.is_joint()) {
            (false, false) => {
                if prev.voters.symmetric_difference(&next.voters).count() > 1 {
                    return bad("more than one voter changed without a joint configuration");
                }
            }
            (false, true) => {
                if next.voters_outgoing != prev.voters {
                    return bad("the joint configuration's C_old is not the previous one");
                }
            }
            (true, false) => {
                if next.voters != prev.voters {
                    return bad("leaving the joint configuration for something else than C_new");
                }
            }
            (true, true) => return bad("a new joint configuration while in a joint one"),
        }
    }
    Ok(())
}
