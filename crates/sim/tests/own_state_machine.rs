//! A state machine of the user's own, plugged into the simulator: per-key counters with a
//! fetch-and-add. The real core replicates it on five nodes under message loss, partitions,
//! crashes and snapshots; the simulator's invariants run after every step, and the clients'
//! history is checked for linearizability against the counter's sequential model.
//!
//! Then the proof that the check is real: a driver that answers reads from the local state
//! machine without ReadIndex ([`DriverBug::LocalReads`]) and a state machine that answers
//! reads from a stale copy are both reported as not linearizable.

use std::collections::BTreeMap;

use skiff_sim::kv::{put_bytes, take_bytes, take_u32, take_u64};
use skiff_sim::linearizability::{check, Verdict};
use skiff_sim::machine::{Applied, Operation, StateMachine};
use skiff_sim::rng::Rng;
use skiff_sim::{set_driver_bug, Cluster, ClusterConfig, DriverBug};

/// An operation on one counter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CounterOp {
    /// Reads the counter.
    Get,
    /// Adds to the counter and returns the new value.
    Add(u64),
}

impl Operation for CounterOp {
    type Output = u64;
    type State = u64;

    fn is_read(&self) -> bool {
        *self == CounterOp::Get
    }

    /// A counter, sequentially: Get returns the value, Add adds and returns the sum. An Add
    /// whose answer the client never saw (`None`) may have added or not: the checker tries both
    /// by placing it anywhere after its invocation, or never.
    fn step(&self, state: &u64, output: Option<&u64>) -> Option<u64> {
        let next = match self {
            CounterOp::Get => *state,
            CounterOp::Add(n) => state + n,
        };
        output.is_none_or(|&out| out == next).then_some(next)
    }
}

/// Tag of a counter command in the log (other payloads, such as no-ops, are ignored).
const TAG: u8 = b'C';

/// The replicated state: the counters, and each client's last applied sequence number with
/// its answer (thesis §6.3), so a retried Add is applied once and answered the same.
#[derive(Clone, Debug, Default)]
struct Counter {
    counters: BTreeMap<String, u64>,
    sessions: BTreeMap<u64, (u64, u64)>,
}

impl StateMachine for Counter {
    type Op = CounterOp;

    fn encode(client: u64, seq: u64, key: &str, op: &CounterOp) -> Vec<u8> {
        let CounterOp::Add(n) = op else {
            unreachable!("reads are not logged")
        };
        let mut out = vec![TAG];
        for v in [client, seq, *n] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(key.as_bytes());
        out
    }

    fn apply(&mut self, command: &[u8]) -> Option<Applied<u64>> {
        let (&TAG, mut rest) = command.split_first()? else {
            return None;
        };
        let (client, seq, n) = (
            take_u64(&mut rest)?,
            take_u64(&mut rest)?,
            take_u64(&mut rest)?,
        );
        let key = String::from_utf8(rest.to_vec()).ok()?;
        let (last_seq, last_answer) = self.sessions.get(&client).copied().unwrap_or((0, 0));
        let output = match seq {
            s if s < last_seq => None, // an old retry: its client has moved on
            s if s == last_seq => Some(last_answer), // a duplicate: the same answer
            _ => {
                let value = self.counters.entry(key).or_default();
                *value += n;
                self.sessions.insert(client, (seq, *value));
                Some(*value)
            }
        };
        Some(Applied {
            client,
            seq,
            output,
        })
    }

    fn read(&self, key: &str, _op: &CounterOp) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    fn snapshot(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.counters.len() as u32).to_le_bytes());
        for (key, value) in &self.counters {
            put_bytes(out, key.as_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.sessions.len() as u32).to_le_bytes());
        for (client, (seq, answer)) in &self.sessions {
            for v in [client, seq, answer] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn restore(mut bytes: &[u8]) -> Counter {
        let b = &mut bytes;
        let mut c = Counter::default();
        for _ in 0..take_u32(b).unwrap_or(0) {
            let key = take_bytes(b).and_then(|k| String::from_utf8(k).ok());
            let (Some(key), Some(value)) = (key, take_u64(b)) else {
                return c;
            };
            c.counters.insert(key, value);
        }
        for _ in 0..take_u32(b).unwrap_or(0) {
            let (Some(client), Some(seq), Some(answer)) = (take_u64(b), take_u64(b), take_u64(b))
            else {
                return c;
            };
            c.sessions.insert(client, (seq, answer));
        }
        c
    }

    fn random_op(rng: &mut Rng, _client: u64, _seq: u64, keys: &[String]) -> (String, CounterOp) {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let op = match rng.below(2) {
            0 => CounterOp::Get,
            _ => CounterOp::Add(1 + rng.below(9)),
        };
        (key, op)
    }
}

/// A broken state machine: it answers reads from the counters as they were before the last
/// write it applied (a stale cache). Everything else is [`Counter`].
#[derive(Clone, Debug, Default)]
struct StaleReads {
    inner: Counter,
    before_last_write: BTreeMap<String, u64>,
}

