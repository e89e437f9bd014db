//! Alarms and the space quota against a real 3-process cluster, driven by the real etcdctl:
//! past `--quota-backend-bytes` writes are refused with etcd's message and a NOSPACE alarm
//! is raised through the log; deletes, compaction and reads go on; `alarm disarm` clears it
//! (and the next put raises it again while the file is still over the quota); the alarm
//! survives restarts and is enforced at apply even by members whose quota now allows the
//! write.

mod common;

use common::{etcdctl, etcdctl_available, etcdctl_ok, runtime, Cluster};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Small enough that a few dozen 60 kB values pass it (an empty state machine file is
/// about 1.5 MB).
const QUOTA_BYTES: &str = "3000000";

/// Every member's id, by index.
fn member_ids(rt: &tokio::runtime::Runtime, c: &Cluster) -> Vec<u64> {
    (0..c.members.len())
        .map(|i| {
            let s = rt.block_on(c.status(i)).expect("status");
            s.header.expect("header").member_id
        })
        .collect()
}

/// etcd's text format of a NOSPACE alarm of `id`, as etcdctl prints it.
fn nospace_line(id: u64) -> String {
    format!("memberID:{id} alarm:NOSPACE ")
}

#[test]
fn the_space_quota_raises_nospace_and_disarm_clears_it() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let mut c = Cluster::start_with(3, &["--quota-backend-bytes", QUOTA_BYTES]);
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let ids = member_ids(&rt, &c);
    let eps = c.endpoints();
    assert!(etcdctl_ok(&eps, &["alarm", "list"], "").stdout.is_empty());

    // Fill through the leader until it refuses.
    let value = "x".repeat(60_000);
    let mut refusal = None;
    for i in 0..200 {
        let out = etcdctl(
            &c.endpoint(leader),
            &["put", &format!("k{i:03}"), &value],
            "",
        );
        if !out.ok {
            refusal = Some((i, out.stderr));
            break;
        }
    }
    let (written, stderr) = refusal.expect("the quota refused a put within 12 MB");
    assert!(written > 5, "refused after {written} puts: {stderr}");
    assert!(stderr.contains(NO_SPACE), "{stderr}");

    // The leader raised NOSPACE for itself, through the log: every member lists it.
    for i in 0..3 {
        let list = etcdctl_ok(&c.endpoint(i), &["alarm", "list"], "").stdout;
        assert!(
            list.lines().any(|l| l == nospace_line(ids[leader])),
            "member {i}: {list:?}"
        );
        let status = rt.block_on(c.status(i)).expect("status");
        assert!(
            status.errors.contains(&nospace_line(ids[leader])),
            "member {i}: {:?}",
            status.errors
        );
    }

    // A follower refuses too (its own quota check, or the alarm at apply), and so do a
    // transaction with a put and a lease grant.
    let out = etcdctl(&c.endpoint(follower), &["put", "f", "v"], "");
    assert!(!out.ok && out.stderr.contains(NO_SPACE), "{}", out.stderr);
    let txn = etcdctl(&eps, &["txn"], "\nput t v\n\n\n");
    assert!(!txn.ok && txn.stderr.contains(NO_SPACE), "{}", txn.stderr);
    let grant = etcdctl(&eps, &["lease", "grant", "60"], "");
    assert!(
        !grant.ok && grant.stderr.contains(NO_SPACE),
        "{}",
        grant.stderr
    );

    // Reads, deletes, transactions without puts and compaction still work.
    assert_eq!(
        etcdctl_ok(&c.endpoint(follower), &["get", "k000", "--keys-only"], "").stdout,
        "k000\n\n"
    );
    assert_eq!(etcdctl_ok(&eps, &["del", "k000"], "").stdout, "1\n");
    assert_eq!(
        etcdctl_ok(&eps, &["txn"], "\ndel k001\n\n\n").stdout,
        "SUCCESS\n\n1\n"
    );
    let rev = rt
        .block_on(c.status(leader))
        .expect("status")
        .header
        .expect("header")
        .revision;
    assert_eq!(
        etcdctl_ok(&eps, &["compaction", &rev.to_string()], "").stdout,
        format!("compacted revision {rev}\n")
    );

    // Disarm prints what it cleared; the list is empty on every member.
    let listed = etcdctl_ok(&eps, &["alarm", "list"], "").stdout;
    let disarmed = etcdctl_ok(&eps, &["alarm", "disarm"], "").stdout;
    assert_eq!(disarmed, listed, "disarm prints each alarm it cleared");
    for i in 0..3 {
        assert_eq!(
            etcdctl_ok(&c.endpoint(i), &["alarm", "list"], "").stdout,
            "",
            "member {i}"
        );
    }
    // The file is still over the quota (nothing shrinks it without a defragmentation): the
    // next put is refused and raises the alarm again, as etcd does.
    let again = etcdctl(&c.endpoint(leader), &["put", "again", "v"], "");
    assert!(
        !again.ok && again.stderr.contains(NO_SPACE),
        "{}",
        again.stderr
    );
    let list = etcdctl_ok(&eps, &["alarm", "list"], "").stdout;
    assert!(
        list.lines().any(|l| l == nospace_line(ids[leader])),
        "{list:?}"
    );

    // Restarted with the default quota (2 GiB), the members still hold the alarm: it is
    // replicated state, and it refuses puts at apply although no member's quota would.
    for i in 0..3 {
        c.kill(i);
    }
    c.set_extra_args(&["--quota-backend-bytes", "0"]);
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let list = etcdctl_ok(&eps, &["alarm", "list"], "").stdout;
    assert!(
        list.lines().any(|l| l.ends_with("alarm:NOSPACE ")),
        "{list:?}"
    );
    let out = etcdctl(&c.endpoint(follower), &["put", "after", "v"], "");
    assert!(!out.ok && out.stderr.contains(NO_SPACE), "{}", out.stderr);
    etcdctl_ok(&eps, &["alarm", "disarm"], "");
    for i in [leader, follower] {
        let key = format!("after{i}");
        assert_eq!(
            etcdctl_ok(&c.endpoint(i), &["put", &key, "v"], "").stdout,
            "OK\n"
        );
    }
    assert!(etcdctl_ok(&eps, &["alarm", "list"], "").stdout.is_empty());
}

