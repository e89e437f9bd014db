//! Growing and changing a running cluster through etcd's Cluster service: MemberAdd (voter
//! and learner), a new member joining with an empty data dir and `--initial-cluster-state
//! existing`, MemberPromote once the learner caught up, MemberUpdate, and etcd's refusals.

mod common;

use std::time::{Duration, Instant};

use common::{channel, initial_cluster, local_get, put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::cluster_client::ClusterClient;

async fn cluster_client(c: &Cluster, i: usize) -> ClusterClient<tonic::transport::Channel> {
    let ch = channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    ClusterClient::new(ch)
}

async fn add(
    c: &Cluster,
    via: usize,
    peer_url: String,
    is_learner: bool,
) -> Result<epb::MemberAddResponse, tonic::Status> {
    cluster_client(c, via)
        .await
        .member_add(epb::MemberAddRequest {
            peer_ur_ls: vec![peer_url],
            is_learner,
        })
        .await
        .map(|r| r.into_inner())
}

async fn promote(
    c: &Cluster,
    via: usize,
    id: u64,
) -> Result<epb::MemberPromoteResponse, tonic::Status> {
    cluster_client(c, via)
        .await
        .member_promote(epb::MemberPromoteRequest { id })
        .await
        .map(|r| r.into_inner())
}

/// Waits until member `i` has applied `key` = `value` (a local, serializable read).
async fn wait_local(c: &Cluster, i: usize, key: &str, value: &str) {
    let deadline = Instant::now() + PATIENCE;
    while local_get(c, i, key).await.as_deref() != Some(value.as_bytes()) {
        assert!(Instant::now() < deadline, "member {i} never applied {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, message: &str) {
    match r {
        Err(s) => {
            assert_eq!((s.code(), s.message()), (code, message), "{s:?}");
        }
        Ok(ok) => panic!("expected {message:?}, got {ok:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_votes() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    for k in 0..50 {
        put_retrying(&c, leader, &format!("k{k}"), "before").await;
    }
    let n4 = c.new_member("m4");
    let follower = (leader + 1) % 3;
    // Added through a follower: it forwards to the leader.
    let added = add(&c, follower, c.peer_url(n4), true)
        .await
        .expect("member add --learner");
    let new = added.member.clone().expect("the new member");
    assert!(new.is_learner && new.name.is_empty() && new.client_ur_ls.is_empty());
    assert_eq!(new.peer_ur_ls, vec![c.peer_url(n4)]);
    assert_eq!(added.members.len(), 4);
    assert!(
        added.members.iter().any(|m| m == &new),
        "{:?}",
        added.members
    );

    // Not started, so not in sync with the leader: promotion is refused, as etcd refuses it.
    refused(
        promote(&c, follower, new.id).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    // etcd allows one learner.
    let extra = c.new_member("m5");
    refused(
        add(&c, leader, c.peer_url(extra), true).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    );

    // The learner starts with an empty data dir and catches up.
    c.spawn_joining(n4, &initial_cluster(&added, "m4"));
    wait_local(&c, n4, "k49", "before").await;
    put_retrying(&c, leader, "during", "learning").await;
    wait_local(&c, n4, "during", "learning").await;
    let status = c.status(n4).await.expect("status of the learner");
    assert!(status.is_learner);
    assert_eq!(status.header.expect("header").member_id, new.id);

    // Its log is now within 10% of the leader's: promoted (retried while a write lands in
    // between and it is momentarily behind).
    let deadline = Instant::now() + PATIENCE;
    let promoted = loop {
        match promote(&c, follower, new.id).await {
            Ok(r) => break r,
            Err(s) if Instant::now() < deadline => {
                eprintln!("promote: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("promote never succeeded: {s:?}"),
        }
    };
    assert!(
        promoted.members.iter().all(|m| !m.is_learner),
        "{promoted:?}"
    );
    refused(
        promote(&c, leader, new.id).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    // It publishes its name and client URL once started.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listed = c.member_list(leader).await.expect("member list");
        let m4 = listed
            .members
            .iter()
            .find(|m| m.id == new.id)
            .expect("m4 listed");
        if !m4.name.is_empty() {
            assert_eq!(m4.name, "m4");
            assert_eq!(m4.client_ur_ls, vec![format!("http://{}", c.endpoint(n4))]);
            break;
        }
        assert!(Instant::now() < deadline, "m4 never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It votes: with four voters, an election needs three votes; the leader is killed, so
    // the new leader needs m4's.
    c.kill(leader);
    let rest: Vec<usize> = [0, 1, 2, n4].into_iter().filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&rest).await;
    put_retrying(&c, new_leader, "after", "promotion").await;
    wait_local(&c, n4, "after", "promotion").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_checks_refuse_bad_changes_and_a_moved_learner_joins_at_its_new_url() {
    let mut c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    c.wait_published(&[0]).await;
    let own = c.peer_url(0);
    refused(
        add(&c, 0, own.clone(), false).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    // Not URLs (etcd's check); several peer URLs, which etcd accepts, are refused the same
    // way here (a member listens on one URL).
    for bad in [
        "",
        "127.0.0.1:1",
        "http://127.0.0.1:1/path",
        "ftp://127.0.0.1:1",
    ] {
        refused(
            add(&c, 0, bad.to_string(), false).await,
            tonic::Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        );
    }
    let two = cluster_client(&c, 0)
        .await
        .member_add(epb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:7".into(), "http://127.0.0.1:8".into()],
            is_learner: true,
        })
        .await;
    refused(
        two,
        tonic::Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    refused(
        promote(&c, 0, 777).await,
        tonic::Code::NotFound,
        "etcdserver: member not found",
    );
    let mut client = cluster_client(&c, 0).await;
    let unknown = client
        .member_update(epb::MemberUpdateRequest {
            id: 12345,
            peer_ur_ls: vec!["http://127.0.0.1:9".into()],
        })
        .await;
    refused(
        unknown,
        tonic::Code::NotFound,
        "etcdserver: member not found",
    );

    // A learner, added at one port and moved (MemberUpdate) to another before it starts.
    let first_port = c.new_member("m2-first");
    let learner = add(&c, 0, c.peer_url(first_port), true)
        .await
        .expect("add a learner");
    let learner_id = learner.member.as_ref().expect("member").id;
    let taken = client
        .member_update(epb::MemberUpdateRequest {
            id: learner_id,
            peer_ur_ls: vec![own.clone()],
        })
        .await;
    refused(
        taken,
        tonic::Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    let n2 = c.new_member("m2");
    let updated = client
        .member_update(epb::MemberUpdateRequest {
            id: learner_id,
            peer_ur_ls: vec![c.peer_url(n2)],
        })
        .await
        .expect("member update")
        .into_inner();
    let listed = updated.members.iter().find(|m| m.id == learner_id);
    assert_eq!(
        listed.map(|m| m.peer_ur_ls.clone()),
        Some(vec![c.peer_url(n2)])
    );
    put_retrying(&c, 0, "k", "v").await;
    c.spawn_joining(n2, &format!("m1={own},m2={}", c.peer_url(n2)));
    wait_local(&c, n2, "k", "v").await;
    let status = c.status(n2).await.expect("status");
    assert_eq!(status.header.expect("header").member_id, learner_id);
    let deadline = Instant::now() + PATIENCE;
    while let Err(s) = promote(&c, 0, learner_id).await {
        assert!(Instant::now() < deadline, "never promoted: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Two started voters (once the new one published its name): a third voter may be added
    // before it starts (two of three have started), but not a fourth while the third has not
    // (two of four is no quorum).
    c.wait_published(&[0, n2]).await;
    let n3 = c.new_member("m3");
    add(&c, 0, c.peer_url(n3), false)
        .await
        .expect("add a third voter");
    let n4 = c.new_member("m4");
    refused(
        add(&c, 0, c.peer_url(n4), false).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: re-configuration failed due to not enough started members",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_grows_to_two_voters_with_etcdctl() {
    let mut c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    c.wait_published(&[0]).await;
    put_retrying(&c, 0, "before", "growing").await;
    let n2 = c.new_member("m2");
    // The one member's cluster is the exception etcd makes for restoring from a backup: the
    // second voter may be added before it starts. Until it joins, nothing commits.
    let initial_cluster = if common::etcdctl_available() {
        let out = common::etcdctl_ok(
            &c.endpoint(0),
            &[
                "member",
                "add",
                "m2",
                &format!("--peer-urls={}", c.peer_url(n2)),
            ],
            "",
        );
        let id = out.stdout.lines().next().unwrap_or_default().to_string();
        assert!(
            id.starts_with("Member ") && id.contains(" added to cluster "),
            "{}",
            out.stdout
        );
        let want = [
            "ETCD_NAME=\"m2\"".to_string(),
            format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", c.peer_url(n2)),
            "ETCD_INITIAL_CLUSTER_STATE=\"existing\"".to_string(),
        ];
        for line in want {
            assert!(out.stdout.contains(&line), "{line} in {}", out.stdout);
        }
        // Members in id order, as etcd lists them.
        let listed = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("ETCD_INITIAL_CLUSTER")
            .to_string();
        let mut parts: Vec<&str> = listed.split(',').collect();
        parts.sort();
        let (m1, m2) = (
            format!("m1={}", c.peer_url(0)),
            format!("m2={}", c.peer_url(n2)),
        );
        assert_eq!(parts, vec![m1.as_str(), m2.as_str()]);
        listed
    } else {
        let added = add(&c, 0, c.peer_url(n2), false).await.expect("member add");
        initial_cluster(&added, "m2")
    };
    // The one member restarts before the new one starts: its log holds the addition, so it
    // needs the new member's vote, and finds it at the address the entry carries.
    c.kill(0);
    c.spawn(0);
    c.spawn_joining(n2, &initial_cluster);
    c.wait_leader(&[0, 1]).await;
    put_retrying(&c, 0, "after", "growing").await;
    wait_local(&c, n2, "before", "growing").await;
    wait_local(&c, n2, "after", "growing").await;
    c.wait_published(&[0, 1]).await;
    for i in [0, 1] {
        let s = c.status(i).await.expect("status");
        assert!(!s.is_learner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_was_not_added_cannot_join() {
    let mut c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    let n2 = c.new_member("m2");
    let spec = format!("m1={},m2={}", c.peer_url(0), c.peer_url(n2));
    c.spawn_joining(n2, &spec);
    let status = c.wait_exit(n2).expect("the member stops");
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(n2)).expect("log");
    assert!(
        log.contains("no member of cluster") && log.contains("etcdctl member add"),
        "{log}"
    );
    assert!(
        !c.data_dir(n2).join("member").exists(),
        "nothing is recorded for a member that did not join"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_ran_cannot_come_back_with_an_empty_data_dir() {
    // Its term, vote and log are what its peers count on: with them gone it must be removed
    // and added again, as a new member.
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    c.kill(follower);
    std::fs::remove_dir_all(c.data_dir(follower)).expect("wipe the data dir");
    let spec = (0..3)
        .map(|i| format!("{}={}", c.members[i].name, c.peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    c.spawn_joining(follower, &spec);
    let status = c.wait_exit(follower).expect("the member stops");
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(follower)).expect("log");
    assert!(log.contains("has started before"), "{log}");
    put_retrying(&c, leader, "still", "serving").await;
}

/// A learner removed while it was down sends nothing when it comes back (learners never
/// campaign, and no leader sends to it any more): it asks its peers once it has heard from
/// none for a while, and stops as a removed member does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_removed_while_down_stops_when_it_comes_back() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let n4 = c.new_member("m4");
    let added = add(&c, leader, c.peer_url(n4), true)
        .await
        .expect("member add --learner");
    let id = added.member.clone().expect("the new member").id;
    c.spawn_joining(n4, &initial_cluster(&added, "m4"));
    put_retrying(&c, leader, "k", "v").await;
    wait_local(&c, n4, "k", "v").await;

    c.kill(n4);
    cluster_client(&c, leader)
        .await
        .member_remove(epb::MemberRemoveRequest { id })
        .await
        .expect("member remove of the stopped learner");
    // This run's log only.
    std::fs::remove_file(c.log_path(n4)).expect("remove the old log");
    c.spawn(n4);
    let exit = c.wait_exit(n4).expect("the removed learner stops");
    assert_eq!(exit.code(), Some(3), "a removed member's exit code");
    let log = std::fs::read_to_string(c.log_path(n4)).expect("log");
    assert!(log.contains("removed from the cluster"), "{log}");
    put_retrying(&c, leader, "after", "v").await;
}

/// A member reached by a DNS name (as in Kubernetes: `http://etcd-0.etcd:2380`): added with
/// it, it joins with it as its advertised peer URL, and the others dial it by that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_advertised_by_host_name_joins_and_votes() {
    let mut c = Cluster::start(1);
    c.wait_leader(&[0]).await;
    c.wait_published(&[0]).await;
    let n2 = c.new_member("m2");
    c.members[n2].peer_host = "localhost".into();
    assert!(c.peer_url(n2).starts_with("http://localhost:"));
    let added = add(&c, 0, c.peer_url(n2), true)
        .await
        .expect("member add --learner by host name");
    let id = added.member.clone().expect("the new member").id;
    assert_eq!(
        added.member.as_ref().expect("member").peer_ur_ls,
        vec![c.peer_url(n2)]
    );
    c.spawn_joining(n2, &initial_cluster(&added, "m2"));
    put_retrying(&c, 0, "k", "v").await;
    wait_local(&c, n2, "k", "v").await;
    // In sync, it becomes a voter: the leader's appends reach it by name.
    let deadline = Instant::now() + PATIENCE;
    while promote(&c, 0, id).await.is_err() {
        assert!(Instant::now() < deadline, "never promoted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    put_retrying(&c, 0, "k2", "v2").await;
    wait_local(&c, n2, "k2", "v2").await;
}
