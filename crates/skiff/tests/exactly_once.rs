//! Exactly-once writes: a write forwarded to the leader (on the peer port's `Forward` stream)
//! carries a session, and a retry under the same session is answered from the state machine's
//! session table instead of being applied again (Raft thesis §6.3). Followers retry forwarded
//! writes under their session when the leader's answer is lost or the leader changes.

mod common;

use common::{Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::skiff::raft::v1 as pb;
use server::pb::skiff::raft::v1::raft_client::RaftClient;
use std::time::Instant;

/// Sends `commands` to member `to` in one batch of its `Forward` stream, as cluster
/// `cluster_id`, and returns the results in the order sent.
async fn forward(
    c: &Cluster,
    to: usize,
    cluster_id: u64,
    commands: Vec<Vec<u8>>,
) -> Result<Vec<pb::forward_result::Outcome>, tonic::Status> {
    let url = format!("http://127.0.0.1:{}", c.members[to].peer_port);
    let ch = common::channel(&url)
        .await
        .expect("connect to the peer port");
    let n = commands.len();
    let writes = commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| pb::ForwardedWrite {
            id: i as u64 + 1,
            command,
            can_answer: false,
        })
        .collect();
    let batch = pb::ForwardBatch { cluster_id, writes };
    let mut results = RaftClient::new(ch)
        .forward(tokio_stream::iter(vec![batch]))
        .await?
        .into_inner();
    let mut got: Vec<Option<pb::forward_result::Outcome>> = vec![None; n];
    while got.iter().any(Option::is_none) {
        let batch = results.message().await?.expect("a result for every write");
        for r in batch.results {
            got[r.id as usize - 1] = r.outcome;
        }
    }
    Ok(got.into_iter().map(|o| o.expect("filled")).collect())
}

/// A put of `counter` with prev_kv under session `client`.
fn put(client: u64) -> Vec<u8> {
    let request = kv::Request::Put(kv::PutRequest {
        prev_kv: true,
        ..kv::PutRequest::new("counter", "x")
    });
    kv::codec::encode_command(&kv::Command::with_session(client, 1, request))
}

/// The state machine's answer in a forward result.
fn answer(o: &pb::forward_result::Outcome) -> kv::PutResponse {
    let pb::forward_result::Outcome::Answer(bytes) = o else {
        panic!("not an answer: {o:?}");
    };
    match kv::codec::decode_result(bytes).expect("decodes") {
        Ok(kv::Response::Put(p)) => p,
        other => panic!("not a put's answer: {other:?}"),
    }
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

    let cluster_id = {
        let mut kv = c.kv(leader).await.expect("connect");
        let r = kv.range(epb::RangeRequest {
            key: b"any".to_vec(),
            ..Default::default()
        });
        r.await
            .expect("range")
            .into_inner()
            .header
            .expect("header")
            .cluster_id
    };

    let first = forward(&c, leader, cluster_id, vec![put(4242)])
        .await
        .expect("forward");
    let first = answer(&first[0]);
    assert!(first.prev_kv.is_none(), "the key was new");
    assert_eq!(version(&c, leader).await, 1);

    // The same session again (a follower retrying after a lost answer), also twice in one
    // batch: the first attempt's answer, not applied again.
    let retries = forward(&c, leader, cluster_id, vec![put(4242), put(4242)])
        .await
        .expect("forward");
    for r in &retries {
        assert_eq!(
            answer(r),
            first,
            "the retry is answered as the first attempt was"
        );
    }
    assert_eq!(version(&c, leader).await, 1);

    // Another session is another write.
    let other = forward(&c, leader, cluster_id, vec![put(4243)])
        .await
        .expect("forward");
    let other = answer(&other[0]);
    assert!(other.revision > first.revision);
    assert_eq!(other.prev_kv.expect("prev kv").version, 1);
    assert_eq!(version(&c, leader).await, 2);

    // A garbled command, or one without a session, is refused with a clear error, and nothing
    // is applied; the writes beside it in the batch are not affected.
    let bare = kv::codec::encode_command(&kv::Command::new(kv::Request::Put(kv::PutRequest::new(
        "counter", "y",
    ))));
    let mixed = forward(
        &c,
        leader,
        cluster_id,
        vec![b"garbage".to_vec(), bare, put(4244)],
    )
    .await
    .expect("forward");
    for refused in &mixed[..2] {
        let pb::forward_result::Outcome::Error(e) = refused else {
            panic!("not refused: {refused:?}");
        };
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{}", e.message);
    }
    answer(&mixed[2]);
    assert_eq!(version(&c, leader).await, 3);

    // A batch from another cluster ends the stream, and nothing is applied.
    let err = forward(&c, leader, cluster_id ^ 1, vec![put(4245)])
        .await
        .expect_err("another cluster");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(version(&c, leader).await, 3);

    // A member that does not lead refuses forwarded writes as "not leader": the follower that
    // sent them retries elsewhere.
    let follower = (leader + 1) % 3;
    let refused = forward(&c, follower, cluster_id, vec![put(4246)])
        .await
        .expect("forward");
    let pb::forward_result::Outcome::Error(e) = &refused[0] else {
        panic!("a follower applied a forwarded write: {:?}", refused[0]);
    };
    assert_eq!(e.code, tonic::Code::Unavailable as i32, "{}", e.message);
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
