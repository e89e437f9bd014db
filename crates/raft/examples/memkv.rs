//! A replicated in-memory key-value store: three Raft nodes in one process, a thread each,
//! talking through channels. Proposals, ReadIndex reads on a follower, a leader crash, log
//! compaction, and the crashed node catching up from a snapshot sent in chunks. Run it with
//! `cargo run -p skiff-raft --example memkv`; it panics (exit code 101) if a check fails.
use skiff_raft::{Config, EntryKind, InitialState, Message, MessageBody, NodeId};
use skiff_raft::{RawNode, ReadCtx, SnapshotMeta};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(10);
const SNAPSHOT_EVERY: u64 = 8; // applied entries between two snapshots
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);
type Reply = Sender<String>; // a node's answer; dropped unanswered if the request failed
enum Input {
    Raft(Message),
    Put(String, Reply), // a `key=value` line
    Get(String, Reply),
    Crash(Sender<(Disk, Receiver<Input>)>), // stop; hand back the disk and the inbox
}
type Net = Vec<Sender<Input>>; // node `id`'s inbox is `net[id - 1]`; it waits while down

/// What a node keeps on disk; here memory that a crashed node's thread hands back.
#[derive(Default)]
struct Disk {
    hard_state: skiff_raft::HardState,
    entries: Vec<skiff_raft::Entry>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}
/// Commands and snapshots are `key=value` lines.
fn decode(bytes: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(bytes);
    let pairs = text.lines().filter_map(|line| line.split_once('='));
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
/// Sends messages, filling snapshot chunks from the snapshot they name (dropped if replaced).
fn send(net: &Net, msgs: Vec<Message>, snap: &Option<(SnapshotMeta, Vec<u8>)>) {
    for mut m in msgs {
        if let MessageBody::InstallSnapshot {
            meta,
            offset,
            len,
            data,
        } = &mut m.body
        {
            let Some((_, bytes)) = snap.as_ref().filter(|(cur, _)| cur == meta) else {
                continue;
            };
            *data = bytes[*offset as usize..][..*len as usize].to_vec();
        }
        let _ = net[m.to.get() as usize - 1].send(Input::Raft(m));
    }
}

fn run_node(id: u64, mut disk: Disk, inbox: Receiver<Input>, net: Net) {
    let mut state = InitialState::new_cluster([1, 2, 3].map(|i| NodeId::new(i).expect("> 0")));
    let mut kv = BTreeMap::new();
    if let Some((meta, bytes)) = &disk.snapshot {
        (state.membership, state.snapshot) = (meta.membership.clone(), meta.last);
        (state.applied, kv) = (meta.last.index, decode(bytes));
    }
    (state.hard_state, state.entries) = (disk.hard_state, disk.entries.clone());
    let mut cfg = Config::new(NodeId::new(id).expect("> 0"));
    cfg.snapshot_chunk_bytes = 64; // small chunks, to show several
    let mut node = RawNode::new(cfg, state).expect("valid state");
    if let Some((meta, _)) = &disk.snapshot {
        node.compact(meta.clone()).expect("the log starts there");
    }
    let (mut staged, mut next_tick, mut ctx) = (Vec::new(), Instant::now() + TICK, 0);
    let (mut proposals, mut reads) = (BTreeMap::new(), BTreeMap::new());
    loop {
        match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Input::Raft(m)) => node.step(m).unwrap_or(()), // not for us: dropped
            Ok(Input::Put(cmd, reply)) => {
                let at = node.propose(cmd.into_bytes()); // refused: `reply` is dropped
                _ = at.map(|at| proposals.insert(at.index, (at, reply)));
            }
            Ok(Input::Get(k, reply)) => {
                ctx += 1;
                _ = node
                    .read_index(ReadCtx(ctx))
                    .map(|()| reads.insert(ReadCtx(ctx), (k, reply)));
            }
            Ok(Input::Crash(back)) => return back.send((disk, inbox)).unwrap_or(()),
            Err(_) => {
                node.tick(); // a timeout (every node holds every sender: never Disconnected)
                next_tick += TICK;
            }
        }
        if !node.has_ready() {
            continue;
        }
        let rd = node.ready();
        send(&net, rd.messages, &disk.snapshot); // 1. may leave before anything is durable
        for c in rd.snapshot_chunks {
            staged.truncate(c.offset as usize); // 2. stage chunks; offset 0 starts over
            staged.extend(c.data);
        }
        if let Some(meta) = rd.snapshot {
            let (at, n) = (meta.last.index, meta.size_bytes.div_ceil(64)); // chunks of 64 bytes
            println!("  node {id}: installs a snapshot through index {at}, sent in {n} chunks");
            SNAPSHOTS_INSTALLED.fetch_add(1, SeqCst);
            kv = decode(&staged);
            // Entries after the snapshot stay only if the log matches it at its last entry.
            let keep = disk.entries.iter().any(|e| e.id() == meta.last);
            disk.entries.retain(|e| keep && e.index > meta.last.index);
            disk.snapshot = Some((meta, std::mem::take(&mut staged)));
        }
        disk.hard_state = rd.hard_state.unwrap_or(disk.hard_state); // 3. persist, then sync
        let kept = |e: &skiff_raft::Entry| rd.entries.first().is_none_or(|f| e.index < f.index);
        disk.entries.retain(kept); // the batch's entries replace the log from their first on
        disk.entries.extend(rd.entries);
        send(&net, rd.persisted_messages, &disk.snapshot); // 4. only after the sync
        let applied = rd.committed_entries.last().map(|e| e.id());
        for e in rd.committed_entries {
            if e.kind == EntryKind::Normal {
                kv.extend(decode(&e.data)); // 5. apply, answer the proposer
            }
            if let Some((_, reply)) = proposals.remove(&e.index).filter(|(at, _)| *at == e.id()) {
                let _ = reply.send(format!("committed at index {}", e.index)); // else dropped
            }
        }
        for rs in rd.read_states {
            let (k, reply) = reads.remove(&rs.ctx).expect("a read we asked for");
            let _ = reply.send(kv.get(&k).cloned().unwrap_or_default()); // 6. serve reads
        }
        rd.failed_reads.iter().for_each(|ctx| _ = reads.remove(ctx));
        node.advance(rd.number);
        // The application decides when to snapshot; the core then drops the entries it covers.
        let since = disk.snapshot.as_ref().map_or(0, |(m, _)| m.last.index.0);
        if let Some(last) = applied.filter(|l| l.index.0 >= since + SNAPSHOT_EVERY) {
            let bytes: String = kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let (membership, size_bytes) = (node.log().membership_at(last.index), bytes.len());
            let meta = SnapshotMeta {
                last,
                membership: membership.clone(),
                size_bytes: size_bytes as u64,
            };
            disk.snapshot = Some((meta.clone(), bytes.into_bytes())); // durable first
            disk.entries.retain(|e| e.index > last.index);
            println!("  node {id}: took a snapshot through index {}", last.index);
            node.compact(meta).expect("a snapshot at the applied index");
        }
    }
}

