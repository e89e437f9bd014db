//! Exactly-once writes: a write forwarded to the leader carries a session id (gRPC metadata
//! `skiff-session-id`), and a retry under the same id is answered from the state machine's
//! session table instead of being applied again (Raft thesis §6.3). Followers retry forwarded
//! writes under their session when the leader's answer is lost or the leader changes.

mod common;

use common::{Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::skiff::raft::v1::raft_client::RaftClient;
use server::peer::SESSION_HEADER;
use std::time::Instant;

async fn forwarded_put(c: &Cluster, leader: usize, session: Option<&str>) -> epb::PutResponse {
    let url = format!("http://127.0.0.1:{}", c.members[leader].peer_port);
    let ch = common::channel(&url)
        .await
        .expect("connect to the peer port");
    let mut client = RaftClient::new(ch);
    let mut req = tonic::Request::new(epb::PutRequest {
        key: b"counter".to_vec(),
        value: b"x".to_vec(),
        prev_kv: true,
        ..Default::default()
    });
    if let Some(id) = session {
        req.metadata_mut()
            .insert(SESSION_HEADER, id.parse().expect("ascii"));
    }
    client.put(req).await.expect("forwarded put").into_inner()
}

async fn version(c: &Cluster, i: usize) -> i64 {
    let mut kv = c.kv(i).await.expect("connect");
    let r = kv
        .range(epb::RangeRequest {
            key: b"counter".to_vec(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    r.kvs.first().map_or(0, |kv| kv.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_forwarded_write_is_applied_once() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;

    let first = forwarded_put(&c, leader, Some("4242")).await;
    assert!(first.prev_kv.is_none(), "the key was new");
    let rev = first.header.as_ref().expect("header").revision;
    assert_eq!(version(&c, leader).await, 1);

    // The same session again (a follower retrying after a lost answer): same answer, not
    // applied again.
    let retry = forwarded_put(&c, leader, Some("4242")).await;
    assert_eq!(retry.header.as_ref().expect("header").revision, rev);
    assert!(
        retry.prev_kv.is_none(),
        "the retry is answered as the first attempt was"
    );
    assert_eq!(version(&c, leader).await, 1);

    // Another session is another write.
    let other = forwarded_put(&c, leader, Some("4243")).await;
    assert!(other.header.expect("header").revision > rev);
    assert_eq!(other.prev_kv.expect("prev kv").version, 1);
    assert_eq!(version(&c, leader).await, 2);

    // Without a session the leader picks a fresh one: applied.
    forwarded_put(&c, leader, None).await;
    assert_eq!(version(&c, leader).await, 3);

    // A garbled session id is refused with a clear error, and nothing is applied.
    let url = format!("http://127.0.0.1:{}", c.members[leader].peer_port);
    let mut client = RaftClient::new(common::channel(&url).await.expect("connect"));
    let mut req = tonic::Request::new(epb::PutRequest {
        key: b"counter".to_vec(),
        value: b"y".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert(SESSION_HEADER, "not-a-number".parse().expect("ascii"));
    let err = client.put(req).await.expect_err("garbled session");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(SESSION_HEADER), "{}", err.message());
    assert_eq!(version(&c, leader).await, 3);

    // Client writes through a follower (forwarded with a session) still work.
    let follower = (leader + 1) % 3;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut kv = c.kv(follower).await.expect("connect");
        let r = kv
            .put(epb::PutRequest {
                key: b"counter".to_vec(),
                value: b"z".to_vec(),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "put via follower: {r:?}");
    }
    assert_eq!(version(&c, leader).await, 4);
}
