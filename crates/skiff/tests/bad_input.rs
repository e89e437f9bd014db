//! Bad input: clear errors with etcd's codes and messages, and the server keeps running.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{put_retrying, Cluster};
use server::pb::etcdserverpb as epb;
use server::pb::skiff::raft::v1 as rpb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_and_the_cluster_survives() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    put_retrying(&c, follower, "k", "v").await;
    let mut kv = c.kv(follower).await.expect("connect");

    let err = kv
        .put(epb::PutRequest::default())
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");

    let err = kv
        .range(epb::RangeRequest::default())
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");

    let err = kv
        .put(epb::PutRequest {
            key: b"big".to_vec(),
            value: vec![7; 1600 * 1024],
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");

    let err = kv
        .range(epb::RangeRequest {
            key: b"k".to_vec(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("future revision");
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    // Garbage bytes on every peer port: the connection is dropped, nothing else happens.
    for m in &c.members {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", m.peer_port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(b"\x00\xffthis is not http/2 at all\r\n\r\n\x16\x03\x01garbage");
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }

    // Well-framed gRPC with bad contents on the peer port.
    let ch = common::channel(&format!(
        "http://127.0.0.1:{}",
        c.members[follower].peer_port
    ))
    .await
    .expect("peer connect");
    let mut raft = rpb::raft_client::RaftClient::new(ch);
    let me = status_member_id(&c, follower).await;
    let status = c.status(follower).await.expect("status");
    let cluster_id = status.header.expect("header").cluster_id;
    let err = raft
        .send(rpb::MessageBatch {
            cluster_id: cluster_id ^ 1,
            messages: Vec::new(),
            sender_url: String::new(),
        })
        .await
        .expect_err("foreign cluster");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = raft
        .send(rpb::MessageBatch {
            cluster_id,
            messages: vec![rpb::Message {
                from: 0,
                to: me,
                term: 1,
                body: None,
            }],
            sender_url: "not a url".into(),
        })
        .await
        .expect_err("malformed message");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Still serving, reads and writes, on every member.
    for i in 0..3 {
        put_retrying(&c, i, &format!("after-garbage-{i}"), "ok").await;
    }
}

async fn status_member_id(c: &Cluster, i: usize) -> u64 {
    c.status(i)
        .await
        .and_then(|s| s.header)
        .map(|h| h.member_id)
        .expect("status")
}

fn skiff(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .output()
        .expect("run skiff");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_nonzero_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--heartbeat-interval", "abc"],
            "--heartbeat-interval",
        ),
        (&["serve", "--no-such-flag"], "--no-such-flag"),
        (
            &["serve", "--initial-cluster-state", "maybe"],
            "--initial-cluster-state",
        ),
        (
            &["serve", "--listen-client-urls", "127.0.0.1:1"],
            "--listen-client-urls",
        ),
        (
            &[
                "serve",
                "--name",
                "x",
                "--initial-cluster",
                "y=http://127.0.0.1:2380",
            ],
            "--name",
        ),
        (
            &["serve", "--initial-cluster", "default=http://127.0.0.1:9"],
            "--initial-advertise-peer-urls",
        ),
        (
            &[
                "serve",
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "200",
            ],
            "--election-timeout",
        ),
        (&["serve", "--initial-cluster", "a"], "--initial-cluster"),
    ];
    for (args, flag) in cases {
        let (ok, stderr) = skiff(args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf-8 path");
    let ports = common::free_ports(2);
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let start = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["serve", "--data-dir", data])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster-token", token])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    // First start creates the data dir for cluster "a"; stop it once it is up.
    let mut first = start("a");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "first start never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = first.kill();
    let _ = first.wait();
    // The same dir with another cluster token must be refused.
    let second = start("b");
    let out = second.wait_with_output().expect("wait");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data dir belongs to"), "{stderr}");
    assert_eq!(stderr.matches("data dir belongs to").count(), 1, "{stderr}");
}
