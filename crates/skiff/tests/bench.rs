//! `skiff bench` against a real 3-member cluster: it completes, sees no errors and writes
//! JSON with the documented fields. It checks behaviour only, never speed.

mod common;

use std::process::Command;

use common::Cluster;

/// Runs `skiff bench` with `args` against `c`, returns its JSON report.
fn bench(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("bench")
        .args(["--endpoints", &c.endpoints(), "--conns", "2"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run skiff bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "skiff bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("throughput"),
        "no table on stdout:\n{stdout}"
    );
    let text = std::fs::read_to_string(&json).expect("read the JSON report");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the JSON report parses");
    for field in [
        "workload",
        "clients",
        "conns",
        "ops",
        "duration_s",
        "throughput_ops_s",
        "errors_total",
        "errors",
    ] {
        assert!(v.get(field).is_some(), "{field} missing from {text}");
    }
    for p in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(
            v["latency_ms"][p].as_f64().is_some_and(|x| x > 0.0),
            "latency_ms.{p} missing or zero in {text}"
        );
    }
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "no ops in {text}");
    assert_eq!(v["errors_total"].as_u64(), Some(0), "errors in {text}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_put_and_mixed_against_a_cluster() {
    let c = Cluster::start(3);
    c.wait_leader(&[0, 1, 2]).await;
    // The first writes may race the leader's first no-op; make sure the cluster serves.
    common::put_retrying(&c, 0, "warm", "up").await;

    let put = tokio::task::block_in_place(|| {
        bench(
            &c,
            &["--workload", "put", "--clients", "4", "--duration", "2s"],
        )
    });
    assert_eq!(put["workload"], "put");
    assert_eq!(put["clients"], 4);

    let mixed = tokio::task::block_in_place(|| {
        bench(
            &c,
            &[
                "--workload",
                "mixed",
                "--read-ratio",
                "0.9",
                "--clients",
                "4",
                "--key-space",
                "200",
                "--duration",
                "2s",
            ],
        )
    });
    assert_eq!(mixed["workload"], "mixed");
    assert_eq!(mixed["consistency"], "l");

    // With auth on, `--user` authenticates on each connection and sends the token.
    if !common::etcdctl_available() {
        return;
    }
    let eps = c.endpoints();
    for cmd in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "bench"],
        vec![
            "role",
            "grant-permission",
            "bench",
            "readwrite",
            "0",
            "--prefix",
        ],
        vec!["user", "add", "bencher:pw"],
        vec!["user", "grant-role", "bencher", "bench"],
        vec!["auth", "enable"],
    ] {
        common::etcdctl_ok(&eps, &cmd, "");
    }
    let args = [
        "--workload",
        "mixed",
        "--clients",
        "4",
        "--key-space",
        "100",
    ];
    let authed = tokio::task::block_in_place(|| {
        bench(
            &c,
            &[&args[..], &["--user", "bencher:pw", "--total", "200"]].concat(),
        )
    });
    assert_eq!(authed["ops"], 200);
    // A wrong password is one line naming the user; no token, no request succeeds.
    for (extra, why) in [
        (vec!["--user", "bencher:wrong"], "authentication failed"),
        (vec![], "user name is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("bench")
            .args(["--endpoints", &eps, "--total", "20"])
            .args(args)
            .args(&extra)
            .output()
            .expect("run skiff bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must fail");
        assert!(stderr.contains(why), "{extra:?}: {stderr}");
    }
}

#[test]
fn bench_rejects_bad_flags_in_one_line() {
    for args in [
        &["--clients", "0"][..],
        &["--duration", "soon"],
        &["--read-ratio", "1.5"],
        &["--workload", "scan"],
        &["--key-size", "2", "--key-space", "1000"],
        &["--endpoints", "https://127.0.0.1:2379"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run skiff bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}
