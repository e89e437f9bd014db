//! The simulated world: virtual time, an event queue, the network, the servers and the
//! clients of their replicated state machine (the built-in KV store, or yours: see
//! [`crate::machine`]). Everything runs in one thread, in an order fixed by the seed: events are kept in a
//! `BTreeMap` keyed by `(virtual ms, sequence number)`.
//!
//! After every step of every node the [`Checker`] runs; the first violation (or a panic inside
//! the core) stops the run with a [`SimFailure`] that carries the seed and the command that
//! replays it.

use std::collections::BTreeMap;

use raft::{
    Config, EntryId, HardState, Index, InitialState, Membership, MembershipChange, MembershipError,
    Message, MessageBody, NodeId, ProposeError, RawNode, ReadCtx, ReadError, SnapshotMeta, Status,
    TransferError,
};

use crate::client::Client;
use crate::history::History;
use crate::host::{decode_app_state, Host, RawCommands};
use crate::invariants::{Checker, Violation};
use crate::kv::{KvState, TAG_RAW};
use crate::machine::StateMachine;
use crate::net::{is_reply, NetConfig, Network};
use crate::property::{guards_off, GuardsOff, Property};
use crate::rng::Rng;
use crate::trace::Trace;

/// Virtual milliseconds per core tick.
pub const TICK_MS: u64 = 10;

/// How long a simulated sync takes, and what a crash does to unsynced writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Shortest sync, ms (0: synced within the same step).
    pub sync_ms_min: u64,
    /// Longest sync, ms.
    pub sync_ms_max: u64,
    /// Chance, per mille, that a crash keeps the written-but-unsynced batch.
    pub unsynced_survives_per_mille: u64,
}

impl DiskConfig {
    /// Syncs complete at once.
    pub fn instant() -> DiskConfig {
        DiskConfig {
            sync_ms_min: 0,
            sync_ms_max: 0,
            unsynced_survives_per_mille: 0,
        }
    }
}

/// Everything a scenario chooses about its cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of servers.
    pub nodes: usize,
    /// Network behaviour.
    pub net: NetConfig,
    /// Disk behaviour.
    pub disk: DiskConfig,
    /// Core election timeout, ticks.
    pub election_ticks: u64,
    /// Core heartbeat interval, ticks.
    pub heartbeat_ticks: u64,
    /// Core PreVote (thesis §9.6).
    pub pre_vote: bool,
    /// Core CheckQuorum (thesis §6.2).
    pub check_quorum: bool,
    /// Core limit on entry bytes per append; small values split appends into one entry each,
    /// which exposes commit-rule bugs that a batched no-op would hide.
    pub msg_bytes_max: u64,
    /// Core limit on appends in flight per follower.
    pub inflight_msgs_max: usize,
    /// Core lease reads (`ReadOnlyOption::LeaseBased`) instead of ReadIndex.
    pub lease_reads: bool,
    /// Take a snapshot once this many entries were applied since the last one (6.5840 3D:
    /// every 10); `None`: never (the log grows forever).
    pub snapshot_every: Option<u64>,
    /// Core snapshot chunk size, bytes.
    pub snapshot_chunk_bytes: u64,
    /// Core limit on snapshot chunks in flight per follower.
    pub snapshot_chunks_inflight_max: u64,
}

impl ClusterConfig {
    /// 6.5840 timing: 10 ms ticks, heartbeats every 100 ms (the lab allows at most ten per
    /// second), elections after 300..600 ms.
    pub fn lab(nodes: usize, unreliable: bool) -> ClusterConfig {
        ClusterConfig {
            nodes,
            net: if unreliable {
                NetConfig::unreliable()
            } else {
                NetConfig::reliable()
            },
            disk: DiskConfig::instant(),
            election_ticks: 30,
            heartbeat_ticks: 10,
            pre_vote: true,
            check_quorum: true,
            msg_bytes_max: 1024 * 1024,
            inflight_msgs_max: 256,
            lease_reads: false,
            snapshot_every: None,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunks_inflight_max: 4,
        }
    }
}

/// Bugs the simulator can plant in its own driver (not in the core), so the checkers can be
/// shown to catch each class of bug before any core mutation exists ("test the tester").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverBug {
    /// Send `persisted_messages` before the batch is synced (a crash then forgets a vote or an
    /// acknowledged entry).
    SendBeforeSync,
    /// Restart nodes with their durable vote dropped.
    ForgetVoteOnRestart,
    /// Apply the first entry of every batch twice.
    ApplyTwice,
    /// Serve reads ([`crate::machine::Operation::is_read`]) from the contacted node's state
    /// machine without ReadIndex.
    LocalReads,
}

thread_local! {
    static DRIVER_BUG: std::cell::Cell<Option<DriverBug>> = const { std::cell::Cell::new(None) };
}

