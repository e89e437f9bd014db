//! The store's API, case by case: recovery of every record, the identity check, refusals of
//! impossible requests, snapshots, staged snapshots and the core's `InitialState`.

mod common;

use std::fs;

use common::{entry, hard_state, open};
use raft::{Config, EntryId, Index, Membership, NodeId, RawNode, Term};
use skiff_storage::{Identity, SnapshotMeta, StorageError, Store};

fn id(term: u64, index: u64) -> EntryId {
    EntryId {
        term: Term(term),
        index: Index(index),
    }
}

fn voters() -> Membership {
    Membership::new([1, 2, 3].map(|i| NodeId::new(i).unwrap()))
}

#[test]
fn a_new_dir_is_empty_and_everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, rec) = open(dir.path()).unwrap();
    assert!(rec.created);
    assert_eq!(rec.last_index, Index(0));
    assert_eq!(s.first_index(), Index(1));
    s.set_membership(&voters()).unwrap();
    let es: Vec<_> = (1..=20).map(|i| entry(i, 2, 50)).collect();
    s.write(Some(&hard_state(2, 15)), &es).unwrap();
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    assert!(!rec.created);
    assert_eq!(rec.hard_state, hard_state(2, 15));
    assert_eq!(rec.membership, voters());
    assert_eq!(rec.last_index, Index(20));
    assert_eq!(common::all_entries(&s).unwrap(), es);
    assert_eq!(s.term(Index(0)).unwrap(), Term(0));
}

#[test]
fn the_recovered_state_starts_a_raft_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.set_membership(&voters()).unwrap();
    let es: Vec<_> = (1..=10).map(|i| entry(i, 1, 8)).collect();
    s.write(Some(&hard_state(1, 10)), &es).unwrap();
    s.save_snapshot(
        &SnapshotMeta {
            last: id(1, 4),
            membership: voters(),
        },
        b"kv",
    )
    .unwrap();
    s.compact(id(1, 4)).unwrap();
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    let state = skiff_storage::initial_state(&s, rec.log_start.index).unwrap();
    assert_eq!(state.snapshot, id(1, 4));
    assert_eq!(state.entries, es[4..].to_vec());
    let node = RawNode::new(Config::new(NodeId::new(1).unwrap()), state).unwrap();
    assert_eq!(node.status().last, id(1, 10));
    assert_eq!(node.status().commit, Index(10));
}

#[test]
fn a_dir_of_another_cluster_or_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    for other in [
        Identity {
            cluster_id: 0xdead,
            node_id: NodeId::new(1).unwrap(),
        },
        Identity {
            cluster_id: common::identity().cluster_id,
            node_id: NodeId::new(2).unwrap(),
        },
    ] {
        let mut o = common::options();
        o.identity = other;
        let err = Store::open(dir.path(), o).unwrap_err();
        assert!(
            matches!(err, StorageError::IdentityMismatch { found, .. } if found == common::identity()),
            "{err:?}"
        );
    }
}

#[test]
fn impossible_writes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(2, 5)),
        &(1..=10).map(|i| entry(i, 2, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    let invalid = |r: Result<(), StorageError>| {
        assert!(matches!(r, Err(StorageError::InvalidRequest(_))), "{r:?}")
    };
    invalid(s.write(None, &[entry(12, 2, 1)])); // gap
    invalid(s.write(None, &[entry(5, 3, 1)])); // replaces committed entry 5
    invalid(s.write(None, &[entry(11, 1, 1)])); // term goes back
    invalid(s.write(Some(&hard_state(1, 5)), &[])); // term goes back
    invalid(s.write(Some(&hard_state(2, 11)), &[])); // commit past the log
    invalid(s.write(None, &[entry(11, 2, 1), entry(13, 2, 1)])); // not contiguous
    invalid(s.compact(id(2, 5))); // no snapshot covers it
    s.save_snapshot(
        &SnapshotMeta {
            last: id(2, 8),
            membership: voters(),
        },
        b"x",
    )
    .unwrap();
    invalid(s.compact(id(2, 8))); // past commit
    invalid(s.compact(id(1, 5))); // wrong term
    assert_eq!(s.last_index(), Index(10));
    assert_eq!(s.hard_state(), hard_state(2, 5));
    s.compact(id(2, 5)).unwrap();
    invalid(s.write(None, &[entry(5, 3, 1)])); // compacted prefix
    assert!(matches!(
        s.term(Index(4)),
        Err(StorageError::Compacted { .. })
    ));
    assert!(matches!(
        s.term(Index(11)),
        Err(StorageError::Unavailable { .. })
    ));
    assert_eq!(s.term(Index(5)).unwrap(), Term(2));
}

#[test]
fn a_truncated_suffix_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(1, 2)),
        &(1..=10).map(|i| entry(i, 1, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    s.write(Some(&hard_state(2, 2)), &[entry(4, 2, 9)]).unwrap();
    assert_eq!(s.last_index(), Index(4));
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.last_index, Index(4));
    assert_eq!(
        s.entries(Index(4), Index(4), 0).unwrap(),
        vec![entry(4, 2, 9)]
    );
    assert!(matches!(
        s.entries(Index(4), Index(5), u64::MAX),
        Err(StorageError::Unavailable { .. })
    ));
}