/// Sends a request to `nodes` in turn until one answers; returns which did, and the answer.
fn call(net: &Net, nodes: &[u64], what: &str, req: impl Fn(Reply) -> Input) -> (u64, String) {
    for &n in nodes.iter().cycle().take(40) {
        let (tx, rx) = channel();
        let _ = net[n as usize - 1].send(req(tx));
        if let Ok(value) = rx.recv_timeout(Duration::from_millis(500)) {
            println!("{what} at node {n}: {value}");
            return (n, value);
        }
        std::thread::sleep(TICK); // refused or lost: try the next node
    }
    panic!("{what}: no answer in 40 tries")
}

fn main() {
    let (net, inboxes): (Net, Vec<_>) = (0..3).map(|_| channel()).unzip();
    let start = |id: u64, disk: Disk, inbox| {
        let net = net.clone();
        std::thread::spawn(move || run_node(id, disk, inbox, net));
    };
    (1..)
        .zip(inboxes)
        .for_each(|(id, inbox)| start(id, Disk::default(), inbox));
    let put =
        |to: &[u64], kv: &str| call(&net, to, &format!("put {kv}"), |r| Input::Put(kv.into(), r));
    let check = |n: u64, k: &str, want: &str| {
        let (_, got) = call(&net, &[n], &format!("get {k}"), |r| Input::Get(k.into(), r));
        assert_eq!(got, want, "a linearizable read of {k} at node {n}");
    };
    println!("three nodes started; only the leader takes proposals, reads go through ReadIndex");
    let (leader, _) = put(&[1, 2, 3], "fruit=apple");
    check(leader % 3 + 1, "fruit", "apple"); // a follower: it asks the leader for an index
    for i in 0..SNAPSHOT_EVERY {
        put(&[leader], &format!("k{i}={i}")); // the leader takes a snapshot
    }
    println!("crashing the leader, node {leader}");
    let (tx, rx) = channel();
    let _ = net[leader as usize - 1].send(Input::Crash(tx));
    let (disk, inbox) = rx.recv().expect("the crashed node's disk");
    let rest: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    for i in SNAPSHOT_EVERY..3 * SNAPSHOT_EVERY {
        put(&rest, &format!("k{i}={i}")); // enough to compact the log twice
    }
    put(&rest, "fruit=banana");
    println!("restarting node {leader} from its snapshot and log; the others compacted theirs");
    start(leader, disk, inbox);
    check(leader, "fruit", "banana"); // the latest write, made while it was down
    check(leader, "k3", "3"); // a write from before the crash, compacted everywhere
    assert_ne!(SNAPSHOTS_INSTALLED.load(SeqCst), 0, "no snapshot installed"); // caught up by one
    println!("done: every read saw the latest write"); // the node threads end with the process
}
