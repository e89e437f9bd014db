//! Exactly-once application, the applied index, reopening, snapshots and hostile bytes.

mod common;

use proptest::prelude::*;
use skiff_kv::codec::{decode_command, encode_command};
use skiff_kv::*;

fn put(k: &str, v: &str) -> Request {
    Request::Put(PutRequest::new(k, v))
}

fn store(sessions_max: usize) -> Store {
    Store::in_memory(Options {
        sessions_max,
        ..Options::default()
    })
    .expect("store")
}

#[test]
fn a_retried_command_returns_the_stored_response_and_applies_once() {
    let s = store(10);
    let cmd = Command::with_session(42, 1, put("k", "v"));
    let first = s.apply(1, &cmd).unwrap();
    // The same entry proposed again (client retry after a timeout) lands at a later index.
    let again = s.apply(2, &cmd).unwrap();
    assert_eq!(first, again);
    assert_eq!(s.revision().unwrap(), 2, "applied once");
    assert_eq!(
        s.applied_index().unwrap(),
        2,
        "the duplicate entry is still consumed"
    );
    let kv = s.range(&RangeRequest::key("k")).unwrap().kvs;
    assert_eq!(kv[0].version, 1);
    // The next request of the client applies normally.
    s.apply(3, &Command::with_session(42, 2, put("k", "w")))
        .unwrap();
    assert_eq!(s.revision().unwrap(), 3);
    // An older one is refused: its response is gone.
    let stale = s
        .apply(4, &Command::with_session(42, 1, put("k", "v")))
        .unwrap_err();
    assert!(
        matches!(stale, Error::Kv(KvError::StaleSequence)),
        "{stale}"
    );
    assert_eq!(s.revision().unwrap(), 3);
}

#[test]
fn a_retried_failure_returns_the_same_failure_even_if_it_would_now_succeed() {
    let s = store(10);
    let mut p = PutRequest::new("k", "");
    p.ignore_value = true;
    let cmd = Command::with_session(7, 1, Request::Put(p));
    assert!(matches!(
        s.apply(1, &cmd),
        Err(Error::Kv(KvError::KeyNotFound))
    ));
    s.apply(2, &Command::new(put("k", "v"))).unwrap();
    assert!(matches!(
        s.apply(3, &cmd),
        Err(Error::Kv(KvError::KeyNotFound))
    ));
    assert_eq!(s.revision().unwrap(), 2);
}

#[test]
fn sessions_evict_the_least_recently_seen_client_and_refuse_its_retries() {
    let s = store(2);
    s.apply(1, &Command::with_session(1, 1, put("a", "1")))
        .unwrap();
    s.apply(2, &Command::with_session(2, 1, put("b", "1")))
        .unwrap();
    s.apply(3, &Command::with_session(1, 2, put("a", "2")))
        .unwrap(); // client 1 seen at 3
    s.apply(4, &Command::with_session(3, 1, put("c", "1")))
        .unwrap(); // evicts client 2 (seen at 2)
    s.check_invariants().unwrap();
    let rev = s.revision().unwrap();
    // Client 2 retrying its first request: seq 1 from an unknown client opens a new session,
    // which is the documented limit of the rule; a retry of seq > 1 is refused.
    let expired = s
        .apply(5, &Command::with_session(2, 2, put("b", "2")))
        .unwrap_err();
    assert!(matches!(expired, Error::Kv(KvError::SessionExpired)));
    assert_eq!(s.revision().unwrap(), rev);
    // Client 1 kept its session.
    let retry = s
        .apply(6, &Command::with_session(1, 2, put("a", "2")))
        .unwrap();
    assert_eq!(retry.revision(), 4);
    assert_eq!(s.revision().unwrap(), rev);
}

#[test]
fn entries_at_or_below_the_applied_index_are_skipped() {
    let s = store(10);
    s.apply(5, &Command::new(put("k", "v"))).unwrap();
    for index in [1, 5] {
        let err = s.apply(index, &Command::new(put("k", "w"))).unwrap_err();
        assert!(
            matches!(err, Error::AlreadyApplied { applied: 5, .. }),
            "{err}"
        );
    }
    s.advance_applied(6).unwrap();
    assert!(s.advance_applied(6).is_err());
    assert_eq!((s.applied_index().unwrap(), s.revision().unwrap()), (6, 2));
}

