//! Skiff's Raft core driven from tokio, on the durable log of `skiff-storage`: three nodes as
//! tasks in one process, each with its own data dir (a segmented, checksummed write-ahead log
//! and snapshot files), talking through channels. It shows a `Ready` handled in the
//! durability order with real `fdatasync`s, snapshots saved to files and the log compacted
//! behind them, a node killed and restarted from its data dir that catches up from the
//! leader's snapshot file in chunks, and the whole cluster killed and restarted with every
//! acknowledged write still there.
//!
//! `cargo run -p skiff-storage --example tokio_kv`; it exits non-zero if a check fails.
//! (Inside this workspace the core's crate is imported as `raft`; as a dependency of your
//! own crate it is `skiff_raft`.)
use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::{Config, EntryId, EntryKind, Index, Membership, Message, MessageBody, NodeId};
use raft::{RawNode, ReadCtx};
use skiff_storage::{Identity, Options, Store, SEGMENT_BYTES_MIN};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
/// A node's answer to a client; dropped unanswered when the request failed: retry.
type Reply = oneshot::Sender<String>;
enum Input {
    Raft(Message),
    Put(String, Reply), // a `key=value` line
    Get(String, Reply),
}
/// Every running node's inbox. A message to a node that is down is lost.
type Net = Arc<Mutex<BTreeMap<u64, mpsc::UnboundedSender<Input>>>>;

const VOTERS: [u64; 3] = [1, 2, 3];
const TICK: Duration = Duration::from_millis(10);
const SNAPSHOT_EVERY: u64 = 16; // applied entries past the log start before a snapshot
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);

fn node_id(id: u64) -> NodeId {
    NodeId::new(id).expect("ids start at 1")
}

