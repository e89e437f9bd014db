//! The client port's routes: etcd's gRPC services, and plain HTTP `GET /health` and
//! `GET /metrics` as etcd serves them (HTTP/1.1 too, for curl and Prometheus).

use std::time::Duration;

use super::{Api, REQUEST_BYTES_MAX};
use crate::pb::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};

/// gRPC framing allowance on top of the request limit (etcd's `grpcOverheadBytes`), so that an
/// oversized request reaches the server and gets etcd's "request is too large" message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The client port: the etcd gRPC services plus `GET /health` and `GET /metrics`.
pub fn client_routes(api: &Api) -> tonic::service::Routes {
    use axum::http::StatusCode;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(api.clone())
            .max_decoding_message_size(REQUEST_BYTES_MAX + GRPC_OVERHEAD_BYTES),
    );
    grpc.add_service(MaintenanceServer::new(api.clone()));
    grpc.add_service(ClusterServer::new(api.clone()));
    grpc.add_service(LeaseServer::new(api.clone()));
    grpc.add_service(WatchServer::new(api.clone()));
    grpc.add_service(crate::pb::etcdserverpb::auth_server::AuthServer::new(
        api.clone(),
    ));
    let (health_api, metrics_api) = (api.clone(), api.clone());
    let router = grpc
        .routes()
        .into_axum_router()
        .route(
            "/health",
            axum::routing::get(move || {
                let api = health_api.clone();
                async move {
                    let (ok, body) = api.http_health().await;
                    let code = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, body)
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let api = metrics_api.clone();
                async move { api.http_metrics() }
            }),
        );
    tonic::service::Routes::from(router)
}

impl Api {
    /// `GET /health`, as etcd answers it: a linearizable read must succeed (within a short
    /// timeout). Returns whether healthy and the JSON body.
    pub async fn http_health(&self) -> (bool, String) {
        let read = tokio::time::timeout(Duration::from_secs(3), self.linearizable_read()).await;
        match read {
            Ok(Ok(())) => (true, r#"{"health":"true","reason":""}"#.to_string()),
            Ok(Err(s)) => (
                false,
                format!(r#"{{"health":"false","reason":"{}"}}"#, s.message()),
            ),
            Err(_) => (
                false,
                r#"{"health":"false","reason":"timed out waiting for read index"}"#.to_string(),
            ),
        }
    }

    /// `GET /metrics`: Prometheus text format. Names follow etcd's where one exists, so
    /// dashboards built for etcd find them.
    pub fn http_metrics(&self) -> String {
        let st = self.inner.node.status();
        let is_leader = st.leader.map(|l| l.get()) == Some(self.inner.member_id);
        let gauges: [(&str, &str, u64); 6] = [
            (
                "etcd_server_has_leader",
                "Whether a leader is known (1) or not (0).",
                u64::from(st.leader.is_some()),
            ),
            (
                "etcd_server_is_leader",
                "Whether this member is the leader (1) or not (0).",
                u64::from(is_leader),
            ),
            ("skiff_raft_term", "Current Raft term.", st.term),
            ("skiff_raft_commit_index", "Raft commit index.", st.commit),
            (
                "skiff_raft_applied_index",
                "Raft applied index.",
                st.applied,
            ),
            (
                "skiff_member_id",
                "This member's id (constant; for joining series).",
                self.inner.member_id,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
        out
    }
}
