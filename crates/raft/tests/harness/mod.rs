//! An in-memory cluster of real `RawNode`s for the core's tests: synchronous persistence,
//! a message queue the test controls, partitions, restarts, and a textual trace of every
//! batch and message for golden-trace tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use skiff_raft::{
    Config, Entry, EntryId, EntryKind, HardState, Index, InitialState, Membership, Message,
    MessageBody, NodeId, RawNode, ReadState, Ready, SnapshotMeta, Term,
};

/// What a node has on its "disk": hard state, the log after the snapshot, the snapshot (its
/// bytes encode the applied entries) and a staging area for an incoming one.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    pub staging: Option<(SnapshotMeta, Vec<u8>)>,
}

impl Disk {
    fn offset(&self) -> EntryId {
        self.snapshot
            .as_ref()
            .map_or(EntryId::default(), |(m, _)| m.last)
    }

    /// Applies a batch's writes in `Ready`'s order; returns the restored state machine if it
    /// installs a snapshot. Panics on a batch a store could not apply.
    pub fn write(&mut self, rd: &Ready) -> Option<Vec<Entry>> {
        for chunk in &rd.snapshot_chunks {
            if chunk.offset == 0 {
                self.staging = Some((chunk.meta.clone(), Vec::new()));
            }
            let (meta, bytes) = self.staging.as_mut().expect("staging started at offset 0");
            assert_eq!(meta, &chunk.meta, "chunk of another snapshot");
            assert_eq!(
                bytes.len() as u64,
                chunk.offset,
                "chunks staged out of order"
            );
            bytes.extend_from_slice(&chunk.data);
        }
        let mut restored = None;
        if let Some(meta) = &rd.snapshot {
            let (staged_meta, bytes) = self.staging.take().expect("a staged snapshot");
            assert_eq!(&staged_meta, meta);
            assert_eq!(bytes.len() as u64, meta.size_bytes, "snapshot incomplete");
            let last = meta.last;
            let keep_suffix = self
                .entries
                .iter()
                .any(|e| e.index == last.index && e.term == last.term);
            if keep_suffix {
                self.entries.retain(|e| e.index > last.index);
            } else {
                self.entries.clear();
            }
            restored = Some(decode_state(&bytes));
            self.snapshot = Some((meta.clone(), bytes));
        }
        if let Some(hs) = rd.hard_state {
            self.hard_state = hs;
        }
        if let Some(first) = rd.entries.first() {
            let keep = (first.index.0 - self.offset().index.0 - 1) as usize;
            assert!(keep <= self.entries.len(), "gap in persisted log");
            self.entries.truncate(keep);
            self.entries.extend(rd.entries.iter().cloned());
        }
        restored
    }

    /// Drops entries covered by the snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta, bytes: Vec<u8>) {
        self.entries.retain(|e| e.index > meta.last.index);
        self.snapshot = Some((meta, bytes));
    }
}

/// The harness state machine is the list of applied entries; a snapshot encodes it.
pub fn encode_state(applied: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in applied {
        let kind = if e.kind == EntryKind::Noop { 0u8 } else { 1u8 };
        out.extend_from_slice(&e.index.0.to_le_bytes());
        out.extend_from_slice(&e.term.0.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
    }
    out
}

pub fn decode_state(mut b: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let index = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let term = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let kind = if b[16] == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Normal
        };
        let len = u32::from_le_bytes(b[17..21].try_into().expect("4 bytes")) as usize;
        out.push(Entry {
            term: Term(term),
            index: Index(index),
            kind,
            data: b[21..21 + len].to_vec(),
        });
        b = &b[21 + len..];
    }
    out
}

pub fn nid(id: u64) -> NodeId {
    NodeId::new(id).expect("non-zero id")
}

pub fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        term: Term(term),
        index: Index(index),
        kind: EntryKind::Normal,
        data: data.as_bytes().to_vec(),
    }
}

/// Entries 1.. with the given terms.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t, ""))
        .collect()
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, RawNode>,
    pub configs: BTreeMap<u64, Config>,
    pub disks: BTreeMap<u64, Disk>,
    pub membership: Membership,
    /// Messages sent and not yet delivered, in send order.
    pub queue: Vec<Message>,
    /// Directed links that drop everything: (from, to).
    pub cut: BTreeSet<(u64, u64)>,
    /// Crashed nodes: neither tick, nor receive.
    pub down: BTreeSet<u64>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub reads: BTreeMap<u64, Vec<ReadState>>,
    pub failed_reads: BTreeMap<u64, Vec<u64>>,
    /// Count of messages delivered, by kind name.
    pub delivered: BTreeMap<&'static str, u64>,
    pub trace: String,
    /// When false, batches and messages are not traced.
    pub verbose: bool,
}

