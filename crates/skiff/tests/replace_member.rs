//! Changing a running cluster under a write load, as an operator does it with etcdctl:
//! replacing a dead member (SIGKILL a follower, or the leader; `member remove` it, `member
//! add` a new one, start that with an empty data dir and `--initial-cluster-state existing`),
//! and growing from three voters to five and back to three, removing the leader itself.
//! Clients keep writing and reading throughout; every acknowledged write must be on every
//! member afterwards, and the clients' history must pass the simulator's linearizability
//! checker (operations whose answer was lost may have taken effect or not).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    etcdctl_available, etcdctl_ok, initial_cluster, local_range, put_retrying, Cluster, PATIENCE,
};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::cluster_client::ClusterClient;
use sim::history::History;
use sim::kv::KvOp;
use sim::linearizability::{check, Verdict};

/// Keys the clients share: reads and writes on them are checked for linearizability.
const SHARED_KEYS: usize = 3;
const CLIENTS: u64 = 4;
/// Each operation's deadline.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the clients saw.
#[derive(Default)]
struct Record {
    history: History,
    /// Keys of writes acknowledged to a client (each written once).
    acked: BTreeSet<String>,
    started: Option<Instant>,
}

impl Record {
    fn now_ms(&mut self) -> u64 {
        let start = *self.started.get_or_insert_with(Instant::now);
        start.elapsed().as_millis() as u64
    }
}

/// One client: against the members in `live` (round robin), puts a key of its own, puts a
/// shared key and reads a shared key, recording each, until `stop`.
async fn client(
    id: u64,
    endpoints: Arc<Mutex<Vec<String>>>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let targets = endpoints.lock().expect("endpoints").clone();
        let target = &targets[(n as usize + id as usize) % targets.len()];
        let Some(ch) = common::channel(&format!("http://{target}")).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut kv = server::pb::etcdserverpb::kv_client::KvClient::new(ch);
        // A key of its own: if acknowledged, it must be on every member at the end.
        let own = format!("w/{id}/{n}");
        let mut put = tonic::Request::new(epb::PutRequest {
            key: own.clone().into_bytes(),
            value: b"x".to_vec(),
            ..Default::default()
        });
        put.set_timeout(OP_TIMEOUT);
        if kv.put(put).await.is_ok() {
            record.lock().expect("record").acked.insert(own);
        }
        // A shared key, written and read under the checker.
        let key = format!("s{}", n % SHARED_KEYS as u64);
        let value = format!("{id}-{n}");
        let op = {
            let mut r = record.lock().expect("record");
            let now = r.now_ms();
            r.history.invoke(id, &key, KvOp::Put(value.clone()), now)
        };
        let mut put = tonic::Request::new(epb::PutRequest {
            key: key.clone().into_bytes(),
            value: value.into_bytes(),
            ..Default::default()
        });
        put.set_timeout(OP_TIMEOUT);
        if kv.put(put).await.is_ok() {
            let mut r = record.lock().expect("record");
            let now = r.now_ms();
            r.history.complete(op, None, now);
        }
        // (An unanswered put stays unknown: it may have been applied.)
        let key = format!("s{}", (n + 1) % SHARED_KEYS as u64);
        let op = {
            let mut r = record.lock().expect("record");
            let now = r.now_ms();
            r.history.invoke(id, &key, KvOp::Get, now)
        };
        let mut get = tonic::Request::new(epb::RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        });
        get.set_timeout(OP_TIMEOUT);
        if let Ok(resp) = kv.range(get).await {
            let value = resp
                .into_inner()
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default();
            let mut r = record.lock().expect("record");
            let now = r.now_ms();
            r.history.complete(op, Some(value), now);
        }
    }
}