#[test]
fn reopening_finds_the_same_state_and_applied_index() {
    for durability in [
        Durability::Immediate,
        Durability::Batched {
            commits_per_sync: 3,
            interval: std::time::Duration::from_secs(3600),
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let options = Options {
            durability,
            ..Options::default()
        };
        let (hash, snapshot) = {
            let s = Store::open(&path, options).unwrap();
            s.apply(1, &Command::new(Request::LeaseGrant { id: 3, ttl: 10 }))
                .unwrap();
            s.apply(
                2,
                &Command::new(Request::Put(PutRequest {
                    lease: 3,
                    ..PutRequest::new("a", "1")
                })),
            )
            .unwrap();
            s.apply(3, &Command::with_session(9, 1, put("b", "1")))
                .unwrap();
            s.apply(
                4,
                &Command::new(Request::DeleteRange(DeleteRangeRequest::key("b"))),
            )
            .unwrap();
            s.apply(5, &Command::new(Request::Compact { revision: 3 }))
                .unwrap();
            (s.hash().unwrap(), s.snapshot().unwrap())
        };
        let s = Store::open(&path, options).unwrap();
        assert_eq!(s.applied_index().unwrap(), 5);
        assert_eq!(s.hash().unwrap(), hash);
        assert_eq!(
            s.snapshot().unwrap(),
            snapshot,
            "every table, sessions included"
        );
        assert_eq!(s.compact_revision().unwrap(), 3);
        assert_eq!(s.lease_keys(3).unwrap(), vec![b"a".to_vec()]);
        assert!(matches!(
            s.apply(5, &Command::new(put("x", "y"))),
            Err(Error::AlreadyApplied { .. })
        ));
        // The session survived: a retry is still recognised.
        let retry = s
            .apply(6, &Command::with_session(9, 1, put("b", "1")))
            .unwrap();
        assert_eq!(retry.revision(), 3);
        s.check_invariants().unwrap();
    }
}

#[test]
fn restore_replaces_everything_and_refuses_corrupt_snapshots() {
    let a = store(10);
    a.apply(1, &Command::new(put("a", "1"))).unwrap();
    a.apply(2, &Command::with_session(1, 1, put("b", "1")))
        .unwrap();
    let snap = a.snapshot().unwrap();
    let b = store(10);
    for i in 1..=5 {
        b.apply(i, &Command::new(put("other", "x"))).unwrap();
    }
    let before = b.hash().unwrap();
    let mut bad = snap.clone();
    bad[12] ^= 1;
    assert!(matches!(b.restore(&bad), Err(Error::Decode(_))));
    assert!(matches!(
        b.restore(&snap[..snap.len() - 1]),
        Err(Error::Decode(_))
    ));
    assert_eq!(
        b.hash().unwrap(),
        before,
        "a failed restore changes nothing"
    );
    b.restore(&snap).unwrap();
    assert_eq!(b.hash().unwrap(), a.hash().unwrap());
    assert_eq!(b.applied_index().unwrap(), 2);
    assert!(b.range(&RangeRequest::key("other")).unwrap().kvs.is_empty());
    let retry = b
        .apply(3, &Command::with_session(1, 1, put("b", "1")))
        .unwrap();
    assert_eq!(retry.revision(), 3, "sessions travel with the snapshot");
    b.check_invariants().unwrap();
}

#[test]
fn restoring_into_a_smaller_session_table_evicts_the_oldest() {
    let big = store(10);
    for client in 1..=4 {
        big.apply(client, &Command::with_session(client, 1, put("k", "v")))
            .unwrap();
    }
    let small = store(2);
    small.restore(&big.snapshot().unwrap()).unwrap();
    small.check_invariants().unwrap();
    let kept = small
        .apply(5, &Command::with_session(4, 1, put("k", "v")))
        .unwrap();
    assert_eq!(
        kept.revision(),
        5,
        "client 4 (seen last) is still deduplicated"
    );
    let evicted = small
        .apply(6, &Command::with_session(1, 2, put("k", "w")))
        .unwrap_err();
    assert!(matches!(evicted, Error::Kv(KvError::SessionExpired)));
}

#[test]
fn commands_survive_the_codec_through_apply() {
    let s = store(10);
    let cmd = Command::with_session(
        5,
        1,
        Request::Txn(TxnRequest {
            compare: vec![Compare::new(
                "k",
                CompareResult::Equal,
                CompareTarget::Version(0),
            )],
            success: vec![RequestOp::Put(PutRequest::new("k", "v"))],
            failure: vec![],
        }),
    );
    let decoded = decode_command(&encode_command(&cmd)).unwrap();
    assert_eq!(decoded, cmd);
    assert!(matches!(
        s.apply(1, &decoded),
        Ok(Response::Txn(TxnResponse {
            succeeded: true,
            revision: 2,
            ..
        }))
    ));
}

/// One store shared by the property cases below (creating a redb database per case would
/// dominate the run time); restores into it only ever fail, so it never changes.
fn shared() -> &'static Store {
    static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
    STORE.get_or_init(|| store(10))
}

