//! `cargo bench -p skiff-storage`: synced append throughput and latency against the raw disk, and
//! reopen time of a large log. A plain main (no harness) printing a table.
//!
//! Environment:
//! - `SKIFF_BENCH_DIR`: where to put the files (default: the system temp dir). Use the disk
//!   the server will use.
//! - `SKIFF_BENCH_SECS`: seconds per measurement (default 3).
//! - `SKIFF_BENCH_REOPEN_BYTES`: size of the log for the reopen measurement (default 1 GiB).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raft::{Entry, EntryKind, HardState, Index, NodeId, Term};
use skiff_storage::{Identity, Options, Store};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options() -> Options {
    Options::new(Identity {
        cluster_id: 1,
        node_id: NodeId::new(1).expect("non-zero"),
    })
}

fn entry(index: u64, len: usize) -> Entry {
    Entry {
        term: Term(1),
        index: Index(index),
        kind: EntryKind::Normal,
        data: vec![(index % 251) as u8; len],
    }
}

/// Latencies of one synced operation, in microseconds.
struct Run {
    hist: Histogram<u64>,
    elapsed: Duration,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn measure(secs: u64, mut op: impl FnMut()) -> Run {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let start = Instant::now();
    let deadline = Duration::from_secs(secs);
    while start.elapsed() < deadline {
        let t = Instant::now();
        op();
        hist.record(t.elapsed().as_micros() as u64)
            .expect("in range");
    }
    Run {
        hist,
        elapsed: start.elapsed(),
    }
}

/// Appends `bytes` to a file and fdatasyncs it, over and over: the disk's ceiling.
fn raw_fdatasync(dir: &Path, bytes: usize, secs: u64) -> Run {
    let path = dir.join("raw.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open raw file");
    let buf = vec![7u8; bytes];
    let run = measure(secs, || {
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
    });
    std::fs::remove_file(&path).expect("remove raw file");
    run
}

fn store_appends(dir: &Path, batch: u64, secs: u64) -> Run {
    let (mut store, _) = Store::open(dir, options()).expect("open");
    let mut next = store.last_index().0 + 1;
    let hs = HardState {
        term: Term(1),
        vote: NodeId::new(1),
        commit: Index(0),
    };
    measure(secs, || {
        let es: Vec<Entry> = (next..next + batch).map(|i| entry(i, 100)).collect();
        store.write(Some(&hs), &es).expect("write");
        next += batch;
    })
}

fn reopen(dir: &Path, bytes: u64) {
    let entry_len = 4096usize;
    let per_batch = 256u64;
    let n = bytes / entry_len as u64;
    let t = Instant::now();
    {
        let (mut store, _) = Store::open(dir, options()).expect("open");
        let mut i = 1;
        while i <= n {
            let hi = (i + per_batch - 1).min(n);
            let es: Vec<Entry> = (i..=hi).map(|j| entry(j, entry_len)).collect();
            store.write(None, &es).expect("write");
            i = hi + 1;
        }
        store.sync().expect("sync");
    }
    let fill = t.elapsed();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (store, rec) = Store::open(dir, options()).expect("reopen");
        times.push(t.elapsed());
        assert_eq!(rec.last_index, Index(n));
        drop(store);
    }
    let mut verify = options();
    verify.verify_on_open = true;
    let t = Instant::now();
    let (store, _) = Store::open(dir, verify).expect("reopen with verify");
    let verified = t.elapsed();
    let t = Instant::now();
    let state = skiff_storage::initial_state(&store, Index(0)).expect("initial state");
    let load = t.elapsed();
    assert_eq!(state.entries.len() as u64, n);
    println!();
    println!(
        "reopen, log of {} MiB ({n} entries of {entry_len} B; filled in {:.1} s):",
        bytes >> 20,
        fill.as_secs_f64()
    );
    for (k, d) in times.iter().enumerate() {
        println!(
            "  open #{}                      {:>8.1} ms",
            k + 1,
            d.as_secs_f64() * 1e3
        );
    }
    println!(
        "  open with verify_on_open       {:>8.1} ms",
        verified.as_secs_f64() * 1e3
    );
    println!(
        "  initial_state (load all)       {:>8.1} ms",
        load.as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let base = std::env::var("SKIFF_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let secs = env_u64("SKIFF_BENCH_SECS", 3);
    let reopen_bytes = env_u64("SKIFF_BENCH_REOPEN_BYTES", 1 << 30);
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    println!(
        "storage bench in {} ({secs} s per row)",
        dir.path().display()
    );

    let raw = raw_fdatasync(dir.path(), 100, secs);
    let raw_p50 = raw.hist.value_at_quantile(0.5);
    println!();
    println!(
        "{:>6} {:>10} {:>12} {:>8} {:>8} {:>14} {:>8} {:>16}",
        "batch",
        "syncs/s",
        "entries/s",
        "p50 us",
        "p99 us",
        "raw x batch",
        "ratio",
        "raw same-bytes/s"
    );
    println!(
        "{:>6} {:>10.0} {:>12} {:>8} {:>8} {:>14} {:>8} {:>16}",
        "raw",
        raw.per_sec(),
        "-",
        raw_p50,
        raw.hist.value_at_quantile(0.99),
        "-",
        "-",
        "-"
    );
    for batch in [1u64, 16, 64, 256] {
        let sub = dir.path().join(format!("append{batch}"));
        let run = store_appends(&sub, batch, secs);
        let entries = run.per_sec() * batch as f64;
        let ceiling = raw.per_sec() * batch as f64;
        // The disk alone, syncing writes as large as this batch's entries.
        let same = raw_fdatasync(dir.path(), 100 * batch as usize, secs);
        println!(
            "{:>6} {:>10.0} {:>12.0} {:>8} {:>8} {:>14.0} {:>7.0}% {:>16.0}",
            batch,
            run.per_sec(),
            entries,
            run.hist.value_at_quantile(0.5),
            run.hist.value_at_quantile(0.99),
            ceiling,
            100.0 * entries / ceiling,
            same.per_sec()
        );
        if batch == 1 {
            let p50 = run.hist.value_at_quantile(0.5);
            println!(
                "       single-entry sync p50 {p50} us vs raw fdatasync p50 {raw_p50} us: {:.2}x",
                p50 as f64 / raw_p50.max(1) as f64
            );
        }
        std::fs::remove_dir_all(&sub).expect("clean up");
    }
    reopen(&dir.path().join("reopen"), reopen_bytes);
}
