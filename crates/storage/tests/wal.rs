//! The write-ahead log's own recovery rules: torn writes are all or nothing at every sector
//! boundary and for any subset of sectors or pages, damage before the tail and missing segments are refused with the file and
//! offset named, compaction deletes whole segments, one process at a time, and entries larger
//! than a segment.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{copy_dir, entry, hard_state, Rng};
use raft::{Entry, EntryId, Index, Membership, NodeId, Term};
use skiff_storage::{Options, SnapshotMeta, StorageError, Store};

fn options(segment_bytes: u64) -> Options {
    let mut o = common::options();
    o.segment_bytes = segment_bytes;
    o
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

fn batch(lo: u64, n: u64, len: usize) -> Vec<Entry> {
    (lo..lo + n).map(|i| entry(i, 1, len)).collect()
}

/// What a reopened store holds: hard state and every entry.
fn contents(dir: &Path, o: Options) -> (raft::HardState, Vec<Entry>) {
    let (s, rec) = Store::open(dir, o).unwrap();
    (rec.hard_state, common::all_entries(&s).unwrap())
}

#[test]
fn a_torn_write_is_all_or_nothing_for_any_sectors_or_pages() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("store");
    let o = options(1 << 20);
    {
        let (mut s, _) = Store::open(&dir, o.clone()).unwrap();
        s.write(Some(&hard_state(1, 30)), &batch(1, 40, 300))
            .unwrap();
    }
    let before = contents(&dir, o.clone());
    let seg = segments(&dir).pop().unwrap();
    let old = fs::read(&seg).unwrap();
    {
        // One write of about 12 KiB: three pages, a new hard state and a truncation.
        let (mut s, _) = Store::open(&dir, o.clone()).unwrap();
        s.write(Some(&hard_state(2, 45)), &batch(36, 30, 400))
            .unwrap();
    }
    let after = contents(&dir, o.clone());
    assert_ne!(before, after);
    let new = fs::read(&seg).unwrap();
    assert_eq!(
        segments(&dir).len(),
        1,
        "the write must not start a segment"
    );
    let start = old.iter().zip(&new).position(|(a, b)| a != b).unwrap();
    let end = new.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end - start > 8192, "the write spans pages");

    let check = |bytes: Vec<u8>, what: &str| {
        let work = base.path().join("work");
        let _ = fs::remove_dir_all(&work);
        copy_dir(&dir, &work);
        fs::write(work.join("wal").join(seg.file_name().unwrap()), bytes).unwrap();
        let got = contents(&work, o.clone());
        assert!(
            got == before || got == after,
            "{what}: half a write is visible"
        );
        // Whatever was recovered takes new writes and survives another reopen.
        {
            let (mut s, _) = Store::open(&work, o.clone()).unwrap();
            let next = s.last_index().0 + 1;
            s.write(None, &batch(next, 3, 10)).unwrap();
        }
        let (_, again) = contents(&work, o.clone());
        assert_eq!(again.len(), got.1.len() + 3, "{what}");
        got == after
    };
    // Disks write 512-byte sectors atomically: cut the write at every sector boundary (the rest
    // of the write stays zero, as preallocated).
    let mut whole = 0;
    let cuts = (start.next_multiple_of(512)..end)
        .step_by(512)
        .chain([start, end]);
    for cut in cuts {
        let mut b = new[..cut].to_vec();
        b.extend_from_slice(&old[cut..]);
        whole += u32::from(check(b, &format!("cut at {cut}")));
    }
    assert_eq!(whole, 1, "only the complete write is visible");
    // Sectors (or whole pages) reach the disk in any order: random subsets of the write's.
    for (unit, seed) in [(512, 0x5ec7), (4096, 0x70_12)] {
        let mut rng = Rng(seed);
        for round in 0..40 {
            let mut b = old.clone();
            let mut all = true;
            for p in start / unit..end.div_ceil(unit) {
                if rng.below(2) == 0 {
                    let r = p * unit..((p + 1) * unit).min(new.len());
                    b[r.clone()].copy_from_slice(&new[r]);
                } else {
                    all = false;
                }
            }
            let got_after = check(b, &format!("{unit}-byte unit subset, round {round}"));
            assert!(
                !got_after || all,
                "round {round}: a partial write was accepted"
            );
        }
    }
}