/// Plants (or clears) a driver bug for clusters created afterwards on this thread.
pub fn set_driver_bug(bug: Option<DriverBug>) {
    DRIVER_BUG.with(|b| b.set(bug));
}

/// Why a run stopped: a broken invariant, a failed scenario expectation, or a core panic.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The property that failed.
    pub property: Property,
    /// What went wrong, with the seed and the replay command. Starts with the property's name
    /// and a colon unless it is a scenario expectation.
    pub message: String,
}

#[derive(Clone, Debug, Hash)]
pub(crate) enum Event {
    Tick { node: u64, incarnation: u64 },
    Deliver(Message),
    Sync { node: u64, incarnation: u64 },
    ClientWake { client: usize, generation: u64 },
}

/// The simulated cluster, running state machine `M` on every node: the built-in key-value
/// store by default ([`Cluster::new`]), or yours ([`Cluster::with_machine`]).
pub struct Cluster<M: StateMachine = KvState> {
    /// The run's seed.
    pub seed: u64,
    /// Scenario name, for the replay command.
    pub scenario: String,
    /// Extra replay flags (e.g. cargo features of a mutation).
    pub replay_extra: String,
    /// Scenario context printed with a failure (e.g. the swarm parameters).
    pub context: String,
    pub(crate) config: ClusterConfig,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) events: BTreeMap<(u64, u64), Event>,
    pub(crate) hosts: Vec<Host<M>>,
    /// The network; scenarios partition and heal it directly.
    pub net: Network,
    /// The disk model; swarm scenarios change it.
    pub disk: DiskConfig,
    /// Randomness of the world (network, disk, timing).
    pub(crate) world_rng: Rng,
    /// Randomness for the scenario's own choices (commands, who to crash).
    pub rng: Rng,
    pub(crate) checker: Checker,
    pub(crate) trace: Trace,
    pub(crate) rpc_count: u64,
    pub(crate) rpc_bytes: u64,
    /// Clients of the state machine.
    pub(crate) clients: Vec<Client<M::Op>>,
    /// What the clients saw: every operation's invocation, completion and result.
    pub history: History<M::Op>,
    /// Pending reads: `(node, ctx) -> client index`.
    pub(crate) reads: BTreeMap<(u64, u64), usize>,
    pub(crate) next_read_ctx: u64,
    /// Keys the clients use (handed to [`StateMachine::random_op`]).
    pub keys: Vec<String>,
    pub(crate) verbose: bool,
    pub(crate) driver_bug: Option<DriverBug>,
    /// Guards turned off (mutation hunts only; see [`crate::property::set_guards_off`]).
    pub(crate) guards_off: GuardsOff,
    /// The payload of every entry applied anywhere, by index: the committed log as the state
    /// machines saw it (State Machine Safety makes it one entry per index), to check that a
    /// state machine restored from a snapshot is the committed prefix.
    pub(crate) applied_log: BTreeMap<u64, Vec<u8>>,
    /// The configuration the cluster was created with; nodes added later start from it too.
    pub(crate) initial_voters: Vec<u64>,
    /// Snapshots taken by the application, over all nodes.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader, over all nodes.
    pub snapshots_installed: u64,
    /// Bytes of the snapshots installed from a leader, over all nodes (what a transfer without
    /// loss or resends would have sent).
    pub snapshot_bytes_installed: u64,
    /// Chunks those installs needed at the configured chunk size.
    pub snapshot_chunks_needed: u64,
}

impl Cluster {
    /// A cluster of fresh nodes running the built-in key-value store, started and connected.
    pub fn new(seed: u64, scenario: &str, config: ClusterConfig) -> Cluster {
        Cluster::with_machine(seed, scenario, config)
    }
}

impl<M: StateMachine> Cluster<M> {
    /// A cluster of fresh nodes running state machine `M` (start it with
    /// `Cluster::<MyMachine>::with_machine(seed, name, config)`), started and connected.
    pub fn with_machine(seed: u64, scenario: &str, config: ClusterConfig) -> Cluster<M> {
        let initial_voters: Vec<u64> = (1..=config.nodes as u64).collect();
        let mut root = Rng::new(seed);
        let world_rng = root.fork(1);
        let rng = root.fork(2);
        let guards_off = guards_off();
        let mut c = Cluster {
            seed,
            scenario: scenario.to_string(),
            replay_extra: crate::runner::feature_flags(),
            context: String::new(),
            net: Network::new(config.net.clone()),
            disk: config.disk.clone(),
            hosts: (1..=config.nodes as u64).map(Host::new).collect(),
            config,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            world_rng,
            rng,
            checker: Checker::new(guards_off),
            trace: Trace::default(),
            rpc_count: 0,
            rpc_bytes: 0,
            clients: Vec::new(),
            history: History::default(),
            reads: BTreeMap::new(),
            next_read_ctx: 1,
            keys: (0..5).map(|k| format!("k{k}")).collect(),
            verbose: std::env::var_os("SIM_VERBOSE").is_some(),
            driver_bug: DRIVER_BUG.with(|b| b.get()),
            guards_off,
            applied_log: BTreeMap::new(),
            initial_voters,
            snapshots_taken: 0,
            snapshots_installed: 0,
            snapshot_bytes_installed: 0,
            snapshot_chunks_needed: 0,
        };
        for id in 1..=c.config.nodes as u64 {
            c.start(id);
        }
        c
    }

