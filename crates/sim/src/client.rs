//! Clients: one operation at a time, retried with the same sequence number (so the session
//! applies it once) against the next server when an attempt times out or is refused, and given
//! up as *unknown* after [`GIVE_UP_MS`].

use std::collections::VecDeque;

use crate::kv::KvOp;
use crate::machine::Operation;
use crate::rng::Rng;

/// Pause between a client's operations, ms (bounds the log length, and with it the cost of
/// checking every step).
pub const THINK_MS_MIN: u64 = 10;
/// See [`THINK_MS_MIN`].
pub const THINK_MS_MAX: u64 = 60;
/// How long one attempt at one server waits for its answer, ms.
pub const ATTEMPT_MS: u64 = 400;
/// How long a client keeps retrying an operation before it records it as unknown, ms.
pub const GIVE_UP_MS: u64 = 3_000;

/// An operation in progress.
#[derive(Clone, Debug)]
pub struct Pending<O: Operation = KvOp> {
    /// Its id in the history.
    pub hist: usize,
    /// The key.
    pub key: String,
    /// What it does.
    pub op: O,
    /// Session sequence number.
    pub seq: u64,
    /// The server the current attempt went to, if one is outstanding.
    pub at: Option<u64>,
    /// For a Get: the read tag of the current attempt.
    pub read_ctx: Option<u64>,
    /// When to give up, virtual ms.
    pub give_up_at: u64,
}

/// One client.
#[derive(Clone, Debug)]
pub struct Client<O: Operation = KvOp> {
    /// Session id (non-zero).
    pub id: u64,
    /// Servers it talks to.
    pub servers: Vec<u64>,
    /// Index (mod len) of the server to try next.
    pub next: usize,
    /// After following a leader hint: where to continue if the hinted server is not the
    /// leader either (two removed servers can point at each other forever).
    pub resume: Option<usize>,
    /// Last sequence number used.
    pub seq: u64,
    /// The operation in progress.
    pub pending: Option<Pending<O>>,
    /// Operations to run before any random ones.
    pub queue: VecDeque<(String, O)>,
    /// Whether it issues random operations when idle.
    pub active: bool,
    /// Wake-ups carry this; a newer one cancels older ones.
    pub generation: u64,
    /// Operations completed.
    pub completed: u64,
    /// The client's own randomness.
    pub rng: Rng,
    /// How long one operation is retried before it is recorded as unknown, ms.
    pub give_up_ms: u64,
}

impl<O: Operation> Client<O> {
    /// An idle client.
    pub fn new(id: u64, servers: Vec<u64>, rng: Rng) -> Client<O> {
        assert!(!servers.is_empty(), "a client needs servers");
        Client {
            id,
            servers,
            next: 0,
            resume: None,
            seq: 0,
            pending: None,
            queue: VecDeque::new(),
            active: false,
            generation: 0,
            completed: 0,
            rng,
            give_up_ms: GIVE_UP_MS,
        }
    }
}
