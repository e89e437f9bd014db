//! Backup and restore with real processes and the real etcdctl: `etcdctl snapshot save`
//! against a follower under write load, `skiff snapshot status`, `skiff snapshot restore` into
//! a new 3-member cluster that has every key (with its revisions and version), the store and
//! compacted revisions and the leases of the backup; and damaged files refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{etcdctl, etcdctl_available, etcdctl_ok, Cluster};
use server::pb::etcdserverpb as epb;

/// Output of one `skiff` run.
struct SkiffOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn skiff(args: &[&str]) -> SkiffOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run skiff");
    SkiffOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `etcdctl snapshot save` against member `i` alone (etcd's client asks one endpoint).
fn save(c: &Cluster, i: usize, file: &Path) -> common::CtlOutput {
    etcdctl(
        &c.endpoint(i),
        &["snapshot", "save", &file.to_string_lossy()],
        "",
    )
}

/// `skiff snapshot restore` of `file` for member `i` of `new`.
fn restore(new: &Cluster, i: usize, file: &Path, token: &str) -> SkiffOutput {
    let data_dir = new.data_dir(i);
    skiff(&[
        "snapshot",
        "restore",
        &file.to_string_lossy(),
        "--name",
        &new.members[i].name,
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--initial-cluster",
        new.initial_cluster_flag(),
        "--initial-cluster-token",
        token,
        "--initial-advertise-peer-urls",
        &new.peer_url(i),
    ])
}

/// Every key at `rev` (0: now) as `etcdctl get -w json` prints them, and the header's revision.
fn all_keys(endpoints: &str, rev: u64) -> (Vec<serde_json::Value>, u64) {
    let rev = format!("--rev={rev}");
    let out = etcdctl_ok(endpoints, &["get", "", "--prefix", &rev, "-w", "json"], "");
    let v = json(&out.stdout);
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    let header_rev = v["header"]["revision"].as_u64().expect("header revision");
    (kvs, header_rev)
}

/// Puts keys `w{writer}/{n}` through member `i` until `stop`, every third with `lease`;
/// counts the puts that succeeded.
async fn writer(
    url: String,
    writer: usize,
    lease: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(ch) = common::channel(&url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut kv = epb::kv_client::KvClient::new(ch);
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let put = epb::PutRequest {
                key: format!("w{writer}/{n:06}").into_bytes(),
                value: format!("value {n} of writer {writer}").into_bytes(),
                lease: if n.is_multiple_of(3) { lease } else { 0 },
                ..Default::default()
            };
            if kv.put(put).await.is_err() {
                break;
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_into_a_new_cluster_with_every_key_revision_and_lease() {
    if !etcdctl_available() {
        return;
    }
    let old = Cluster::start(3);
    let leader = old.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let eps = old.endpoints();
    // History before the backup: a key overwritten, one deleted, then a compaction.
    for v in ["1", "2", "3"] {
        etcdctl_ok(&eps, &["put", "history", v], "");
    }
    etcdctl_ok(&eps, &["put", "doomed", "x"], "");
    etcdctl_ok(&eps, &["del", "doomed"], "");
    let compact_at = all_keys(&eps, 0).1;
    etcdctl_ok(&eps, &["compact", &compact_at.to_string()], "");
    let granted = etcdctl_ok(&eps, &["lease", "grant", "600"], "");
    let lease_hex = granted
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    let lease = i64::from_str_radix(&lease_hex, 16).expect("hex lease id");

    // Writers on every member (the followers forward), some keys with the lease.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(writer(
                format!("http://{}", old.endpoint(i)),
                i,
                lease,
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    while done.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Outside the old cluster's dir, which goes with it.
    let backups = tempfile::tempdir().expect("tmp");
    let file = backups.path().join("backup.db");
    let saved = {
        let (endpoint, file) = (old.endpoint(follower), file.clone());
        tokio::task::spawn_blocking(move || {
            etcdctl(
                &endpoint,
                &["snapshot", "save", &file.to_string_lossy()],
                "",
            )
        })
        .await
        .expect("etcdctl thread")
    };
    assert!(
        saved.ok,
        "snapshot save failed: {}{}",
        saved.stdout, saved.stderr
    );
    assert_eq!(
        saved.stdout.trim(),
        format!("Snapshot saved at {}", file.display())
    );
    // Writes go on after the save (its stream held a read view, never the apply thread).
    let during = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < during + 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(!file.with_extension("db.part").exists());

    let status = skiff(&["snapshot", "status", &file.to_string_lossy(), "-w", "json"]);
    assert!(status.ok, "status: {}", status.stderr);
    let status = json(&status.stdout);
    let backup_rev = status["revision"].as_u64().expect("revision");
    assert!(
        backup_rev > compact_at + 300,
        "the backup holds the load's writes: {status}"
    );
    assert_eq!(
        status["totalSize"].as_u64().expect("size") + 32,
        std::fs::metadata(&file).expect("backup").len()
    );
    let table = skiff(&["snapshot", "status", &file.to_string_lossy(), "-w", "table"]);
    assert!(
        table.ok && table.stdout.contains("TOTAL KEYS"),
        "{}",
        table.stdout
    );

    // The old cluster's keys at the backup's revision; then it goes away for good.
    let (expected, _) = all_keys(&eps, backup_rev);
    assert!(expected
        .iter()
        .any(|kv| kv["lease"].as_i64() == Some(lease)));
    let old_status = old.status(0).await.expect("status");
    let old_ids: Vec<u64> = old_members(&old).await;
    drop(old);

    // Three new members, new ports and token: a new cluster.
    let token = "restored-cluster";
    let mut new = Cluster::prepare_with(3, &["--initial-cluster-token", token]);
    for i in 0..3 {
        let out = restore(&new, i, &file, token);
        assert!(out.ok, "restore {i}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("Restored"), "{}", out.stdout);
    }
    for i in 0..3 {
        new.spawn(i);
    }
    new.wait_leader(&[0, 1, 2]).await;
    let new_eps = new.endpoints();
    let (got, rev) = all_keys(&new_eps, 0);
    assert_eq!(rev, backup_rev, "the store revision is the backup's");
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        got, expected,
        "every key with its revisions, version, value and lease"
    );
    // Every member has the same state (each restored its own copy).
    for i in 0..3 {
        let (mine, _) = all_keys(&new.endpoint(i), 0);
        assert_eq!(mine.len(), expected.len(), "member {i}");
    }
    // The compacted revision came along.
    let below = etcdctl(
        &new_eps,
        &["get", "history", &format!("--rev={}", compact_at - 1)],
        "",
    );
    assert!(
        !below.ok
            && below
                .stderr
                .contains("required revision has been compacted"),
        "{}{}",
        below.stdout,
        below.stderr
    );
    let at = etcdctl_ok(
        &new_eps,
        &[
            "get",
            "history",
            &format!("--rev={compact_at}"),
            "--print-value-only",
        ],
        "",
    );
    assert_eq!(at.stdout.trim(), "3");
    // The lease lives on with its keys.
    let ttl = etcdctl_ok(
        &new_eps,
        &["lease", "timetolive", &lease_hex, "--keys", "-w", "json"],
        "",
    );
    let ttl = json(&ttl.stdout);
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(600), "{ttl}");
    assert!(ttl["ttl"].as_i64().unwrap_or(0) > 0, "{ttl}");
    let attached = ttl["keys"].as_array().map_or(0, |k| k.len());
    let with_lease = expected
        .iter()
        .filter(|kv| kv["lease"].as_i64() == Some(lease))
        .count();
    assert_eq!(attached, with_lease);
    // A new cluster: new ids, the members are the new ones.
    let new_status = new.status(0).await.expect("status");
    let (old_h, new_h) = (old_status.header.expect("h"), new_status.header.expect("h"));
    assert_ne!(old_h.cluster_id, new_h.cluster_id);
    let new_ids = old_members(&new).await;
    assert_eq!(new_ids.len(), 3);
    assert!(new_ids.iter().all(|id| !old_ids.contains(id)));
    let list = new.member_list(0).await.expect("member list");
    for i in 0..3 {
        assert!(
            list.members
                .iter()
                .any(|m| m.peer_ur_ls == vec![new.peer_url(i)]),
            "{list:?}"
        );
    }
    // New writes work, after the backup's revision.
    let put = etcdctl_ok(&new_eps, &["put", "after", "restore", "-w", "json"], "");
    assert_eq!(
        json(&put.stdout)["header"]["revision"].as_u64(),
        Some(backup_rev + 1)
    );

    // A member added later gets the restored state: the new log starts after it, so the
    // leader sends it as a snapshot.
    let joiner = new.new_member("m4");
    let ch = common::channel(&format!("http://{}", new.endpoint(0)))
        .await
        .expect("connect");
    let added = epb::cluster_client::ClusterClient::new(ch)
        .member_add(epb::MemberAddRequest {
            peer_ur_ls: vec![new.peer_url(joiner)],
            is_learner: true,
        })
        .await
        .expect("member add")
        .into_inner();
    new.spawn_joining(joiner, &common::initial_cluster(&added, "m4"));
    let everything = epb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let got = common::local_range(&new, joiner, everything.clone()).await;
        if got
            .as_ref()
            .is_some_and(|r| r.count as usize == expected.len() + 1)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the joiner did not catch up: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(new.log_path(joiner)).expect("joiner's log");
    assert!(log.contains("installed a snapshot from the leader"));
}

/// Member ids of `c`'s member list.
async fn old_members(c: &Cluster) -> Vec<u64> {
    let list = c.member_list(0).await.expect("member list");
    list.members.iter().map(|m| m.id).collect()
}

/// Whether anything named like `name` (the data dir or a staging dir beside it) is in `dir`.
fn leftovers(dir: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().contains(name))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_altered_backups_are_refused_and_leave_no_data_dir() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    let eps = c.endpoints();
    for i in 0..200 {
        etcdctl_ok(&eps, &["put", &format!("k{i}"), &"v".repeat(100)], "");
    }
    let good = c.dir.path().join("good.db");
    let saved = save(&c, 0, &good);
    assert!(saved.ok, "{}{}", saved.stdout, saved.stderr);
    let bytes = std::fs::read(&good).expect("read backup");
    let ok = skiff(&["snapshot", "status", &good.to_string_lossy()]);
    assert!(ok.ok, "{}", ok.stderr);
    assert_eq!(ok.stdout.split(", ").count(), 4, "{}", ok.stdout);

    let work = tempfile::tempdir().expect("tmp");
    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        // Still 512*k+32 bytes long: only the digest tells.
        ("truncated by 512", bytes[..bytes.len() - 512].to_vec()),
    ];
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    damaged.push(("flipped", flipped));
    for (what, content) in damaged {
        let file = work.path().join(format!("{}.db", what.replace(' ', "-")));
        std::fs::write(&file, &content).expect("write");
        let status = skiff(&["snapshot", "status", &file.to_string_lossy()]);
        assert!(!status.ok, "{what}: status accepted it: {}", status.stdout);
        assert!(status.stdout.is_empty(), "{what}: {}", status.stdout);
        let line = status.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{what}: one line: {line}");
        assert!(
            line.contains(&*file.to_string_lossy())
                && (line.contains("truncated") || line.contains("corrupt")),
            "{what}: {line}"
        );
        let target = work
            .path()
            .join(format!("{}.skiff", what.replace(' ', "-")));
        let out = skiff(&[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            "--name",
            "n1",
            "--data-dir",
            &target.to_string_lossy(),
            "--initial-cluster",
            "n1=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
        ]);
        assert!(!out.ok, "{what}: restore accepted it");
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("truncated") || out.stderr.contains("corrupt"),
            "{what}: {}",
            out.stderr
        );
        let stem = format!("{}.skiff", what.replace(' ', "-"));
        assert!(
            leftovers(work.path(), &stem).is_empty(),
            "{what}: restore left {:?}",
            leftovers(work.path(), &stem)
        );
    }
    // A data dir in use is refused, and left as it was.
    let used = work.path().join("used.skiff");
    std::fs::create_dir(&used).expect("mkdir");
    std::fs::write(used.join("precious"), "x").expect("write");
    let out = skiff(&[
        "snapshot",
        "restore",
        &good.to_string_lossy(),
        "--name",
        "n1",
        "--data-dir",
        &used.to_string_lossy(),
        "--initial-cluster",
        "n1=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
    ]);
    assert!(
        !out.ok && out.stderr.contains("not empty"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(&used).expect("dir").count(),
        1,
        "nothing was added"
    );
    // A name that is not in the new cluster is refused, naming the flag.
    let out = skiff(&[
        "snapshot",
        "restore",
        &good.to_string_lossy(),
        "--name",
        "nobody",
        "--data-dir",
        &work.path().join("nobody.skiff").to_string_lossy(),
        "--initial-cluster",
        "n1=http://127.0.0.1:2380",
    ]);
    assert!(!out.ok && out.stderr.contains("--"), "{}", out.stderr);
    assert!(!work.path().join("nobody.skiff").exists());
}

/// Opens a Snapshot stream on member `i`, retrying while the member refuses it as busy.
async fn open_stream(c: &Cluster, i: usize) -> tonic::Streaming<epb::SnapshotResponse> {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        if let Some(ch) = common::channel(&format!("http://{}", c.endpoint(i))).await {
            let mut m = epb::maintenance_client::MaintenanceClient::new(ch);
            match m.snapshot(epb::SnapshotRequest {}).await {
                Ok(s) => return s.into_inner(),
                Err(s) => eprintln!("snapshot stream refused: {s:?}"),
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot stream within {:?}: abandoned ones were never released",
            common::PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_counts_down_its_bytes_and_abandoned_streams_are_released() {
    let c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    // More than the stream's buffers hold (a 1 MiB encoding slice, 16 messages of 32 KiB, the
    // transport's windows), so that a backup whose client stops reading waits on it.
    let mut revision = 0;
    for i in 0..40 {
        let put = epb::PutRequest {
            key: format!("big{i:02}").into_bytes(),
            value: vec![b'a' + (i % 26) as u8; 128 * 1024],
            ..Default::default()
        };
        revision = common::put_request_retrying(&c, 0, put)
            .await
            .header
            .expect("header")
            .revision;
    }

    // One stream read whole: the first header is the backup's point in time, and
    // `remaining_bytes` counts down to 0 before the 32-byte digest, as etcd's does.
    let mut stream = open_stream(&c, 0).await;
    let first = stream
        .message()
        .await
        .expect("recv")
        .expect("a first message");
    assert_eq!(first.header.as_ref().map(|h| h.revision), Some(revision));
    let total = first.remaining_bytes + first.blob.len() as u64;
    assert!(total > 5 * 1024 * 1024, "{total}");
    let mut body = first.blob.clone();
    let mut last_remaining = first.remaining_bytes;
    let mut digest = None;
    while let Some(m) = stream.message().await.expect("recv") {
        assert!(m.header.is_none(), "only the first message has a header");
        if m.remaining_bytes == 0 && body.len() as u64 == total {
            assert_eq!(m.blob.len(), 32, "the digest comes last, on its own");
            digest = Some(m.blob);
            continue;
        }
        assert!(digest.is_none(), "nothing after the digest");
        body.extend_from_slice(&m.blob);
        assert_eq!(m.remaining_bytes, total - body.len() as u64);
        assert!(m.remaining_bytes < last_remaining);
        last_remaining = m.remaining_bytes;
    }
    assert_eq!(body.len() as u64, total);
    let mut file = body;
    file.extend_from_slice(&digest.expect("a digest at the end"));
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("streamed.db");
    std::fs::write(&path, &file).expect("write");
    let status = skiff(&["snapshot", "status", &path.to_string_lossy(), "-w", "json"]);
    assert!(status.ok, "{}", status.stderr);
    assert_eq!(json(&status.stdout)["revision"].as_i64(), Some(revision));

    // Clients that read one message and go away, more of them than backups may run at once:
    // each must release its backup (its thread, view and permit), or the next is refused
    // for good.
    for _ in 0..5 {
        let mut s = open_stream(&c, 0).await;
        assert!(s.message().await.expect("recv").is_some());
        drop(s);
    }
    // And writes went on meanwhile.
    common::put_retrying(&c, 0, "after", "abandoned").await;
    if etcdctl_available() {
        let path = dir.path().join("after.db");
        let saved = save(&c, 0, &path);
        assert!(saved.ok, "{}{}", saved.stdout, saved.stderr);
    }
}
