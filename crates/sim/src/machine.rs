//! Your own state machine in the simulator: the two traits a replicated application implements
//! so that [`Cluster`](crate::Cluster) runs it on the real core, under the seed's faults, and
//! checks its clients' history for linearizability.
//!
//! - [`Operation`] is the *specification*: a client operation and its sequential model, one
//!   state per key (Herlihy and Wing's definition: a concurrent history is linearizable if
//!   some order of its operations, consistent with real time, is a legal sequential run of the
//!   model). The checker ([`crate::linearizability::check`]) needs only this trait, so a
//!   history recorded from your own system can be checked without the rest of the simulator.
//! - [`StateMachine`] is the *implementation* the nodes replicate: how a write travels through
//!   the log, how a committed command is applied, how a read is answered, how a snapshot is
//!   written and restored, and what random operations the simulated clients issue.
//!
//! The built-in key-value store ([`crate::kv::KvState`] with [`crate::kv::KvOp`]) is one
//! implementation, and the default: `Cluster` is `Cluster<KvState>`. Yours goes in with
//! [`Cluster::with_machine`](crate::Cluster::with_machine); the simulator's clients,
//! retries, ReadIndex reads, snapshots, crashes and invariants stay the same. The crate guide
//! of `skiff-raft` ("Testing your driver in the simulator") has a compiled example, and
//! `crates/sim/tests/own_state_machine.rs` a counter that is checked on many seeds, with a
//! broken driver and a broken state machine that the checker reports.
//!
//! The contract, as the simulator relies on it:
//!
//! - **Exactly once.** A client retries a write with the same `(client, seq)` at another node
//!   when an attempt times out, so the same command can commit twice. [`StateMachine::apply`]
//!   must apply it once (thesis §6.3: remember each client's last applied `seq`) and answer
//!   the duplicate all the same, or the client waits until it gives up.
//! - **Determinism.** `apply` and `restore` depend only on their inputs: every node must reach
//!   the same state from the same commands, and a snapshot restored anywhere must equal the
//!   state that applying the committed prefix gives (the simulator compares
//!   [`StateMachine::snapshot`] bytes to check State Machine Safety after every restore).
//! - **Reads are not logged.** A read ([`Operation::is_read`]) goes through ReadIndex and is
//!   answered by [`StateMachine::read`] once the node has applied far enough.

use std::fmt::Debug;
use std::hash::Hash;

use crate::rng::Rng;

/// A client operation and its sequential specification, which the linearizability checker
/// compares histories against. Implement it for the operation type of your state machine (or
/// of a history you record yourself); the checker then needs nothing else.
pub trait Operation: Clone + Debug + Eq {
    /// What a completed operation returned to its client (a read's value, say).
    type Output: Clone + Debug + Eq;
    /// The model's state of one key. Operations on different keys are checked separately
    /// (linearizability is compositional), so this is the state of one key only.
    type State: Clone + Debug + Eq + Hash + Default;

    /// Whether the operation only reads: it is served through ReadIndex and never logged, and
    /// a read whose outcome the client never learned is dropped from the check (it constrains
    /// nothing). Everything else is a write, proposed through the log.
    fn is_read(&self) -> bool;

    /// The sequential model: the state after this operation runs on `state`, or `None` if it
    /// could not have returned `output` there. `output` is `None` for an operation whose
    /// outcome the client never learned (it may have taken effect or not) and for a write
    /// whose state machine answers nothing: accept any effect then.
    fn step(&self, state: &Self::State, output: Option<&Self::Output>) -> Option<Self::State>;

    /// Whether `output` (a read's) may show this write's effect. Only used to shrink a failing
    /// history to a small one: a write no remaining read can have seen is tried for removal.
    /// The default (`true`) keeps every write, which is always correct, only less small.
    fn may_be_seen_in(&self, output: &Self::Output) -> bool {
        let _ = output;
        true
    }

    /// How a failure report prints the operation and what it returned.
    fn describe(&self, output: Option<&Self::Output>) -> String {
        format!("{self:?} -> {output:?}")
    }
}

/// The answer to a client's write, from [`StateMachine::apply`]: which operation a committed
/// command carried, and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<R> {
    /// The client's session id, as given to [`StateMachine::encode`].
    pub client: u64,
    /// The client's sequence number, as given to [`StateMachine::encode`].
    pub seq: u64,
    /// What the write returned to its client; `None` for writes that return nothing.
    pub output: Option<R>,
}

/// The output type of a state machine's operations.
pub type Output<M> = <<M as StateMachine>::Op as Operation>::Output;

/// A replicated state machine the simulator runs on every node in place of its built-in
/// key-value store: implement it to test your application's commands, snapshots and
/// exactly-once handling under the simulator's faults, with the linearizability check of what
/// its clients saw. See the [module documentation](self) for the contract.
pub trait StateMachine: Clone + Debug + Default + 'static {
    /// The client operations, with the model the checker judges them by.
    type Op: Operation;

    /// The log entry payload that carries write `op` on `key`, the `seq`-th operation of
    /// client `client` (a retry reuses `seq`). The payload must let [`StateMachine::apply`]
    /// recognise it among other entries (the lab scenarios' raw commands share the log).
    fn encode(client: u64, seq: u64, key: &str, op: &Self::Op) -> Vec<u8>;

    /// Applies a committed entry's payload, in log order. Called for every committed entry:
    /// no-ops and configuration changes (empty or foreign payloads) and raw test commands too,
    /// which it must ignore (return `None`). For a client's write, applied now or a duplicate
    /// of one applied before, returns the client, sequence number and answer.
    fn apply(&mut self, command: &[u8]) -> Option<Applied<Output<Self>>>;

    /// Answers read `op` on `key` from the current state (the simulator calls it once the
    /// node has applied everything the ReadIndex read must observe).
    fn read(&self, key: &str, op: &Self::Op) -> Output<Self>;

    /// Appends the state (exactly-once sessions included) to a snapshot.
    fn snapshot(&self, out: &mut Vec<u8>);

    /// Rebuilds the state from [`StateMachine::snapshot`]'s bytes. Like an application without
    /// checksums, keep whatever decodes: a damaged snapshot then gives a damaged state, which
    /// the State Machine Safety check reports (only mutation hunts let one through).
    fn restore(bytes: &[u8]) -> Self;

    /// A random operation for the simulator's clients: the key (one of `keys`, the cluster's
    /// key set) and the operation, for client `client`'s `seq`-th operation (handy to make
    /// written values unique, which makes a stale read easy to tell apart).
    fn random_op(rng: &mut Rng, client: u64, seq: u64, keys: &[String]) -> (String, Self::Op);
}
