//! Fault tests on a real 3-process cluster: SIGKILL the leader, writes resume after
//! re-election, the restarted member catches up, and no acknowledged write is lost; and a
//! leader paused with SIGSTOP (a partition from its own point of view) that comes back must not
//! serve stale linearizable reads.

mod common;

use std::time::{Duration, Instant};

use common::{local_get, put_retrying, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_then_restart_it() {
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all).await;
    let mut acked = Vec::new();
    for k in 0..10 {
        let key = format!("before{k}");
        put_retrying(&c, (leader + 1) % 3, &key, "v").await;
        acked.push(key);
    }

    c.kill(leader);
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&live).await;
    assert_ne!(new_leader, leader);
    for k in 0..10 {
        let key = format!("after{k}");
        // Alternate between the two survivors: one of them forwards to the other.
        put_retrying(&c, live[k % 2], &key, "w").await;
        acked.push(key);
    }

    c.spawn(leader);
    let deadline = Instant::now() + PATIENCE;
    for key in &acked {
        loop {
            if local_get(&c, leader, key).await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted member never caught up with {key}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every member holds every acknowledged write.
    for i in all {
        for key in &acked {
            assert!(
                local_get(&c, i, key).await.is_some(),
                "member {i} lost {key}"
            );
        }
    }
    // And the restarted member takes writes again.
    put_retrying(&c, leader, "back", "x").await;
}

fn signal(c: &Cluster, i: usize, sig: &str) {
    let pid = c.members[i]
        .child
        .as_ref()
        .map(|ch| ch.id())
        .expect("member running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// Resumes a stopped member even if the test fails, so that the harness can kill it.
struct Resume<'a>(&'a Cluster, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        signal(self.0, self.1, "-CONT");
    }
}

async fn linearizable_get(c: &Cluster, i: usize, key: &str) -> Result<Option<Vec<u8>>, String> {
    let mut kv = c.kv(i).await.ok_or("connect failed")?;
    let r = kv
        .range(epb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_comes_back_without_stale_reads() {
    let c = Cluster::start(3);
    let all = [0, 1, 2];
    let old = c.wait_leader(&all).await;
    put_retrying(&c, old, "x", "1").await;

    signal(&c, old, "-STOP");
    let resume = Resume(&c, old);
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = c.wait_leader(&live).await;
    assert_ne!(new, old);
    put_retrying(&c, new, "x", "2").await;
    drop(resume);

    // The old leader wakes up believing it leads. A linearizable read there must either fail
    // or see the write it missed; it must never answer the old value.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match linearizable_get(&c, old, "x").await {
            Ok(v) => {
                assert_eq!(
                    v.as_deref(),
                    Some(&b"2"[..]),
                    "stale read from the old leader"
                );
                break;
            }
            Err(e) => eprintln!("read at the old leader failed (allowed): {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "old leader never served reads again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It takes writes again too (forwarding them if it is a follower now).
    put_retrying(&c, old, "x", "3").await;
    for i in all {
        let deadline = Instant::now() + PATIENCE;
        while linearizable_get(&c, i, "x").await.ok().flatten().as_deref() != Some(&b"3"[..]) {
            assert!(Instant::now() < deadline, "member {i} never saw x=3");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_neither_commits_nor_serves_stale_reads() {
    let c = Cluster::start(3);
    let all = [0, 1, 2];
    let old = c.wait_leader(&all).await;
    put_retrying(&c, old, "p", "1").await;

    c.isolate(old);
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = c.wait_leader(&majority).await;
    assert_ne!(new, old);
    put_retrying(&c, majority[0], "p", "2").await;
    put_retrying(&c, majority[1], "q", "1").await;

    // The minority side cannot commit or confirm reads: both fail rather than lie.
    let mut kv = c.kv(old).await.expect("connect to the isolated member");
    let w = kv
        .put(epb::PutRequest {
            key: b"lost".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await;
    assert!(w.is_err(), "isolated member acknowledged a write: {w:?}");
    assert!(
        linearizable_get(&c, old, "p").await.is_err(),
        "isolated member served a linearizable read"
    );

    c.heal();
    let deadline = Instant::now() + PATIENCE;
    for i in all {
        while linearizable_get(&c, i, "q").await.ok().flatten().as_deref() != Some(&b"1"[..]) {
            assert!(Instant::now() < deadline, "member {i} never converged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            linearizable_get(&c, i, "p").await.ok().flatten().as_deref(),
            Some(&b"2"[..]),
            "member {i}"
        );
    }
    // The write the isolated leader could not commit never shows up.
    for i in all {
        assert_eq!(linearizable_get(&c, i, "lost").await.ok().flatten(), None);
    }
}

/// Writes through `i` one after another for `span`; the longest time between two
/// acknowledged writes (from the start, and until the end).
async fn longest_write_gap(c: &Cluster, i: usize, span: Duration) -> Duration {
    let start = std::time::Instant::now();
    let mut last = start;
    let mut longest = Duration::ZERO;
    let mut n = 0u64;
    while start.elapsed() < span {
        n += 1;
        if let Some(mut kv) = c.kv(i).await {
            let mut put = tonic::Request::new(epb::PutRequest {
                key: format!("gap{}", n % 16).into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            });
            put.set_timeout(Duration::from_secs(2));
            if kv.put(put).await.is_ok() {
                longest = longest.max(last.elapsed());
                last = std::time::Instant::now();
            }
        }
    }
    longest.max(last.elapsed().saturating_sub(Duration::from_millis(100)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_stall_after_a_partition_heals() {
    // Election timeout 500 ms (the harness's flags). A follower (then, in the last round, only
    // its link to the leader) is cut off for a few seconds and healed, and at once the other
    // follower is cut off: every write now needs the healed member. None may wait longer than
    // an election timeout. (The fault hook drops messages inside the members; a black-holed
    // TCP connection, which the peer keepalives and send timeouts are for, was measured with
    // network namespaces: see issue 15's closing note.)
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let election = Duration::from_millis(500);
    let cut = |a: usize, b: usize| {
        std::fs::write(c.fault_file(a), &c.members[b].name).expect("fault");
        std::fs::write(c.fault_file(b), &c.members[a].name).expect("fault");
    };
    for round in 0..3 {
        let healed = (leader + 1 + round % 2) % 3;
        let other = 3 - leader - healed;
        if round < 2 {
            c.isolate(healed);
        } else {
            cut(leader, healed);
        }
        let during = longest_write_gap(&c, leader, Duration::from_secs(3)).await;
        c.heal();
        cut(leader, other);
        let after = longest_write_gap(&c, leader, Duration::from_secs(3)).await;
        c.heal();
        eprintln!("round {round}: longest gap {during:?} while cut, {after:?} after healing");
        assert!(
            after <= election,
            "round {round}: a write waited {after:?} after the partition healed"
        );
        assert_eq!(c.wait_leader(&[0, 1, 2]).await, leader, "the leader stayed");
    }
}