/// `member remove` then `member add` through member `via`, with etcdctl when it is
/// installed (its output as an operator reads it), else through the API. Returns the
/// `--initial-cluster` for the new member.
async fn remove_and_add(c: &Cluster, via: usize, dead_id: u64, new: usize) -> String {
    if etcdctl_available() {
        let out = etcdctl_ok(
            &c.endpoint(via),
            &["member", "remove", &format!("{dead_id:x}")],
            "",
        );
        assert!(
            out.stdout.contains("removed from cluster"),
            "{}",
            out.stdout
        );
        let out = etcdctl_ok(
            &c.endpoint(via),
            &[
                "member",
                "add",
                &c.members[new].name,
                &format!("--peer-urls={}", c.peer_url(new)),
            ],
            "",
        );
        assert!(
            out.stdout
                .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
            "{}",
            out.stdout
        );
        return out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("ETCD_INITIAL_CLUSTER")
            .to_string();
    }
    let ch = common::channel(&format!("http://{}", c.endpoint(via)))
        .await
        .expect("connect");
    let mut cluster = ClusterClient::new(ch);
    cluster
        .member_remove(epb::MemberRemoveRequest { id: dead_id })
        .await
        .expect("member remove");
    let added = cluster
        .member_add(epb::MemberAddRequest {
            peer_ur_ls: vec![c.peer_url(new)],
            is_learner: false,
        })
        .await
        .expect("member add")
        .into_inner();
    initial_cluster(&added, &c.members[new].name)
}

/// Every key under `w/` that member `i` has applied.
async fn own_keys(c: &Cluster, i: usize) -> BTreeSet<String> {
    let resp = local_range(
        c,
        i,
        epb::RangeRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            keys_only: true,
            ..Default::default()
        },
    )
    .await
    .expect("range");
    resp.kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Clients running against a cluster, and what they saw.
struct Load {
    endpoints: Arc<Mutex<Vec<String>>>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, members: &[usize]) -> Load {
        let endpoints = Arc::new(Mutex::new(
            members.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>(),
        ));
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|id| tokio::spawn(client(id, endpoints.clone(), record.clone(), stop.clone())))
            .collect();
        Load {
            endpoints,
            record,
            stop,
            clients,
        }
    }

    /// Sends the clients to `members` from now on.
    fn aim(&self, c: &Cluster, members: &[usize]) {
        *self.endpoints.lock().expect("endpoints") =
            members.iter().map(|&i| c.endpoint(i)).collect();
    }

    /// Stops the clients, then checks what they saw against `members` (every one of which
    /// must have applied every acknowledged write) and for linearizability.
    async fn stop_and_check(self, c: &Cluster, members: &[usize]) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.clients {
            t.await.expect("client");
        }
        put_retrying(c, members[0], "done", "yes").await;
        let record = std::mem::take(&mut *self.record.lock().expect("record"));
        assert!(
            record.acked.len() >= 20,
            "too few writes acknowledged to mean anything: {}",
            record.acked.len()
        );
        for &i in members {
            wait_applied(c, i, "done").await;
            let keys = own_keys(c, i).await;
            let missing: Vec<&String> = record.acked.difference(&keys).collect();
            assert!(
                missing.is_empty(),
                "member {i} lacks acknowledged writes {missing:?}"
            );
        }
        let completed = record.history.completed();
        assert!(completed >= 20, "too few operations completed: {completed}");
        match check(&record.history) {
            Verdict::Ok => {}
            other => panic!("the clients' history is not linearizable: {other:?}"),
        }
        eprintln!(
            "{} writes acknowledged, {} checked operations completed of {}",
            record.acked.len(),
            completed,
            record.history.ops.len()
        );
    }
}

