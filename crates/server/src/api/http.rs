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
    let counted = api.inner.node.metrics().clone();
    let router = grpc
        .routes()
        .into_axum_router()
        .merge(metrics_routes(api))
        .merge(dashboard_routes(api))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::metrics::grpc::count_calls(counted.clone(), req, next)
        }));
    tonic::service::Routes::from(router)
}

/// `GET /dashboard` and its event stream (client port only).
fn dashboard_routes(api: &Api) -> axum::Router {
    let events_api = api.clone();
    axum::Router::new()
        .route(
            "/dashboard",
            axum::routing::get(|| async { super::dashboard::page() }),
        )
        .route(
            "/dashboard/events",
            axum::routing::get(move || {
                let api = events_api.clone();
                async move { api.dashboard_events() }
            }),
        )
}

/// `GET /health` and `GET /metrics` alone: for `--listen-metrics-urls`, and merged into the
/// client port's routes.
pub fn metrics_routes(api: &Api) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (health_api, metrics_api) = (api.clone(), api.clone());
    axum::Router::new()
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
                async move {
                    (
                        StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            crate::metrics::CONTENT_TYPE,
                        )],
                        api.http_metrics().await,
                    )
                        .into_response()
                }
            }),
        )
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

    /// `GET /metrics`: every metric of [`crate::metrics`], in Prometheus' (OpenMetrics) text
    /// format, after the readings of state are taken. The sizes come from the state machine
    /// off the async runtime (measuring the space in use reads page counts; it is cached for a
    /// few seconds by the store).
    pub async fn http_metrics(&self) -> String {
        let node = &self.inner.node;
        let m = node.metrics().clone();
        let st = node.status();
        let is_leader = st.leader.map(|l| l.get()) == Some(self.inner.member_id);
        let gauge = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        m.has_leader.set(i64::from(st.leader.is_some()));
        m.is_leader.set(i64::from(is_leader));
        m.term.set(gauge(st.term));
        m.proposals_committed.set(gauge(st.commit));
        m.proposals_applied.set(gauge(st.applied));
        let sizes = self
            .read_kv(|kv| {
                Ok((
                    kv.file_size_recent()?,
                    kv.size_in_use()?,
                    kv.live_keys(),
                    kv.sessions_len(),
                ))
            })
            .await;
        match sizes {
            Ok((file, in_use, keys, sessions)) => {
                m.db_size.set(gauge(file));
                m.db_size_in_use.set(gauge(in_use));
                m.keys.set(gauge(keys as u64));
                m.sessions.set(gauge(sessions as u64));
            }
            // Every other metric matters most when the state machine is in trouble: these
            // keep their last reading, and the scrape goes on.
            Err(e) => {
                tracing::warn!(error = %e.message(), "metrics: cannot read the state machine's sizes")
            }
        }
        m.encode()
    }
}