    // ----- Observation -----

    /// Virtual time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Number of servers.
    pub fn n(&self) -> usize {
        self.hosts.len()
    }

    /// Node ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.hosts.len() as u64).collect()
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub(crate) fn host(&self, node: u64) -> &Host<M> {
        &self.hosts[(node - 1) as usize]
    }

    pub(crate) fn host_mut(&mut self, node: u64) -> &mut Host<M> {
        &mut self.hosts[(node - 1) as usize]
    }

    /// Status of a running node.
    pub fn status(&self, node: u64) -> Option<Status> {
        self.host(node).raft.as_ref().map(RawNode::status)
    }

    /// Whether the node is running.
    pub fn alive(&self, node: u64) -> bool {
        self.host(node).alive()
    }

    /// Whether the node is running and connected (6.5840's `cfg.connected[i]` for live nodes).
    pub fn up(&self, node: u64) -> bool {
        self.alive(node) && self.net.connected(node)
    }

    /// The command applied at `index` on `node`, if any (kept across restarts).
    pub fn applied_at(&self, node: u64, index: u64) -> Option<&Vec<u8>> {
        self.host(node).applied.get(&index)
    }

    /// Highest index `node` has applied in its current life.
    pub fn applied_index(&self, node: u64) -> Index {
        self.host(node).applied_index
    }

    /// Highest applied index over every node's applied map.
    pub fn max_applied(&self) -> u64 {
        self.hosts
            .iter()
            .filter_map(|h| h.applied.keys().next_back().copied())
            .max()
            .unwrap_or(0)
    }

    /// Requests sent so far (labrpc counts calls, not replies).
    pub fn rpc_count(&self) -> u64 {
        self.rpc_count
    }

    /// Request bytes sent so far.
    pub fn rpc_bytes(&self) -> u64 {
        self.rpc_bytes
    }

    /// The trace digest so far.
    pub fn trace_digest(&self) -> u64 {
        self.trace.digest()
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.trace.events
    }

    /// Number of indexes known committed by the checker.
    pub fn committed_len(&self) -> usize {
        self.checker.committed_len()
    }