impl Cluster {
    /// `n` voters 1..=n with a config adjusted by `tweak`.
    pub fn new(n: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let ids: Vec<u64> = (1..=n).collect();
        let mut c = Cluster::empty(&ids);
        for &id in &ids {
            let mut cfg = Config::new(nid(id));
            cfg.seed = 42;
            tweak(&mut cfg);
            c.start(id, cfg, Disk::default());
        }
        c
    }

    pub fn empty(voters: &[u64]) -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            disks: BTreeMap::new(),
            membership: Membership::new(voters.iter().map(|&i| nid(i))),
            queue: Vec::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            failed_reads: BTreeMap::new(),
            delivered: BTreeMap::new(),
            trace: String::new(),
            verbose: true,
        }
    }

    /// Starts (or restarts) node `id` from `disk`. The harness state machine survives
    /// restarts (as if it were durable), so the node resumes at what it applied.
    pub fn start(&mut self, id: u64, cfg: Config, disk: Disk) {
        let applied = self
            .applied
            .get(&id)
            .map_or(0, |a| a.last().map_or(0, |e| e.index.0));
        let snapshot = disk.snapshot.as_ref().map(|(m, _)| m.clone());
        let state = InitialState {
            hard_state: disk.hard_state,
            membership: self.membership.clone(),
            snapshot: disk.offset(),
            entries: disk.entries.clone(),
            applied: Index(applied).max(disk.offset().index),
        };
        let mut node = RawNode::new(cfg.clone(), state).expect("valid start");
        if let Some(meta) = snapshot {
            node.compact(meta).expect("restart snapshot is valid");
        }
        self.nodes.insert(id, node);
        self.configs.insert(id, cfg);
        self.disks.insert(id, disk);
        self.down.remove(&id);
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Starts a brand-new node `id` that joins the cluster: an empty log and the cluster's
    /// initial configuration (it learns later ones from the leader's log).
    pub fn add_node(&mut self, id: u64) {
        let mut cfg = self.configs.values().next().expect("a node").clone();
        cfg.id = nid(id);
        self.start(id, cfg, Disk::default());
    }

    /// Crash: the node stops; in-flight messages to it are lost. Its disk stays (writes here are
    /// synchronous, so nothing unsynced is lost).
    pub fn crash(&mut self, id: u64) {
        self.down.insert(id);
        self.queue.retain(|m| m.to.get() != id);
    }

    pub fn restart(&mut self, id: u64) {
        let cfg = self.configs[&id].clone();
        let disk = self.disks[&id].clone();
        self.start(id, cfg, disk);
    }

    pub fn isolate(&mut self, id: u64) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Only nodes within the same group can talk.
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        self.cut.clear();
        let group_of = |id: u64| groups.iter().position(|g| g.contains(&id));
        for &a in self.nodes.keys() {
            for &b in self.nodes.keys() {
                if a != b && group_of(a) != group_of(b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handles one ready batch of `id`, if any. Returns whether there was one.
    pub fn process_ready(&mut self, id: u64) -> bool {
        if self.down.contains(&id) {
            return false;
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.has_ready() {
            return false;
        }
        let rd = node.ready();
        if self.verbose {
            let _ = writeln!(self.trace, "> {id} handling Ready");
            self.trace.push_str(&format_ready(&rd));
        }
        let disk = self.disks.get_mut(&id).expect("disk");
        if let Some(state) = disk.write(&rd) {
            // Installed a snapshot: the state machine is the snapshot's.
            self.applied.insert(id, state);
        }
        let disk = &self.disks[&id];
        for m in rd.messages.iter().chain(&rd.persisted_messages) {
            let mut m = m.clone();
            if let MessageBody::InstallSnapshot {
                meta,
                offset,
                len,
                data,
            } = &mut m.body
            {
                // The edge fills snapshot chunks from its current snapshot, or drops them.
                match &disk.snapshot {
                    Some((current, bytes)) if current == meta => {
                        *data = bytes[*offset as usize..(*offset + *len) as usize].to_vec();
                    }
                    _ => continue,
                }
            }
            self.queue.push(m);
        }
        let applied = self.applied.entry(id).or_default();
        for e in &rd.committed_entries {
            if let Some(last) = applied.last() {
                assert_eq!(e.index, last.index.next(), "apply gap at node {id}");
            }
            applied.push(e.clone());
        }
        self.reads
            .entry(id)
            .or_default()
            .extend(rd.read_states.iter().copied());
        self.failed_reads
            .entry(id)
            .or_default()
            .extend(rd.failed_reads.iter().map(|c| c.0));
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.advance(rd.number);
        node.check_invariants();
        true
    }

    /// Delivers every queued message addressed to `to` (or all, if `None`), in order. Messages
    /// over cut links or to crashed nodes are dropped. Returns the number delivered.
    pub fn deliver(&mut self, to: Option<u64>) -> usize {
        let (now, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|m| to.is_none_or(|t| m.to.get() == t));
        self.queue = later;
        let mut n = 0;
        for m in now {
            let (from, dest) = (m.from.get(), m.to.get());
            if self.cut.contains(&(from, dest)) || self.down.contains(&dest) {
                if self.verbose {
                    let _ = writeln!(self.trace, "  dropped: {}", format_msg(&m));
                }
                continue;
            }
            if self.verbose {
                let _ = writeln!(self.trace, "  deliver: {}", format_msg(&m));
            }
            *self.delivered.entry(m.body.name()).or_default() += 1;
            let node = self.nodes.get_mut(&dest).expect("node exists");
            node.step(m).expect("well-addressed message");
            node.check_invariants();
            n += 1;
        }
        n
    }

    /// Processes batches and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                while self.process_ready(id) {
                    moved = true;
                }
            }
            if self.deliver(None) > 0 {
                moved = true;
            }
            if !moved && self.queue.is_empty() {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    pub fn tick(&mut self, id: u64, n: u64) {
        if self.down.contains(&id) {
            return;
        }
        for _ in 0..n {
            self.node(id).tick();
        }
    }

    /// Ticks every live node once, then stabilizes.
    pub fn tick_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.tick(id, 1);
        }
        self.stabilize();
    }

    /// Lets one election timeout pass on every node with all links cut, so that nodes that
    /// refuse votes right after a start (lease reads on) vote again. Pre-votes started meanwhile
    /// go nowhere; with PreVote off, terms may rise.
    pub fn pass_startup(&mut self) {
        let saved = std::mem::take(&mut self.cut);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            self.isolate(id);
        }
        for &id in &ids {
            let e = self.configs[&id].election_ticks;
            self.tick(id, e);
        }
        self.stabilize();
        self.cut = saved;
    }

    /// Campaigns at `id` and stabilizes; returns whether it became leader.
    pub fn elect(&mut self, id: u64) -> bool {
        self.node(id).campaign();
        self.stabilize();
        self.nodes[&id].status().role == skiff_raft::Role::Leader
    }

    /// The one leader among live nodes with the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .filter(|(_, n)| n.status().role == skiff_raft::Role::Leader)
            .max_by_key(|(_, n)| n.status().term)
            .map(|(&id, _)| id)
    }

    /// Terms of the node's log, as "index/term" of every entry.
    pub fn log_terms(&self, id: u64) -> Vec<u64> {
        let log = self.nodes[&id].log();
        let last = log.last_index();
        if last < log.first_index() {
            return Vec::new();
        }
        log.slice(log.first_index(), last, u64::MAX)
            .iter()
            .map(|e| e.term.0)
            .collect()
    }

    pub fn applied_data(&self, id: u64) -> Vec<String> {
        self.applied
            .get(&id)
            .map(|es| {
                es.iter()
                    .filter(|e| e.kind == EntryKind::Normal)
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes a snapshot of node `id` at its applied index and compacts its log.
    pub fn compact(&mut self, id: u64) -> SnapshotMeta {
        let applied = self.applied.get(&id).cloned().unwrap_or_default();
        let node = &self.nodes[&id];
        let index = node.status().applied;
        let term = node.log().term(index).expect("applied entry in log");
        let bytes = encode_state(&applied);
        let meta = SnapshotMeta {
            last: EntryId { term, index },
            membership: node.log().membership_at(index).clone(),
            size_bytes: bytes.len() as u64,
        };
        self.node(id)
            .compact(meta.clone())
            .expect("compact at applied");
        self.disks
            .get_mut(&id)
            .expect("disk")
            .compact(meta.clone(), bytes);
        meta
    }

    pub fn take_trace(&mut self) -> String {
        std::mem::take(&mut self.trace)
    }
}

pub fn format_entry(e: &Entry) -> String {
    match &e.kind {
        EntryKind::Noop => format!("{}/{} noop", e.index, e.term),
        EntryKind::Membership(m) => format!("{}/{} conf {}", e.index, e.term, format_membership(m)),
        EntryKind::Normal if e.data.is_empty() => format!("{}/{}", e.index, e.term),
        EntryKind::Normal => format!(
            "{}/{} {}",
            e.index,
            e.term,
            String::from_utf8_lossy(&e.data)
        ),
    }
}

fn format_entries(es: &[Entry]) -> String {
    es.iter().map(format_entry).collect::<Vec<_>>().join(", ")
}

pub fn format_membership(m: &skiff_raft::Membership) -> String {
    let list = |s: &std::collections::BTreeSet<NodeId>| {
        s.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = format!("voters=({})", list(&m.voters));
    if m.is_joint() {
        out += &format!("&&({})", list(&m.voters_outgoing));
    }
    if !m.learners.is_empty() {
        out += &format!(" learners=({})", list(&m.learners));
    }
    out
}

pub fn format_msg(m: &Message) -> String {
    let head = format!("{}->{} {} term={}", m.from, m.to, m.body.name(), m.term);
    let rest = match &m.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => format!(" last={last_log_index}/{last_log_term}"),
        MessageBody::Vote {
            last_log_index,
            last_log_term,
            leader_transfer,
        } => format!(
            " last={last_log_index}/{last_log_term}{}",
            if *leader_transfer { " transfer" } else { "" }
        ),
        MessageBody::TimeoutNow => String::new(),
        MessageBody::PreVoteResp { reject } | MessageBody::VoteResp { reject } => {
            if *reject {
                " rejected".to_string()
            } else {
                " granted".to_string()
            }
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => format!(
            " prev={prev_index}/{prev_term} commit={commit} entries=[{}]",
            format_entries(entries)
        ),
        MessageBody::AppendResp { index, reject } => match reject {
            None => format!(" index={index}"),
            Some(h) => format!(
                " rejected index={index} hint={}/{}",
                h.conflict_index,
                h.conflict_term.map_or("-".to_string(), |t| t.to_string())
            ),
        },
        MessageBody::Heartbeat { commit, read_round } => {
            format!(" commit={commit} read_round={read_round}")
        }
        MessageBody::HeartbeatResp { read_round } => format!(" read_round={read_round}"),
        MessageBody::ReadIndex { ctx } => format!(" ctx={}", ctx.0),
        MessageBody::ReadIndexResp { ctx, index } => format!(
            " ctx={} index={}",
            ctx.0,
            index.map_or("none".to_string(), |i| i.to_string())
        ),
        MessageBody::InstallSnapshot {
            meta, offset, len, ..
        } => format!(
            " snap={}/{} size={} offset={offset} len={len}",
            meta.last.index, meta.last.term, meta.size_bytes
        ),
        MessageBody::SnapshotResp {
            last,
            offset,
            reject,
        } => format!(
            " snap={}/{} offset={offset}{}",
            last.index,
            last.term,
            if *reject { " rejected" } else { "" }
        ),
    };
    head + &rest
}

pub fn format_ready(rd: &Ready) -> String {
    let mut s = String::new();
    if let Some(ss) = rd.soft_state {
        let leader = ss.leader.map_or("none".to_string(), |l| l.to_string());
        let _ = writeln!(s, "  role: {:?} term={} leader={leader}", ss.role, ss.term);
    }
    if let Some(hs) = rd.hard_state {
        let vote = hs.vote.map_or("none".to_string(), |v| v.to_string());
        let _ = writeln!(
            s,
            "  hard state: term={} vote={vote} commit={}",
            hs.term, hs.commit
        );
    }
    for c in &rd.snapshot_chunks {
        let _ = writeln!(
            s,
            "  stage: snap={}/{} offset={} len={}",
            c.meta.last.index,
            c.meta.last.term,
            c.offset,
            c.data.len()
        );
    }
    if let Some(m) = &rd.snapshot {
        let _ = writeln!(
            s,
            "  install snapshot: {}/{} size={}",
            m.last.index, m.last.term, m.size_bytes
        );
    }
    if !rd.entries.is_empty() {
        let _ = writeln!(s, "  persist: [{}]", format_entries(&rd.entries));
    }
    for m in &rd.messages {
        let _ = writeln!(s, "  send: {}", format_msg(m));
    }
    for m in &rd.persisted_messages {
        let _ = writeln!(s, "  send after persist: {}", format_msg(m));
    }
    if !rd.committed_entries.is_empty() {
        let _ = writeln!(s, "  apply: [{}]", format_entries(&rd.committed_entries));
    }
    for r in &rd.read_states {
        let _ = writeln!(s, "  read ready: ctx={} index={}", r.ctx.0, r.index);
    }
    for c in &rd.failed_reads {
        let _ = writeln!(s, "  read failed: ctx={}", c.0);
    }
    s
}