#[test]
fn damage_before_the_tail_is_refused_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(1 << 20);
    {
        let (mut s, _) = Store::open(dir.path(), o.clone()).unwrap();
        for i in 0..20 {
            s.write(
                Some(&hard_state(1, i * 10 + 10)),
                &batch(i * 10 + 1, 10, 200),
            )
            .unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let at = 20_000;
    assert!(bytes[at..at + 100].iter().any(|&b| b != 0));
    bytes[at] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    match Store::open(dir.path(), o) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert!(
                file.ends_with(seg.file_name().unwrap().to_str().unwrap()),
                "{file}"
            );
            assert!(
                offset <= at as u64 && at as u64 - offset < 4096,
                "offset {offset}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // The last write damaged while complete on disk (no sector left unwritten) is not a torn
    // write: dropping it would lose an acknowledged write, so open refuses.
    bytes[at] ^= 0x40;
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 50] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let err = Store::open(dir.path(), options(1 << 20))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a torn write"), "{err}");
}

fn fill_segments(dir: &Path, o: &Options, want: usize) -> u64 {
    let (mut s, _) = Store::open(dir, o.clone()).unwrap();
    let mut next = s.last_index().0 + 1;
    while segments(dir).len() < want {
        s.write(Some(&hard_state(1, next + 19)), &batch(next, 20, 1000))
            .unwrap();
        next += 20;
    }
    next - 1
}

#[test]
fn a_missing_segment_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(64 * 1024);
    fill_segments(dir.path(), &o, 4);
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    let err = Store::open(dir.path(), o.clone()).unwrap_err().to_string();
    let name = segs[1].file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("missing"), "{err}");
    // The first segment gone (it holds entries of the log) is refused too.
    fs::remove_file(&segs[0]).unwrap();
    fs::remove_file(&segs[2]).unwrap();
    let err = Store::open(dir.path(), o).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn compaction_deletes_whole_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(64 * 1024);
    let last = fill_segments(dir.path(), &o, 8);
    let to = EntryId {
        term: Term(1),
        index: Index(last - 30),
    };
    {
        let (mut s, _) = Store::open(dir.path(), o.clone()).unwrap();
        let meta = SnapshotMeta {
            last: to,
            membership: Membership::new([NodeId::new(1).unwrap()]),
        };
        s.save_snapshot(&meta, b"state").unwrap();
        s.compact(to).unwrap();
        assert!(
            segments(dir.path()).len() <= 2,
            "{:?}",
            segments(dir.path())
        );
    }
    let (s, rec) = Store::open(dir.path(), o).unwrap();
    assert_eq!((rec.log_start, rec.last_index), (to, Index(last)));
    let got = common::all_entries(&s).unwrap();
    assert_eq!(
        got,
        (last - 29..=last)
            .map(|i| entry(i, 1, 1000))
            .collect::<Vec<_>>()
    );
}

#[test]
fn one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = common::open(dir.path()).unwrap();
    let err = common::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another process"), "{err}");
    drop(s);
    common::open(dir.path()).unwrap();
}

#[test]
fn a_data_dir_of_the_old_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("log")).unwrap();
    let err = common::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("fjall"), "{err}");
}

#[test]
fn entries_larger_than_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(64 * 1024);
    let big = entry(2, 1, 300 * 1024);
    {
        let (mut s, _) = Store::open(dir.path(), o.clone()).unwrap();
        s.write(None, &[entry(1, 1, 10)]).unwrap();
        s.write(None, std::slice::from_ref(&big)).unwrap();
        s.write(Some(&hard_state(1, 4)), &batch(3, 2, 10)).unwrap();
    }
    let (s, rec) = Store::open(dir.path(), o).unwrap();
    assert_eq!(rec.last_index, Index(4));
    let got = common::all_entries(&s).unwrap();
    assert_eq!(got[1], big);
    assert_eq!(got.len(), 4);
}

#[test]
fn a_stray_byte_in_unused_space_never_becomes_part_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(64 * 1024);
    {
        let (mut s, _) = Store::open(dir.path(), o.clone()).unwrap();
        s.write(Some(&hard_state(1, 1)), &batch(1, 1, 100)).unwrap();
    }
    // Every aligned position in the unused space of the active segment gets a stray byte, but
    // the first frame header there stays zero (so open sees the log's end, not a torn write).
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    for at in (used.next_multiple_of(8) + 16..bytes.len()).step_by(8) {
        bytes[at] = 0x5a;
    }
    fs::write(&seg, &bytes).unwrap();
    // The log grows over that space and rolls to new segments; the reopen is clean.
    let mut next = 2;
    {
        let (mut s, rec) = Store::open(dir.path(), o.clone()).unwrap();
        assert_eq!(rec.last_index, Index(1));
        while segments(dir.path()).len() < 3 {
            s.write(Some(&hard_state(1, next + 6)), &batch(next, 7, 900))
                .unwrap();
            next += 7;
        }
    }
    let (s, _) = Store::open(dir.path(), o).unwrap();
    let got = common::all_entries(&s).unwrap();
    assert_eq!(got.len() as u64, next - 1);
    assert!(got.iter().all(|e| *e == entry(e.index.0, 1, e.data.len())));
}

