//! Scripted golden-trace tests (datadriven style, as in etcd-io/raft). Each file under
//! `tests/testdata/` is a sequence of blocks:
//!
//! ```text
//! # comment
//! command arg key=value
//! ----
//! expected output (no blank lines)
//! ```
//!
//! The output of every command is the full trace of the batches and messages it caused. To
//! regenerate the expected outputs after an intended behaviour change, run
//! `SKIFF_REWRITE=1 cargo test -p skiff-raft --test datadriven` and review the diff.

mod harness;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use harness::{entries_with_terms, format_entry, nid, Cluster, Disk};
use skiff_raft::{Config, HardState, Index, MembershipChange, ReadCtx, ReadOnlyOption, Term};

struct Block {
    comments: Vec<String>,
    command: String,
    expected: String,
}

fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().peekable();
    let mut comments = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            comments.push(line.to_string());
            continue;
        }
        let command = line.to_string();
        let sep = lines.next().unwrap_or_default();
        assert_eq!(sep, "----", "expected ---- after command {command:?}");
        let mut expected = String::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() {
                break;
            }
            expected.push_str(l);
            expected.push('\n');
            lines.next();
        }
        blocks.push(Block {
            comments: std::mem::take(&mut comments),
            command,
            expected,
        });
    }
    blocks
}

struct Args {
    positional: Vec<String>,
    named: BTreeMap<String, String>,
}

impl Args {
    fn parse(words: &[&str]) -> Args {
        let mut positional = Vec::new();
        let mut named = BTreeMap::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) => {
                    named.insert(k.to_string(), v.to_string());
                }
                None => positional.push(w.to_string()),
            }
        }
        Args { positional, named }
    }

    fn id(&self, i: usize) -> u64 {
        self.positional[i].parse().expect("numeric id")
    }

    fn ids(&self) -> Vec<u64> {
        (0..self.positional.len()).map(|i| self.id(i)).collect()
    }

    fn u64_or(&self, key: &str, default: u64) -> u64 {
        self.named
            .get(key)
            .map_or(default, |v| v.parse().expect("number"))
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.named
            .get(key)
            .map_or(default, |v| v.parse().expect("bool"))
    }

    fn list(&self, key: &str) -> Vec<u64> {
        self.named.get(key).map_or(Vec::new(), |v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("number"))
                .collect()
        })
    }
}

