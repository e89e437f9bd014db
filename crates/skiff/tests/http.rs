//! Plain HTTP on the client port: `GET /health` and `GET /metrics`.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, Cluster, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_over_http() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2]).await;
    for (i, m) in c.members.iter().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let resp = http_get(m.client_port, "/health");
            if resp.starts_with("HTTP/1.1 200") {
                assert!(resp.contains(r#"{"health":"true","reason":""}"#), "{resp}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} never healthy: {resp}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = http_get(m.client_port, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
        let is_leader = if i == leader { 1 } else { 0 };
        assert!(
            metrics.contains(&format!("etcd_server_is_leader {is_leader}")),
            "member {i}: {metrics}"
        );
    }
}

/// `--listen-metrics-urls`: a plain-HTTP listener with `/metrics` and `/health` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = Cluster::start_with(1, &["--listen-metrics-urls", &url]);
    c.wait_leader(&[0]).await;
    let metrics = http_get(port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("etcd_server_is_leader 1"), "{metrics}");
    let health = http_get(port, "/health");
    assert!(health.contains(r#""health":"true""#), "{health}");
    // Not the dashboard, nor the etcd API.
    let dashboard = http_get(port, "/dashboard");
    assert!(dashboard.starts_with("HTTP/1.1 404"), "{dashboard}");
    let grpc = http_get(port, "/etcdserverpb.KV/Range");
    assert!(!grpc.starts_with("HTTP/1.1 200"), "{grpc}");
}
