//! `--log-format json` and `--log-level`: one JSON object per line, and Raft events carry the
//! member id, term and index as fields (etcd's structured logs).

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_member_term_and_index() {
    let c = Cluster::start_with(1, &["--log-format", "json"]);
    c.wait_leader(&[0]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(c.log_path(0)).expect("the member's log");
        // The harness may add lines of its own before the member's; the member's are JSON.
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let leader = events
            .iter()
            .find(|e| e["fields"]["message"] == "raft state" && e["fields"]["role"] == "Leader");
        if let Some(e) = leader {
            let f = &e["fields"];
            assert_eq!(e["level"], "INFO");
            assert!(f["member"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            assert_eq!(f["leader"], f["member"], "{e}");
            assert!(f["term"].as_u64().is_some_and(|t| t >= 1), "{e}");
            assert!(f["last"].as_u64().is_some(), "{e}");
            assert!(
                events.iter().all(|e| e["level"] != "DEBUG"),
                "info is the default level"
            );
            return;
        }
        assert!(Instant::now() < deadline, "no leader event in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_warn_leaves_out_info() {
    let c = Cluster::start_with(1, &["--log-format", "json", "--log-level", "warn"]);
    c.wait_leader(&[0]).await;
    // The member has elected itself and served a status call: info events happened.
    let text = std::fs::read_to_string(c.log_path(0)).expect("the member's log");
    for l in text.lines().filter(|l| l.starts_with('{')) {
        let e: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            e["level"] == "WARN" || e["level"] == "ERROR",
            "an event below warn: {l}"
        );
    }
    assert!(
        !text.contains("raft state"),
        "the leader event is info: {text}"
    );
}

#[test]
fn an_unknown_log_level_is_refused_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["serve", "--log-level", "loud"])
        .output()
        .expect("run skiff");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-level"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Peer connections set a TCP keepalive the kernel accepts: a sub-second idle time used to be
/// truncated to 0 s and refused with `EINVAL`, logged as a warning on every connection attempt
/// (five times a second per unreachable peer) with no keepalive set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_set_tcp_keepalive_without_errors() {
    let c = Cluster::start(3);
    c.wait_leader(&[0, 1, 2]).await;
    common::put_retrying(&c, 0, "k", "v").await;
    for i in 0..3 {
        let text = std::fs::read_to_string(c.log_path(i)).expect("the member's log");
        assert!(!text.contains("set_keepalive"), "member {i}: {text}");
    }
}
