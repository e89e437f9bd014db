//! Crash test: a child process applies entries to a file-backed store and is killed with
//! SIGKILL at an arbitrary point; the reopened store must hold exactly the entries up to its
//! applied index, each applied once, in three rounds on the same file, and must have kept
//! every apply acknowledged as durable (each apply with `Immediate`; each `sync()` with
//! `Batched`).

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};

use skiff_kv::*;

const CHILD_ENV: &str = "SKIFF_KV_CRASH_CHILD";
const TEST_NAME: &str = "a_killed_writer_leaves_a_consistent_store";
const KEYS: u64 = 50;
/// With `Batched` durability the child syncs every this many applies.
const SYNC_EVERY: u64 = 7;

fn options(batched: bool) -> Options {
    let durability = if batched {
        Durability::Batched {
            commits_per_sync: 1000,
            interval: std::time::Duration::from_secs(3600),
        }
    } else {
        Durability::Immediate
    };
    Options {
        durability,
        // Batched as the server runs it: applies also share grouped transactions.
        commit_delay: if batched {
            std::time::Duration::from_millis(20)
        } else {
            std::time::Duration::ZERO
        },
        ..Options::default()
    }
}

fn entry(index: u64) -> Command {
    Command::new(Request::Put(PutRequest::new(
        format!("k{}", index % KEYS),
        index.to_string(),
    )))
}

/// The child: resumes after the applied index and applies entries until killed, printing
/// each index once it is durable.
fn child(spec: &str) {
    let (batched, path) = spec.split_once('|').expect("mode|path");
    let batched = batched == "batched";
    let store = Store::open(path, options(batched)).expect("open");
    let start = store.applied_index().expect("applied");
    for index in start + 1.. {
        store.apply(index, &entry(index)).expect("apply");
        if batched && index % SYNC_EVERY != 0 {
            continue; // applied but not yet durable
        }
        if batched {
            store.sync().expect("sync");
        }
        println!("durable {index}");
    }
}

#[test]
fn a_killed_writer_leaves_a_consistent_store() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    for batched in [false, true] {
        crash_rounds(batched);
    }
}

fn crash_rounds(batched: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.redb");
    let exe = std::env::current_exe().expect("test binary");
    let mut acknowledged = 0;
    for round in 1..=3u64 {
        let mut proc = Process::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!(
                    "{}|{}",
                    if batched { "batched" } else { "immediate" },
                    path.display()
                ),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = proc.stdout.take().expect("piped stdout");
        // Kill after a round-dependent number of acknowledged applies (no sleeps).
        let target = acknowledged + 20 * round;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if let Some(n) = line
                .strip_prefix("durable ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                acknowledged = n;
                if n >= target {
                    break;
                }
            }
        }
        proc.kill().expect("SIGKILL");
        proc.wait().expect("reap");

        let store = Store::open(&path, options(batched)).expect("reopen");
        let applied = store.applied_index().expect("applied");
        assert!(
            applied >= acknowledged,
            "acknowledged apply {acknowledged} lost (applied {applied})"
        );
        assert_eq!(
            store.revision().expect("rev"),
            applied as i64 + 1,
            "one revision per entry"
        );
        for k in 0..KEYS {
            // The last index in 1..=applied that wrote key k (indexes i with i % KEYS == k).
            let Some(last) = applied.checked_sub((applied + KEYS - k) % KEYS) else {
                continue;
            };
            if last == 0 {
                continue;
            }
            let kv = store
                .range(&RangeRequest::key(format!("k{k}")))
                .expect("range")
                .kvs;
            assert_eq!(kv.len(), 1);
            assert_eq!(kv[0].value, last.to_string().into_bytes());
            assert_eq!(kv[0].mod_revision, last as i64 + 1);
            let writes = (last - k) / KEYS + u64::from(k != 0); // index 0 never exists
            assert_eq!(kv[0].version as u64, writes);
        }
        store.check_invariants().expect("invariants");
        acknowledged = applied;
    }
}
