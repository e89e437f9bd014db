//! etcd's Cluster.MemberList (`etcdctl member list`): every member lists every member with
//! its id, name, peer and client URLs, the same on every member and after restarts.

mod common;

use common::{etcdctl_available, etcdctl_ok, put_retrying, Cluster};
use server::pb::etcdserverpb as epb;

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
        assert!(h.revision >= 1 && h.raft_term >= 1, "{h:?}");
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