#[test]
fn byte_limited_reads_return_at_least_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    // 100 entries: most only in the engine (the test cache holds 8).
    s.write(
        None,
        &(1..=100).map(|i| entry(i, 1, 100)).collect::<Vec<_>>(),
    )
    .unwrap();
    let one = entry(1, 1, 100).size_bytes();
    assert_eq!(s.entries(Index(1), Index(100), 0).unwrap().len(), 1);
    assert_eq!(s.entries(Index(1), Index(100), one * 3).unwrap().len(), 3);
    assert_eq!(s.entries(Index(90), Index(100), one * 5).unwrap().len(), 5);
    let all = s.entries(Index(1), Index(100), u64::MAX).unwrap();
    assert_eq!(all, (1..=100).map(|i| entry(i, 1, 100)).collect::<Vec<_>>());
}

#[test]
fn snapshots_replace_older_ones_and_a_missing_one_refuses_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(1, 10)),
        &(1..=10).map(|i| entry(i, 1, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    for at in [3, 7] {
        let meta = SnapshotMeta {
            last: id(1, at),
            membership: voters(),
        };
        s.save_snapshot(&meta, format!("state at {at}").as_bytes())
            .unwrap();
        s.compact(id(1, at)).unwrap();
    }
    let old = SnapshotMeta {
        last: id(1, 5),
        membership: voters(),
    };
    assert!(matches!(
        s.save_snapshot(&old, b"old"),
        Err(StorageError::InvalidRequest(_))
    ));
    let (meta, data) = s.load_snapshot().unwrap().unwrap();
    assert_eq!(meta.last, id(1, 7));
    assert_eq!(data, b"state at 7");
    let snap_files: Vec<_> = fs::read_dir(dir.path().join("snap")).unwrap().collect();
    assert_eq!(snap_files.len(), 1, "the older snapshot was removed");
    // A leftover temp file from an interrupted save is cleaned up on open.
    fs::write(
        dir.path()
            .join("snap/snap-0000000000000001-0000000000000009.snap.tmp"),
        b"x",
    )
    .unwrap();
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.snapshot.unwrap().last, id(1, 7));
    assert_eq!(fs::read_dir(dir.path().join("snap")).unwrap().count(), 1);
    drop(s);
    // The log was compacted to 7: without the snapshot file the data is gone, so refuse.
    for f in fs::read_dir(dir.path().join("snap")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("no snapshot file covers it"),
        "{err}"
    );
}

#[test]
fn installing_a_snapshot_resets_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(1, 3)),
        &(1..=10).map(|i| entry(i, 1, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    let meta = SnapshotMeta {
        last: id(5, 50),
        membership: voters(),
    };
    assert!(s.reset_to_snapshot(id(5, 50), &hard_state(5, 50)).is_err());
    s.save_snapshot(&meta, b"leader state").unwrap();
    s.reset_to_snapshot(id(5, 50), &hard_state(5, 50)).unwrap();
    s.write(None, &[entry(51, 5, 1)]).unwrap();
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.log_start, id(5, 50));
    assert_eq!(rec.hard_state, hard_state(5, 50));
    assert_eq!(rec.membership, voters());
    assert_eq!(common::all_entries(&s).unwrap(), vec![entry(51, 5, 1)]);
}