fn sample_snapshot() -> &'static [u8] {
    static SNAP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SNAP.get_or_init(|| {
        let s = store(10);
        s.apply(1, &Command::new(Request::LeaseGrant { id: 2, ttl: 5 }))
            .unwrap();
        s.apply(2, &Command::with_session(1, 1, put("key", "value")))
            .unwrap();
        s.apply(
            3,
            &Command::new(Request::Put(PutRequest {
                lease: 2,
                ..PutRequest::new("l", "v")
            })),
        )
        .unwrap();
        s.snapshot().unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_command(&bytes);
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        let _ = decode_command(&versioned);
        prop_assert!(shared().restore(&bytes).is_err());
        prop_assert_eq!(shared().revision().unwrap(), 1);
    }

    #[test]
    fn bit_flips_in_a_snapshot_are_detected(pos in 0usize..10_000, bit in 0u8..8) {
        let mut snap = sample_snapshot().to_vec();
        let pos = pos % snap.len();
        snap[pos] ^= 1 << bit;
        prop_assert!(shared().restore(&snap).is_err());
        prop_assert_eq!(shared().revision().unwrap(), 1);
    }
}

#[test]
fn invalid_options_are_refused_with_a_reason() {
    for options in [
        Options {
            sessions_max: 0,
            ..Options::default()
        },
        Options {
            durability: Durability::Batched {
                commits_per_sync: 0,
                interval: std::time::Duration::from_secs(1),
            },
            ..Options::default()
        },
    ] {
        let err = Store::in_memory(options).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}

/// `apply_batch` gives the results and the state of applying each entry on its own, also when
/// a request in the middle fails (the batch is redone entry by entry), with retries of a
/// session inside the batch, no-op entries, and entries already applied.
#[test]
fn a_batch_applies_like_one_entry_at_a_time() {
    let session = |id| Some(Session::opened(id, 1, 0));
    let cmd = |session, request| Command {
        session,
        request,
        auth: None,
    };
    let cmds = [
        cmd(session(1), put("a", "1")),
        cmd(None, put("b", "2")),
        cmd(session(1), put("a", "1")), // a retry of the first: answered, not applied
        cmd(
            session(2),
            Request::Put(PutRequest {
                lease: 77, // no such lease: fails
                ..PutRequest::new("c", "3")
            }),
        ),
        cmd(session(3), put("a", "4")),
    ];
    let layout: Vec<(u64, Option<&Command>)> = vec![
        (1, None), // an election no-op
        (2, Some(&cmds[0])),
        (3, Some(&cmds[1])),
        (4, Some(&cmds[2])),
        (5, Some(&cmds[3])),
        (6, Some(&cmds[4])),
    ];
    // With a table of two sessions the batch also evicts, which an abort must undo too.
    for (with_failure, sessions_max) in [(false, 100), (true, 100), (false, 2), (true, 2)] {
        let entries: Vec<(u64, Option<&Command>)> = layout
            .iter()
            .copied()
            .filter(|(i, _)| with_failure || *i != 5)
            .collect();
        let one = store(sessions_max);
        let mut expected = Vec::new();
        for &(index, c) in &entries {
            expected.push(match c {
                None => {
                    one.advance_applied(index).unwrap();
                    None
                }
                Some(c) => match one.apply(index, c) {
                    Ok(r) => Some(Ok(r)),
                    Err(skiff_kv::Error::Kv(e)) => Some(Err(e)),
                    Err(e) => panic!("{e}"),
                },
            });
        }
        let batch = store(sessions_max);
        let got = batch.apply_batch(&entries).unwrap();
        assert_eq!(got, expected, "with_failure={with_failure}");
        assert_eq!(batch.hash().unwrap(), one.hash().unwrap());
        assert_eq!(batch.applied_index().unwrap(), 6);
        batch.check_invariants().unwrap();
        // Replaying the same batch applies nothing.
        let again = batch.apply_batch(&entries).unwrap();
        assert!(again.iter().all(Option::is_none));
        assert_eq!(batch.hash().unwrap(), one.hash().unwrap());
    }
}

/// Writes that remember the largest single write, so the test sees the snapshot stream in
/// bounded slices rather than one whole buffer.
struct Recorder {
    bytes: Vec<u8>,
    largest_write: usize,
}

impl std::io::Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.largest_write = self.largest_write.max(buf.len());
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands out at most 7 bytes per read.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn snapshots_stream_in_bounded_slices_both_ways() {
    let a = store(10);
    let value = "v".repeat(1000);
    for i in 1..=6000u64 {
        a.apply(i, &Command::new(put(&format!("key{i:05}"), &value)))
            .unwrap();
    }
    let mut out = Recorder {
        bytes: Vec::new(),
        largest_write: 0,
    };
    let written = a.snapshot_view().unwrap().write_to(&mut out).unwrap();
    assert_eq!(written, out.bytes.len() as u64);
    assert!(out.bytes.len() > 6_000_000);
    assert!(
        out.largest_write < 1_100_000,
        "one write of {} bytes: the snapshot was buffered whole",
        out.largest_write
    );
    assert_eq!(out.bytes, a.snapshot().unwrap());
    let b = store(10);
    b.restore_from(&mut Trickle(&out.bytes)).unwrap();
    assert_eq!(b.hash().unwrap(), a.hash().unwrap());
    b.check_invariants().unwrap();
    // Cut short or with a byte of its end changed, the stream is refused and changes nothing.
    let c = store(10);
    let before = c.hash().unwrap();
    let n = out.bytes.len();
    assert!(c.restore_from(&mut Trickle(&out.bytes[..n - 10])).is_err());
    let mut bad = out.bytes.clone();
    bad[n - 2] ^= 4;
    assert!(c.restore_from(&mut Trickle(&bad)).is_err());
    let mut longer = out.bytes.clone();
    longer.push(0);
    assert!(c.restore_from(&mut Trickle(&longer)).is_err());
    assert_eq!(c.hash().unwrap(), before);
}

/// A command of session `(id, seq)` opened by a server that had applied through `after`.
fn opened(id: u64, seq: u64, after: u64, request: Request) -> Command {
    Command {
        session: Some(Session::opened(id, seq, after)),
        request,
        auth: None,
    }
}

#[test]
fn a_retry_of_a_large_answer_is_replayed_and_the_session_keeps_no_payload() {
    // The session table keeps no response that carries key-values: a retry is answered by
    // running the request again as of the revision it first saw, after other writes changed
    // everything it read.
    let s = store(10);
    let big = "x".repeat(200_000);
    let mut index = 0;
    let mut next = || {
        index += 1;
        index
    };
    for k in ["a", "b", "c"] {
        s.apply(next(), &Command::new(put(k, &big))).unwrap();
    }
    let del = Request::DeleteRange(DeleteRangeRequest {
        prev_kv: true,
        ..DeleteRangeRequest::range("a", "c")
    });
    let txn = Request::Txn(TxnRequest {
        compare: vec![Compare::new(
            "c",
            CompareResult::Equal,
            CompareTarget::Version(1),
        )],
        success: vec![
            RequestOp::Range(RangeRequest::range("a", "z")),
            RequestOp::Put(PutRequest {
                prev_kv: true,
                ..PutRequest::new("c", "small")
            }),
            RequestOp::Range(RangeRequest::range("a", "z")),
            RequestOp::Put(PutRequest::new("d", "new")),
        ],
        failure: vec![],
    });
    let put_prev = Request::Put(PutRequest {
        prev_kv: true,
        ..PutRequest::new("d", "again")
    });
    let firsts: Vec<(Command, Response)> = [(7, del), (8, txn), (9, put_prev)]
        .into_iter()
        .map(|(id, r)| {
            let cmd = opened(id, 1, 0, r);
            let first = s.apply(next(), &cmd).unwrap();
            (cmd, first)
        })
        .collect();
    let snapshot_bytes = s.snapshot().unwrap().len();
    // Everything the requests read changes afterwards.
    for k in ["a", "b", "c", "d"] {
        s.apply(next(), &Command::new(put(k, "later"))).unwrap();
    }
    let rev = s.revision().unwrap();
    for (cmd, first) in &firsts {
        let again = s.apply(next(), cmd).unwrap();
        // Not assert_eq: the answers hold 200 KB values.
        assert!(
            &again == first,
            "the retry's answer differs: revision {} vs {}",
            again.revision(),
            first.revision()
        );
    }
    // Retries inside a batch are answered the same way.
    let batch: Vec<(u64, Option<&Command>)> =
        firsts.iter().map(|(c, _)| (next(), Some(c))).collect();
    let answers = s.apply_batch(&batch).unwrap();
    for (a, (_, first)) in answers.into_iter().zip(&firsts) {
        assert!(a == Some(Ok(first.clone())), "a retry in a batch");
    }
    assert_eq!(s.revision().unwrap(), rev, "nothing applied twice");
    s.check_invariants().unwrap();
    // The live data is ~4 x 5 bytes now; the state before the retries held the three 200 KB
    // values in history, but no answer: the snapshot is history, not stored responses.
    assert!(
        snapshot_bytes < 3 * big.len() + 4096,
        "snapshot of {snapshot_bytes} bytes: a stored response?"
    );
    // Once what a retry read is compacted away, it is told it was applied but its answer is
    // gone (not "compacted", which a client would take for "not applied").
    s.apply(next(), &Command::new(Request::Compact { revision: rev }))
        .unwrap();
    let (cmd, _) = &firsts[1];
    assert!(matches!(
        s.apply(next(), cmd),
        Err(Error::Kv(KvError::AnswerLost))
    ));
    assert_eq!(s.revision().unwrap(), rev);
}

#[test]
fn a_replayed_retry_in_a_batch_sees_what_it_would_see_alone() {
    // A batch [retry of a put with prev_kv, compaction past what the put read]: entry by
    // entry, the retry is answered before the compaction; the batch must answer the same (the
    // replay runs after the entries before it are committed, before the ones after it).
    let big = "y".repeat(300);
    let setup = |s: &Store| {
        s.apply(1, &Command::new(put("k", &big))).unwrap();
        let cmd = opened(
            5,
            1,
            0,
            Request::Put(PutRequest {
                prev_kv: true,
                ..PutRequest::new("k", "new")
            }),
        );
        let first = s.apply(2, &cmd).unwrap();
        s.apply(3, &Command::new(put("k", "newer"))).unwrap();
        (cmd, first)
    };
    let compact = Command::new(Request::Compact { revision: 4 });
    let alone = store(10);
    let (cmd, first) = setup(&alone);
    let one = alone.apply(4, &cmd).unwrap();
    alone.apply(5, &compact).unwrap();
    assert!(one == first, "alone: the first answer");
    let batched = store(10);
    let (cmd, _) = setup(&batched);
    let answers = batched
        .apply_batch(&[(4, Some(&cmd)), (5, Some(&compact))])
        .unwrap();
    assert!(
        answers[0] == Some(Ok(first)),
        "in a batch: the first answer"
    );
    assert_eq!(batched.hash().unwrap(), alone.hash().unwrap());
    // Where nobody waits for the answer, it is not computed.
    let skipped = store(10);
    let (cmd, _) = setup(&skipped);
    let answers = skipped
        .apply_batch_answering(&[(4, Some(&cmd)), (5, Some(&compact))], |_, _| false)
        .unwrap();
    assert_eq!(answers[0], None);
    assert_eq!(skipped.hash().unwrap(), alone.hash().unwrap());
}

#[test]
fn a_retry_of_an_evicted_session_is_refused_not_applied_twice() {
    // sessions_max 2. A session opened after applied index `after` has every entry after it;
    // once the table is full and its oldest session was seen after `after`, an unknown session
    // may be one that was evicted, and is refused.
    let s = store(2);
    s.apply(1, &opened(1, 1, 0, put("a", "1"))).unwrap();
    s.apply(2, &opened(2, 1, 1, put("b", "1"))).unwrap();
    s.apply(3, &opened(3, 1, 2, put("c", "1"))).unwrap(); // evicts client 1 (seen at 1)
    let rev = s.revision().unwrap();
    // Client 1 retries its put (opened after 0): it may have been applied, so it is refused.
    let refused = s.apply(4, &opened(1, 1, 0, put("a", "1"))).unwrap_err();
    assert!(
        matches!(refused, Error::Kv(KvError::SessionExpired)),
        "{refused}"
    );
    assert_eq!(s.revision().unwrap(), rev, "not applied twice");
    // A session opened after the oldest one left was seen is new, and applied.
    s.apply(5, &opened(4, 1, 3, put("d", "1"))).unwrap();
    assert_eq!(s.revision().unwrap(), rev + 1);
    // Until the table is full, nothing was evicted: any unknown session at seq 1 is new.
    let roomy = store(10);
    roomy.apply(1, &opened(1, 1, 0, put("a", "1"))).unwrap();
    roomy.apply(2, &opened(2, 1, 0, put("b", "1"))).unwrap();
    assert_eq!(roomy.revision().unwrap(), 3);
    s.check_invariants().unwrap();
}

#[test]
fn a_snapshot_loads_whatever_its_writer_wrote_and_verify_checks_it_whole() {
    // No field limit on the reader that the writer does not have: a 70 MiB value (larger
    // than any request, but the store does not bound it) survives a snapshot round trip.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("a.redb"), Options::default()).unwrap();
    s.apply(1, &Command::new(put("huge", &"v".repeat(70 << 20))))
        .unwrap();
    let mut bytes = Vec::new();
    s.snapshot_view().unwrap().write_to(&mut bytes).unwrap();
    skiff_kv::snapshot::verify(&mut bytes.as_slice()).expect("intact");
    let t = Store::open(dir.path().join("b.redb"), Options::default()).unwrap();
    t.restore(&bytes).expect("the writer's own snapshot loads");
    assert_eq!(t.hash().unwrap(), s.hash().unwrap());
    // Truncated, corrupt or with a length past the end: refused without allocating it.
    let n = bytes.len();
    let mut flipped = bytes.clone();
    flipped[n / 2] ^= 1;
    for bad in [&bytes[..n - 1], &flipped[..], &bytes[..20]] {
        assert!(skiff_kv::snapshot::verify(&mut &bad[..]).is_err());
    }
    let mut lying = bytes[..bytes.len() - 4].to_vec();
    lying.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(skiff_kv::snapshot::verify(&mut lying.as_slice()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Sessions recorded in batches of any size (one stored row per batch), with evictions
    /// (a table of 4) and retries, answer exactly as applying one entry at a time does, and
    /// still do after the store is reopened (the table rebuilt from the stored rows).
    #[test]
    fn sessions_stored_per_batch_answer_like_one_by_one_and_after_reopening(
        ops in prop::collection::vec((1u64..9, any::<bool>()), 1..80),
        cuts in prop::collection::vec(1usize..7, 1..40),
    ) {
        let options = Options { sessions_max: 4, ..Options::default() };
        let one = Store::in_memory(options).expect("store");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.redb");
        // Batches also share grouped transactions; dropping the store commits the last.
        let grouped = Options { commit_delay: std::time::Duration::from_secs(10), ..options };
        let batched = Store::open(&path, grouped).expect("store");
        let mut seqs = std::collections::HashMap::new();
        let cmds: Vec<Command> = ops
            .iter()
            .enumerate()
            .map(|(i, &(client, retry))| {
                let seq = seqs.entry(client).or_insert(0u64);
                if !(retry && *seq > 0) {
                    *seq += 1;
                }
                let request = Request::Put(PutRequest {
                    prev_kv: i % 3 == 0,
                    ..PutRequest::new(format!("k{client}"), i.to_string())
                });
                Command::with_session(client, *seq, request)
            })
            .collect();
        let want = common::apply_one_by_one(&one, 1, &cmds);
        let got = common::apply_in_batches(&batched, &cmds, &cuts);
        prop_assert_eq!(&got, &want);
        drop(batched);
        let reopened = Store::open(&path, options).expect("reopen");
        reopened.check_invariants().expect("invariants after reopening");
        // A retry of every client's last request, after reopening: answered alike.
        let retries: Vec<Command> = seqs
            .iter()
            .map(|(&client, &seq)| Command::with_session(client, seq, put(&format!("k{client}"), "retry")))
            .collect();
        let next = cmds.len() as u64 + 1;
        let want = common::apply_one_by_one(&one, next, &retries);
        let entries: Vec<(u64, Option<&Command>)> =
            retries.iter().enumerate().map(|(i, c)| (next + i as u64, Some(c))).collect();
        prop_assert_eq!(reopened.apply_batch(&entries).expect("batch"), want);
        prop_assert_eq!(reopened.hash().expect("hash"), one.hash().expect("hash"));
        reopened.check_invariants().expect("invariants");
    }
}

/// Replicas that applied the same log in different batches hold different dead records in
/// their stored session rows; raising `sessions_max` across a restart must not bring those
/// back (the eviction watermark), or one replica would answer a request as a retry that
/// another applies.
#[test]
fn raising_the_session_limit_does_not_revive_evicted_sessions_on_some_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = Options {
        sessions_max: 2,
        ..Options::default()
    };
    let cmds: Vec<Command> = (1..=3)
        .map(|client| Command::with_session(client, 1, put(&format!("k{client}"), "v")))
        .collect();
    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    {
        // A applies entries 1 and 2 together: its row of both stays while 2 is live.
        let s = Store::open(&a, small).expect("a");
        s.apply_batch(&[(1, Some(&cmds[0])), (2, Some(&cmds[1]))])
            .expect("batch");
        s.apply_batch(&[(3, Some(&cmds[2]))]).expect("batch");
        // B applies them one by one: client 1's row goes when it is evicted.
        let s = Store::open(&b, small).expect("b");
        for (i, c) in cmds.iter().enumerate() {
            s.apply(i as u64 + 1, c).expect("apply");
        }
    }
    let large = Options {
        sessions_max: 3,
        ..Options::default()
    };
    let (a, b) = (
        Store::open(&a, large).expect("a"),
        Store::open(&b, large).expect("b"),
    );
    a.check_invariants().expect("a");
    b.check_invariants().expect("b");
    // Client 1 was evicted on both: its request again is new on both, not a retry on one.
    let again = Command::with_session(1, 1, put("k1", "again"));
    let (ra, rb) = (a.apply(4, &again), b.apply(4, &again));
    assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
    assert_eq!(a.hash().expect("hash"), b.hash().expect("hash"));
    assert_eq!(
        a.revision().expect("rev"),
        5,
        "applied, not answered as a retry"
    );
}

/// Grouped commits: applies stay in the open transaction (a crash loses them, and the
/// caller replays them from its log) until the group is due and committed by the next apply
/// or by `settle_if_due` when nothing is applied. The file is copied as a crash would leave
/// it (redb keeps the original locked while the store is open).
#[test]
fn a_grouped_transaction_is_committed_when_due_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let crashed = |name: &str| {
        let copy = dir.path().join(name);
        std::fs::copy(&path, &copy).unwrap();
        Store::open(&copy, Options::default()).unwrap()
    };
    let options = Options {
        commit_delay: std::time::Duration::from_millis(200),
        ..Options::default()
    };
    let s = Store::open(&path, options).unwrap();
    s.apply(1, &Command::new(put("a", "1"))).unwrap();
    // Not due: nothing is committed yet, though readers see the put.
    s.settle_if_due().unwrap();
    assert_eq!(s.range(&RangeRequest::key("a")).unwrap().kvs.len(), 1);
    assert_eq!(crashed("early.redb").applied_index().unwrap(), 0);
    std::thread::sleep(std::time::Duration::from_millis(250));
    s.settle_if_due().unwrap();
    let after = crashed("due.redb");
    assert_eq!(
        after.applied_index().unwrap(),
        1,
        "the due group was committed"
    );
    assert_eq!(
        after.range(&RangeRequest::key("a")).unwrap().kvs[0].value,
        b"1"
    );
}