/// Waits until member `i` has applied `key` = "yes".
async fn wait_applied(c: &Cluster, i: usize, key: &str) {
    let deadline = Instant::now() + PATIENCE;
    while common::local_get(c, i, key).await.as_deref() != Some(&b"yes"[..]) {
        assert!(Instant::now() < deadline, "member {i} never applied {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id member `i` reports.
async fn id_of(c: &Cluster, i: usize) -> u64 {
    c.status(i)
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id
}

async fn replace_a_dead_member(kill_leader: bool) {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let dead = if kill_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let dead_id = id_of(&c, dead).await;
    let live: Vec<usize> = (0..3).filter(|&i| i != dead).collect();

    let load = Load::start(&c, &[0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(800)).await;

    c.kill(dead);
    load.aim(&c, &live);
    c.wait_leader(&live).await;
    let new = c.new_member("m4");
    let initial_cluster = remove_and_add(&c, live[0], dead_id, new).await;
    c.spawn_joining(new, &initial_cluster);
    let all: Vec<usize> = live.iter().copied().chain([new]).collect();
    c.wait_leader(&all).await;
    put_retrying(&c, live[0], "joined", "yes").await;
    wait_applied(&c, new, "joined").await;
    load.aim(&c, &all);
    tokio::time::sleep(Duration::from_millis(800)).await;
    load.stop_and_check(&c, &all).await;

    let listed = c.member_list(new).await.expect("member list");
    assert_eq!(listed.members.len(), 3, "{listed:?}");
    assert!(listed.members.iter().all(|m| m.id != dead_id));
}

/// Adds a voter through member `via` (API) and starts it; returns once it applied a write.
async fn grow(c: &mut Cluster, via: usize, name: &str) -> usize {
    let new = c.new_member(name);
    let ch = common::channel(&format!("http://{}", c.endpoint(via)))
        .await
        .expect("connect");
    let deadline = Instant::now() + PATIENCE;
    let added = loop {
        let r = ClusterClient::new(ch.clone())
            .member_add(epb::MemberAddRequest {
                peer_ur_ls: vec![c.peer_url(new)],
                is_learner: false,
            })
            .await;
        match r {
            Ok(r) => break r.into_inner(),
            // The previous member has not published yet: not enough started members.
            Err(s) if Instant::now() < deadline => {
                eprintln!("member add {name}: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("member add {name}: {s:?}"),
        }
    };
    let spec = initial_cluster(&added, name);
    c.spawn_joining(new, &spec);
    let key = format!("joined-{name}");
    put_retrying(c, via, &key, "yes").await;
    wait_applied(c, new, &key).await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_grow_to_five_and_shrink_back_removing_the_leader_under_load() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let load = Load::start(&c, &[0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m4 = grow(&mut c, leader, "m4").await;
    let m5 = grow(&mut c, (leader + 1) % 3, "m5").await;
    let five: Vec<usize> = vec![0, 1, 2, m4, m5];
    load.aim(&c, &five);
    c.wait_leader(&five).await;
    for s in [c.status(m4).await, c.status(m5).await] {
        assert!(!s.expect("status").is_learner);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Remove the leader itself (through another member), then one more original member.
    let leader = c.wait_leader(&five).await;
    let leader_id = id_of(&c, leader).await;
    let others: Vec<usize> = five.iter().copied().filter(|&i| i != leader).collect();
    load.aim(&c, &others);
    let ch = common::channel(&format!("http://{}", c.endpoint(others[0])))
        .await
        .expect("connect");
    ClusterClient::new(ch.clone())
        .member_remove(epb::MemberRemoveRequest { id: leader_id })
        .await
        .expect("remove the leader");
    let status = c.wait_exit(leader).expect("the removed leader stops");
    assert_eq!(status.code(), Some(3), "a removed member exits with code 3");
    c.wait_leader(&others).await;
    let gone = others[1];
    let gone_id = id_of(&c, gone).await;
    let left: Vec<usize> = others.iter().copied().filter(|&i| i != gone).collect();
    load.aim(&c, &left);
    ClusterClient::new(ch)
        .member_remove(epb::MemberRemoveRequest { id: gone_id })
        .await
        .expect("remove a follower");
    assert_eq!(c.wait_exit(gone).and_then(|s| s.code()), Some(3));
    c.wait_leader(&left).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop_and_check(&c, &left).await;
    let listed = c.member_list(left[0]).await.expect("member list");
    assert_eq!(listed.members.len(), 3, "{listed:?}");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_is_replaced_under_load() {
    replace_a_dead_member(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_under_load() {
    replace_a_dead_member(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_through_a_leader_that_joined_itself() {
    // The new member starts from the initial cluster's configuration and must answer a
    // leader that is not in it: m4 joins and is made leader, then m5 joins through it.
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    c.wait_published(&[0, 1, 2]).await;
    let m4 = grow(&mut c, leader, "m4").await;
    c.wait_published(&[0, 1, 2, m4]).await;
    let m4_id = id_of(&c, m4).await;
    let ch = common::channel(&format!("http://{}", c.endpoint(leader)))
        .await
        .expect("connect");
    let mut maintenance = server::pb::etcdserverpb::maintenance_client::MaintenanceClient::new(ch);
    maintenance
        .move_leader(epb::MoveLeaderRequest { target_id: m4_id })
        .await
        .expect("move-leader to m4");
    assert_eq!(c.wait_leader(&[0, 1, 2, m4]).await, m4);
    let m5 = grow(&mut c, m4, "m5").await;
    assert_eq!(c.wait_leader(&[0, 1, 2, m4, m5]).await, m4);
    put_retrying(&c, m4, "last", "yes").await;
    wait_applied(&c, m5, "last").await;
}
