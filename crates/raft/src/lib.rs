//! # Skiff's Raft core
//!
//! A deterministic, sans-IO implementation of the Raft consensus algorithm (Ongaro and
//! Ousterhout, "In Search of an Understandable Consensus Algorithm", extended version; and
//! Ongaro's thesis). The core has no clock, thread, socket, file, async or global randomness:
//! ticks, messages, proposals and read requests go in through [`RawNode`]; a numbered
//! [`Ready`] batch comes out, saying what to persist, which messages may go now and which only
//! after persistence, which committed entries to apply and which reads are safe to serve.
//! The same inputs give the same outputs, byte for byte.
//!
//! Implemented: randomized elections, PreVote, CheckQuorum, replication with flow control and
//! fast conflict backtracking, the current-term commit rule (Figure 8), a no-op entry on
//! election, persistence before replying, ReadIndex (with follower reads), lease reads, log
//! compaction with chunked, resumable snapshot transfer, joint-consensus and single-server
//! membership changes, learners and leader transfer.
//!
//! **Why this one.** Like raft-rs (TiKV) it is a library you drive, not a framework that owns
//! your runtime; unlike raft-rs there is one way to drive it (a numbered [`Ready`] that carries
//! its own durability order, acknowledged with [`RawNode::advance`]) and no `Storage` trait to
//! implement: the core keeps the entries it needs and you only write them down. Unlike
//! openraft it has no async runtime inside, so it runs unchanged under a simulator: the
//! [`skiff-sim`](https://docs.rs/skiff-sim) crate runs whole clusters of this core from one
//! seed under message loss, partitions, crashes that lose unsynced writes and slow disks,
//! checks the paper's safety properties after every step and client histories for
//! linearizability, and replays any failure from its seed. Sixteen known Raft bugs can be
//! compiled back into the core (`mut-*` features) to show that the simulator catches each.
//!
//! # Contents
//!
//! 1. [Getting started](#getting-started): a one-node cluster, and the two examples
//! 2. [Driving a node: the `Ready`/`advance` contract](#driving-a-node-the-readyadvance-contract)
//! 3. [Persisting and restarting](#persisting-and-restarting)
//! 4. [Snapshots: taking, sending in chunks, receiving](#snapshots-taking-sending-in-chunks-receiving)
//! 5. [Membership changes and leader transfer](#membership-changes-and-leader-transfer)
//! 6. [Reads and their assumptions](#reads-and-their-assumptions)
//! 7. [Testing your driver in the simulator](#testing-your-driver-in-the-simulator)
//! 8. [Map of the crate](#map-of-the-crate)
//!
//! # Getting started
//!
//! A node of a one-voter cluster, its "disk" a `Vec`: it elects itself, takes a proposal,
//! and hands it back committed. Everything a real node does is here except sending messages,
//! of which a cluster of one has none.
//!
//! ```
//! use skiff_raft::{Config, EntryKind, HardState, InitialState, NodeId, RawNode, Role};
//!
//! let id = NodeId::new(1).expect("node ids are non-zero");
//! let mut node = RawNode::new(Config::new(id), InitialState::new_cluster([id]))?;
//! let (mut hard_state, mut log) = (HardState::default(), Vec::new()); // your disk
//! let mut state_machine = Vec::new();
//! node.campaign(); // or tick() until the election timeout passes
//! for _ in 0..10 {
//!     if node.status().role == Role::Leader && state_machine.is_empty() {
//!         node.propose(b"set x = 1".to_vec())?;
//!     }
//!     while node.has_ready() {
//!         let rd = node.ready();
//!         hard_state = rd.hard_state.unwrap_or(hard_state); // persist, then sync
//!         log.retain(|e: &skiff_raft::Entry| rd.entries.first().is_none_or(|f| e.index < f.index));
//!         log.extend(rd.entries.iter().cloned());
//!         for e in rd.committed_entries {
//!             if e.kind == EntryKind::Normal {
//!                 state_machine.push(e.data); // apply
//!             }
//!         }
//!         node.advance(rd.number);
//!     }
//! }
//! assert_eq!(state_machine, [b"set x = 1".to_vec()]);
//! assert_eq!(hard_state.commit, log.last().expect("a no-op and the command").index);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Two complete programs show the rest:
//!
//! - `cargo run -p skiff-raft --example memkv` (`crates/raft/examples/memkv.rs`, under 200
//!   lines, std only): a replicated in-memory key-value store of three nodes on threads and
//!   channels, with proposals, ReadIndex reads on a follower, a leader crash, log compaction
//!   and the crashed node catching up from a snapshot sent in chunks.
//! - `cargo run -p skiff-storage --example tokio_kv` (`crates/storage/examples/tokio_kv.rs`):
//!   the same store driven from tokio tasks on `skiff-storage`'s write-ahead log (real
//!   `fdatasync`s, snapshot files, compaction that deletes segments), with a node killed and
//!   restarted from its data dir and then the whole cluster killed and restarted.
//!
//! The server in this repository (`crates/server`, `replica/node.rs`) is the full-size driver:
//! gRPC transport, a separate apply task, streamed snapshots and the etcd API on top.
//!
//! # Driving a node: the `Ready`/`advance` contract
//!
//! Inputs go in through [`RawNode::tick`] (call it at a fixed interval; every timeout is in
//! ticks, see [`Config`]), [`RawNode::step`] (a message from a peer),
//! [`RawNode::propose`], [`RawNode::read_index`], [`RawNode::change_membership`] and
//! [`RawNode::transfer_leader`]. None of them does IO or blocks; each returns at once, and
//! what it caused comes out of the next batch. One batch is outstanding at a time:
//!
//! ```text
//!   loop {
//!       tick / step / propose / read_index ...        (any number, any order)
//!       if node.has_ready() {
//!           let rd = node.ready();                    (batch rd.number)
//!           1. send rd.messages                       may leave before anything is durable
//!           2. stage rd.snapshot_chunks; if rd.snapshot: install it
//!           3. persist rd.hard_state and rd.entries;  sync if rd.must_sync
//!           4. send rd.persisted_messages             only after step 3 is durable
//!           5. apply rd.committed_entries, then serve rd.read_states; retry rd.failed_reads
//!           node.advance(rd.number)
//!       }
//!   }
//! ```
//!
//! The order is the safety argument, not a suggestion:
//!
//! - [`Ready::persisted_messages`] are votes and acknowledgements: promises about durable
//!   state (Figure 2: "respond to RPCs only after updating stable storage"). Sent before the
//!   sync, a crash can make a node vote twice in a term or forget an entry a leader counted
//!   toward a commit. [`Ready::messages`] promise nothing about this node's disk (a leader's
//!   appends, heartbeats), so they may go first, in parallel with the write (thesis §10.2.1).
//! - [`Ready::entries`] replace any stored entries from `entries[0].index` on: the log was
//!   truncated there.
//! - [`Ready::must_sync`] is false when only the commit index changed: the hard state may then
//!   be written without a sync, or kept until the next synced write (etcd's `MustSync`).
//! - [`Ready::committed_entries`] are committed and durable here; apply them in order.
//!   [`EntryKind::Noop`] and [`EntryKind::Membership`] entries carry no command (the core
//!   already acted on a configuration when it was appended).
//! - [`Ready::read_states`] are released only once everything they must observe is in
//!   `committed_entries` of this batch or earlier, so serve them after applying.
//! - [`RawNode::advance`] with the batch's number says all of the above is done. It panics on
//!   any other number, and [`RawNode::ready`] panics while a batch is outstanding: the
//!   durability order depends on batches being handled one after another.
//!
//! A proposal's [`EntryId`] (from [`RawNode::propose`]) tells you when it is done: it
//! committed if an entry with the same index *and term* is applied; if another entry is
//! applied at that index, it was lost to a leader change and may be retried. Errors are
//! values that say what to do ([`ProposeError::NotLeader`] names the leader to redirect to,
//! [`ProposeError::Busy`] means back off); a broken invariant panics.
//!
//! Messages are plain Rust types ([`Message`], [`MessageBody`]): serialize them however you
//! like. The network may lose, duplicate, delay and reorder them; [`RawNode::step`] refuses
//! only messages that were not meant for this node ([`StepError`]); drop those.
//!
//! # Persisting and restarting
//!
//! A node needs on disk: the last [`HardState`] (term, vote, commit), the log entries after
//! the last snapshot, and the snapshot with its [`SnapshotMeta`]. After a crash, build an
//! [`InitialState`] from them and start again with [`RawNode::new`]:
//!
//! - `hard_state`, `entries` (contiguous, after the snapshot) and `snapshot` (the last entry
//!   it covers) as stored;
//! - `membership`: the configuration as of the snapshot (configuration entries in `entries`
//!   are replayed over it), or the bootstrap voters for a brand-new node;
//! - `applied`: where your state machine stands. A volatile state machine restored from the
//!   snapshot is at the snapshot's index, and the core hands out every committed entry after
//!   it again; a durable one (a database) says its own applied index, so nothing is applied
//!   twice.
//!
//! Then call [`RawNode::compact`] with the snapshot's metadata, so the core can send it to
//! followers that need it, and [`RawNode::resume_staged_snapshot`] if a snapshot from the
//! leader was partly received when the node went down. `skiff-storage` does all of this for
//! its files: `Store::open`, `skiff_storage::initial_state`, `Store::write` for step 3 (one
//! checksummed, synced record per batch) and `Store::write_commit` when `must_sync` is false;
//! the `tokio_kv` example shows the whole cycle.
//!
//! # Snapshots: taking, sending in chunks, receiving
//!
//! **Taking.** Your application decides when (say every 10,000 applied entries). Write the
//! state machine as of an applied entry durably, then tell the core, which drops the log
//! entries the snapshot covers (paper §7). The term and the configuration at that index come
//! from the core's log:
//!
//! ```
//! # use skiff_raft::{EntryId, RawNode, SnapshotMeta, CompactError};
//! fn take_snapshot(node: &mut RawNode, state: &[u8]) -> Result<SnapshotMeta, CompactError> {
//!     let applied = node.status().applied;
//!     let term = node.log().term(applied).expect("the applied entry is in the log");
//!     let meta = SnapshotMeta {
//!         last: EntryId { term, index: applied },
//!         membership: node.log().membership_at(applied).clone(),
//!         size_bytes: state.len() as u64,
//!     };
//!     // ... write `state` and `meta` to a file and sync it, then drop your log's prefix ...
//!     node.compact(meta.clone())?;
//!     Ok(meta)
//! }
//! ```
//!
//! **Sending.** A leader whose follower needs entries it compacted away sends the snapshot
//! in chunks of [`Config::snapshot_chunk_bytes`], at most
//! [`Config::snapshot_chunks_inflight_max`] in flight, resent from where the follower is after
//! a loss, and resumed (not restarted) across a follower's crash. The core never holds the
//! bytes: it emits [`MessageBody::InstallSnapshot`] with `data` empty, and your send path fills
//! it from the snapshot the message names, or drops the message if that snapshot was replaced
//! meanwhile (the core then starts over with the newest one):
//!
//! ```
//! # use skiff_raft::{Message, MessageBody, SnapshotMeta};
//! /// Fills a snapshot chunk from `current` (the node's snapshot and its bytes); false means
//! /// drop the message.
//! fn fill_chunk(msg: &mut Message, current: &(SnapshotMeta, Vec<u8>)) -> bool {
//!     let MessageBody::InstallSnapshot { meta, offset, len, data } = &mut msg.body else {
//!         return true; // not a snapshot chunk: send as is
//!     };
//!     if *meta != current.0 {
//!         return false;
//!     }
//!     let (start, end) = (*offset as usize, (*offset + *len) as usize);
//!     *data = current.1[start..end].to_vec(); // or read the range from the snapshot file
//!     true
//! }
//! ```
//!
//! **Receiving.** A follower's batches carry [`Ready::snapshot_chunks`] to stage durably in
//! order (a chunk at offset 0 starts a new snapshot), then once the last chunk is staged,
//! [`Ready::snapshot`]: restore the state machine from the staged bytes, keep them as the
//! current snapshot, and drop the stored entries it covers (keep the ones after it only if the
//! stored entry at its last index has its term). Both happen in step 2, before the batch's
//! entries are persisted and before its `persisted_messages` (which acknowledge the chunks)
//! leave.
//!
//! # Membership changes and leader transfer
//!
//! On the leader, [`RawNode::change_membership`] takes a [`MembershipChange`]: add or remove
//! one voter or learner at a time (thesis §4.1), or [`MembershipChange::Replace`] for any
//! change through joint consensus (paper §6), left automatically once it commits. A
//! configuration takes effect when its entry is appended, on every node. Add a server as a
//! learner first and promote it once it has caught up ([`RawNode::match_index`] says how far
//! it is), so the cluster never waits on an empty log. A change is refused with a reason
//! ([`MembershipError`]) while another one is in flight or before the leader committed an
//! entry of its term; retry then. [`RawNode::change_membership_with_context`] attaches your
//! own bytes (a new member's address, say) to the configuration entry.
//!
//! [`RawNode::transfer_leader`] hands leadership to a voter (thesis §3.10): the leader stops
//! taking proposals, catches the target up, and tells it to campaign at once; if that has not
//! happened within an election timeout, the transfer is abandoned and proposals resume.
//!
//! ```
//! use skiff_raft::{Config, InitialState, MembershipChange, MembershipError, NodeId, RawNode};
//! use skiff_raft::{TransferError, Role};
//! # fn drive(node: &mut RawNode) {
//! #     while node.has_ready() { let rd = node.ready(); node.advance(rd.number); }
//! # }
//! let (n1, n2) = (NodeId::new(1).unwrap(), NodeId::new(2).unwrap());
//! let mut node = RawNode::new(Config::new(n1), InitialState::new_cluster([n1]))?;
//! node.campaign();
//! drive(&mut node); // persist and advance, as in Getting started
//! assert_eq!(node.status().role, Role::Leader);
//! node.change_membership(MembershipChange::AddLearner(n2))?;
//! assert!(node.log().membership().learners.contains(&n2)); // in force once appended
//! assert_eq!(
//!     node.change_membership(MembershipChange::PromoteLearner(n2)),
//!     Err(MembershipError::ChangeInProgress) // the learner entry is not committed yet
//! );
//! assert_eq!(node.transfer_leader(n2), Err(TransferError::InvalidTarget(n2))); // not a voter
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Reads and their assumptions
//!
//! [`RawNode::read_index`] asks for a linearizable read tagged with your [`ReadCtx`]; the
//! answer is a [`ReadState`] in a later batch (serve it from the state machine after applying
//! that batch) or the tag in [`Ready::failed_reads`] (retry). How the leader confirms it is
//! still the leader is [`Config::read_only`]:
//!
//! - [`ReadOnlyOption::Safe`] (the default, thesis §6.4 ReadIndex): the leader waits for an
//!   entry of its term to commit, then confirms its leadership with a heartbeat round a
//!   quorum acknowledges; reads arriving meanwhile share the round. No clock assumption.
//!   Costs a round trip to a quorum per batch of reads, no disk write.
//! - Follower reads: the same call on a follower asks the leader for its commit index
//!   (`ReadIndex` message) and releases the read once the follower has applied that far. It
//!   spreads the read load; same guarantee, one more hop.
//! - [`ReadOnlyOption::LeaseBased`] (thesis §6.4.1): the leader serves reads from its lease
//!   while a quorum acknowledged it within the last election timeout, with no round trip.
//!   Assumes every node's ticks run at the same rate within a bounded drift: a paused VM or a
//!   clock that jumps can let a new leader commit writes a lease read misses. Requires
//!   [`Config::check_quorum`]; leases are not used while a leader transfer may be under way,
//!   and a node that just started refuses votes for an election timeout (it may have
//!   acknowledged a lease before it went down).
//! - Reading your state machine directly, without the core, is *serializable*, not
//!   linearizable: it may be stale (etcd's `--consistency=s`).
//!
//! ```
//! # use skiff_raft::{Config, InitialState, NodeId, RawNode, ReadCtx, Role};
//! # let id = NodeId::new(1).unwrap();
//! # let mut node = RawNode::new(Config::new(id), InitialState::new_cluster([id]))?;
//! # node.campaign();
//! # while node.has_ready() { let rd = node.ready(); node.advance(rd.number); }
//! # assert_eq!(node.status().role, Role::Leader);
//! node.read_index(ReadCtx(7))?;
//! let mut served = Vec::new();
//! while node.has_ready() {
//!     let rd = node.ready();
//!     // ... persist, send, apply as usual ...
//!     served.extend(rd.read_states.iter().map(|rs| rs.ctx)); // read the state machine now
//!     node.advance(rd.number);
//! }
//! assert_eq!(served, [ReadCtx(7)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Testing your driver in the simulator
//!
//! `skiff-sim` runs clusters of this core in one thread under virtual time, driven by a seed:
//! its network loses, delays, duplicates and reorders messages and partitions nodes; its disk
//! syncs slowly and a crash loses what was not synced. After every step it checks Election
//! Safety, Leader Append-Only, Log Matching, Leader Completeness, State Machine Safety and
//! more (one module each, citing the paper); after a run, the linearizability of what its
//! clients saw. Any failure names the property and prints the command that replays
//! the seed. Its own driver (`skiff_sim::host`) follows this guide step for step; the
//! simulator proves it can catch a driver that does not, by planting those bugs itself
//! ([`skiff_sim::DriverBug`](https://docs.rs/skiff-sim): sending before the sync, forgetting
//! the vote on restart, applying twice, reading without ReadIndex).
//!
//! Three ways to use it for your own system:
//!
//! - **Your own state machine**, replicated by the real core under the simulator's faults:
//!   implement `skiff_sim::StateMachine` (encode a write as a log payload, apply a committed
//!   one exactly once and answer its client, answer a read, snapshot and restore, random
//!   client operations) and `skiff_sim::Operation` (the sequential model the
//!   linearizability checker compares the clients' history against), then run
//!   `Cluster::<YourMachine>::with_machine`. The clients, their retries with the same
//!   sequence number, ReadIndex reads, crashes, snapshots and invariants are the simulator's;
//!   a restored snapshot is compared byte for byte with the committed prefix applied to a
//!   fresh state machine.
//! - **Your own scenario** against the real core: choose the core's settings
//!   (`ClusterConfig`), the faults and the client load; the invariants and the
//!   linearizability check come with it.
//! - **Your own history**: record what your clients saw against your own driver and state
//!   machine (each operation's invocation, completion and result) in a
//!   `skiff_sim::history::History` of your `Operation` type (or the built-in key-value one)
//!   and hand it to the same checker.
//!
//! A register per key, plugged in: five nodes on a lossy network, a partition, a crash,
//! snapshots every 20 entries, three clients; then the history is checked.
//!
//! ```
//! use std::collections::BTreeMap;
//! use skiff_sim::linearizability::{check, Verdict};
//! use skiff_sim::{rng::Rng, Applied, Cluster, ClusterConfig, Operation, StateMachine};
//!
//! /// A register: `Write(v)` replaces the value, `Read` returns it (0 before any write).
//! #[derive(Clone, Debug, PartialEq, Eq)]
//! enum RegOp { Read, Write(u64) }
//!
//! impl Operation for RegOp {
//!     type Output = u64; // what a read returned
//!     type State = u64; // the model: one register's value
//!     fn is_read(&self) -> bool {
//!         *self == RegOp::Read
//!     }
//!     fn step(&self, value: &u64, output: Option<&u64>) -> Option<u64> {
//!         match self {
//!             RegOp::Read => (output == Some(value)).then_some(*value),
//!             RegOp::Write(v) => Some(*v),
//!         }
//!     }
//! }
//!
//! /// The replicated state: the registers, and each client's last applied sequence number
//! /// (a retried write commits twice but is applied once).
//! #[derive(Clone, Debug, Default)]
//! struct Registers { values: BTreeMap<String, u64>, sessions: BTreeMap<u64, u64> }
//!
//! impl StateMachine for Registers {
//!     type Op = RegOp;
//!     fn encode(client: u64, seq: u64, key: &str, op: &RegOp) -> Vec<u8> {
//!         let RegOp::Write(v) = op else { unreachable!("reads are not logged") };
//!         format!("w {client} {seq} {key} {v}").into_bytes()
//!     }
//!     fn apply(&mut self, command: &[u8]) -> Option<Applied<u64>> {
//!         // Every committed entry comes here: no-ops and others are not ours, so ignored.
//!         let text = std::str::from_utf8(command).ok()?;
//!         let ["w", client, seq, key, v] = text.split(' ').collect::<Vec<_>>()[..] else {
//!             return None;
//!         };
//!         let (client, seq) = (client.parse().ok()?, seq.parse().ok()?);
//!         if seq > self.sessions.get(&client).copied().unwrap_or(0) {
//!             self.sessions.insert(client, seq);
//!             self.values.insert(key.to_string(), v.parse().ok()?);
//!         }
//!         Some(Applied { client, seq, output: None }) // a duplicate is answered too
//!     }
//!     fn read(&self, key: &str, _op: &RegOp) -> u64 {
//!         self.values.get(key).copied().unwrap_or(0)
//!     }
//!     fn snapshot(&self, out: &mut Vec<u8>) {
//!         self.values.iter().for_each(|(k, v)| out.extend(format!("v {k} {v}\n").bytes()));
//!         self.sessions.iter().for_each(|(c, s)| out.extend(format!("s {c} {s}\n").bytes()));
//!     }
//!     fn restore(bytes: &[u8]) -> Registers {
//!         let mut r = Registers::default();
//!         for line in String::from_utf8_lossy(bytes).lines() {
//!             let n = |s: &str| s.parse().unwrap_or(0); // keep whatever decodes
//!             match line.split(' ').collect::<Vec<_>>()[..] {
//!                 ["v", k, v] => _ = r.values.insert(k.to_string(), n(v)),
//!                 ["s", c, s] => _ = r.sessions.insert(n(c), n(s)),
//!                 _ => {}
//!             }
//!         }
//!         r
//!     }
//!     fn random_op(rng: &mut Rng, client: u64, seq: u64, keys: &[String]) -> (String, RegOp) {
//!         let key = keys[rng.below(keys.len() as u64) as usize].clone();
//!         match rng.below(2) {
//!             0 => (key, RegOp::Read),
//!             _ => (key, RegOp::Write(client * 1_000_000 + seq)), // unique values
//!         }
//!     }
//! }
//!
//! let mut config = ClusterConfig::lab(5, true);
//! config.snapshot_every = Some(20);
//! let mut c = Cluster::<Registers>::with_machine(7, "Registers", config);
//! let clients: Vec<usize> = (0..3).map(|_| c.add_client(c.ids())).collect();
//! clients.iter().for_each(|&cl| c.set_client_active(cl, true));
//! c.run_for(2_000); // virtual milliseconds
//! c.net.partition(&[vec![1, 2], vec![3, 4, 5]]);
//! c.run_for(2_000);
//! c.crash(3); // loses what it had not synced
//! c.run_for(2_000);
//! c.net.heal();
//! c.start(3); // from its disk: snapshot, log, hard state
//! c.run_for(2_000);
//! clients.iter().for_each(|&cl| c.set_client_active(cl, false));
//! c.run_for(4_000); // let pending operations finish or give up
//! c.final_checks(); // the invariants also ran after every step
//! assert!(c.history.completed() > 100);
//! assert_eq!(check(&c.history), Verdict::Ok);
//! ```
//!
//! A check that cannot fail proves nothing: `crates/sim/tests/own_state_machine.rs` runs a
//! counter this way on many seeds, then plugs in a driver that answers reads from the local
//! state machine without ReadIndex (`skiff_sim::DriverBug::LocalReads`) and a state machine
//! that answers reads from its state before the last write, and requires the checker to report
//! both as not linearizable. The built-in key-value store is one more implementation
//! (`skiff_sim::kv::KvState`, the default), and its scenarios run the same way; a history
//! recorded elsewhere is checked directly:
//!
//! ```
//! use skiff_sim::cluster::{Cluster, ClusterConfig};
//! use skiff_sim::history::History;
//! use skiff_sim::kv::KvOp;
//! use skiff_sim::linearizability::{check, Verdict};
//!
//! // 1. A scenario on the key-value store: a leader crash under client load.
//! let mut c = Cluster::new(42, "MyScenario", ClusterConfig::lab(5, true));
//! let clients: Vec<usize> = (0..3).map(|_| c.add_client(c.ids())).collect();
//! clients.iter().for_each(|&cl| c.set_client_active(cl, true));
//! c.run_for(2_000);
//! let leader = c.ids().into_iter().find(|&n| c.status(n).is_some_and(|s| s.leader == Some(s.id)));
//! c.crash(leader.expect("a leader after 2 s"));
//! c.run_for(3_000);
//! clients.iter().for_each(|&cl| c.set_client_active(cl, false));
//! c.run_for(3_000);
//! c.final_checks();
//! assert_eq!(check(&c.history), Verdict::Ok);
//!
//! // 2. A history from your own system: a read that missed a completed write is caught.
//! let mut h = History::default();
//! let put = h.invoke(1, "x", KvOp::Put("1".into()), 0);
//! h.complete(put, None, 1);
//! let get = h.invoke(2, "x", KvOp::Get, 2); // starts after the put completed ...
//! h.complete(get, Some(String::new()), 3); // ... and saw nothing: a stale read
//! assert!(matches!(check(&h), Verdict::Violation(_)));
//! ```
//!
//! What the simulator does not take is your driver code: it drives the core with its own
//! (`skiff_sim::host` and `cluster`), which follows this guide step for step. Test yours by
//! following the same contract, and by recording its histories for the checker as above.
//!
//! # Map of the crate
//!
//! What you use to run a node: [`RawNode`], [`Config`], [`InitialState`], [`Ready`],
//! [`Message`], the log vocabulary ([`Entry`], [`EntryId`], [`Term`], [`Index`], [`NodeId`],
//! [`HardState`], [`SnapshotMeta`], [`Membership`]) and the error types. The public modules
//! ([`log`], [`progress`], [`quorum`], [`read`], [`lease`], [`snapshot`], [`membership`]) are
//! the pure pieces the node is built from, exposed for checkers, simulators and tests: read
//! them to understand a decision, you do not need them to drive a node.
#![deny(missing_docs)]

mod config;
mod election;
mod errors;
mod follower;
pub mod lease;
pub mod log;
pub mod membership;
mod message;
mod node;
mod output;
pub mod progress;
pub mod quorum;
pub mod read;
mod reads;
mod replication;
mod rng;
mod role;
pub mod snapshot;
mod types;

pub use config::{Config, ConfigError, ReadOnlyOption};
pub use errors::{CompactError, ProposeError, ReadError, StartError, StepError};
pub use membership::{MembershipError, TransferError};
pub use message::{Message, MessageBody, RejectHint};
pub use node::RawNode;
pub use output::{InitialState, Ready, Status};
pub use types::{
    Entry, EntryId, EntryKind, HardState, Index, Membership, MembershipChange, NodeId, ReadCtx,
    ReadState, Role, SnapshotChunk, SnapshotMeta, SoftState, Term, ENTRY_OVERHEAD_BYTES,
};
