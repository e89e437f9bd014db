//! Corruption tests: flip a byte or truncate a file at a random offset anywhere in a closed data
//! dir (any log segment, snapshot file, staging file), then
//! reopen and read everything. Allowed outcomes: open refuses with an error; a read refuses
//! with an error; or the store serves a prefix of the original log with exactly the original
//! bytes. Never a panic, never a wrong entry.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_dir, entry, hard_state, Rng};
use raft::{Entry, EntryId, Index, Membership, NodeId, Term};
use skiff_storage::{SnapshotMeta, Store};

const ENTRIES: u64 = 6000;
const SNAPSHOT_AT: u64 = 100;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.metadata().unwrap().len() > 0 && !p.ends_with("lock") {
            out.push(p);
        }
    }
}

/// Builds the pristine data dir: entries over many segments, a snapshot, a compacted
/// prefix and a staged incoming snapshot.
fn build(dir: &Path) -> Vec<Entry> {
    let (mut store, _) = common::open(dir).unwrap();
    let mut all = Vec::new();
    let mut i = 1;
    while i <= ENTRIES {
        let batch: Vec<Entry> = (i..i + 50).map(expected_entry).collect();
        store
            .write(Some(&hard_state(1 + i / 1000, i + 49)), &batch)
            .unwrap();
        all.extend(batch);
        i += 50;
    }
    let snap = EntryId {
        term: Term(1),
        index: Index(SNAPSHOT_AT),
    };
    let meta = SnapshotMeta {
        last: snap,
        membership: Membership::new([NodeId::new(1).unwrap()]),
    };
    store.save_snapshot(&meta, &[7u8; 3000]).unwrap();
    store.compact(snap).unwrap();
    let incoming = SnapshotMeta {
        last: EntryId {
            term: Term(9),
            index: Index(99_999),
        },
        membership: meta.membership.clone(),
    };
    store.stage_begin(&incoming, 10_000).unwrap();
    store.stage_chunk(0, &[1u8; 4000]).unwrap();
    store.stage_chunk(4000, &[2u8; 4000]).unwrap();
    store.sync().unwrap();
    all.retain(|e| e.index.0 > SNAPSHOT_AT);
    all
}

#[derive(Debug, Default)]
struct Tally {
    refused_open: u32,
    refused_read: u32,
    intact: u32,
    shorter_prefix: u32,
}

const CHILD_ENV: &str = "SKIFF_STORAGE_CORRUPTION_CHILD";

/// Opens a damaged dir and prints the outcome; prints WRONG and panics on a wrong entry.
fn check(dir: &Path, original: &[Entry], what: &str) -> &'static str {
    let wrong = |ok: bool, m: &str| {
        if !ok {
            println!("WRONG {what}: {m}");
            panic!("{what}: {m}");
        }
    };
    let mut opts = common::options();
    opts.verify_on_open = true;
    let (store, rec) = match Store::open(dir, opts) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return "refused_open";
        }
    };
    let read = common::all_entries(&store);
    let snap = store.load_snapshot();
    let (Ok(got), Ok(snap)) = (read, snap) else {
        return "refused_read";
    };
    wrong(snap.is_some(), "snapshot vanished");
    wrong(
        snap.is_some_and(|s| s.1 == vec![7u8; 3000]),
        "snapshot bytes changed",
    );
    // A damaged tail may take a compaction record with it: the log then starts earlier, with
    // the same (correct) entries; it never starts later and never grows past the original.
    let original_last = original.last().map_or(0, |e| e.index.0);
    wrong(
        store.first_index().0 <= SNAPSHOT_AT + 1,
        "log lost its beginning",
    );
    wrong(
        got.iter().all(|e| *e == expected_entry(e.index.0)),
        "wrong entries served",
    );
    wrong(
        got.last().map_or(0, |e| e.index.0) <= original_last,
        "entries appeared",
    );
    wrong(rec.hard_state.commit <= rec.last_index, "commit past log");
    if let Some(st) = rec.staged {
        wrong(st.received_bytes <= 8000, "staged bytes appeared");
    }
    if got.last().map_or(0, |e| e.index.0) == original_last {
        "intact"
    } else {
        "shorter_prefix"
    }
}

/// The child: checks one damaged dir and prints the outcome.
#[test]
fn corruption_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let original: Vec<Entry> = fs::read(dir.join("../expected_len"))
        .map(|b| String::from_utf8(b).unwrap().trim().parse::<u64>().unwrap())
        .map(|n| {
            (SNAPSHOT_AT + 1..=SNAPSHOT_AT + n)
                .map(expected_entry)
                .collect()
        })
        .unwrap();
    let outcome = check(dir, &original, &dir.display().to_string());
    println!("\noutcome {outcome}");
}

fn expected_entry(j: u64) -> Entry {
    entry(j, 1 + j / 1000, 500)
}

