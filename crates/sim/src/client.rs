//! KV clients: one operation at a time, retried with the same sequence number (so the session
//! applies it once) against the next server when an attempt times out or is refused, and given
//! up as *unknown* after [`GIVE_UP_MS`].

use std::collections::VecDeque;

use crate::kv::KvOp;
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
pub struct Pending {
    /// Its id in the history.
    pub hist: usize,
    /// The key.
    pub key: String,
    /// What it does.
    pub op: KvOp,
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
pub struct Client {
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
    pub pending: Option<Pending>,
    /// Operations to run before any random ones.
    pub queue: VecDeque<(String, KvOp)>,
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

impl Client {
    /// An idle client.
    pub fn new(id: u64, servers: Vec<u64>, rng: Rng) -> Client {
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

    /// A random operation: 40% Get, 45% Append, 15% Put; written values are unique.
    pub fn random_op(&mut self) -> KvOp {
        let tag = format!("{}.{};", self.id, self.seq + 1);
        match self.rng.below(100) {
            0..=39 => KvOp::Get,
            40..=84 => KvOp::Append(tag),
            _ => KvOp::Put(tag),
        }
    }
}