/// Commands and snapshots are `key=value` lines.
fn decode(bytes: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(bytes);
    let pairs = text.lines().filter_map(|line| line.split_once('='));
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One node: the core, its durable log, and an in-memory state machine rebuilt at start from
/// the newest snapshot plus the committed entries after it.
struct Node {
    raw: RawNode,
    store: Store,
    kv: BTreeMap<String, String>,
    net: Net,
    /// Writes waiting to be applied: where the core put them, and who to answer.
    proposals: BTreeMap<Index, (EntryId, Reply)>,
    /// Reads waiting for the core's go-ahead.
    reads: BTreeMap<ReadCtx, (String, Reply)>,
    next_ctx: u64,
}

impl Node {
    /// Opens (or creates) the data dir and starts the core from what it holds.
    fn open(dir: &Path, id: u64, net: Net) -> Result<Node> {
        let identity = Identity {
            cluster_id: 1,
            node_id: node_id(id),
        };
        let mut options = Options::new(identity);
        options.segment_bytes = SEGMENT_BYTES_MIN; // small segments: compaction deletes files
        let (mut store, recovered) = Store::open(dir, options)?;
        if recovered.created {
            store.set_membership(&Membership::new(VOTERS.map(node_id)))?;
        }
        let snapshot = store.load_snapshot()?; // read whole: fine for a small example
        let (mut kv, mut applied) = (BTreeMap::new(), Index(0));
        if let Some((meta, data)) = &snapshot {
            if meta.last.index > store.log_start().index {
                // A crash came between saving the snapshot and compacting the log behind it.
                let mut hs = store.hard_state();
                hs.commit = hs.commit.max(meta.last.index);
                store.reset_to_snapshot(meta.last, &hs)?;
            }
            (kv, applied) = (decode(data), meta.last.index);
        }
        let mut config = Config::new(node_id(id));
        config.snapshot_chunk_bytes = 256; // small chunks, to show several
        let mut raw = RawNode::new(config, skiff_storage::initial_state(&store, applied)?)?;
        if let Some((meta, data)) = snapshot {
            let size_bytes = data.len() as u64;
            let (last, membership) = (meta.last, meta.membership);
            raw.compact(raft::SnapshotMeta {
                last,
                membership,
                size_bytes,
            })?;
        }
        if let Some(staged) = store.staged() {
            // Part of a snapshot from the leader was staged before a crash: continue it.
            let (last, membership) = (staged.meta.last, staged.meta.membership.clone());
            let meta = raft::SnapshotMeta {
                last,
                membership,
                size_bytes: staged.total_bytes,
            };
            raw.resume_staged_snapshot(meta, staged.received_bytes);
        }
        let at = recovered.log_start.index;
        println!(
            "  node {id}: opened, log from index {at} to {}",
            recovered.last_index
        );
        let (proposals, reads) = (BTreeMap::new(), BTreeMap::new());
        Ok(Node {
            raw,
            store,
            kv,
            net,
            proposals,
            reads,
            next_ctx: 0,
        })
    }

    /// Sends messages, filling snapshot chunks from the snapshot file they name; a chunk of
    /// a snapshot that was replaced since is dropped (the core starts over with the new one).
    fn send(&self, msgs: Vec<Message>) {
        let net = self.net.lock().expect("net lock");
        for mut m in msgs {
            if let MessageBody::InstallSnapshot {
                meta,
                offset,
                len,
                data,
            } = &mut m.body
            {
                match self.store.snapshot_chunk(meta.last, *offset, *len) {
                    Ok(bytes) => *data = bytes,
                    Err(_) => continue,
                }
            }
            if let Some(inbox) = net.get(&m.to.get()) {
                let _ = inbox.send(Input::Raft(m));
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Raft(m) => self.raw.step(m).unwrap_or(()), // not for us: dropped
            Input::Put(cmd, reply) => {
                if let Ok(at) = self.raw.propose(cmd.into_bytes()) {
                    self.proposals.insert(at.index, (at, reply)); // refused: reply dropped
                }
            }
            Input::Get(key, reply) => {
                self.next_ctx += 1;
                let ctx = ReadCtx(self.next_ctx);
                if self.raw.read_index(ctx).is_ok() {
                    self.reads.insert(ctx, (key, reply));
                }
            }
        }
    }

    /// Handles one `Ready` in the durability order. Blocking (it syncs): run it with
    /// `block_in_place` or on a blocking thread.
    fn handle_ready(&mut self) -> Result<()> {
        let id = self.raw.id();
        let rd = self.raw.ready();
        // 1. Messages that promise nothing about our disk may leave at once.
        self.send(rd.messages);
        // 2. Stage snapshot chunks durably; install a complete snapshot.
        for c in &rd.snapshot_chunks {
            if c.offset == 0 {
                let meta = skiff_storage::SnapshotMeta {
                    last: c.meta.last,
                    membership: c.meta.membership.clone(),
                };
                self.store.stage_begin(&meta, c.meta.size_bytes)?;
            }
            self.store.stage_chunk(c.offset, &c.data)?;
        }
        if let Some(meta) = &rd.snapshot {
            self.store.stage_finish()?; // the staged file becomes the snapshot file
            let (_, data) = self.store.load_snapshot()?.ok_or("the snapshot vanished")?;
            self.kv = decode(&data);
            let mut hs = rd.hard_state.unwrap_or(self.store.hard_state());
            hs.commit = hs.commit.max(meta.last.index);
            self.store.reset_to_snapshot(meta.last, &hs)?; // the log restarts after it
            let (at, n) = (meta.last.index, meta.size_bytes.div_ceil(256));
            println!("  node {id}: installed the leader's snapshot through {at} ({n} chunks)");
            SNAPSHOTS_INSTALLED.fetch_add(1, SeqCst);
        }
        // 3. Persist: one synced WAL record. A batch that only moves the commit index needs
        //    no sync; the store writes it with the next record.
        if rd.must_sync {
            self.store.write(rd.hard_state.as_ref(), &rd.entries)?;
        } else if let Some(hs) = &rd.hard_state {
            self.store.write_commit(hs)?;
        }
        // 4. Votes and acknowledgements only now: they promise durable state.
        self.send(rd.persisted_messages);
        // 5. Apply, answer the proposers, then serve the reads released in this batch.
        for e in rd.committed_entries {
            if e.kind == EntryKind::Normal {
                self.kv.extend(decode(&e.data));
            }
            let waiting = self.proposals.remove(&e.index);
            if let Some((_, reply)) = waiting.filter(|(at, _)| *at == e.id()) {
                let _ = reply.send(format!("committed at index {}", e.index));
            }
        }
        for rs in rd.read_states {
            let (key, reply) = self
                .reads
                .remove(&rs.ctx)
                .ok_or("a read nobody asked for")?;
            let _ = reply.send(self.kv.get(&key).cloned().unwrap_or_default());
        }
        for ctx in &rd.failed_reads {
            self.reads.remove(ctx); // the client retries
        }
        self.raw.advance(rd.number);
        self.maybe_snapshot()
    }

    /// Every `SNAPSHOT_EVERY` applied entries: save a snapshot file (synced), then compact
    /// the WAL and the core's log behind it (paper §7).
    fn maybe_snapshot(&mut self) -> Result<()> {
        let applied = self.raw.status().applied;
        if applied.0 < self.store.log_start().index.0 + SNAPSHOT_EVERY {
            return Ok(());
        }
        let term = self
            .raw
            .log()
            .term(applied)
            .ok_or("the applied entry is not in the log")?;
        let last = EntryId {
            term,
            index: applied,
        };
        let membership = self.raw.log().membership_at(applied).clone();
        let data: String = self.kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let meta = skiff_storage::SnapshotMeta {
            last,
            membership: membership.clone(),
        };
        self.store.save_snapshot(&meta, data.as_bytes())?;
        self.store.compact(last)?;
        let size_bytes = data.len() as u64;
        self.raw.compact(raft::SnapshotMeta {
            last,
            membership,
            size_bytes,
        })?;
        println!(
            "  node {}: snapshot through index {applied}, log compacted",
            self.raw.id()
        );
        Ok(())
    }
}

/// A node's task: ticks, inputs, and a `Ready` whenever there is one.
async fn run(mut node: Node, mut inbox: mpsc::UnboundedReceiver<Input>) -> Result<()> {
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => node.raw.tick(),
            input = inbox.recv() => match input {
                Some(input) => node.on_input(input),
                None => return Ok(()),
            },
        }
        if node.raw.has_ready() {
            tokio::task::block_in_place(|| node.handle_ready())?;
        }
    }
}

