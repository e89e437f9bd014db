//! `cargo bench -p skiff-kv`: the state machine alone, on a file (batched durability and mimalloc, as
//! the server runs it). A plain main (no harness) printing a table:
//!
//! - puts applied in batches of 256 (the apply task's unit), 256-byte values, 10,000 keys;
//! - one put per apply (a single client's writes): the latency of each apply, whose tail is
//!   the grouped commit every `SKIFF_BENCH_COMMIT_DELAY_MS` (100) and the durable one every
//!   second or `SKIFF_BENCH_COMMITS_PER_SYNC` (1024) commits;
//! - one DeleteRange of `SKIFF_BENCH_DELETE_KEYS` keys (default 150,000), without and with
//!   `prev_kv` (issue 14's target: under 0.5 s without);
//! - a retried put whose answer carries a 1 MB `prev_kv` (answered by replay);
//! - opening a store of `SKIFF_BENCH_REBUILD_MIB` MiB of 1 KiB values (default 256), which
//!   rebuilds the in-memory key index from the rows (issue 14's target: a 1 GiB store in under
//!   5 s).
//!
//! Environment: `SKIFF_BENCH_DIR` (default: the system temp dir), `SKIFF_BENCH_SECS` (seconds
//! per throughput measurement, default 3), `SKIFF_BENCH_DELETE_KEYS`,
//! `SKIFF_BENCH_REBUILD_MIB`.

use std::time::{Duration, Instant};

use skiff_kv::{
    Command, DeleteRangeRequest, Durability, Options, PutRequest, Request, Session, Store,
};

/// The server's allocator (the `skiff` binary's), so that the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn store(dir: &std::path::Path, name: &str) -> Store {
    let commits_per_sync = env_u64("SKIFF_BENCH_COMMITS_PER_SYNC", 1024) as u32;
    Store::open(
        dir.join(name),
        Options {
            durability: Durability::Batched {
                commits_per_sync,
                interval: std::time::Duration::from_secs(1),
            },
            sessions_max: 100_000,
            commit_delay: std::time::Duration::from_millis(env_u64(
                "SKIFF_BENCH_COMMIT_DELAY_MS",
                100,
            )),
        },
    )
    .expect("open store")
}

/// Applies `n` puts in batches of 256, from index `first`; returns the next index.
fn put_batches(s: &Store, first: u64, n: u64, keys: u64, value: &[u8], sessions: bool) -> u64 {
    let mut index = first;
    let mut done = 0;
    while done < n {
        let batch: Vec<Command> = (0..256.min(n - done))
            .map(|i| {
                let k = (done + i) % keys;
                let request = Request::Put(PutRequest::new(format!("key/{k:08}"), value.to_vec()));
                let session = sessions.then(|| Session::opened(index + i + 1, 1, index));
                Command {
                    session,
                    request,
                    auth: None,
                }
            })
            .collect();
        let refs: Vec<(u64, Option<&Command>)> = batch
            .iter()
            .enumerate()
            .map(|(i, c)| (index + 1 + i as u64, Some(c)))
            .collect();
        s.apply_batch(&refs).expect("apply");
        index += batch.len() as u64;
        done += batch.len() as u64;
    }
    index
}

fn main() {
    let dir = std::env::var("SKIFF_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::tempdir_in(&dir).expect("temp dir");
    let secs = Duration::from_secs(env_u64("SKIFF_BENCH_SECS", 3));
    let delete_keys = env_u64("SKIFF_BENCH_DELETE_KEYS", 150_000);
    let value = vec![b'v'; 256];

    println!("{:<44} {:>14}", "measurement", "result");
    // Put throughput, with sessions (as every client write in the server: a full table of
    // 100,000, one eviction per put) and without.
    for sessions in [true, false] {
        let s = store(tmp.path(), &format!("puts-{sessions}.redb"));
        let mut index = put_batches(&s, 0, 110_000, 10_000, &value, sessions);
        let start = Instant::now();
        let mut applied = 0;
        while start.elapsed() < secs {
            index = put_batches(&s, index, 25_600, 10_000, &value, sessions);
            applied += 25_600;
        }
        let rate = applied as f64 / start.elapsed().as_secs_f64();
        let what = if sessions { "sessions" } else { "no sessions" };
        println!(
            "{:<44} {:>10.0} /s",
            format!("puts applied (batches of 256, {what})"),
            rate
        );
    }

    // One put per commit (a single client), latency of each apply.
    {
        let s = store(tmp.path(), "single.redb");
        let mut lat: Vec<f64> = Vec::new();
        for i in 1..=5000u64 {
            let cmd = Command {
                session: Some(Session::opened(i, 1, i - 1)),
                request: Request::Put(PutRequest::new(
                    format!("key/{:08}", i % 10_000),
                    value.clone(),
                )),
                auth: None,
            };
            let t = Instant::now();
            s.apply_batch(&[(i, Some(&cmd))]).expect("apply");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "{:<44} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
            "one put per commit",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            lat[lat.len() - 1]
        );
    }

    // One big delete, without and with prev_kv.
    for prev_kv in [false, true] {
        let s = store(tmp.path(), &format!("delete-{prev_kv}.redb"));
        let index = put_batches(&s, 0, delete_keys, delete_keys, &value, false);
        let del = Command::new(Request::DeleteRange(DeleteRangeRequest {
            prev_kv,
            ..DeleteRangeRequest::range("key/", "key0")
        }));
        let start = Instant::now();
        let resp = s.apply(index + 1, &del).expect("delete");
        let took = start.elapsed();
        assert!(
            matches!(resp, skiff_kv::Response::DeleteRange(ref d) if d.deleted == delete_keys as i64)
        );
        println!(
            "{:<44} {:>11.3} s",
            format!("DeleteRange of {delete_keys} keys, prev_kv {prev_kv}"),
            took.as_secs_f64()
        );
    }

    // A retry whose first answer carried a 1 MB prev_kv: replayed, not stored.
    let s = store(tmp.path(), "retry.redb");
    let big = vec![b'x'; 1 << 20];
    s.apply(1, &Command::new(Request::Put(PutRequest::new("big", big))))
        .expect("put");
    let retry = Command {
        session: Some(Session::opened(42, 1, 1)),
        request: Request::Put(PutRequest {
            prev_kv: true,
            ..PutRequest::new("big", "small")
        }),
        auth: None,
    };
    s.apply(2, &retry).expect("first");
    let next = put_batches(&s, 2, 10_000, 10_000, &value, false);
    let start = Instant::now();
    s.apply(next + 1, &retry).expect("retry");
    println!(
        "{:<44} {:>11.3} ms",
        "retry answered by replay (10,000 writes later)",
        start.elapsed().as_secs_f64() * 1000.0
    );

    drop(s);

    // Opening a big store: the key index is rebuilt from every row.
    let mib = env_u64("SKIFF_BENCH_REBUILD_MIB", 256);
    let path = tmp.path().join("rebuild.redb");
    {
        let s = store(tmp.path(), "rebuild.redb");
        let value = vec![b'r'; 1024];
        let puts = mib * 1024;
        // Three quarters new keys, a quarter updates: generations with several revisions.
        put_batches(&s, 0, puts, puts * 3 / 4, &value, false);
        s.sync().expect("sync");
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let s = store(tmp.path(), "rebuild.redb");
    let took = start.elapsed();
    let (keys, revs) = s.index_size();
    println!(
        "{:<44} {:>11.3} s",
        format!(
            "open {} MiB file ({keys} keys, {revs} revisions)",
            size >> 20
        ),
        took.as_secs_f64()
    );
}