#[test]
fn random_flips_and_truncations_are_refused_or_recovered() {
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("pristine");
    let original = build(&pristine);
    let mut paths = Vec::new();
    files(&pristine, &mut paths);
    paths.sort();
    assert!(paths.len() >= 5, "expected log segments and snapshot files");
    let mut rng = Rng(0xbad_d15c);
    let mut tally = Tally::default();
    let last_segment = paths
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap()
        .clone();
    // Outcomes by (file kind, damage): printed so the closing note can say what each does.
    let mut by_kind: std::collections::BTreeMap<String, Tally> = Default::default();
    let exe = std::env::current_exe().unwrap();
    fs::write(base.path().join("expected_len"), original.len().to_string()).unwrap();
    let cases = 120;
    for case in 0..cases {
        let work = base.path().join(format!("case{case}"));
        // The child finds expected_len one level up.
        copy_dir(&pristine, &work);
        // A quarter of the cases hit the last segment, where torn tails are recovered.
        let victim_path = if rng.below(4) == 0 {
            &last_segment
        } else {
            &paths[rng.below(paths.len() as u64) as usize]
        };
        let kind = if *victim_path == last_segment {
            "last log segment"
        } else if victim_path.extension().is_some_and(|x| x == "wal") {
            "older log segment"
        } else if victim_path.extension().is_some_and(|x| x == "snap") {
            "snapshot file"
        } else {
            "staging file"
        };
        let victim_rel = victim_path.strip_prefix(&pristine).unwrap().to_path_buf();
        let victim = work.join(&victim_rel);
        let mut bytes = fs::read(&victim).unwrap();
        let at = rng.below(bytes.len() as u64) as usize;
        let flip = rng.below(2) == 0;
        let what = if flip {
            bytes[at] ^= 1 << rng.below(8);
            format!("case {case}: flip byte {at} of {}", victim_rel.display())
        } else {
            bytes.truncate(at);
            format!("case {case}: truncate {} to {at}", victim_rel.display())
        };
        let row = by_kind
            .entry(format!(
                "{kind}, {}",
                if flip { "flip" } else { "truncate" }
            ))
            .or_default();
        fs::write(&victim, &bytes).unwrap();
        let out = Command::new(&exe)
            .args([
                "--exact",
                "corruption_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &work)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("WRONG"), "{what}: {stdout}");
        // libtest may print "test corruption_child ... " on the same line first.
        match stdout
            .lines()
            .find_map(|l| l.split("outcome ").nth(1).map(str::trim))
        {
            Some("refused_open") => {
                tally.refused_open += 1;
                row.refused_open += 1;
            }
            Some("refused_read") => {
                tally.refused_read += 1;
                row.refused_read += 1;
            }
            Some("intact") => {
                tally.intact += 1;
                row.intact += 1;
            }
            Some("shorter_prefix") => {
                // Only the end of the log may come back shorter (a torn write); damage
                // anywhere else is refused or hit unused space.
                assert_eq!(
                    kind, "last log segment",
                    "{what}: the log came back shorter"
                );
                tally.shorter_prefix += 1;
                row.shorter_prefix += 1;
            }
            _ => {
                // The child died without an outcome: a panic or an abort.
                panic!(
                    "{what}: the store panicked ({:?}): {stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        fs::remove_dir_all(&work).unwrap();
    }
    eprintln!("{cases} corruptions: {tally:?}");
    for (k, t) in &by_kind {
        eprintln!("  {k}: {t:?}");
    }
    assert_eq!(
        tally.refused_open + tally.refused_read + tally.intact + tally.shorter_prefix,
        cases
    );
}

/// A flipped byte in the newest snapshot's data is refused with the file and offset named.
#[test]
fn corrupt_snapshot_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let original = build(dir.path());
    assert!(!original.is_empty());
    let snap_dir = dir.path().join("snap");
    let snap = fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .unwrap();
    let mut bytes = fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    fs::write(&snap, &bytes).unwrap();
    let (store, _) = open_past_forks(dir.path()).unwrap();
    let err = store.load_snapshot().unwrap_err().to_string();
    assert!(
        err.contains(snap.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("checksum"), "{err}");
    // Truncating it is caught at open, from the header's length.
    bytes.truncate(n - 10);
    fs::write(&snap, &bytes).unwrap();
    drop(store);
    let err = open_past_forks(dir.path()).unwrap_err().to_string();
    assert!(err.contains("offset"), "{err}");
}

/// Opens the store, waiting out a `Locked` refusal: another test of this binary spawns a
/// process, and a fork taken while this test held the lock keeps the lock's file description
/// open until the child execs (flaky in CI otherwise).
fn open_past_forks(
    dir: &std::path::Path,
) -> Result<(skiff_storage::Store, skiff_storage::Recovered), skiff_storage::StorageError> {
    for _ in 0..100 {
        match common::open(dir) {
            Err(skiff_storage::StorageError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
    common::open(dir)
}