impl StateMachine for StaleReads {
    type Op = CounterOp;

    fn encode(client: u64, seq: u64, key: &str, op: &CounterOp) -> Vec<u8> {
        Counter::encode(client, seq, key, op)
    }

    fn apply(&mut self, command: &[u8]) -> Option<Applied<u64>> {
        let before = self.inner.counters.clone();
        let applied = self.inner.apply(command);
        if before != self.inner.counters {
            self.before_last_write = before;
        }
        applied
    }

    fn read(&self, key: &str, _op: &CounterOp) -> u64 {
        self.before_last_write.get(key).copied().unwrap_or(0)
    }

    fn snapshot(&self, out: &mut Vec<u8>) {
        self.inner.snapshot(out);
    }

    fn restore(bytes: &[u8]) -> StaleReads {
        let inner = Counter::restore(bytes);
        let before_last_write = inner.counters.clone();
        StaleReads {
            inner,
            before_last_write,
        }
    }

    fn random_op(rng: &mut Rng, client: u64, seq: u64, keys: &[String]) -> (String, CounterOp) {
        Counter::random_op(rng, client, seq, keys)
    }
}

/// One run: five nodes on a lossy network, two counters, four clients, snapshots every 20
/// entries; every second the scenario partitions the cluster, crashes a node, restarts the
/// crashed ones or heals, as the seed says. Then it heals, lets the clients finish, runs the
/// final checks and returns the cluster with its history.
fn run<M: StateMachine<Op = CounterOp>>(seed: u64) -> Cluster<M> {
    let mut config = ClusterConfig::lab(5, true);
    config.snapshot_every = Some(20);
    let mut c = Cluster::<M>::with_machine(seed, "OwnStateMachine", config);
    c.keys = vec!["a".into(), "b".into()];
    let clients: Vec<usize> = (0..4).map(|_| c.add_client(c.ids())).collect();
    clients.iter().for_each(|&cl| c.set_client_active(cl, true));
    for _ in 0..8 {
        c.run_for(1_000);
        let node = 1 + c.rng.below(5);
        match c.rng.below(4) {
            0 => {
                let minority: Vec<u64> = vec![node, node % 5 + 1];
                let rest = c.ids().into_iter().filter(|n| !minority.contains(n));
                c.net.partition(&[minority.clone(), rest.collect()]);
            }
            1 => c.crash(node),
            2 => restart_crashed(&mut c),
            _ => c.net.heal(),
        }
    }
    c.net.heal();
    restart_crashed(&mut c);
    c.run_for(2_000);
    clients
        .iter()
        .for_each(|&cl| c.set_client_active(cl, false));
    c.run_for(skiff_sim::client::GIVE_UP_MS + 500);
    c.final_checks();
    c
}

fn restart_crashed<M: StateMachine>(c: &mut Cluster<M>) {
    let crashed: Vec<u64> = c.ids().into_iter().filter(|&n| !c.alive(n)).collect();
    crashed.into_iter().for_each(|n| c.start(n));
}

/// Seeds of the correct runs and of the stale state machine.
const SEEDS: u64 = 8;
/// Seeds of the driver bug: clients follow the leader's hint, so most reads reach the leader,
/// which serves them correctly until a partition leaves it stale; a few seeds have that.
const BUG_SEEDS: u64 = 32;

#[test]
fn a_user_state_machine_is_linearizable_under_faults() {
    let (mut completed, mut snapshots) = (0, 0);
    for seed in 0..SEEDS {
        let c = run::<Counter>(seed);
        assert_eq!(check(&c.history), Verdict::Ok, "seed {seed}");
        completed += c.history.completed();
        snapshots += c.snapshots_taken + c.snapshots_installed;
    }
    // The check saw real work: many operations, and state machines restored from snapshots.
    assert!(
        completed > 200 * SEEDS as usize,
        "{completed} operations completed"
    );
    assert!(snapshots > 0, "no snapshot was taken or installed");
}

#[test]
fn a_driver_that_reads_without_read_index_is_caught() {
    set_driver_bug(Some(DriverBug::LocalReads));
    let verdicts: Vec<Verdict> = (0..BUG_SEEDS)
        .map(|seed| check(&run::<Counter>(seed).history))
        .collect();
    set_driver_bug(None);
    let caught = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Violation(_)))
        .count();
    assert!(
        caught > 0,
        "stale local reads passed on {SEEDS} seeds: {verdicts:?}"
    );
    if let Some(Verdict::Violation(why)) =
        verdicts.iter().find(|v| matches!(v, Verdict::Violation(_)))
    {
        eprintln!("caught on {caught} of {BUG_SEEDS} seeds, e.g. {why}");
    }
}

#[test]
fn a_state_machine_that_reads_a_stale_copy_is_caught() {
    let verdicts: Vec<Verdict> = (0..SEEDS)
        .map(|seed| check(&run::<StaleReads>(seed).history))
        .collect();
    let caught = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Violation(_)))
        .count();
    assert_eq!(caught, SEEDS as usize, "stale reads passed: {verdicts:?}");
}
