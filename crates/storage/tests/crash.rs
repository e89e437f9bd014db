//! Crash test: a child process appends (with truncations and hard-state updates) and is killed
//! with SIGKILL at a random moment; the parent reopens the store and checks that
//! - every write whose `write` call returned (the child printed its number) is present,
//! - the recovered state equals exactly the state after the last acknowledged write or after
//!   the one in flight (nothing half-visible: a torn write is all or nothing),
//! - so the hard state is never older than entries written with it.
//!
//! SIGKILL keeps the page cache, so this checks atomicity and recovery of torn journal writes
//! as the process sees them, not power loss (the fdatasync per write is trusted for that).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{entry, hard_state, open, Rng};
use raft::{Entry, EntryId, HardState, Index, Membership, Term};
use skiff_storage::SnapshotMeta;

const CHILD_ENV: &str = "SKIFF_STORAGE_CRASH_CHILD";

/// One write of the child's deterministic script.
struct Step {
    hard_state: HardState,
    entries: Vec<Entry>,
    /// After the write: snapshot at this entry and compact the log to it.
    compact_to: Option<EntryId>,
}

/// The child's script: from a seed, a sequence of writes with random batch sizes, occasional
/// truncations of uncommitted entries, term changes and compactions.
fn script(seed: u64, steps: usize) -> Vec<Step> {
    let mut rng = Rng(seed | 1);
    let (mut last, mut term, mut commit, mut start) = (0u64, 1u64, 0u64, 0u64);
    // terms[i - 1] is the term of entry i.
    let mut terms: Vec<u64> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..steps {
        if rng.below(8) == 0 {
            term += 1;
        }
        let back = if rng.below(6) == 0 { rng.below(4) } else { 0 };
        let from = last.saturating_sub(back).max(commit) + 1;
        let n = 1 + rng.below(40);
        let len = rng.below(600) as usize;
        let entries: Vec<Entry> = (from..from + n).map(|i| entry(i, term, len)).collect();
        last = from + n - 1;
        terms.truncate(from as usize - 1);
        terms.extend(std::iter::repeat_n(term, n as usize));
        commit = commit.max(last.saturating_sub(rng.below(20)));
        let to = commit.saturating_sub(rng.below(30));
        let compact_to = (rng.below(20) == 0 && to > start).then(|| {
            start = to;
            EntryId {
                term: Term(terms[to as usize - 1]),
                index: Index(to),
            }
        });
        out.push(Step {
            hard_state: hard_state(term, commit),
            entries,
            compact_to,
        });
    }
    out
}

/// The expected hard state, whole log (from index 1) and log start after the first `k` steps.
fn state_after(script: &[Step], k: usize) -> (HardState, Vec<Entry>, EntryId) {
    let mut hs = HardState::default();
    let mut log: Vec<Entry> = Vec::new();
    let mut start = EntryId::default();
    for s in &script[..k] {
        hs = s.hard_state;
        let from = s.entries[0].index.0 as usize;
        log.truncate(from - 1);
        log.extend(s.entries.iter().cloned());
        start = s.compact_to.unwrap_or(start);
    }
    (hs, log, start)
}

const STEPS: usize = 3000;

/// The child's body: runs the script, printing the number of each acknowledged write.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, seed) = spec.split_once(':').expect("dir:seed");
    let seed: u64 = seed.parse().expect("seed");
    let (mut store, _) = open(dir.as_ref()).expect("child open");
    let script = script(seed, STEPS);
    for (k, step) in script.iter().enumerate() {
        store
            .write(Some(&step.hard_state), &step.entries)
            .expect("child write");
        if let Some(to) = step.compact_to {
            let meta = SnapshotMeta {
                last: to,
                membership: Membership::default(),
            };
            let data = format!("snapshot at {}", to.index.0);
            store
                .save_snapshot(&meta, data.as_bytes())
                .expect("child snapshot");
            store.compact(to).expect("child compact");
        }
        println!("\nacked {}", k + 1);
    }
    println!("finished");
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_write() {
    let kills = 30;
    let mut rng = Rng(0x00c0_ffee);
    let exe = std::env::current_exe().unwrap();
    let mut torn_in_flight = 0;
    let mut compactions_seen = 0;
    for round in 0..kills {
        let dir = tempfile::tempdir().unwrap();
        let seed = rng.next();
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}:{seed}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = 20 + rng.below(200);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = 0usize;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = n.parse().unwrap();
                    let _ = tx.send(acked);
                }
            }
            acked
        });
        // Wait for a random number of acknowledged writes, then kill at once.
        let start = Instant::now();
        let mut acked = 0;
        while acked < kill_after as usize && start.elapsed() < Duration::from_secs(20) {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(n) => acked = n,
                Err(_) => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(acked > 0, "round {round}: child acknowledged nothing");
        assert!(
            acked < STEPS,
            "round {round}: child finished before the kill"
        );

        let script = script(seed, STEPS);
        let (store, rec) = open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let got = common::all_entries(&store).unwrap();
        let (hs_a, log_a, start_a) = state_after(&script, acked);
        let (hs_b, log_b, start_b) = state_after(&script, acked + 1);
        // The kill may land between a write and the compaction after it: either start is fine.
        assert!(
            rec.log_start == start_a || rec.log_start == start_b,
            "round {round} seed {seed}: log start {:?}, expected {start_a:?} or {start_b:?}",
            rec.log_start
        );
        let after_start = |log: &[Entry]| log[rec.log_start.index.0 as usize..].to_vec();
        let is_a = rec.hard_state == hs_a && got == after_start(&log_a);
        let is_b = rec.hard_state == hs_b && got == after_start(&log_b);
        if rec.log_start.index.0 > 0 {
            let (meta, data) = store
                .load_snapshot()
                .unwrap()
                .expect("snapshot covers start");
            assert!(meta.last.index >= rec.log_start.index);
            assert_eq!(
                data,
                format!("snapshot at {}", meta.last.index.0).into_bytes()
            );
            compactions_seen += 1;
        }
        assert!(
            is_a || is_b,
            "round {round} seed {seed}: recovered state (last {}, {:?}) is neither write {acked} \
             nor {}",
            rec.last_index,
            rec.hard_state,
            acked + 1
        );
        if is_b && !is_a {
            torn_in_flight += 1;
        }
    }
    eprintln!(
        "{kills} kills, {torn_in_flight} recovered the write in flight, \
         {compactions_seen} recovered a compacted log"
    );
    assert!(
        compactions_seen > 0,
        "the script should compact before most kills"
    );
}