#[test]
fn a_crash_while_rolling_to_a_new_segment_is_all_or_nothing() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("store");
    let o = options(64 * 1024);
    let last = fill_segments(&dir, &o, 2);
    let before_segments = segments(&dir);
    // Writes until one starts a new segment.
    let mut next = last + 1;
    {
        let (mut s, _) = Store::open(&dir, o.clone()).unwrap();
        while segments(&dir).len() == before_segments.len() {
            s.write(Some(&hard_state(1, next + 19)), &batch(next, 20, 1000))
                .unwrap();
            next += 20;
        }
    }
    // The state just before the rolling write, and after it.
    let after = contents(&dir, o.clone());
    let before_roll = (
        hard_state(1, next - 21),
        after.1[..after.1.len() - 20].to_vec(),
    );
    let new_seg = segments(&dir).pop().unwrap();
    let new_bytes = fs::read(&new_seg).unwrap();
    let magic = b"SKWL";
    let frames: Vec<usize> = (0..new_bytes.len() - 4)
        .filter(|&i| &new_bytes[i..i + 4] == magic)
        .collect();
    let (frame, end) = (
        frames[1],
        new_bytes.iter().rposition(|&b| b != 0).unwrap() + 1,
    );
    let check = |image: &dyn Fn(&Path), what: &str| {
        let work = base.path().join("work");
        let _ = fs::remove_dir_all(&work);
        copy_dir(&dir, &work);
        image(&work);
        let got = contents(&work, o.clone());
        assert!(got == before_roll || got == after, "{what}: {:?}", got.0);
        got == after
    };
    // Crash before the rename: the new segment is only a temporary file.
    let tmp_name = format!("{}.tmp", new_seg.file_name().unwrap().to_str().unwrap());
    let crashed_before_rename = |w: &Path| {
        let seg = w.join("wal").join(new_seg.file_name().unwrap());
        fs::rename(&seg, w.join("wal").join(&tmp_name)).unwrap();
    };
    assert!(!check(&crashed_before_rename, "before rename"));
    // Crash after the rename (header and checkpoint are synced first): any sectors of the
    // write in the new segment.
    let mut rng = Rng(0x2011);
    let mut whole = 0;
    for round in 0..30 {
        let mut b = new_bytes.clone();
        let all = round == 0;
        for s in (frame / 512)..end.div_ceil(512) {
            if !all && rng.below(2) == 0 {
                let r = (s * 512).max(frame)..((s + 1) * 512).min(b.len());
                b[r].fill(0);
            }
        }
        let image = |w: &Path| {
            fs::write(w.join("wal").join(new_seg.file_name().unwrap()), &b).unwrap();
        };
        whole += u32::from(check(&image, &format!("round {round}")));
    }
    assert!(whole >= 1);
}

#[test]
fn a_data_dir_whose_log_is_gone_is_refused_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = common::open(dir.path()).unwrap();
        s.write(Some(&hard_state(3, 2)), &batch(1, 2, 10)).unwrap();
        let meta = SnapshotMeta {
            last: EntryId {
                term: Term(1),
                index: Index(2),
            },
            membership: Membership::new([NodeId::new(1).unwrap()]),
        };
        s.save_snapshot(&meta, b"state").unwrap();
    }
    for seg in segments(dir.path()) {
        fs::remove_file(seg).unwrap();
    }
    // Starting afresh would forget the term and vote: refused, and nothing is created.
    let err = common::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    assert!(segments(dir.path()).is_empty());
}

#[test]
fn a_second_process_changes_nothing_before_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _) = common::open(dir.path()).unwrap();
    // A snapshot being written by the running process.
    let tmp = dir
        .path()
        .join("snap/snap-0000000000000001-0000000000000009.snap.tmp");
    fs::write(&tmp, b"in progress").unwrap();
    let err = common::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(
        tmp.exists(),
        "the refused open removed another process's file"
    );
}
