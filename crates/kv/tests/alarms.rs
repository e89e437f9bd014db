//! Alarms (etcd's `apply.go` `Alarm`, `applierV3Capped`, `applierV3Corrupt`): raised and
//! cleared through the log, they decide at apply which requests are refused, and survive
//! reopening and snapshots.

use skiff_kv::*;

fn alarm(member_id: u64, alarm: AlarmType) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

fn raise(m: AlarmMember) -> Command {
    Command::new(Request::Alarm {
        action: AlarmAction::Activate,
        alarm: m,
    })
}

fn clear(m: AlarmMember) -> Command {
    Command::new(Request::Alarm {
        action: AlarmAction::Deactivate,
        alarm: m,
    })
}

fn put(k: &str) -> Command {
    Command::new(Request::Put(PutRequest::new(k, "v")))
}

fn put_txn(k: &str) -> Command {
    Command::new(Request::Txn(TxnRequest {
        compare: vec![],
        success: vec![],
        failure: vec![RequestOp::Put(PutRequest::new(k, "v"))],
    }))
}

fn refused(r: Result<Response, Error>) -> Option<KvError> {
    match r {
        Err(Error::Kv(e)) => Some(e),
        Ok(_) => None,
        Err(other) => panic!("storage fault: {other}"),
    }
}

#[test]
fn nospace_refuses_puts_and_grants_but_not_deletes_compactions_or_revokes() {
    let s = Store::in_memory(Options::default()).expect("store");
    s.apply(1, &put("a")).expect("put"); // rev 2
    s.apply(2, &put("b")).expect("put"); // rev 3
    s.apply(3, &Command::new(Request::LeaseGrant { id: 5, ttl: 60 }))
        .expect("grant");
    let nospace = alarm(7, AlarmType::NoSpace);
    let r = s.apply(4, &raise(nospace)).expect("raise");
    assert_eq!(
        r,
        Response::Alarm {
            revision: 3,
            changed: Some(nospace)
        }
    );
    assert_eq!(s.alarms(), vec![nospace]);
    // Raised again: nothing changes, and the answer names the alarm held (as etcd's).
    assert_eq!(
        s.apply(5, &raise(nospace)).expect("raise"),
        Response::Alarm {
            revision: 3,
            changed: Some(nospace)
        }
    );
    assert_eq!(s.alarms(), vec![nospace]);
    assert_eq!(refused(s.apply(6, &put("c"))), Some(KvError::NoSpace));
    assert_eq!(refused(s.apply(7, &put_txn("c"))), Some(KvError::NoSpace));
    assert_eq!(
        refused(s.apply(8, &Command::new(Request::LeaseGrant { id: 6, ttl: 60 }))),
        Some(KvError::NoSpace)
    );
    assert_eq!(
        KvError::NoSpace.to_string(),
        "etcdserver: mvcc: database space exceeded"
    );
    // Freeing space works: deletes, a transaction without puts, compaction, revoke.
    let del = Command::new(Request::DeleteRange(DeleteRangeRequest::key("a")));
    assert_eq!(refused(s.apply(9, &del)), None);
    let read_txn = Command::new(Request::Txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest::key("b"))],
        failure: vec![],
    }));
    assert_eq!(refused(s.apply(10, &read_txn)), None);
    let compact = Command::new(Request::Compact { revision: 4 });
    assert_eq!(refused(s.apply(11, &compact)), None);
    let revoke = Command::new(Request::LeaseRevoke { id: 5 });
    assert_eq!(refused(s.apply(12, &revoke)), None);
    assert_eq!(s.revision().expect("rev"), 5, "refused puts wrote nothing");
    // Disarmed: writes apply again.
    assert_eq!(
        s.apply(13, &clear(nospace)).expect("clear"),
        Response::Alarm {
            revision: 5,
            changed: Some(nospace)
        }
    );
    assert!(s.alarms().is_empty());
    assert_eq!(refused(s.apply(14, &put("c"))), None);
    assert_eq!(s.applied_index().expect("applied"), 14);
    s.check_invariants().expect("invariants");
}

