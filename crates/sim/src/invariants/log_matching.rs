//! Log Matching (paper Figure 3, §5.3): if two logs contain an entry with the same index and
//! term, then the logs are identical in all entries up through that index. Checked inductively:
//! every `(index, term)` ever seen in any log must always carry the same content and sit after
//! an entry of the same term. By induction on the index, equal `(index, term)` then means equal
//! prefixes.

use std::collections::BTreeMap;

use raft::{Entry, Term};

use super::{entry_hash, violation, Check};

/// Content and predecessor term of every `(index, term)` seen.
#[derive(Debug, Default)]
pub struct LogMatching {
    seen: BTreeMap<(u64, Term), (u64, Term, u64)>,
}

impl LogMatching {
    /// Checks entries that just appeared in `node`'s log, contiguous, the first one following
    /// an entry of `prev_term`.
    pub fn check_entries(&mut self, node: u64, prev_term: Term, entries: &[Entry]) -> Check {
        let mut prev = prev_term;
        for e in entries {
            let key = (e.index.0, e.term);
            let value = (entry_hash(e), prev);
            match self.seen.get(&key) {
                Some(&(hash, pt, other)) if (hash, pt) != value => {
                    return violation(
                        crate::property::Property::LogMatching,
                        "Log Matching (§5.3)",
                        format!(
                            "entry {}@{} on node {node} (hash {:x}, previous term {}) differs \
                             from the one on node {other} (hash {hash:x}, previous term {pt})",
                            e.index, e.term, value.0, prev
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.seen.insert(key, (value.0, value.1, node));
                }
            }
            prev = e.term;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{EntryKind, Index};

    fn e(i: u64, t: u64, d: u8) -> Entry {
        Entry {
            term: Term(t),
            index: Index(i),
            kind: EntryKind::Normal,
            data: vec![d],
        }
    }

    #[test]
    fn same_id_different_content_or_prefix_is_caught() {
        let mut m = LogMatching::default();
        assert!(m
            .check_entries(1, Term(0), &[e(1, 1, 0), e(2, 1, 0)])
            .is_ok());
        assert!(m.check_entries(2, Term(0), &[e(1, 1, 0)]).is_ok());
        assert!(m.check_entries(2, Term(1), &[e(2, 1, 9)]).is_err());
        assert!(m.check_entries(3, Term(2), &[e(2, 1, 0)]).is_err());
    }
}