/// Opens node `id` from its data dir and starts its task. An error in the task (a failed
/// disk) ends the process: a node must not go on after its storage failed.
fn start(net: &Net, root: &Path, id: u64) -> Result<JoinHandle<()>> {
    let node =
        tokio::task::block_in_place(|| Node::open(&root.join(id.to_string()), id, net.clone()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    net.lock().expect("net lock").insert(id, tx);
    Ok(tokio::spawn(async move {
        if let Err(e) = run(node, rx).await {
            eprintln!("node {id} failed: {e}");
            std::process::exit(1);
        }
    }))
}

/// Kills node `id`'s task, as a crash would: what it synced stays, nothing else happens.
async fn kill(net: &Net, tasks: &mut BTreeMap<u64, JoinHandle<()>>, id: u64) {
    net.lock().expect("net lock").remove(&id);
    if let Some(task) = tasks.remove(&id) {
        task.abort();
        let _ = task.await; // the store is dropped once the task is gone
    }
}

/// Sends a request to `nodes` in turn until one answers; returns which did, and the answer.
async fn call(net: &Net, nodes: &[u64], what: &str, req: impl Fn(Reply) -> Input) -> (u64, String) {
    for &n in nodes.iter().cycle().take(40) {
        let (tx, rx) = oneshot::channel();
        if let Some(inbox) = net.lock().expect("net lock").get(&n) {
            let _ = inbox.send(req(tx));
        }
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(500), rx).await {
            println!("{what} at node {n}: {answer}");
            return (n, answer);
        }
        tokio::time::sleep(TICK).await; // refused or lost: try the next node
    }
    panic!("{what}: no answer in 40 tries")
}

async fn put(net: &Net, nodes: &[u64], key: &str, value: &str) -> u64 {
    let what = format!("put {key}={value}");
    call(net, nodes, &what, |r| {
        Input::Put(format!("{key}={value}"), r)
    })
    .await
    .0
}

async fn check(net: &Net, node: u64, key: &str, want: &str) {
    let what = format!("get {key} (ReadIndex)");
    let (_, got) = call(net, &[node], &what, |r| Input::Get(key.to_string(), r)).await;
    assert_eq!(got, want, "a linearizable read of {key} at node {node}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (net, mut tasks) = (Net::default(), BTreeMap::new());
    for id in VOTERS {
        tasks.insert(id, start(&net, dir.path(), id)?);
    }
    let leader = put(&net, &VOTERS, "fruit", "apple").await;
    for i in 0..SNAPSHOT_EVERY {
        put(&net, &[leader], &format!("k{i}"), &i.to_string()).await;
    }
    let follower = leader % 3 + 1;
    check(&net, follower, "fruit", "apple").await;

    println!("killing node {follower}; the others go on and compact their logs");
    kill(&net, &mut tasks, follower).await;
    let rest: Vec<u64> = VOTERS.into_iter().filter(|&n| n != follower).collect();
    for i in SNAPSHOT_EVERY..3 * SNAPSHOT_EVERY {
        put(&net, &rest, &format!("k{i}"), &i.to_string()).await;
    }
    put(&net, &rest, "fruit", "banana").await;
    println!("restarting node {follower} from its data dir");
    tasks.insert(follower, start(&net, dir.path(), follower)?);
    check(&net, follower, "fruit", "banana").await;
    let installed = SNAPSHOTS_INSTALLED.load(SeqCst);
    assert!(
        installed > 0,
        "node {follower} caught up without the leader's snapshot"
    );

    println!("killing every node, then restarting them all from their data dirs");
    for id in VOTERS {
        kill(&net, &mut tasks, id).await;
    }
    for id in VOTERS {
        tasks.insert(id, start(&net, dir.path(), id)?);
    }
    for id in VOTERS {
        check(&net, id, "fruit", "banana").await;
        check(&net, id, "k40", "40").await;
    }
    println!("done: every acknowledged write survived the crashes");
    Ok(())
}
