//! IO errors are values: a child process whose file-size limit (RLIMIT_FSIZE) makes the
//! log's writes fail with EFBIG gets an error from `write`, never a panic; later writes are
//! refused with `Failed`; and a reopen (without the limit) finds every acknowledged entry.

mod common;

use std::process::Command;

use common::{entry, hard_state};
use raft::Index;
use skiff_storage::{StorageError, Store};

const CHILD_ENV: &str = "SKIFF_STORAGE_IO_ERROR_CHILD";

#[test]
fn io_error_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // Segments larger than the limit: writes past 2 MiB into the first segment fail.
    let mut options = common::options();
    options.segment_bytes = 8 << 20;
    let (mut store, _) = Store::open(dir.as_ref(), options).expect("open before the limit");
    // From now on no file may be written past 2 MiB.
    // SAFETY: plain libc calls with valid arguments. (The store's preallocation thread may be
    // zero-filling the next segment meanwhile; the limit applies to it too, and its failure
    // would surface only at a roll, which this test does not reach.)
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 2 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let mut i = 1u64;
    let err = loop {
        let batch: Vec<_> = (i..i + 10).map(|j| entry(j, 1, 1000)).collect();
        match store.write(Some(&hard_state(1, i + 9)), &batch) {
            Ok(()) => println!("\nacked {}", i + 9),
            Err(e) => break e,
        }
        i += 10;
        assert!(i < 100_000, "the file-size limit never hit");
    };
    println!("\nwrite failed: {err}");
    let again = store.write(None, &[entry(i, 1, 1)]);
    assert!(matches!(again, Err(StorageError::Failed)), "{again:?}");
    println!("\nrefused after failure");
}

#[test]
fn a_failed_write_is_an_error_and_acknowledged_entries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "io_error_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refused after failure"), "{stdout}");
    let err = stdout
        .lines()
        .find_map(|l| l.split("write failed: ").nth(1))
        .unwrap();
    assert!(
        err.contains("File too large") || err.contains("os error 27"),
        "{err}"
    );
    let acked = stdout
        .lines()
        .filter_map(|l| l.split("acked ").nth(1))
        .map(|n| n.trim().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(acked >= 100, "the child acknowledged only {acked} entries");
    let (store, rec) = common::open(dir.path()).unwrap();
    assert!(
        rec.last_index >= Index(acked),
        "{rec:?} lost acknowledged entries"
    );
    let got = store.entries(Index(1), Index(acked), u64::MAX).unwrap();
    assert_eq!(
        got,
        (1..=acked).map(|j| entry(j, 1, 1000)).collect::<Vec<_>>()
    );
    assert!(rec.hard_state.commit >= Index(acked));
}
