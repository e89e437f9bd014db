//! etcd's Cluster service: MemberList (`etcdctl member list`): every member lists every
//! member with its id, name, peer and client URLs, the same on every member and after
//! restarts; MemberRemove (`etcdctl member remove`), with etcd's checks, and removed members
//! stop.

mod common;

use common::{etcdctl, etcdctl_available, etcdctl_ok, put_retrying, Cluster};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::cluster_client::ClusterClient;

/// What member `i` of `c` should look like in a member list.
fn expected(c: &Cluster, i: usize, id: u64) -> epb::Member {
    let m = &c.members[i];
    epb::Member {
        id,
        name: m.name.clone(),
        peer_ur_ls: vec![format!("http://127.0.0.1:{}", m.peer_port)],
        client_ur_ls: vec![format!("http://127.0.0.1:{}", m.client_port)],
        is_learner: false,
    }
}

async fn ids(c: &Cluster) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..c.members.len() {
        let s = c.status(i).await.expect("status");
        assert!(!s.is_learner, "member {i} is a voter");
        ids.push(s.header.expect("header").member_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_lists_every_member_and_keeps_them_across_restarts() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let ids = ids(&c).await;
    let mut want: Vec<epb::Member> = (0..3).map(|i| expected(&c, i, ids[i])).collect();
    want.sort_by_key(|m| m.id);
    for (i, &id) in ids.iter().enumerate() {
        let list = c.member_list(i).await.expect("member list");
        assert_eq!(list.members, want, "as member {i} lists them");
        let h = list.header.expect("header");
        assert_eq!(h.member_id, id);
        // As etcd's Cluster service: no store revision in the header.
        assert!(h.revision == 0 && h.raft_term >= 1, "{h:?}");
    }

    // A restarted follower lists them from its own state, and does not publish again (its
    // description is in the table already): the log grows by the one put alone.
    let follower = (leader + 1) % 3;
    put_retrying(&c, leader, "k", "v").await;
    let before = c.status(leader).await.expect("status");
    c.kill(follower);
    c.spawn(follower);
    assert_eq!(c.wait_leader(&[0, 1, 2]).await, leader);
    assert_eq!(
        c.member_list(follower).await.expect("member list").members,
        want
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    put_retrying(&c, follower, "k2", "v").await;
    // The follower may answer from its own apply before the leader's status shows the entry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.status(leader).await.expect("status").raft_index <= before.raft_index
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = c.status(leader).await.expect("status");
    if after.raft_term == before.raft_term {
        assert_eq!(
            after.raft_index,
            before.raft_index + 1,
            "a member whose description is stored does not publish it again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_list_prints_what_etcd_prints() {
    if !etcdctl_available() {
        return;
    }
    let c = Cluster::start(3);
    c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let ids = ids(&c).await;
    let out = etcdctl_ok(&c.endpoints(), &["member", "list"], "");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..3)
        .map(|i| {
            let m = &c.members[i];
            format!(
                "{:x}, started, {}, http://127.0.0.1:{}, http://127.0.0.1:{}, false",
                ids[i], m.name, m.peer_port, m.client_port
            )
        })
        .collect();
    want.sort();
    assert_eq!(lines, want, "{}", out.stdout);

    // The JSON form carries the header and the members' fields under etcd's names.
    let out = etcdctl_ok(&c.endpoints(), &["member", "list", "-w", "json"], "");
    for (i, id) in ids.iter().enumerate() {
        let m = &c.members[i];
        assert!(
            out.stdout.contains(&format!("\"ID\":{id}")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!(
                "\"name\":\"{}\",\"peerURLs\":[\"http://127.0.0.1:{}\"],\"clientURLs\":[\"http://127.0.0.1:{}\"]",
                m.name, m.peer_port, m.client_port
            )),
            "{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("\"cluster_id\":"), "{}", out.stdout);
}

async fn remove(
    c: &Cluster,
    via: usize,
    id: u64,
) -> Result<epb::MemberRemoveResponse, tonic::Status> {
    let ch = common::channel(&format!("http://{}", c.endpoint(via)))
        .await
        .expect("connect");
    let mut req = tonic::Request::new(epb::MemberRemoveRequest { id });
    req.set_timeout(std::time::Duration::from_secs(20));
    ClusterClient::new(ch)
        .member_remove(req)
        .await
        .map(|r| r.into_inner())
}

/// Waits until member `i` lists exactly `ids`.
async fn wait_listed(c: &Cluster, i: usize, ids: &[u64]) {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let listed: Vec<u64> = c
            .member_list(i)
            .await
            .map(|l| l.members.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        if listed == ids {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {i} lists {listed:x?}, not {ids:x?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_removed_as_etcd_removes_them_and_removed_members_stop() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let ids = ids(&c).await;
    let (b, down) = ((leader + 1) % 3, (leader + 2) % 3);

    // An id that is no member.
    let stranger = (1..).find(|id| !ids.contains(id)).expect("a free id");
    let s = remove(&c, b, stranger).await.expect_err("not a member");
    assert_eq!(
        (s.code(), s.message()),
        (tonic::Code::NotFound, "etcdserver: member not found")
    );

    // One member down: removing a connected one would leave no connected majority (etcd's
    // "unhealthy cluster"); the one that is down may go, through a follower (forwarded).
    c.kill(down);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let s = remove(&c, leader, ids[b])
        .await
        .expect_err("no connected majority would be left");
    assert_eq!(
        (s.code(), s.message()),
        (tonic::Code::Unavailable, "etcdserver: unhealthy cluster")
    );
    let r = remove(&c, b, ids[down])
        .await
        .expect("a member that is down may be removed");
    let mut left = vec![ids[leader], ids[b]];
    left.sort();
    assert_eq!(r.members.iter().map(|m| m.id).collect::<Vec<_>>(), left);
    put_retrying(&c, b, "after-1", "v").await;
    wait_listed(&c, b, &left).await;

    // The leader, removed through the follower: it answers, then stops with an error; the
    // member left leads alone and takes writes.
    remove(&c, b, ids[leader]).await.expect("remove the leader");
    let exit = c.wait_exit(leader).expect("the removed leader stops");
    assert_eq!(
        exit.code(),
        Some(3),
        "a removed member exits with its own code"
    );
    let log = std::fs::read_to_string(c.log_path(leader)).expect("log");
    assert!(log.contains("removed from the cluster"), "{log}");
    assert_eq!(c.wait_leader(&[b]).await, b);
    put_retrying(&c, b, "after-2", "v").await;
    wait_listed(&c, b, &[ids[b]]).await;

    // Both removed members, restarted with their data dirs, stop again: their own state or
    // the survivor's refusal says they were removed. The survivor is undisturbed.
    for i in [down, leader] {
        // This run's log only: the earlier run's says it was removed too.
        std::fs::remove_file(c.log_path(i)).expect("remove the old log");
        c.spawn(i);
        let exit = c.wait_exit(i).expect("a removed member stops");
        assert_eq!(
            exit.code(),
            Some(3),
            "skiff serve's exit code for a removed member"
        );
        let log = std::fs::read_to_string(c.log_path(i)).expect("log");
        assert!(log.contains("removed from the cluster"), "{log}");
    }
    put_retrying(&c, b, "after-3", "v").await;
    assert_eq!(c.member_list(b).await.expect("list").members.len(), 1);
    assert_eq!(c.wait_leader(&[b]).await, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_remove_prints_what_etcd_prints() {
    if !etcdctl_available() {
        return;
    }
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let ids = ids(&c).await;
    let cluster_id = c
        .status(leader)
        .await
        .expect("status")
        .header
        .expect("header")
        .cluster_id;
    let f = (leader + 1) % 3;
    let out = etcdctl_ok(
        &c.endpoints(),
        &["member", "remove", &format!("{:x}", ids[f])],
        "",
    );
    assert_eq!(
        out.stdout.trim(),
        format!(
            "Member {:16x} removed from cluster {:16x}",
            ids[f], cluster_id
        )
    );
    assert!(!c.wait_exit(f).expect("the removed member stops").success());
    let out = etcdctl(
        &c.endpoints(),
        &["member", "remove", &format!("{:x}", ids[f])],
        "",
    );
    assert!(
        !out.ok && out.stderr.contains("etcdserver: member not found"),
        "{}",
        out.stderr
    );
}