#[test]
fn corrupt_refuses_every_write_and_reads_through_the_log() {
    let s = Store::in_memory(Options::default()).expect("store");
    s.apply(1, &put("a")).expect("put");
    s.apply(2, &raise(alarm(0, AlarmType::Corrupt)))
        .expect("raise");
    let requests = [
        put("b"),
        put_txn("b"),
        Command::new(Request::DeleteRange(DeleteRangeRequest::key("a"))),
        Command::new(Request::Range(RangeRequest::key("a"))),
        Command::new(Request::Compact { revision: 2 }),
        Command::new(Request::LeaseGrant { id: 1, ttl: 60 }),
        Command::new(Request::LeaseRevoke { id: 1 }),
    ];
    for (i, cmd) in requests.iter().enumerate() {
        assert_eq!(
            refused(s.apply(3 + i as u64, cmd)),
            Some(KvError::Corrupt),
            "{cmd:?}"
        );
    }
    assert_eq!(KvError::Corrupt.to_string(), "etcdserver: corrupt cluster");
    // Reads outside the log still answer.
    assert_eq!(
        s.range(&RangeRequest::key("a")).expect("range").kvs.len(),
        1
    );
}

#[test]
fn an_alarm_in_a_batch_governs_the_entries_after_it_only() {
    let s = Store::in_memory(Options::default()).expect("store");
    let nospace = alarm(3, AlarmType::NoSpace);
    let cmds = [put("a"), raise(nospace), put("b"), clear(nospace), put("c")];
    let entries: Vec<_> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, Some(c)))
        .collect();
    let out = s.apply_batch(&entries).expect("batch");
    let refusals: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().expect("applied").as_ref().err().copied())
        .collect();
    assert_eq!(
        refusals,
        [None, None, Some(KvError::NoSpace), None, None],
        "{out:?}"
    );
    assert_eq!(s.revision().expect("rev"), 3);
    assert_eq!(s.applied_index().expect("applied"), 5);
}

#[test]
fn alarms_survive_reopening_and_snapshots() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("kv.redb");
    let both = [alarm(1, AlarmType::NoSpace), alarm(2, AlarmType::Corrupt)];
    let snap = {
        let s = Store::open(&path, Options::default()).expect("open");
        for (i, m) in both.iter().enumerate() {
            s.apply(i as u64 + 1, &raise(*m)).expect("raise");
        }
        s.snapshot().expect("snapshot")
    };
    let s = Store::open(&path, Options::default()).expect("reopen");
    assert_eq!(s.alarms(), both);
    assert_eq!(refused(s.apply(3, &put("x"))), Some(KvError::Corrupt));

    let copy = Store::in_memory(Options::default()).expect("store");
    copy.apply(1, &put("y")).expect("put");
    copy.restore(&snap).expect("restore");
    assert_eq!(copy.alarms(), both);
    assert_eq!(refused(copy.apply(3, &put("x"))), Some(KvError::Corrupt));
    // A snapshot without alarms clears them.
    let empty = Store::in_memory(Options::default())
        .expect("store")
        .snapshot()
        .expect("snapshot");
    copy.restore(&empty).expect("restore");
    assert!(copy.alarms().is_empty());
    assert_eq!(refused(copy.apply(1, &put("x"))), None);
}

#[test]
fn the_table_is_bounded() {
    let s = Store::in_memory(Options::default()).expect("store");
    let max = skiff_kv::alarms::ALARMS_MAX as u64;
    for id in 1..=max {
        s.apply(id, &raise(alarm(id, AlarmType::NoSpace)))
            .expect("raise");
    }
    assert_eq!(
        refused(s.apply(max + 1, &raise(alarm(max + 1, AlarmType::NoSpace)))),
        Some(KvError::TooManyAlarms)
    );
    assert_eq!(s.alarms().len() as u64, max);
}