#[test]
fn installing_a_snapshot_keeps_a_matching_suffix() {
    // The core keeps entries after the snapshot when the log holds the snapshot's last entry
    // (they may already be acknowledged): the store must keep them too, across a reopen.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(2, 3)),
        &(1..=10).map(|i| entry(i, 2, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    let meta = SnapshotMeta {
        last: id(2, 6),
        membership: voters(),
    };
    s.save_snapshot(&meta, b"state through 6").unwrap();
    // A commit past the kept suffix would be a lie.
    assert!(s.reset_to_snapshot(id(2, 6), &hard_state(2, 11)).is_err());
    s.reset_to_snapshot(id(2, 6), &hard_state(2, 6)).unwrap();
    assert_eq!(s.first_index(), Index(7));
    assert_eq!(s.last_index(), Index(10));
    drop(s);
    let (s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.log_start, id(2, 6));
    assert_eq!(rec.last_index, Index(10));
    assert_eq!(
        common::all_entries(&s).unwrap(),
        (7..=10).map(|i| entry(i, 2, 4)).collect::<Vec<_>>()
    );
}

#[test]
fn a_staged_snapshot_survives_restart_and_a_torn_chunk_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    let meta = SnapshotMeta {
        last: id(3, 30),
        membership: voters(),
    };
    s.stage_begin(&meta, 300).unwrap();
    assert_eq!(s.stage_chunk(0, &[1; 100]).unwrap(), 100);
    assert!(matches!(
        s.stage_chunk(50, &[1; 10]),
        Err(StorageError::InvalidRequest(_))
    ));
    assert_eq!(s.stage_chunk(100, &[2; 100]).unwrap(), 200);
    drop(s);
    // A torn third chunk: a length prefix and half a record.
    let stage = dir.path().join("snap/incoming.stage");
    let mut bytes = fs::read(&stage).unwrap();
    bytes.extend_from_slice(&[105, 0, 0, 0, 1, 3, 3, 3]);
    fs::write(&stage, &bytes).unwrap();
    let (mut s, rec) = open(dir.path()).unwrap();
    let staged = rec.staged.unwrap();
    assert_eq!(staged.meta, meta);
    assert_eq!(staged.received_bytes, 200);
    assert!(matches!(
        s.stage_finish(),
        Err(StorageError::InvalidRequest(_))
    ));
    s.stage_chunk(200, &[3; 100]).unwrap();
    let m = s.stage_finish().unwrap();
    assert_eq!(m, meta);
    let data = [[1u8; 100], [2; 100], [3; 100]].concat();
    assert!(s.staged().is_none());
    assert_eq!(s.load_snapshot().unwrap().unwrap().1, data);
    let (m, size, mut r) = s.open_snapshot().unwrap().unwrap();
    assert_eq!((m, size), (meta.clone(), 300));
    let mut streamed = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut streamed).unwrap();
    assert_eq!(streamed, data);
    drop(s);
    // A staging file with a broken header is discarded cleanly.
    let (mut s, _) = open(dir.path()).unwrap();
    s.stage_begin(&meta, 10).unwrap();
    drop(s);
    let mut bytes = fs::read(&stage).unwrap();
    bytes[6] ^= 0xff;
    fs::write(&stage, &bytes).unwrap();
    let (s, rec) = open(dir.path()).unwrap();
    assert!(rec.staged.is_none());
    assert!(s.staged().is_none());
    assert!(!stage.exists());
}