    // ----- Failure -----

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p skiff-sim --release{} -- --scenario {} --seed {}",
            self.replay_extra, self.scenario, self.seed
        )
    }

    /// Stops the run: a scenario expectation failed.
    pub fn fail(&self, what: &str) -> ! {
        self.fail_as(Property::Scenario, what)
    }

    /// Stops the run: `property` failed. The message starts with the property's name (scenario
    /// expectations excepted), then the seed and the replay command.
    pub fn fail_as(&self, property: Property, what: &str) -> ! {
        let head = if property == Property::Scenario {
            String::new()
        } else {
            format!("{property}: ")
        };
        let mut message = format!(
            "{head}{what}\n  scenario {} seed {} at virtual {} ms\n  replay: {}",
            self.scenario,
            self.seed,
            self.now,
            self.replay_command()
        );
        if !self.context.is_empty() {
            message.push_str(&format!("\n  {}", self.context));
        }
        std::panic::panic_any(SimFailure { property, message })
    }

    fn violated(&self, v: Violation) -> ! {
        self.fail_as(
            v.property,
            &format!("{} violated: {}", v.invariant, v.detail),
        )
    }

    fn checked(&self, r: Result<(), Violation>) {
        if let Err(v) = r {
            self.violated(v);
        }
    }

    // ----- Node lifecycle -----

    fn raft_config(&self, node: u64, incarnation: u64) -> Config {
        let mut cfg = Config::new(NodeId::new(node).expect("ids start at 1"));
        cfg.election_ticks = self.config.election_ticks;
        cfg.heartbeat_ticks = self.config.heartbeat_ticks;
        cfg.pre_vote = self.config.pre_vote;
        cfg.check_quorum = self.config.check_quorum;
        cfg.msg_bytes_max = self.config.msg_bytes_max;
        cfg.inflight_msgs_max = self.config.inflight_msgs_max;
        cfg.snapshot_chunk_bytes = self.config.snapshot_chunk_bytes;
        cfg.snapshot_chunks_inflight_max = self.config.snapshot_chunks_inflight_max;
        if self.config.lease_reads {
            cfg.read_only = raft::ReadOnlyOption::LeaseBased;
        }
        cfg.seed = self
            .seed
            .wrapping_add(incarnation.wrapping_mul(0x2545_F491_4F6C_DD1D));
        cfg
    }

    /// Adds a server that has never run (it is not a member until a configuration change makes
    /// it one); returns its id. Start it with [`Cluster::start`]: it begins with the cluster's
    /// initial configuration and an empty log, and learns the rest from the leader.
    pub fn add_host(&mut self) -> u64 {
        let id = self.hosts.len() as u64 + 1;
        self.hosts.push(Host::new(id));
        self.trace.record(("add_host", id, self.now));
        id
    }

    /// Starts a crashed (or never started) node from its durable state.
    pub fn start(&mut self, node: u64) {
        assert!(!self.alive(node), "start of running node {node}");
        let incarnation = self.host(node).incarnation;
        let voters = self
            .initial_voters
            .iter()
            .map(|&i| NodeId::new(i).expect("ids start at 1"));
        let disk = self.host(node).disk.clone();
        let fresh = disk.hard_state == HardState::default()
            && disk.entries.is_empty()
            && disk.snapshot.is_none();
        let mut hard_state = disk.hard_state;
        if self.driver_bug == Some(DriverBug::ForgetVoteOnRestart) {
            hard_state.vote = None;
        }
        let snapshot = disk.snapshot.as_ref().map(|(m, _)| m.clone());
        let state = if fresh {
            InitialState::new_cluster(voters)
        } else {
            InitialState {
                hard_state,
                membership: snapshot
                    .as_ref()
                    .map_or_else(|| Membership::new(voters), |m| m.membership.clone()),
                snapshot: disk.offset(),
                entries: disk.entries.clone(),
                applied: disk.offset().index,
            }
        };
        let mut raft = match RawNode::new(self.raft_config(node, incarnation), state) {
            Ok(r) => r,
            Err(e) => self.fail_as(
                Property::CoreAssertion,
                &format!("node {node} failed to restart: {e}"),
            ),
        };
        if let Some(meta) = &snapshot {
            if let Err(e) = raft.compact(meta.clone()) {
                self.fail_as(
                    Property::CoreAssertion,
                    &format!(
                        "node {node} refused its own snapshot {:?} on restart: {e:?}",
                        meta.last
                    ),
                );
            }
        }
        if let Some((meta, bytes)) = &disk.staging {
            raft.resume_staged_snapshot(meta.clone(), bytes.len() as u64);
        }
        let r = self.checker.on_restart(node, &raft, &hard_state);
        self.checked(r);
        let h = self.host_mut(node);
        h.raft = Some(raft);
        h.applied_index = Index(0);
        h.machine = M::default();
        h.paused = false;
        h.held.clear();
        h.sync_held = false;
        if let Some((meta, bytes)) = &disk.snapshot {
            self.restore(node, meta, bytes);
        }
        self.trace.record(("start", node, incarnation, self.now));
        if self.verbose {
            eprintln!("{:>7} n{node} start (incarnation {incarnation})", self.now);
        }
        self.after_step(node);
        let phase = self.world_rng.below(TICK_MS);
        self.schedule(phase + 1, Event::Tick { node, incarnation });
    }

    /// Restores the application (integer commands and state machine) from snapshot bytes, as a
    /// real application would: whatever decodes (a damaged snapshot, which only the disk
    /// guard being off lets through, restores a damaged state machine).
    fn restore(&mut self, node: u64, meta: &SnapshotMeta, bytes: &[u8]) {
        let (raw, machine) = decode_app_state::<M>(bytes);
        let incarnation = self.host(node).incarnation;
        let r = self.checker.on_restore(node, incarnation, meta.last);
        self.checked(r);
        self.check_restored(node, meta, &raw, &machine);
        for (i, d) in &raw {
            if let Some(had) = self.host(node).applied.get(i) {
                if had != d {
                    self.fail_as(
                        Property::StateMachineSafety,
                        &format!(
                            "node {node}: snapshot {:?} has {d:?} at index {i}, but the node \
                         applied {had:?} there",
                            meta.last
                        ),
                    );
                }
            }
        }
        let h = self.host_mut(node);
        for (i, d) in raw {
            h.applied.insert(i, d);
        }
        h.machine = machine;
        h.applied_index = meta.last.index;
    }

    /// State Machine Safety for a restore (§5.4.3, §7): a state machine restored from a snapshot
    /// ending at `last` must be the one that applying the committed entries `1..=last` gives.
    /// The reference is rebuilt from [`Cluster::applied_log`] (skipped if an index is missing,
    /// which happens only for entries nobody applied in this run).
    fn check_restored(&self, node: u64, meta: &SnapshotMeta, raw: &RawCommands, machine: &M) {
        let last = meta.last.index.0;
        if self.applied_log.range(..=last).count() as u64 != last {
            return;
        }
        let mut want_machine = M::default();
        let mut want_raw = Vec::new();
        for (&i, d) in self.applied_log.range(..=last) {
            want_machine.apply(d);
            if d.first() == Some(&TAG_RAW) {
                want_raw.push((i, d.clone()));
            }
        }
        let (mut got, mut want) = (Vec::new(), Vec::new());
        machine.snapshot(&mut got);
        want_machine.snapshot(&mut want);
        if &want_raw != raw || got != want {
            let missing = want_raw.iter().filter(|w| !raw.contains(w)).count();
            let extra = raw.iter().filter(|r| !want_raw.contains(r)).count();
            self.fail_as(
                Property::StateMachineSafety,
                &format!(
                    "State Machine Safety (§5.4.3, §7) violated: node {node} restored a state \
                     machine from snapshot {:?} that is not the committed prefix: {missing} \
                     committed commands missing, {extra} not committed, state machine {} \
                     ({} bytes, committed prefix gives {} bytes)",
                    meta.last,
                    if got == want { "equal" } else { "differs" },
                    got.len(),
                    want.len()
                ),
            );
        }
    }

    /// Takes a snapshot at the applied index if `snapshot_every` entries were applied since the
    /// last one, and compacts the core's log.
    fn maybe_snapshot(&mut self, node: u64) {
        let Some(every) = self.config.snapshot_every else {
            return;
        };
        let h = self.host(node);
        let Some(raft) = h.raft.as_ref() else {
            return;
        };
        let applied = h.applied_index.min(raft.status().applied);
        if applied.0 < h.disk.offset().index.0 + every.max(1) {
            return;
        }
        let Some(term) = raft.log().term(applied) else {
            return;
        };
        let meta = SnapshotMeta {
            last: EntryId {
                term,
                index: applied,
            },
            membership: raft.log().membership_at(applied).clone(),
            size_bytes: 0,
        };
        let bytes = h.encode_app_state(applied);
        let meta = SnapshotMeta {
            size_bytes: bytes.len() as u64,
            ..meta
        };
        let h = self.host_mut(node);
        let r = h.raft.as_mut().expect("alive").compact(meta.clone());
        if let Err(e) = r {
            self.fail_as(
                Property::CoreAssertion,
                &format!(
                    "node {node} refused to compact at applied {:?}: {e:?}",
                    meta.last
                ),
            );
        }
        h.disk.compact(meta.clone(), bytes);
        self.snapshots_taken += 1;
        self.trace.record(("snapshot", node, meta.last, self.now));
        if self.verbose {
            eprintln!("{:>7} n{node} snapshot at {:?}", self.now, meta.last);
        }
        self.after_step(node);
    }

    /// Crashes a node: volatile state and unsynced writes are lost (unless the disk model lets
    /// the pending batch survive).
    pub fn crash(&mut self, node: u64) {
        if !self.alive(node) {
            return;
        }
        let survives = self.world_rng.chance(self.disk.unsynced_survives_per_mille);
        let h = self.host_mut(node);
        h.raft = None;
        h.incarnation += 1;
        h.paused = false;
        h.held.clear();
        h.sync_held = false;
        let pending = h.pending.take();
        let mut durable = None;
        if let (Some(rd), true) = (pending, survives) {
            let lenient = self.guards_off.off(crate::property::Guard::DiskSnapshot);
            if let Err(e) = self.host_mut(node).disk.write(&rd, lenient) {
                self.fail_as(Property::DiskGuard, &format!("node {node}: {e}"));
            }
            durable = rd.hard_state;
        }
        // A commit index written without a sync reaches the platter or not, as the seed says.
        let disk = &mut self.host_mut(node).disk;
        if survives {
            disk.sync_unsynced();
        } else {
            disk.unsynced_hard_state = None;
        }
        if let Some(hs) = durable {
            let r = self.checker.on_durable(node, &hs);
            self.checked(r);
        }
        self.trace.record(("crash", node, self.now, survives));
        if self.verbose {
            eprintln!("{:>7} n{node} crash (unsynced kept: {survives})", self.now);
        }
    }

    /// 6.5840's `start1` on a running node: crash it and start it again from its disk.
    pub fn restart(&mut self, node: u64) {
        self.crash(node);
        self.start(node);
    }

    /// Stops a node's clock and holds its deliveries and syncs (a long GC pause, a stopped VM).
    pub fn pause(&mut self, node: u64) {
        if self.alive(node) {
            self.host_mut(node).paused = true;
            self.trace.record(("pause", node, self.now));
        }
    }

    /// Resumes a paused node: held messages arrive now, in order.
    pub fn resume(&mut self, node: u64) {
        if !self.alive(node) || !self.host(node).paused {
            return;
        }
        self.trace.record(("resume", node, self.now));
        let h = self.host_mut(node);
        h.paused = false;
        let held = std::mem::take(&mut h.held);
        let sync = std::mem::take(&mut h.sync_held);
        for m in held {
            self.deliver(m);
        }
        if sync {
            self.complete_sync(node);
        }
    }

    /// Whether a node has a batch written but not yet synced.
    pub fn has_pending(&self, node: u64) -> bool {
        self.host(node).pending.is_some()
    }

    /// Whether a node is paused.
    pub fn paused(&self, node: u64) -> bool {
        self.host(node).paused
    }

    /// labrpc `disconnect`.
    pub fn disconnect(&mut self, node: u64) {
        self.trace.record(("disconnect", node, self.now));
        self.net.disconnect(node);
    }

    /// labrpc `connect`.
    pub fn connect(&mut self, node: u64) {
        self.trace.record(("connect", node, self.now));
        self.net.connect(node);
    }

    // ----- Inputs -----

    /// 6.5840's `Start`: proposes on `node`; `None` if it is down or not the leader.
    pub fn propose(&mut self, node: u64, data: Vec<u8>) -> Option<EntryId> {
        let r = self.try_propose(node, data)?;
        r.ok()
    }

    /// 6.5840's `Start` with the core's answer; `None` if the node is down.
    pub fn try_propose(
        &mut self,
        node: u64,
        data: Vec<u8>,
    ) -> Option<Result<EntryId, ProposeError>> {
        let raft = self.host_mut(node).raft.as_mut()?;
        let r = raft.propose(data);
        self.trace.record(("propose", node, self.now, r.is_ok()));
        if self.verbose {
            eprintln!("{:>7} n{node} propose: {r:?}", self.now);
        }
        if r.is_ok() {
            self.after_step(node);
            self.process_ready(node);
        }
        Some(r)
    }

    pub(crate) fn try_read(&mut self, node: u64, ctx: u64) -> Option<Result<(), ReadError>> {
        let raft = self.host_mut(node).raft.as_mut()?;
        let role = raft.status().role;
        let r = raft.read_index(ReadCtx(ctx));
        self.trace.record(("read", node, self.now, r.is_ok()));
        if self.verbose {
            eprintln!(
                "{:>7} n{node} read_index {ctx} as {role:?}: {r:?}",
                self.now
            );
        }
        self.after_step(node);
        self.process_ready(node);
        Some(r)
    }

    /// Asks `node` to change the configuration; `None` if it is down.
    pub fn change_membership(
        &mut self,
        node: u64,
        change: MembershipChange,
    ) -> Option<Result<EntryId, MembershipError>> {
        let raft = self.host_mut(node).raft.as_mut()?;
        let r = raft.change_membership(change.clone());
        self.trace
            .record(("change", node, self.now, &change, r.is_ok()));
        if self.verbose {
            eprintln!("{:>7} n{node} change {change:?}: {r:?}", self.now);
        }
        self.after_step(node);
        self.process_ready(node);
        Some(r)
    }

    /// Asks leader `node` to hand leadership to `to`; `None` if it is down.
    pub fn transfer_leader(&mut self, node: u64, to: u64) -> Option<Result<(), TransferError>> {
        let raft = self.host_mut(node).raft.as_mut()?;
        let r = raft.transfer_leader(NodeId::new(to).expect("ids start at 1"));
        self.trace
            .record(("transfer", node, to, self.now, r.is_ok()));
        if self.verbose {
            eprintln!("{:>7} n{node} transfer to n{to}: {r:?}", self.now);
        }
        self.after_step(node);
        self.process_ready(node);
        Some(r)
    }

    /// The configuration in force at a running node (the last one in its log).
    pub fn membership(&self, node: u64) -> Option<Membership> {
        self.host(node)
            .raft
            .as_ref()
            .map(|r| r.log().membership().clone())
    }

    /// Index of the entry that set `node`'s configuration in force.
    pub fn membership_index(&self, node: u64) -> Option<Index> {
        self.host(node)
            .raft
            .as_ref()
            .map(|r| r.log().membership_index())
    }

    /// Snapshot chunks sent over all nodes, and their bytes.
    pub fn snapshot_traffic(&self) -> (u64, u64) {
        self.hosts.iter().fold((0, 0), |(c, b), h| {
            (c + h.snapshot_chunks_sent, b + h.snapshot_bytes_sent)
        })
    }

    /// Snapshot chunks dropped at the edge because the snapshot was replaced, over all nodes.
    pub fn snapshot_chunks_dropped(&self) -> u64 {
        self.hosts.iter().map(|h| h.snapshot_chunks_dropped).sum()
    }

    /// Largest persisted Raft state (hard state and log, without the snapshot) over all nodes.
    pub fn raft_state_bytes_max(&self) -> u64 {
        self.hosts
            .iter()
            .map(|h| h.disk.raft_state_bytes())
            .max()
            .unwrap_or(0)
    }

    /// Bytes of an incoming snapshot `node` has staged durably.
    pub fn staged_bytes(&self, node: u64) -> u64 {
        self.host(node)
            .disk
            .staging
            .as_ref()
            .map_or(0, |(_, b)| b.len() as u64)
    }

    /// The durable snapshot index of `node` (0 without a snapshot).
    pub fn snapshot_index(&self, node: u64) -> u64 {
        self.host(node).disk.offset().index.0
    }

    // ----- Time -----

    pub(crate) fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.seq += 1;
        self.events.insert((self.now + delay_ms, self.seq), event);
    }

    /// Runs the world for `ms` virtual milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            self.handle(ev);
        }
        self.now = until;
    }

    fn handle(&mut self, ev: Event) {
        self.trace.record(&ev);
        match ev {
            Event::Tick { node, incarnation } => {
                if self.host(node).incarnation != incarnation || !self.alive(node) {
                    return;
                }
                self.schedule(TICK_MS, Event::Tick { node, incarnation });
                if self.host(node).paused {
                    return;
                }
                self.host_mut(node).raft.as_mut().expect("alive").tick();
                self.after_step(node);
                self.process_ready(node);
            }
            Event::Deliver(m) => self.deliver(m),
            Event::Sync { node, incarnation } => {
                if self.host(node).incarnation != incarnation || !self.alive(node) {
                    return;
                }
                if self.host(node).paused {
                    self.host_mut(node).sync_held = true;
                    return;
                }
                self.complete_sync(node);
            }
            Event::ClientWake { client, generation } => {
                if self.clients[client].generation == generation {
                    self.client_wake(client);
                }
            }
        }
    }

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from.get(), m.to.get());
        if !self.net.link_up(from, to) || !self.alive(to) {
            return;
        }
        if self.host(to).paused {
            self.host_mut(to).held.push(m);
            return;
        }
        if self.verbose {
            eprintln!("{:>7} n{from}->n{to} t{} {:?}", self.now, m.term, m.body);
        }
        let r = self.host_mut(to).raft.as_mut().expect("alive").step(m);
        if let Err(e) = r {
            self.fail_as(
                Property::CoreAssertion,
                &format!("node {to} refused a routed message: {e}"),
            );
        }
        self.after_step(to);
        self.process_ready(to);
    }

    fn send(&mut self, mut m: Message) {
        let from = m.from.get();
        if let MessageBody::InstallSnapshot {
            meta,
            offset,
            len,
            data,
        } = &mut m.body
        {
            // The edge fills a chunk from its current snapshot, or drops it if that snapshot
            // was replaced.
            let h = &mut self.hosts[(from - 1) as usize];
            match &h.disk.snapshot {
                Some((current, bytes)) if current == meta => {
                    let (lo, hi) = (*offset as usize, (*offset + *len) as usize);
                    if hi > bytes.len() || lo > hi {
                        let n = bytes.len();
                        self.fail_as(
                            Property::CoreAssertion,
                            &format!(
                                "node {from} asked to send bytes {lo}..{hi} of a {n}-byte \
                                 snapshot"
                            ),
                        );
                    }
                    *data = bytes[lo..hi].to_vec();
                    h.snapshot_chunks_sent += 1;
                    h.snapshot_bytes_sent += *len;
                }
                _ => {
                    h.snapshot_chunks_dropped += 1;
                    self.trace.record(("drop-stale-chunk", from, self.now));
                    return;
                }
            }
        }
        let sender = self.hosts[(from - 1) as usize]
            .raft
            .as_ref()
            .expect("a sending node is alive");
        let r = self.checker.on_send(&m, sender);
        self.checked(r);
        if !is_reply(&m.body) {
            self.rpc_count += 1;
            self.rpc_bytes += m.body.size_bytes();
        }
        for d in self.net.route(&mut self.world_rng, &m) {
            self.schedule(d, Event::Deliver(m.clone()));
        }
    }

    fn after_step(&mut self, node: u64) {
        let hosts = &self.hosts;
        let h = &hosts[(node - 1) as usize];
        let raft = h.raft.as_ref().expect("checked node is alive");
        let holds = |n: u64, id: EntryId| {
            hosts
                .get((n as usize).wrapping_sub(1))
                .is_some_and(|h| h.disk.holds(id))
        };
        let r = self.checker.after_step(node, h.incarnation, raft, &holds);
        self.checked(r);
    }

    /// Hands out the node's next batch if it has one and none is outstanding: messages leave
    /// now, the writes wait for a (possibly delayed) sync.
    fn process_ready(&mut self, node: u64) {
        loop {
            let h = self.host_mut(node);
            if h.pending.is_some() || h.paused {
                return;
            }
            let Some(raft) = h.raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                return;
            }
            let mut rd = raft.ready();
            let incarnation = h.incarnation;
            self.trace.record((
                "ready",
                node,
                rd.number,
                rd.hard_state,
                &rd.entries,
                rd.committed_entries.len(),
            ));
            for m in std::mem::take(&mut rd.messages) {
                self.send(m);
            }
            if self.driver_bug == Some(DriverBug::SendBeforeSync) {
                for m in std::mem::take(&mut rd.persisted_messages) {
                    self.send(m);
                }
            }
            let must_sync = rd.must_sync;
            self.host_mut(node).pending = Some(rd);
            // A batch that needs no sync is written to the page cache and done at once.
            let delay = if must_sync {
                self.world_rng
                    .range(self.disk.sync_ms_min, self.disk.sync_ms_max)
            } else {
                0
            };
            if delay > 0 {
                self.schedule(delay, Event::Sync { node, incarnation });
                return;
            }
            self.complete_sync_inner(node);
        }
    }

    fn complete_sync(&mut self, node: u64) {
        self.complete_sync_inner(node);
        self.process_ready(node);
    }

    /// The pending batch is durable: send what waited for it, apply, serve reads, advance.
    fn complete_sync_inner(&mut self, node: u64) {
        let Some(rd) = self.host_mut(node).pending.take() else {
            return;
        };
        let lenient = self.guards_off.off(crate::property::Guard::DiskSnapshot);
        let installed = match self.host_mut(node).disk.write(&rd, lenient) {
            Ok(i) => i,
            Err(e) => self.fail_as(Property::DiskGuard, &format!("node {node}: {e}")),
        };
        if let Some((meta, bytes)) = installed {
            self.snapshots_installed += 1;
            self.snapshot_bytes_installed += meta.size_bytes;
            self.snapshot_chunks_needed += meta
                .size_bytes
                .div_ceil(self.config.snapshot_chunk_bytes)
                .max(1);
            self.trace.record(("install", node, meta.last, self.now));
            if self.verbose {
                eprintln!("{:>7} n{node} installs snapshot {:?}", self.now, meta.last);
            }
            self.restore(node, &meta, &bytes);
        }
        if let Some(hs) = rd.hard_state.filter(|_| rd.must_sync) {
            let r = self.checker.on_durable(node, &hs);
            self.checked(r);
        }
        for m in rd.persisted_messages {
            self.send(m);
        }
        let incarnation = self.host(node).incarnation;
        let term = self.status(node).expect("alive").term;
        let twice = (self.driver_bug == Some(DriverBug::ApplyTwice))
            .then(|| rd.committed_entries.first().cloned())
            .flatten();
        for e in twice.iter().chain(&rd.committed_entries) {
            let r = self.checker.on_apply(node, incarnation, term, e);
            self.checked(r);
            self.applied_log.insert(e.index.0, e.data.clone());
            let h = self.host_mut(node);
            h.applied_index = e.index;
            h.applied.insert(e.index.0, e.data.clone());
            if let Some(done) = h.machine.apply(&e.data) {
                self.on_write_applied(node, done.client, done.seq, done.output);
            }
        }
        for rs in &rd.read_states {
            if self.host(node).applied_index < rs.index {
                self.fail_as(
                    Property::CoreAssertion,
                    &format!(
                    "node {node} released read {:?} at index {} before applying it (applied {})",
                    rs.ctx,
                    rs.index,
                    self.host(node).applied_index
                ),
                );
            }
            self.on_read_ready(node, rs.ctx.0);
        }
        for ctx in &rd.failed_reads {
            self.on_read_failed(node, ctx.0);
        }
        self.host_mut(node)
            .raft
            .as_mut()
            .expect("alive")
            .advance(rd.number);
        self.after_step(node);
        self.maybe_snapshot(node);
    }

    /// End-of-run checks: a full Log Matching and committed-prefix pass over every live node.
    pub fn final_checks(&mut self) {
        for node in self.ids() {
            let h = &self.hosts[(node - 1) as usize];
            if let Some(raft) = h.raft.as_ref() {
                let r = self.checker.full_check(node, raft);
                self.checked(r);
            }
        }
    }
}