fn run_command(c: &mut Option<Cluster>, command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let args = Args::parse(&words[1..]);
    if words[0] == "add-nodes" {
        let n = args.id(0);
        let pre_vote = args.bool_or("pre-vote", true);
        let check_quorum = args.bool_or("check-quorum", true);
        let election = args.u64_or("election", 10);
        let heartbeat = args.u64_or("heartbeat", 1);
        let lease = args.bool_or("lease", false);
        let defaults = Config::new(nid(1));
        let msg_bytes_max = args.u64_or("msg-bytes-max", defaults.msg_bytes_max);
        let chunk_bytes = args.u64_or("snapshot-chunk-bytes", defaults.snapshot_chunk_bytes);
        let chunks_inflight = args.u64_or(
            "snapshot-chunks-inflight",
            defaults.snapshot_chunks_inflight_max,
        );
        *c = Some(Cluster::new(n, |cfg: &mut Config| {
            cfg.msg_bytes_max = msg_bytes_max;
            cfg.snapshot_chunk_bytes = chunk_bytes;
            cfg.snapshot_chunks_inflight_max = chunks_inflight;
            cfg.pre_vote = pre_vote;
            cfg.check_quorum = check_quorum;
            cfg.election_ticks = election;
            cfg.heartbeat_ticks = heartbeat;
            if lease {
                cfg.read_only = ReadOnlyOption::LeaseBased;
            }
        }));
        return format!("added {n} nodes\n");
    }
    let c = c.as_mut().expect("add-nodes first");
    let mut out = String::new();
    match words[0] {
        "set-log" => {
            // set-log ID terms=1,1,4 term=T [commit=C]: replaces the node's disk and restarts it.
            let id = args.id(0);
            let terms = args.list("terms");
            let term = args.u64_or("term", terms.last().copied().unwrap_or(0));
            let disk = Disk {
                hard_state: HardState {
                    term: Term(term),
                    vote: None,
                    commit: Index(args.u64_or("commit", 0)),
                },
                entries: entries_with_terms(&terms),
                ..Disk::default()
            };
            c.disks.insert(id, disk);
            c.restart(id);
            let _ = write!(out, "{}", log_line(c, id));
        }
        "campaign" => c.node(args.id(0)).campaign(),
        "pass-startup" => c.pass_startup(),
        "tick" => c.tick(args.id(0), args.u64_or("n", 1)),
        "tick-heartbeat" => {
            let id = args.id(0);
            let n = c.configs[&id].heartbeat_ticks;
            c.tick(id, n);
        }
        "tick-election" => {
            let id = args.id(0);
            let n = c.configs[&id].election_ticks;
            c.tick(id, n);
        }
        "process-ready" => {
            for id in args.ids() {
                c.process_ready(id);
            }
        }
        "deliver-msgs" => {
            if args.positional.is_empty() {
                c.deliver(None);
            } else {
                for id in args.ids() {
                    c.deliver(Some(id));
                }
            }
        }
        "drop-msgs" => {
            let n = c.queue.len();
            c.queue.clear();
            let _ = write!(out, "dropped {n} messages");
        }
        "stabilize" => c.stabilize(),
        "elapse" => {
            // elapse n=K: K rounds of (tick every live node, stabilize), printing only role
            // changes, so timeout-driven scenarios stay readable.
            let verbose = c.verbose;
            c.verbose = false;
            for round in 1..=args.u64_or("n", 1) {
                let before: Vec<(u64, skiff_raft::Status)> =
                    c.nodes.iter().map(|(&id, n)| (id, n.status())).collect();
                c.tick_all();
                for (id, old) in before {
                    let new = c.nodes[&id].status();
                    if (new.role, new.term) != (old.role, old.term) {
                        let _ = writeln!(
                            out,
                            "round {round}: {id} is {:?} in term {}",
                            new.role, new.term
                        );
                    }
                }
            }
            c.verbose = verbose;
        }
        "propose" => {
            let id = args.id(0);
            let data = args.positional[1].clone().into_bytes();
            match c.node(id).propose(data) {
                Ok(eid) => {
                    let _ = writeln!(out, "proposed at {}/{}", eid.index, eid.term);
                }
                Err(e) => {
                    let _ = writeln!(out, "error: {e}");
                }
            }
        }
        "read-index" => {
            let id = args.id(0);
            let ctx = args.id(1);
            if let Err(e) = c.node(id).read_index(ReadCtx(ctx)) {
                let _ = writeln!(out, "error: {e}");
            }
        }
        "isolate" => c.isolate(args.id(0)),
        "partition" => {
            let groups: Vec<Vec<u64>> = args
                .positional
                .iter()
                .map(|g| g.split(',').map(|s| s.parse().expect("id")).collect())
                .collect();
            c.partition(&groups);
        }
        "heal" => c.heal(),
        "add-node" => c.add_node(args.id(0)),
        "change" => {
            // change LEADER add-voter=N | add-learner=N | promote=N | remove=N |
            //        replace voters=1,2 [learners=3]
            let id = args.id(0);
            let n = |k: &str| args.named.get(k).map(|v| nid(v.parse().expect("id")));
            let set = |k: &str| args.list(k).into_iter().map(nid).collect();
            let change = if let Some(x) = n("add-voter") {
                MembershipChange::AddVoter(x)
            } else if let Some(x) = n("add-learner") {
                MembershipChange::AddLearner(x)
            } else if let Some(x) = n("promote") {
                MembershipChange::PromoteLearner(x)
            } else if let Some(x) = n("remove") {
                MembershipChange::Remove(x)
            } else {
                MembershipChange::Replace {
                    voters: set("voters"),
                    learners: set("learners"),
                }
            };
            match c.node(id).change_membership(change) {
                Ok(eid) => {
                    let _ = writeln!(out, "proposed at {}/{}", eid.index, eid.term);
                }
                Err(e) => {
                    let _ = writeln!(out, "error: {e}");
                }
            }
        }
        "transfer" => {
            let (from, to) = (args.id(0), args.id(1));
            if let Err(e) = c.node(from).transfer_leader(nid(to)) {
                let _ = writeln!(out, "error: {e}");
            }
        }
        "membership" => {
            for id in args.ids() {
                let m = c.nodes[&id].log().membership().clone();
                let _ = writeln!(out, "{id}: {}", harness::format_membership(&m));
            }
        }
        "compact" => {
            let meta = c.compact(args.id(0));
            let _ = writeln!(
                out,
                "snapshot {}/{} size={}",
                meta.last.index, meta.last.term, meta.size_bytes
            );
            let _ = writeln!(out, "{}", log_line(c, args.id(0)));
        }
        "drop-next" => {
            // drop-next TYPE: drops the first queued message of that kind.
            let kind = args.positional[0].clone();
            if let Some(pos) = c.queue.iter().position(|m| m.body.name() == kind) {
                let m = c.queue.remove(pos);
                let _ = writeln!(out, "dropped: {}", harness::format_msg(&m));
            }
        }
        "crash" => c.crash(args.id(0)),
        "restart" => c.restart(args.id(0)),
        "quiet" => c.verbose = false,
        "verbose" => c.verbose = true,
        "raft-log" => {
            for id in args.ids() {
                let _ = writeln!(out, "{}", log_line(c, id));
            }
        }
        "status" => {
            let ids = if args.positional.is_empty() {
                c.nodes.keys().copied().collect()
            } else {
                args.ids()
            };
            for id in ids {
                let s = c.nodes[&id].status();
                let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
                let vote = s.vote.map_or("none".to_string(), |l| l.to_string());
                let down = if c.down.contains(&id) { " (down)" } else { "" };
                let _ = writeln!(
                    out,
                    "{id}: {:?} term={} vote={vote} leader={leader} commit={} applied={} last={}/{}{down}",
                    s.role, s.term, s.commit, s.applied, s.last.index, s.last.term
                );
            }
        }
        "applied" => {
            for id in args.ids() {
                let _ = writeln!(out, "{id}: [{}]", c.applied_data(id).join(" "));
            }
        }
        "reads" => {
            for id in args.ids() {
                let reads: Vec<String> = c
                    .reads
                    .get(&id)
                    .map(|rs| {
                        rs.iter()
                            .map(|r| format!("{}@{}", r.ctx.0, r.index))
                            .collect()
                    })
                    .unwrap_or_default();
                let failed: Vec<String> = c
                    .failed_reads
                    .get(&id)
                    .map(|f| f.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{id}: ready=[{}] failed=[{}]",
                    reads.join(" "),
                    failed.join(" ")
                );
            }
        }
        "msg-counts" => {
            for (k, v) in std::mem::take(&mut c.delivered) {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
        other => panic!("unknown command {other}"),
    }
    out.push_str(&c.take_trace());
    if out.trim().is_empty() {
        "ok\n".to_string()
    } else {
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

fn log_line(c: &Cluster, id: u64) -> String {
    let log = c.nodes[&id].log();
    let last = log.last_index();
    let entries = if last >= log.first_index() {
        log.slice(log.first_index(), last, u64::MAX)
    } else {
        Vec::new()
    };
    let list: Vec<String> = entries.iter().map(format_entry).collect();
    format!("{id}: commit={} [{}]", log.committed(), list.join(", "))
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read testdata");
    let blocks = parse(&text);
    let rewrite = std::env::var_os("SKIFF_REWRITE").is_some();
    let mut cluster = None;
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    for b in &blocks {
        let got = run_command(&mut cluster, &b.command);
        for comment in &b.comments {
            rewritten.push_str(comment);
            rewritten.push('\n');
        }
        let _ = write!(rewritten, "{}\n----\n{}\n", b.command, got);
        if got != b.expected {
            failures.push(format!(
                "{}: command `{}`\n--- expected\n{}--- got\n{}",
                path.display(),
                b.command,
                b.expected,
                got
            ));
        }
    }
    if rewrite {
        std::fs::write(path, rewritten).expect("rewrite testdata");
        return;
    }
    assert!(
        failures.is_empty(),
        "{} block(s) differ (SKIFF_REWRITE=1 regenerates):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_traces() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no testdata files");
    for f in files {
        run_file(&f);
    }
}