#[test]
fn snapshot_chunks_are_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.write(
        Some(&hard_state(1, 20)),
        &(1..=20).map(|i| entry(i, 1, 10)).collect::<Vec<_>>(),
    )
    .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let meta = SnapshotMeta {
        last: id(1, 10),
        membership: voters(),
    };
    s.save_snapshot(&meta, &data).unwrap();
    assert_eq!(
        s.latest_snapshot().unwrap(),
        Some((meta.clone(), data.len() as u64))
    );
    assert_eq!(
        s.verify_snapshot().unwrap(),
        Some((meta.clone(), data.len() as u64))
    );
    let mut got = Vec::new();
    let mut at = 0u64;
    while at < data.len() as u64 {
        let n = (1 << 20).min(data.len() as u64 - at);
        got.extend(s.snapshot_chunk(meta.last, at, n).unwrap());
        at += n;
    }
    assert_eq!(got, data);
    // Past the end, or a snapshot that is not the newest: refused.
    assert!(s
        .snapshot_chunk(meta.last, data.len() as u64 - 1, 2)
        .is_err());
    assert!(s.snapshot_chunk(id(1, 9), 0, 1).is_err());
    let newer = SnapshotMeta {
        last: id(1, 15),
        membership: voters(),
    };
    s.save_snapshot(&newer, b"newer").unwrap();
    assert!(s.snapshot_chunk(meta.last, 0, 1).is_err());
    assert_eq!(s.snapshot_chunk(newer.last, 1, 3).unwrap(), b"ewe");
    // Written from a stream in pieces, read back as a stream.
    let streamed_meta = SnapshotMeta {
        last: id(1, 18),
        membership: voters(),
    };
    let mut w = skiff_storage::SnapshotWriter::create(s.snapshot_dir(), &streamed_meta).unwrap();
    for piece in data.chunks(100_000) {
        std::io::Write::write_all(&mut w, piece).unwrap();
    }
    assert_eq!(w.finish().unwrap(), data.len() as u64);
    s.adopt_snapshot(&streamed_meta).unwrap();
    let (_, size, mut r) = s.open_snapshot().unwrap().unwrap();
    assert_eq!(size, data.len() as u64);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut back).unwrap();
    assert_eq!(back, data);
    let newer = streamed_meta;
    // A flipped data byte is found by the streaming check and by the stream reader.
    drop(s);
    let path = dir
        .path()
        .join("snap/snap-0000000000000001-0000000000000012.snap");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (s, _) = open(dir.path()).unwrap();
    let err = s.verify_snapshot().unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    let (_, _, mut r) = s.open_snapshot().unwrap().unwrap();
    let err = std::io::Read::read_to_end(&mut r, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let err = s.load_snapshot().unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains("0000000000000012"),
        "{err}"
    );
    // An empty snapshot's checksum is checked too.
    drop(s);
    let (mut s, _) = open(dir.path()).unwrap();
    let empty = SnapshotMeta {
        last: id(1, 19),
        membership: voters(),
    };
    s.save_snapshot(&empty, b"").unwrap();
    assert_eq!(s.verify_snapshot().unwrap(), Some((empty, 0)));
    drop(s);
    let path = dir
        .path()
        .join("snap/snap-0000000000000001-0000000000000013.snap");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (s, _) = open(dir.path()).unwrap();
    assert!(s.verify_snapshot().is_err());
    let _ = newer;
}

#[test]
fn a_commit_only_hard_state_waits_for_the_next_record() {
    // `write_commit` is for batches whose `must_sync` is false: only the commit index moves.
    // It is not written on its own (unsynced bytes before synced ones could leave a hole after
    // a crash); the next record carries it, and a reopen before that finds the older commit.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.set_membership(&voters()).unwrap();
    let es: Vec<_> = (1..=5).map(|i| entry(i, 2, 50)).collect();
    s.write(Some(&hard_state(2, 1)), &es).unwrap();
    s.write_commit(&hard_state(2, 3)).unwrap();
    assert_eq!(s.hard_state(), hard_state(2, 3));

    // Anything but the commit index, or a commit past the log, is refused and changes nothing.
    for bad in [hard_state(3, 3), hard_state(2, 6)] {
        let e = s.write_commit(&bad).expect_err("refused");
        assert!(matches!(e, StorageError::InvalidRequest(_)), "{e}");
    }
    let mut voted = hard_state(2, 4);
    voted.vote = NodeId::new(2);
    assert!(s.write_commit(&voted).is_err(), "a vote must be synced");
    assert_eq!(s.hard_state(), hard_state(2, 3));

    // Lost by a "crash" (drop) before the next record: the last synced commit is back.
    drop(s);
    let (mut s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.hard_state, hard_state(2, 1));

    // Carried by the next record (entries only, no new hard state), and by `sync`.
    s.write_commit(&hard_state(2, 4)).unwrap();
    s.write(None, &[entry(6, 2, 50)]).unwrap();
    s.write_commit(&hard_state(2, 5)).unwrap();
    drop(s);
    let (mut s, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.hard_state, hard_state(2, 4));
    s.write_commit(&hard_state(2, 6)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.hard_state, hard_state(2, 6));
    assert_eq!(rec.last_index, Index(6));
}
