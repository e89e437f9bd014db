//! Client histories: each operation's invocation and completion, ordered by a logical clock
//! that ticks once per recorded event (so "A completed before B was invoked" is exact). An
//! operation whose outcome the client never learned (it timed out and gave up, or the run
//! ended) stays *unknown*: it may or may not have taken effect, never "failed".
//!
//! Generic over the operation type ([`Operation`]); the default is the built-in key-value
//! store's [`KvOp`]. Record your own system's operations here to check them with
//! [`crate::linearizability::check`].

use crate::kv::KvOp;
use crate::machine::Operation;

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord<O: Operation = KvOp> {
    /// The client that issued it.
    pub client: u64,
    /// The key: operations on different keys are checked separately.
    pub key: String,
    /// What it did.
    pub op: O,
    /// Logical time of the invocation.
    pub invoke: u64,
    /// Logical time of the completion; `None` if unknown.
    pub ret: Option<u64>,
    /// For a completed operation that answers something (a read): what it returned.
    pub output: Option<O::Output>,
    /// Virtual milliseconds of invocation and completion, for printing.
    pub invoke_ms: u64,
    /// See `invoke_ms`.
    pub ret_ms: Option<u64>,
}

/// All operations of a run.
#[derive(Clone, Debug)]
pub struct History<O: Operation = KvOp> {
    /// Operations in invocation order.
    pub ops: Vec<OpRecord<O>>,
    clock: u64,
}

impl<O: Operation> Default for History<O> {
    fn default() -> Self {
        History {
            ops: Vec::new(),
            clock: 0,
        }
    }
}

impl<O: Operation> History<O> {
    /// Records an invocation; returns the operation's id.
    pub fn invoke(&mut self, client: u64, key: &str, op: O, now_ms: u64) -> usize {
        self.clock += 1;
        self.ops.push(OpRecord {
            client,
            key: key.to_string(),
            op,
            invoke: self.clock,
            ret: None,
            output: None,
            invoke_ms: now_ms,
            ret_ms: None,
        });
        self.ops.len() - 1
    }

    /// Records a completion: `output` is what the operation returned, if it answers anything.
    pub fn complete(&mut self, id: usize, output: Option<O::Output>, now_ms: u64) {
        self.clock += 1;
        let op = &mut self.ops[id];
        assert!(op.ret.is_none(), "operation completed twice");
        op.ret = Some(self.clock);
        op.ret_ms = Some(now_ms);
        op.output = output;
    }

    /// Completed operations.
    pub fn completed(&self) -> usize {
        self.ops.iter().filter(|o| o.ret.is_some()).count()
    }
}
