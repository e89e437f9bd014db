//! etcd's Watch API on a 3-process cluster: live events on a follower, catch-up from an old
//! revision, prev_kv and filters, cancel, progress requests, duplicate ids, compaction, and
//! the real `etcdctl watch`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{etcdctl_available, etcdctl_ok, put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::watch_client::WatchClient;
use server::pb::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Responses = tonic::Streaming<epb::WatchResponse>;

async fn open(c: &Cluster, i: usize) -> (mpsc::Sender<epb::WatchRequest>, Responses) {
    let ch = common::channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    let resp = WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch stream")
        .into_inner();
    (tx, resp)
}

fn create(key: &str, end: &str, start: i64) -> epb::WatchRequest {
    epb::WatchRequest {
        request_union: Some(epb::watch_request::RequestUnion::CreateRequest(
            epb::WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                start_revision: start,
                ..Default::default()
            },
        )),
    }
}

async fn next(r: &mut Responses) -> epb::WatchResponse {
    tokio::time::timeout(PATIENCE, r.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads responses until `n` events have arrived; returns them as (type, key, value).
async fn events(r: &mut Responses, n: usize) -> Vec<(i32, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(r).await;
        for e in resp.events {
            let kv = e.kv.expect("kv");
            out.push((
                e.r#type,
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.mod_revision,
            ));
        }
    }
    out
}

fn revision(resp: epb::PutResponse) -> i64 {
    resp.header.expect("header").revision
}

/// The leader's current revision.
async fn revision_of_last(c: &Cluster, leader: usize) -> i64 {
    let mut kv = c.kv(leader).await.expect("kv");
    let r = kv
        .range(epb::RangeRequest {
            key: b"p/".to_vec(),
            range_end: b"p0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    r.header.expect("header").revision
}

const PUT: i32 = mvccpb::event::EventType::Put as i32;
const DELETE: i32 = mvccpb::event::EventType::Delete as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_etcd() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let r1 = revision(put_retrying(&c, leader, "w/a", "1").await);

    // A watcher on a follower: created with id 0, then every change of the prefix after r1.
    // (Start revision 0 would mean "after what this member has applied", which may lag r1.)
    let (tx, mut rx) = open(&c, follower).await;
    tx.send(create("w/", "w0", r1 + 1)).await.unwrap();
    let created = next(&mut rx).await;
    assert!(created.created && !created.canceled, "{created:?}");
    assert_eq!(created.watch_id, 0);
    assert!(created.header.expect("header").revision > 0);
    put_retrying(&c, leader, "w/a", "2").await;
    put_retrying(&c, leader, "other", "x").await;
    put_retrying(&c, leader, "w/b", "3").await;
    let mut kv = c.kv(leader).await.expect("kv");
    kv.delete_range(epb::DeleteRangeRequest {
        key: b"w/a".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let got = events(&mut rx, 3).await;
    let kinds: Vec<_> = got
        .iter()
        .map(|e| (e.0, e.1.as_str(), e.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![(PUT, "w/a", "2"), (PUT, "w/b", "3"), (DELETE, "w/a", "")]
    );
    assert!(got.windows(2).all(|w| w[0].3 < w[1].3), "revisions ascend");

    // A second watcher on the same stream catches up from the first revision, with prev_kv and
    // without deletes; it gets the next id.
    tx.send(epb::WatchRequest {
        request_union: Some(epb::watch_request::RequestUnion::CreateRequest(
            epb::WatchCreateRequest {
                key: b"w/a".to_vec(),
                start_revision: r1,
                prev_kv: true,
                filters: vec![epb::watch_create_request::FilterType::Nodelete as i32],
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let created = next(&mut rx).await;
    assert!(created.created);
    assert_eq!(created.watch_id, 1);
    let resp = next(&mut rx).await;
    assert_eq!(resp.watch_id, 1);
    let puts: Vec<_> = resp.events.iter().map(|e| e.r#type).collect();
    assert_eq!(puts, vec![PUT, PUT], "the delete is filtered out");
    let second = &resp.events[1];
    assert_eq!(second.prev_kv.as_ref().expect("prev_kv").value, b"1");

    // A duplicate explicit id is refused; cancel answers; a progress request gets the revision.
    let mut dup = create("x", "", 0);
    if let Some(epb::watch_request::RequestUnion::CreateRequest(c)) = &mut dup.request_union {
        c.watch_id = 1;
    }
    tx.send(dup).await.unwrap();
    let refused = next(&mut rx).await;
    assert!(
        refused.canceled && refused.cancel_reason.contains("duplicate"),
        "{refused:?}"
    );
    tx.send(epb::WatchRequest {
        request_union: Some(epb::watch_request::RequestUnion::CancelRequest(
            epb::WatchCancelRequest { watch_id: 1 },
        )),
    })
    .await
    .unwrap();
    let canceled = next(&mut rx).await;
    assert!(canceled.canceled && canceled.watch_id == 1, "{canceled:?}");
    tx.send(epb::WatchRequest {
        request_union: Some(epb::watch_request::RequestUnion::ProgressRequest(
            epb::WatchProgressRequest {},
        )),
    })
    .await
    .unwrap();
    let progress = next(&mut rx).await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert!(progress.header.expect("header").revision > r1);
    // Ids only go up: the canceled id 1 is not handed out again.
    tx.send(create("z", "", 0)).await.unwrap();
    let created = next(&mut rx).await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 2);
    // The client closes its side of the stream: events still arrive (as with etcd).
    drop(tx);
    put_retrying(&c, leader, "z", "after close").await;
    let got = events(&mut rx, 1).await;
    assert_eq!((got[0].1.as_str(), got[0].2.as_str()), ("z", "after close"));

    // A progress answer never claims a revision whose events were not sent yet.
    let (tx3, mut rx3) = open(&c, follower).await;
    tx3.send(create("p/", "p0", 0)).await.unwrap();
    assert!(next(&mut rx3).await.created);
    for i in 0..20 {
        put_retrying(&c, leader, &format!("p/{i:02}"), "v").await;
    }
    tx3.send(epb::WatchRequest {
        request_union: Some(epb::watch_request::RequestUnion::ProgressRequest(
            epb::WatchProgressRequest {},
        )),
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let progress_rev = loop {
        let resp = next(&mut rx3).await;
        if resp.watch_id == -1 {
            break resp.header.expect("header").revision;
        }
        seen.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().expect("kv").mod_revision),
        );
    };
    // Every p/ put at or below the progress revision was delivered before it.
    assert!(seen.len() as i64 >= 20 - (revision_of_last(&c, leader).await - progress_rev));

    // After a compaction, a watch from before it is canceled with the compacted revision.
    let r = revision(put_retrying(&c, leader, "w/c", "4").await);
    kv.compact(epb::CompactionRequest {
        revision: r,
        physical: false,
    })
    .await
    .expect("compact");
    let (tx2, mut rx2) = open(&c, leader).await;
    tx2.send(create("w/", "w0", r1)).await.unwrap();
    assert!(next(&mut rx2).await.created);
    let gone = next(&mut rx2).await;
    assert!(gone.canceled, "{gone:?}");
    assert_eq!(gone.compact_revision, r);
}

/// Runs `etcdctl watch ARGS` until its output is `want` (or a minute passes); returns it.
fn etcdctl_watch_until(endpoint: &str, args: &[&str], want: &str) -> String {
    use std::io::Read;
    let mut child = Command::new("etcdctl")
        .args(["--endpoints", endpoint, "watch"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl watch");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !text.ends_with(want.as_bytes()) && std::time::Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            text.extend(chunk);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn etcdctl_watch_prints_events() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    let eps = c.endpoints();
    etcdctl_ok(&eps, &["put", "k", "v1"], "");
    etcdctl_ok(&eps, &["put", "k", "v2"], "");
    etcdctl_ok(&eps, &["put", "k2", "x"], "");
    etcdctl_ok(&eps, &["del", "k"], "");
    // From revision 3 (the put of v2) on a follower, with the previous values.
    let want = "PUT\nk\nv1\nk\nv2\nPUT\nk2\nx\nDELETE\nk\nv2\nk\n\n";
    let got = etcdctl_watch_until(
        &c.endpoint(1),
        &["k", "--prefix", "--prev-kv", "--rev", "3"],
        want,
    );
    assert_eq!(got, want, "etcdctl watch printed:\n{got}");
    // Live: a watcher from now sees a later put.
    let live = std::thread::spawn({
        let ep = c.endpoint(2);
        move || etcdctl_watch_until(&ep, &["live"], "PUT\nlive\nyes\n")
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    while !live.is_finished() && std::time::Instant::now() < deadline {
        // etcdctl has no "watching" signal: keep writing until the watcher has seen one.
        etcdctl_ok(&eps, &["put", "live", "yes"], "");
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = live.join().expect("watcher thread");
    assert!(got.starts_with("PUT\nlive\nyes\n"), "{got}");
}