#[test]
fn a_quota_that_is_not_a_number_is_refused_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["serve", "--quota-backend-bytes", "2GB"])
        .output()
        .expect("run skiff");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--quota-backend-bytes"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// An Alarm request over gRPC, with a deadline.
async fn alarm(
    c: &Cluster,
    i: usize,
    action: epb::alarm_request::AlarmAction,
    member_id: u64,
    alarm: epb::AlarmType,
) -> Result<Vec<(u64, i32)>, tonic::Status> {
    let ch = common::channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    let mut req = tonic::Request::new(epb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    });
    req.set_timeout(std::time::Duration::from_secs(10));
    let resp = MaintenanceClient::new(ch).alarm(req).await?.into_inner();
    Ok(resp
        .alarms
        .into_iter()
        .map(|a| (a.member_id, a.alarm))
        .collect())
}

#[test]
fn alarms_raised_by_a_client_follow_etcd() {
    if !etcdctl_available() {
        return;
    }
    use epb::alarm_request::AlarmAction::{Activate, Deactivate, Get};
    use epb::AlarmType::{Corrupt, None as NoAlarm, Nospace};
    let rt = runtime();
    let c = Cluster::start(3);
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let ids = member_ids(&rt, &c);
    let eps = c.endpoints();
    let nospace = (ids[follower], Nospace as i32);
    rt.block_on(async {
        // Raised through a follower; raised again it answers with the alarm, as etcd's
        // `AlarmStore.Activate` returns the one it holds.
        let r = alarm(&c, follower, Activate, ids[follower], Nospace).await;
        assert_eq!(r.expect("activate"), vec![nospace]);
        let r = alarm(&c, leader, Activate, ids[follower], Nospace).await;
        assert_eq!(r.expect("activate"), vec![nospace]);
        // Only members hold alarms (the table stays bounded); NONE raises nothing.
        let unknown = alarm(&c, leader, Activate, 12345, Nospace).await;
        let s = unknown.expect_err("an unknown member");
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::NotFound, "etcdserver: member not found")
        );
        let r = alarm(&c, leader, Activate, ids[leader], NoAlarm).await;
        assert_eq!(r.expect("activate"), vec![]);
        // GET of one type, or of all.
        let r = alarm(&c, leader, Get, 0, Corrupt).await;
        assert_eq!(r.expect("get"), vec![]);
        for i in 0..3 {
            let r = alarm(&c, i, Get, 0, NoAlarm).await;
            assert_eq!(r.expect("get"), vec![nospace], "member {i}");
        }
    });
    let put = etcdctl(&eps, &["put", "k", "v"], "");
    assert!(!put.ok && put.stderr.contains(NO_SPACE), "{}", put.stderr);

    // CORRUPT for the cluster (member 0, as etcd's checker raises it): writes and
    // compaction refused with etcd's message, reads answered.
    rt.block_on(async {
        let r = alarm(&c, leader, Activate, 0, Corrupt).await;
        assert_eq!(r.expect("activate"), vec![(0, Corrupt as i32)]);
    });
    for args in [&["put", "k", "v"][..], &["del", "k"], &["compaction", "1"]] {
        let out = etcdctl(&eps, args, "");
        assert!(
            !out.ok && out.stderr.contains("etcdserver: corrupt cluster"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(etcdctl_ok(&eps, &["get", "k"], "").stdout, "");
    assert_eq!(
        etcdctl_ok(&eps, &["alarm", "list"], "").stdout,
        format!("alarm:CORRUPT \n{}\n", nospace_line(ids[follower]))
    );
    // Cleared one by one: NOSPACE still refuses puts, then nothing does.
    rt.block_on(async {
        let r = alarm(&c, follower, Deactivate, 0, Corrupt).await;
        assert_eq!(r.expect("deactivate"), vec![(0, Corrupt as i32)]);
        let r = alarm(&c, follower, Deactivate, 0, Corrupt).await;
        assert_eq!(r.expect("deactivate"), vec![]);
    });
    let put = etcdctl(&eps, &["put", "k", "v"], "");
    assert!(!put.ok && put.stderr.contains(NO_SPACE), "{}", put.stderr);
    rt.block_on(async {
        let r = alarm(&c, leader, Deactivate, ids[follower], Nospace).await;
        assert_eq!(r.expect("deactivate"), vec![nospace]);
    });
    assert_eq!(etcdctl_ok(&eps, &["put", "k", "v"], "").stdout, "OK\n");
}

/// etcd's runbook for NOSPACE: compact, defragment every member, disarm; writes work again
/// under the same quota (the file shrank below it).
#[test]
fn nospace_recovers_by_compaction_defragmentation_and_disarm() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start_with(3, &["--quota-backend-bytes", QUOTA_BYTES]);
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let eps = c.endpoints();
    // Versions of a few keys, until the quota refuses: history that compaction can free.
    let value = "x".repeat(60_000);
    let mut refused = false;
    for i in 0..200 {
        let out = etcdctl(
            &c.endpoint(leader),
            &["put", &format!("k{}", i % 4), &value],
            "",
        );
        if !out.ok {
            assert!(out.stderr.contains(NO_SPACE), "{}", out.stderr);
            refused = true;
            break;
        }
    }
    assert!(refused, "the quota refused a put within 12 MB");
    let sizes = |rt: &tokio::runtime::Runtime| -> Vec<i64> {
        (0..3)
            .map(|i| rt.block_on(c.status(i)).expect("status").db_size)
            .collect()
    };
    // Every member's file is over the quota once it has applied the puts the leader took (a
    // follower that lags is still under it and would take a put: each member checks its own
    // file, as in etcd).
    let quota = QUOTA_BYTES.parse::<i64>().expect("number");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let full = loop {
        let now = sizes(&rt);
        if now.iter().all(|&s| s >= quota) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "sizes {now:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    // Disarming alone does not help: the file is still over the quota.
    etcdctl_ok(&eps, &["alarm", "disarm"], "");
    let out = etcdctl(&c.endpoint(follower), &["put", "f", "v"], "");
    assert!(!out.ok && out.stderr.contains(NO_SPACE), "{}", out.stderr);

    // The runbook.
    let rev = rt
        .block_on(c.status(leader))
        .expect("status")
        .header
        .expect("header")
        .revision;
    etcdctl_ok(&eps, &["compaction", "--physical", &rev.to_string()], "");
    // Every member has applied the compaction (their applied indexes meet) before its defrag.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let applied: Vec<u64> = (0..3)
            .map(|i| rt.block_on(c.status(i)).expect("status").raft_applied_index)
            .collect();
        if applied.iter().all(|&a| a == applied[0]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{applied:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let defrag = etcdctl_ok(&eps, &["defrag"], "").stdout;
    assert_eq!(defrag.lines().count(), 3, "{defrag}");
    let shrunk = sizes(&rt);
    for i in 0..3 {
        assert!(
            shrunk[i] < full[i] && shrunk[i] < QUOTA_BYTES.parse::<i64>().expect("number"),
            "member {i} shrank below the quota: {full:?} -> {shrunk:?}"
        );
    }
    etcdctl_ok(&eps, &["alarm", "disarm"], "");
    assert!(etcdctl_ok(&eps, &["alarm", "list"], "").stdout.is_empty());
    for i in [leader, follower] {
        assert_eq!(
            etcdctl_ok(&c.endpoint(i), &["put", &format!("after{i}"), "v"], "").stdout,
            "OK\n",
            "member {i} takes writes again"
        );
    }
    // The last version of each key survived.
    let got = etcdctl_ok(
        &c.endpoint(follower),
        &["get", "k0", "--print-value-only"],
        "",
    );
    assert_eq!(got.stdout.trim_end().len(), value.len());
}

/// `--experimental-disk-reserve-bytes` above the free space of any disk: the member raises
/// its NOSPACE alarm within seconds of starting, puts are refused with etcd's message, reads
/// and deletes go on, a disarm while the disk is still short is followed by a new alarm, and
/// after a restart with the watch off a disarm restores writes.
#[test]
fn a_disk_below_the_reserve_raises_nospace() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let mut c = Cluster::prepare_with(3, &[]);
    c.members[0].extra_args = vec![
        "--experimental-disk-reserve-bytes".into(),
        u64::MAX.to_string(),
    ];
    for i in 0..3 {
        c.spawn(i);
    }
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    let ids = member_ids(&rt, &c);
    let eps = c.endpoints();
    let alarms = || etcdctl_ok(&eps, &["alarm", "list"], "").stdout;
    let raised = |want: &str| {
        let deadline = std::time::Instant::now() + common::PATIENCE;
        loop {
            let now = alarms();
            if now == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "alarms: {now:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    raised(&format!("{}\n", nospace_line(ids[0])));
    let log = std::fs::read_to_string(c.log_path(0)).expect("log");
    assert!(
        log.contains("disk space below the reserve; raising the NOSPACE alarm"),
        "{log}"
    );

    // Every member refuses puts; reads and deletes go on.
    for i in 0..3 {
        let out = etcdctl(&c.endpoint(i), &["put", "k", "v"], "");
        assert!(
            !out.ok && out.stderr.contains(NO_SPACE),
            "member {i}: {out:?}"
        );
    }
    assert_eq!(etcdctl_ok(&eps, &["get", "k"], "").stdout, "");
    assert_eq!(etcdctl_ok(&eps, &["del", "k"], "").stdout, "0\n");
    let metrics = common::http_get(c.members[0].client_port, "/metrics");
    let free = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_disk_free_bytes "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(free.is_some_and(|f| f > 0), "{metrics}");

    // Disarmed too early: raised again, and said so again.
    let disarmed = etcdctl_ok(&eps, &["alarm", "disarm"], "");
    assert_eq!(disarmed.stdout, format!("{}\n", nospace_line(ids[0])));
    raised(&format!("{}\n", nospace_line(ids[0])));
    let log = std::fs::read_to_string(c.log_path(0)).expect("log");
    assert_eq!(
        log.matches("disk space below the reserve; raising the NOSPACE alarm")
            .count(),
        2,
        "{log}"
    );

    // Room again (here: the watch off), then a disarm restores writes.
    c.kill(0);
    c.members[0].extra_args = vec!["--experimental-disk-reserve-bytes".into(), "0".into()];
    c.spawn(0);
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    etcdctl_ok(&eps, &["alarm", "disarm"], "");
    raised("");
    assert_eq!(etcdctl_ok(&eps, &["put", "k", "v"], "").stdout, "OK\n");
}

/// Unmounts a file system when dropped (lazily: a member may still hold files there).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A disk that really fills: member 0's data dir on a 300 MiB tmpfs (its log preallocates
/// two 64 MiB segments), with the default 128 MiB reserve. Puts of 1 MB, as fast as one client
/// sends them, fill it until
/// the member raises its NOSPACE alarm and every member refuses puts; the member keeps
/// serving reads and deletes and never stops. Grown to 1 GiB (room made), a disarm restores
/// writes. Skipped, saying so, where tmpfs cannot be mounted (not root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_raises_nospace_and_the_member_keeps_serving() {
    let mut c = Cluster::prepare_with(3, &["--quota-backend-bytes", "-1"]);
    // The default reserve, which the harness turns off unless asked.
    c.members[0].extra_args = vec![
        "--experimental-disk-reserve-bytes".into(),
        server::api::disk_space::DISK_RESERVE_BYTES_DEFAULT.to_string(),
    ];
    let dir = c.data_dir(0);
    std::fs::create_dir_all(&dir).expect("data dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=300m", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs at {}", dir.display());
        return;
    }
    let _mount = Mount(dir.clone());
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_leader(&[0, 1, 2]).await;
    let mut kv = c.kv(0).await.expect("connect to member 0");
    let value = vec![b'x'; 1_000_000];
    let mut refused = None;
    for i in 0..400 {
        let put = epb::PutRequest {
            key: format!("big{i:03}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(_) => {}
            Err(s) => {
                refused = Some((i, s));
                break;
            }
        }
    }
    let (n, status) = refused.expect("a put refused before 400 MB");
    assert!(n > 0, "the first put was refused: {status:?}");
    assert_eq!(status.message(), NO_SPACE, "{status:?}");
    let log = std::fs::read_to_string(c.log_path(0)).expect("log");
    assert!(
        log.contains("disk space below the reserve; raising the NOSPACE alarm"),
        "{log}"
    );
    // The member serves on: a read of the first value, and a delete.
    let got = kv
        .range(epb::RangeRequest {
            key: b"big000".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range on the full member");
    assert_eq!(got.into_inner().kvs[0].value.len(), value.len());
    kv.delete_range(epb::DeleteRangeRequest {
        key: b"big000".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete on the full member");
    assert!(c.status(0).await.is_some(), "member 0 stopped");

    // Room made: the file system grows; after a disarm puts are taken again.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=1g"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount the tmpfs larger");
    let id = c
        .status(0)
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        alarm(
            &c,
            0,
            epb::alarm_request::AlarmAction::Deactivate,
            id,
            epb::AlarmType::Nospace,
        )
        .await
        .expect("disarm");
        let put = kv
            .put(epb::PutRequest {
                key: b"after".to_vec(),
                value: b"room".to_vec(),
                ..Default::default()
            })
            .await;
        if put.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "puts still refused: {put:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
