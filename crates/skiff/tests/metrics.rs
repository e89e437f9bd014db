//! `GET /metrics` of a real 3-member cluster, read with a Prometheus text parser: etcd's metric
//! names and types, and values that follow what the cluster did (writes, failures, fsyncs,
//! peer traffic, the leader's view of its followers, a follower falling behind).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{etcdctl_available, etcdctl_ok, Cluster, PATIENCE};
use prometheus_parse::{Sample, Scrape, Value};

/// `GET /metrics` of the member on `port`: the parsed samples, after checking the content type
/// and that every sample line parsed.
fn scrape(port: u16) -> Vec<Sample> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses");
    // The parser skips lines it cannot read: every sample line must have become a sample
    // (histogram buckets are folded into one sample per series).
    let sample_lines = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty() && !l.contains("_bucket{"))
        .count();
    let buckets: usize = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .count();
    assert_eq!(
        scrape.samples.len() - buckets,
        sample_lines,
        "unparsed lines in:\n{body}"
    );
    scrape.samples
}

/// The value of the sample named `name` whose labels include `labels`; `None` if absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        })
}

fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

/// Scrapes `port` until `ok` holds of the samples (bounded by [`PATIENCE`]).
fn scrape_until(port: u16, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = scrape(port);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Member ids (hex, as the metrics label them) by member index, from `endpoint status`.
fn member_ids(c: &Cluster) -> Vec<String> {
    (0..c.members.len())
        .map(|i| {
            let out = etcdctl_ok(&c.endpoint(i), &["endpoint", "status"], "");
            out.stdout.split(", ").nth(1).expect("an id").to_string()
        })
        .collect()
}

#[test]
fn metrics_follow_the_cluster() {
    if !etcdctl_available() {
        return;
    }
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..20 {
        etcdctl_ok(&eps, &["put", &format!("k{i}"), "v"], "");
    }
    // k1 and k10..k19: 11 of the 20 keys deleted (etcd counts live keys only).
    etcdctl_ok(&eps, &["del", "k1", "--prefix"], "");
    // A refused write: etcd's InvalidArgument, counted by code.
    let refused = common::etcdctl(&eps, &["put", "", "v"], "");
    assert!(!refused.ok, "an empty key is refused");
    let ids = member_ids(&c);
    let leader = common::runtime().block_on(c.wait_leader(&[0, 1, 2]));

    let mut puts_ok = 0.0;
    let mut invalid = 0.0;
    for (i, m) in c.members.iter().enumerate() {
        let s = scrape_until(m.client_port, "caught up", |s| {
            value(s, "etcd_server_proposals_applied_total", &[]) >= Some(22.0)
        });
        assert_eq!(must(&s, "etcd_server_has_leader", &[]), 1.0);
        let is_leader = if i == leader { 1.0 } else { 0.0 };
        assert_eq!(
            must(&s, "etcd_server_is_leader", &[]),
            is_leader,
            "member {i}"
        );
        assert!(must(&s, "etcd_server_leader_changes_seen_total", &[]) >= 1.0);
        assert_eq!(must(&s, "etcd_server_id", &[("server_id", &ids[i])]), 1.0);
        assert!(
            must(&s, "etcd_server_proposals_committed_total", &[])
                >= must(&s, "etcd_server_proposals_applied_total", &[])
        );
        for h in [
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_disk_backend_commit_duration_seconds",
        ] {
            let count = must(&s, &format!("{h}_count"), &[]);
            assert!(count > 0.0, "member {i}: no {h}");
            let hist = s
                .iter()
                .find(|x| x.metric == h)
                .unwrap_or_else(|| panic!("no {h} buckets"));
            let Value::Histogram(buckets) = &hist.value else {
                panic!("{h} is not a histogram")
            };
            // etcd's buckets: 1 ms doubling 14 times, then +Inf.
            assert_eq!(buckets.len(), 15, "{buckets:?}");
            assert_eq!(buckets[0].less_than, 0.001);
            assert_eq!(buckets.last().map(|b| b.count), Some(count));
        }
        assert_eq!(must(&s, "etcd_debugging_mvcc_keys_total", &[]), 9.0);
        assert!(must(&s, "etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
        assert!(
            must(&s, "etcd_mvcc_db_total_size_in_use_in_bytes", &[])
                <= must(&s, "etcd_mvcc_db_total_size_in_bytes", &[])
        );
        // Followers talk to the leader only (outside elections).
        for (j, peer) in ids.iter().enumerate() {
            if j == i || (i != leader && j != leader) {
                continue;
            }
            assert!(must(&s, "etcd_network_peer_sent_bytes_total", &[("To", peer)]) > 0.0);
            assert!(
                must(
                    &s,
                    "etcd_network_peer_received_bytes_total",
                    &[("From", peer)]
                ) > 0.0
            );
        }
        let put = [("grpc_method", "Put"), ("grpc_type", "unary")];
        puts_ok += value(
            &s,
            "grpc_server_handled_total",
            &[put[0], put[1], ("grpc_code", "OK")],
        )
        .unwrap_or(0.0);
        invalid += value(
            &s,
            "grpc_server_handled_total",
            &[put[0], ("grpc_code", "InvalidArgument")],
        )
        .unwrap_or(0.0);
        let started: f64 = s
            .iter()
            .filter(|x| x.metric == "grpc_server_started_total")
            .filter(|x| x.labels.get("grpc_method") == Some("Put"))
            .map(|x| match x.value {
                Value::Counter(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum();
        let handled: f64 = s
            .iter()
            .filter(|x| x.metric == "grpc_server_handled_total")
            .filter(|x| x.labels.get("grpc_method") == Some("Put"))
            .map(|x| match x.value {
                Value::Counter(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum();
        assert_eq!(started, handled, "member {i}: every Put started is handled");
    }
    // etcdctl retries nothing here: each put was one call to some member.
    assert_eq!(puts_ok, 20.0);
    assert_eq!(invalid, 1.0);

    // The leader measures the round trip to each peer (every few seconds) and knows where
    // each follower is.
    let lp = c.members[leader].client_port;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let s = scrape_until(lp, "round trips measured", |s| {
        followers.iter().all(|&f| {
            value(
                s,
                "etcd_network_peer_round_trip_time_seconds_count",
                &[("To", &ids[f])],
            )
            .is_some_and(|n| n >= 1.0)
        })
    });
    let rtt = s
        .iter()
        .find(|x| x.metric == "etcd_network_peer_round_trip_time_seconds")
        .expect("round-trip buckets");
    let Value::Histogram(buckets) = &rtt.value else {
        panic!("the round trip is not a histogram")
    };
    // etcd's: 0.1 ms doubling 16 times, then +Inf.
    assert_eq!(buckets.len(), 17, "{buckets:?}");
    assert_eq!(buckets[0].less_than, 0.0001);
    let s = scrape_until(lp, "followers caught up", |s| {
        followers.iter().all(|&f| {
            value(s, "skiff_follower_lag_entries", &[("follower", &ids[f])]) == Some(0.0)
                && value(
                    s,
                    "skiff_follower_state",
                    &[("follower", &ids[f]), ("state", "replicate")],
                ) == Some(1.0)
        })
    });
    // The view is published every 200 ms, so it may trail the applied index a little; it
    // holds at least the leader's first entry and the 20 puts.
    for &f in &followers {
        assert!(must(&s, "skiff_follower_match_index", &[("follower", &ids[f])]) >= 21.0);
    }
    // Followers have no view of others.
    let fs = scrape(c.members[followers[0]].client_port);
    assert!(value(&fs, "skiff_follower_match_index", &[]).is_none());

    // Linearizable reads on the leader: each asks the core, and each needs a round of its own
    // here (one at a time); rounds never outnumber requests.
    let reads_before = must(&scrape(lp), "skiff_read_index_requests_total", &[]);
    let rounds_before = must(&scrape(lp), "skiff_read_index_rounds_total", &[]);
    for _ in 0..3 {
        etcdctl_ok(&c.endpoint(leader), &["get", "k0"], "");
    }
    let s = scrape(lp);
    let reads = must(&s, "skiff_read_index_requests_total", &[]) - reads_before;
    let rounds = must(&s, "skiff_read_index_rounds_total", &[]) - rounds_before;
    assert!(reads >= 3.0, "three reads asked: {reads}");
    assert!(
        (3.0..=reads).contains(&rounds),
        "{rounds} rounds for {reads} reads"
    );

    // A stopped follower falls behind by exactly the writes made since.
    let down = followers[1];
    c.kill(down);
    let before = must(&scrape(lp), "etcd_server_proposals_committed_total", &[]);
    for i in 0..5 {
        etcdctl_ok(&c.endpoint(leader), &["put", &format!("late{i}"), "v"], "");
    }
    // The view is published every 200 ms: wait for one where the live follower has
    // acknowledged everything while the stopped one lags.
    let s = scrape_until(
        lp,
        "the stopped follower's lag, the live one caught up",
        |s| {
            value(s, "skiff_follower_lag_entries", &[("follower", &ids[down])])
                .is_some_and(|lag| lag >= 5.0)
                && value(
                    s,
                    "skiff_follower_lag_entries",
                    &[("follower", &ids[followers[0]])],
                ) == Some(0.0)
        },
    );
    assert!(must(&s, "etcd_server_proposals_committed_total", &[]) >= before + 5.0);
    // In bytes: at least the five puts' payloads behind; nothing behind for the live one.
    assert!(
        must(&s, "skiff_follower_lag_bytes", &[("follower", &ids[down])]) >= 5.0 * 10.0,
        "the stopped follower lags by the puts' bytes"
    );
    assert_eq!(
        must(
            &s,
            "skiff_follower_lag_bytes",
            &[("follower", &ids[followers[0]])]
        ),
        0.0
    );

    // Without a quorum a write runs out of time: the call is still counted as handled, with
    // the code it ended with (the member answers, or the client's deadline drops it).
    c.kill(followers[0]);
    let timed_out = common::etcdctl(
        &c.endpoint(leader),
        &["--command-timeout=1s", "put", "lost", "v"],
        "",
    );
    assert!(!timed_out.ok, "no quorum, no write: {}", timed_out.stdout);
    let put_calls = |s: &[Sample], metric: &str| -> (f64, f64) {
        let (mut all, mut ok) = (0.0, 0.0);
        for x in s
            .iter()
            .filter(|x| x.metric == metric && x.labels.get("grpc_method") == Some("Put"))
        {
            let v = match x.value {
                Value::Counter(v) | Value::Untyped(v) => v,
                _ => 0.0,
            };
            all += v;
            if x.labels.get("grpc_code") == Some("OK") {
                ok += v;
            }
        }
        (all, ok)
    };
    let s = scrape_until(lp, "the timed-out put handled", |s| {
        let (started, _) = put_calls(s, "grpc_server_started_total");
        let (handled, ok) = put_calls(s, "grpc_server_handled_total");
        started == handled && handled > ok + 0.5
    });
    let failed: Vec<String> = s
        .iter()
        .filter(|x| x.metric == "grpc_server_handled_total")
        .filter(|x| x.labels.get("grpc_method") == Some("Put"))
        .filter_map(|x| x.labels.get("grpc_code").map(str::to_string))
        .filter(|code| code != "OK")
        .collect();
    assert!(!failed.is_empty(), "a non-OK code for the lost put");
}
