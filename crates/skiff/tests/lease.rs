//! The etcd v3 Lease service on a real 3-process cluster: etcdctl's lease commands, etcd's
//! errors, expiry on the leader, keep-alives forwarded by followers, and leases surviving a
//! leader change. Waits are bounded by [`PATIENCE`]; nothing asserts on speed.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_available, etcdctl_ok, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::lease_client::LeaseClient;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

async fn lease_client(c: &Cluster, i: usize) -> LeaseClient<Channel> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(ch) = common::channel(&format!("http://{}", c.endpoint(i))).await {
            return LeaseClient::new(ch);
        }
        assert!(Instant::now() < deadline, "no connection to member {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Grants a lease through member `i`, retrying until it succeeds.
async fn grant(c: &Cluster, i: usize, ttl: i64) -> epb::LeaseGrantResponse {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut l = lease_client(c, i).await;
        match l.lease_grant(epb::LeaseGrantRequest { ttl, id: 0 }).await {
            Ok(r) => return r.into_inner(),
            Err(s) => eprintln!("grant via member {i}: {s:?}"),
        }
        assert!(Instant::now() < deadline, "grant via member {i} failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts `key` attached to `lease` through member `i`, retrying until it succeeds.
async fn put_with_lease(c: &Cluster, i: usize, key: &str, lease: i64) {
    let request = epb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    common::put_request_retrying(c, i, request).await;
}

/// Whether member `i` holds `key` in its own state machine; `None` if it did not answer.
async fn has_key(c: &Cluster, i: usize, key: &str) -> Option<bool> {
    let request = epb::RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    Some(common::local_range(c, i, request).await?.count > 0)
}

/// Whether `key` exists, read through member `i` linearizably: the member first learns the
/// leader's commit index (ReadIndex) and applies up to it, so a follower that has not yet heard
/// of the latest commit cannot answer from behind.
/// A read that fails (say, while the new leader commits its first entry) is retried until
/// `PATIENCE` runs out; `None` then.
async fn has_key_linearizable(c: &Cluster, i: usize, key: &str) -> Option<bool> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(mut kv) = c.kv(i).await {
            let request = epb::RangeRequest {
                key: key.into(),
                ..Default::default()
            };
            match kv.range(request).await {
                Ok(r) => return Some(r.into_inner().count > 0),
                Err(s) => eprintln!("linearizable range via member {i}: {s:?}"),
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `key` is gone from every member in `live`.
async fn wait_key_gone(c: &Cluster, live: &[usize], key: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut gone = true;
        for &i in live {
            gone &= has_key(c, i, key).await == Some(false);
        }
        if gone {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} still present on some of {live:?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lease id from etcdctl's `lease <hex> granted with TTL(<n>s)`.
fn granted_id(stdout: &str) -> String {
    let mut words = stdout.split_whitespace();
    assert_eq!(words.next(), Some("lease"), "{stdout}");
    let id = words.next().expect("lease id").to_string();
    assert!(
        stdout.contains("granted with TTL("),
        "unexpected grant output: {stdout}"
    );
    id
}

#[test]
fn etcdctl_lease_commands() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    let eps = c.endpoints();

    let out = etcdctl_ok(&eps, &["lease", "grant", "30"], "");
    let id = granted_id(&out.stdout);
    assert_eq!(out.stdout, format!("lease {id} granted with TTL(30s)\n"));
    let lease = format!("--lease={id}");
    assert_eq!(
        etcdctl_ok(&eps, &["put", "k", "v", &lease], "").stdout,
        "OK\n"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["put", "k2", "v", &lease], "").stdout,
        "OK\n"
    );

    let ttl = etcdctl_ok(&eps, &["lease", "timetolive", &id, "--keys"], "");
    assert!(
        ttl.stdout
            .starts_with(&format!("lease {id} granted with TTL(30s), remaining(")),
        "{}",
        ttl.stdout
    );
    assert!(
        ttl.stdout.contains("attached keys([k k2])"),
        "{}",
        ttl.stdout
    );
    // Every member answers, followers by asking the leader.
    for i in 0..3 {
        let ttl = etcdctl_ok(&c.endpoint(i), &["lease", "timetolive", &id], "");
        assert!(
            ttl.stdout.contains("granted with TTL(30s)"),
            "member {i}: {}",
            ttl.stdout
        );
        let ka = etcdctl_ok(&c.endpoint(i), &["lease", "keep-alive", "--once", &id], "");
        assert_eq!(
            ka.stdout,
            format!("lease {id} keepalived with TTL(30)\n"),
            "member {i}"
        );
    }

    let list = etcdctl_ok(&eps, &["lease", "list"], "");
    assert_eq!(list.stdout, format!("found 1 leases\n{id}\n"));

    let revoke = etcdctl_ok(&eps, &["lease", "revoke", &id], "");
    assert_eq!(revoke.stdout, format!("lease {id} revoked\n"));
    assert_eq!(etcdctl_ok(&eps, &["get", "--prefix", "k"], "").stdout, "");
    assert_eq!(
        etcdctl_ok(&eps, &["lease", "list"], "").stdout,
        "found 0 leases\n"
    );

    // Gone: etcd's answers for an unknown lease.
    let again = etcdctl(&eps, &["lease", "revoke", &id], "");
    assert!(!again.ok);
    assert!(
        again
            .stderr
            .contains("etcdserver: requested lease not found"),
        "{}",
        again.stderr
    );
    let ttl = etcdctl_ok(&eps, &["lease", "timetolive", &id], "");
    assert_eq!(ttl.stdout, format!("lease {id} already expired\n"));
    let ka = etcdctl(&eps, &["lease", "keep-alive", "--once", &id], "");
    assert!(!ka.ok, "{}", ka.stdout);
    let put = etcdctl(&eps, &["put", "k", "v", &lease], "");
    assert!(!put.ok);
    assert!(
        put.stderr.contains("etcdserver: requested lease not found"),
        "{}",
        put.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_errors_and_limits_follow_etcd() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    for i in [leader, follower] {
        let mut l = lease_client(&c, i).await;
        let id = 1000 + i as i64;
        let r = l
            .lease_grant(epb::LeaseGrantRequest { ttl: 0, id })
            .await
            .expect("grant with a chosen id")
            .into_inner();
        assert_eq!(r.id, id);
        // Below the minimum (1.5 election timeouts = 1 s for this cluster): raised.
        assert_eq!(r.ttl, 1);
        let dup = l
            .lease_grant(epb::LeaseGrantRequest { ttl: 10, id })
            .await
            .expect_err("duplicate id");
        assert_eq!(dup.code(), Code::FailedPrecondition, "{dup:?}");
        assert_eq!(dup.message(), "etcdserver: lease already exists");

        let big = l
            .lease_grant(epb::LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await
            .expect_err("too large");
        assert_eq!(big.code(), Code::OutOfRange, "{big:?}");
        assert_eq!(big.message(), "etcdserver: too large lease TTL");

        let missing = l
            .lease_revoke(epb::LeaseRevokeRequest { id: 424242 })
            .await
            .expect_err("unknown lease");
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
        assert_eq!(missing.message(), "etcdserver: requested lease not found");

        let ttl = l
            .lease_time_to_live(epb::LeaseTimeToLiveRequest {
                id: 424242,
                keys: true,
            })
            .await
            .expect("time to live of an unknown lease")
            .into_inner();
        assert_eq!(ttl.ttl, -1);

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(epb::LeaseKeepAliveRequest { id: 424242 })
            .await
            .expect("queue");
        let mut answers = l
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .expect("open keep-alive stream")
            .into_inner();
        let first = answers
            .message()
            .await
            .expect("keep-alive answer")
            .expect("one answer");
        assert_eq!((first.id, first.ttl), (424242, 0));
    }
    // Granted ids are positive and distinct.
    let a = grant(&c, follower, 5).await;
    let b = grant(&c, leader, 5).await;
    assert!(a.id > 0 && b.id > 0 && a.id != b.id, "{a:?} {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires_on_every_member() {
    let c = Cluster::start(3);
    let g = grant(&c, 0, 2).await;
    assert_eq!(g.ttl, 2);
    put_with_lease(&c, 1, "short", g.id).await;
    wait_key_gone(&c, &[0, 1, 2], "short").await;
    let mut l = lease_client(&c, 2).await;
    let leases = l
        .lease_leases(epb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    assert!(leases.leases.is_empty(), "{leases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_through_a_follower_keep_the_lease() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let ttl = 5;
    let g = grant(&c, follower, ttl).await;
    put_with_lease(&c, follower, "kept", g.id).await;

    // One keep-alive stream to the follower for more than twice the TTL; the follower
    // forwards each keep-alive to the leader.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut l = lease_client(&c, follower).await;
    let mut answers = l
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .expect("open keep-alive stream")
        .into_inner();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2 * ttl as u64 + 2) {
        tx.send(epb::LeaseKeepAliveRequest { id: g.id })
            .await
            .expect("queue keep-alive");
        let a = answers
            .message()
            .await
            .expect("keep-alive answer")
            .expect("stream open");
        assert_eq!((a.id, a.ttl), (g.id, ttl), "keep-alive answered {a:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(tx);
    for i in 0..3 {
        assert_eq!(has_key(&c, i, "kept").await, Some(true), "member {i}");
    }
    if etcdctl_available() {
        let id = format!("{:016x}", g.id);
        let ka = etcdctl_ok(
            &c.endpoint(follower),
            &["lease", "keep-alive", "--once", &id],
            "",
        );
        assert_eq!(
            ka.stdout,
            format!("lease {id} keepalived with TTL({ttl})\n")
        );
    }
    // Without keep-alives it expires.
    wait_key_gone(&c, &[0, 1, 2], "kept").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_its_leader_and_then_expires() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let ttl = 6;
    let g = grant(&c, leader, ttl).await;
    put_with_lease(&c, leader, "survivor", g.id).await;
    c.kill(leader);
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&live).await;
    let other = live
        .iter()
        .copied()
        .find(|&i| i != new_leader)
        .expect("two live members");

    // The new leader gave the lease a full TTL when it took over: it is still there.
    let deadline = Instant::now() + PATIENCE;
    let left = loop {
        let mut l = lease_client(&c, other).await;
        let r = l
            .lease_time_to_live(epb::LeaseTimeToLiveRequest {
                id: g.id,
                keys: true,
            })
            .await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(s) => eprintln!("time to live via member {other}: {s:?}"),
        }
        assert!(Instant::now() < deadline, "time to live never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(left.ttl >= 0, "lease lost in the leader change: {left:?}");
    assert_eq!(left.granted_ttl, ttl);
    assert_eq!(left.keys, vec![b"survivor".to_vec()]);
    // Linearizable: the answer above came from the new leader, and a follower may not have
    // applied the put yet (the old leader died before telling it the commit index).
    for &i in &live {
        assert_eq!(
            has_key_linearizable(&c, i, "survivor").await,
            Some(true),
            "member {i}"
        );
    }
    // Not kept alive, it still expires under the new leader.
    wait_key_gone(&c, &live, "survivor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_maintenance_answers_carry_the_store_revision_as_etcd_does() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let lease = grant(&c, leader, 60).await;
    let put = common::put_request_retrying(
        &c,
        leader,
        epb::PutRequest {
            key: b"leased".to_vec(),
            value: b"v".to_vec(),
            lease: lease.id,
            ..Default::default()
        },
    )
    .await;
    let rev = put.header.expect("header").revision;
    assert!(rev >= 2);
    // Through a follower too (forwarded to the leader, answered from its state).
    for i in [leader, follower] {
        let mut l = lease_client(&c, i).await;
        let ttl = l
            .lease_time_to_live(epb::LeaseTimeToLiveRequest {
                id: lease.id,
                keys: true,
            })
            .await
            .expect("time to live")
            .into_inner();
        assert_eq!(ttl.header.expect("header").revision, rev, "member {i}");
        let leases = l
            .lease_leases(epb::LeaseLeasesRequest {})
            .await
            .expect("leases")
            .into_inner();
        assert_eq!(leases.header.expect("header").revision, rev, "member {i}");
    }
    let ch = common::channel(&format!("http://{}", c.endpoint(leader)))
        .await
        .expect("connect");
    let alarms = server::pb::etcdserverpb::maintenance_client::MaintenanceClient::new(ch)
        .alarm(epb::AlarmRequest::default())
        .await
        .expect("alarm list")
        .into_inner();
    // Alarm answers are the exception: etcd sends them without a header.
    assert_eq!(alarms.header, None);
    if etcdctl_available() {
        let out = etcdctl_ok(
            &c.endpoint(leader),
            &[
                "lease",
                "timetolive",
                &format!("{:x}", lease.id),
                "-w",
                "json",
            ],
            "",
        );
        assert!(
            out.stdout.contains(&format!("\"revision\":{rev}")),
            "{}",
            out.stdout
        );
    }
}
