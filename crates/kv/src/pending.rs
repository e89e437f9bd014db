//! [`Pending`]: rows applied and in the key index whose redb write transaction is still open
//! (grouped commits, see [`crate::store::Options::commit_delay`]).
//!
//! A redb reader sees only committed rows, so the rows of the open transaction are also kept
//! here, with the index, and a reader takes both under the index's read lock (see
//! [`crate::view::ReadView`]): the index says which row holds a value, and a row newer than
//! the reader's redb snapshot is found here. The apply thread appends one chunk per apply
//! batch; after the transaction commits the rows are in redb and the chunks are dropped (a
//! reader that took them earlier keeps its own reference).
//!
//! ```text
//!   redb (committed)        pending chunks (open transaction)
//!   ... (9,0) (10,0)   |    [(11,0) (11,1)] [(12,0)] [(13,0) ...]
//! ```
//!
//! Invariant: chunks are in revision order, each chunk's revisions ascend and are above every
//! committed row's, except for the moment between a commit and the index's write lock, when a
//! reader may see a row in both places (same content; watches stop reading redb at the first
//! pending revision, so nothing is seen twice).

use std::sync::Arc;

use crate::mvcc::Rev;

/// Rows of one apply batch, ascending by revision.
pub(crate) type Chunk = Vec<(Rev, Vec<u8>)>;

/// The rows of the open write transaction, cheap to clone for a reader.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pending {
    chunks: Arc<Vec<Arc<Chunk>>>,
    /// Bytes of row data held.
    bytes: usize,
    /// Rows held.
    rows: usize,
}

impl Pending {
    /// Adds the rows of one batch, which follow every row held.
    pub(crate) fn push(&mut self, rows: Chunk) {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return;
        };
        assert!(
            rows.windows(2).all(|w| w[0].0 < w[1].0),
            "a chunk's revisions ascend"
        );
        if let Some(before) = self.last_rev() {
            assert!(before < first.0, "chunks are pushed in revision order");
        }
        debug_assert!(first.0 <= last.0);
        self.bytes += rows.iter().map(|(_, r)| r.len()).sum::<usize>();
        self.rows += rows.len();
        Arc::make_mut(&mut self.chunks).push(Arc::new(rows));
    }

    /// Forgets every row (they are committed).
    pub(crate) fn clear(&mut self) {
        *self = Pending::default();
    }

    /// Whether no row is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes of row data held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The lowest revision held.
    pub(crate) fn first_rev(&self) -> Option<Rev> {
        self.chunks.first().and_then(|c| c.first()).map(|r| r.0)
    }

    fn last_rev(&self) -> Option<Rev> {
        self.chunks.last().and_then(|c| c.last()).map(|r| r.0)
    }

    /// The row at `rev`, if held.
    pub(crate) fn get(&self, rev: Rev) -> Option<&[u8]> {
        // The last chunk whose first revision is <= rev.
        let i = self
            .chunks
            .partition_point(|c| c.first().is_some_and(|r| r.0 <= rev));
        let chunk = self.chunks.get(i.checked_sub(1)?)?;
        let j = chunk.binary_search_by_key(&rev, |r| r.0).ok()?;
        Some(&chunk[j].1)
    }

    /// The rows at or above `from`, ascending.
    pub(crate) fn from(&self, from: Rev) -> impl Iterator<Item = (Rev, &[u8])> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .skip_while(move |r| r.0 < from)
            .map(|(rev, row)| (*rev, row.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: u64, sub: u32) -> Rev {
        Rev { main, sub }
    }

    #[test]
    fn rows_are_found_by_revision_across_chunks_and_survive_a_clear_in_a_clone() {
        let mut p = Pending::default();
        assert!(p.get(rev(1, 0)).is_none());
        p.push(vec![(rev(2, 0), b"a".to_vec()), (rev(2, 1), b"b".to_vec())]);
        p.push(Vec::new());
        p.push(vec![(rev(4, 0), b"c".to_vec())]);
        assert_eq!(p.get(rev(2, 1)), Some(&b"b"[..]));
        assert_eq!(p.get(rev(4, 0)), Some(&b"c"[..]));
        assert_eq!(p.get(rev(3, 0)), None);
        assert_eq!(p.get(rev(1, 0)), None);
        assert_eq!(p.get(rev(5, 0)), None);
        assert_eq!((p.rows(), p.bytes()), (3, 3));
        assert_eq!(p.first_rev(), Some(rev(2, 0)));
        let from = |r: Rev| p.from(r).map(|r| r.0).collect::<Vec<Rev>>();
        assert_eq!(from(rev(2, 1)), vec![rev(2, 1), rev(4, 0)]);
        assert_eq!(from(rev(1, 0)), vec![rev(2, 0), rev(2, 1), rev(4, 0)]);
        assert_eq!(from(rev(2, 2)), vec![rev(4, 0)]);
        assert_eq!(from(rev(4, 0)), vec![rev(4, 0)]);
        assert_eq!(from(rev(4, 1)), Vec::<Rev>::new());
        let reader = p.clone();
        p.clear();
        assert!(p.is_empty() && p.get(rev(2, 0)).is_none());
        assert_eq!(reader.get(rev(2, 0)), Some(&b"a"[..]));
    }

    #[test]
    #[should_panic(expected = "revision order")]
    fn chunks_out_of_order_are_a_bug() {
        let mut p = Pending::default();
        p.push(vec![(rev(4, 0), b"c".to_vec())]);
        p.push(vec![(rev(3, 0), b"c".to_vec())]);
    }
}
