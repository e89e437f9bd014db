//! `grpc_server_started_total` and `grpc_server_handled_total`, as go-grpc-prometheus counts
//! them for etcd: one start per call, one completion per call with its status code, labelled
//! by type, service and method.
//!
//! A call's code is in the response headers when it fails before any message (a
//! "trailers-only" answer, as tonic sends errors of unary calls), otherwise in the trailers at
//! the end of the body. A call dropped before its code is known (the client reset the stream,
//! or tonic's `grpc-timeout` dropped the handler, before the answer or in the middle of a
//! stream) counts as `DeadlineExceeded` past the client's deadline and `Canceled` before it,
//! as a Go handler returning on its context's error would.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use super::{Metrics, StaticLabels};

/// etcd's services and their methods (rpc.proto); the only label values taken from a path.
const ETCD_METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

/// The gRPC call kinds of etcd's services, as go-grpc-prometheus names them.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        _ => "unary",
    }
}

/// gRPC status codes by number, named as in go-grpc-prometheus' `grpc_code` label.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The call's labels, or `None` for a request that is not a gRPC call (`/health`, `/metrics`).
fn call_labels(req: &Request) -> Option<StaticLabels> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    // "/etcdserverpb.KV/Range"; anything else is still counted, under its raw path pieces.
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    // Bounded label values: a client can send any path, so calls of no etcd method collapse
    // into one series instead of growing the registry without limit.
    let (service, method) = ETCD_METHODS
        .iter()
        .find(|(s, _)| *s == service)
        .and_then(|(s, methods)| methods.iter().find(|m| **m == method).map(|m| (*s, *m)))
        .unwrap_or(("unknown", "unknown"));
    Some(vec![
        ("grpc_type", grpc_type(service, method)),
        ("grpc_service", service),
        ("grpc_method", method),
    ])
}

/// Middleware for the client port's router: counts gRPC calls (see the module docs).
pub async fn count_calls(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    let Some(labels) = call_labels(&req) else {
        return next.run(req).await;
    };
    metrics.grpc_started.get_or_create(&labels).inc();
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| grpc_timeout(v.as_bytes()))
        .map(|t| Instant::now() + t);
    // Created before the handler runs: if this future is dropped (see the module docs), the
    // drop counts the call.
    let mut done = Done {
        metrics,
        labels: Some(labels),
        deadline,
    };
    let response = next.run(req).await;
    if let Some(code) = response.headers().get("grpc-status") {
        // Trailers-only: the call is over.
        done.record(code_name(code.as_bytes()));
        return response;
    }
    response.map(|body| Body::new(CountedBody { inner: body, done }))
}

/// Counts the call's completion once, with the code it ended with.
struct Done {
    /// Where the call is counted.
    metrics: Arc<Metrics>,
    /// The call's labels; taken when it is counted (so it is counted once).
    labels: Option<StaticLabels>,
    /// The client's deadline (`grpc-timeout`), if it sent one.
    deadline: Option<Instant>,
}

impl Done {
    fn record(&mut self, code: &'static str) {
        if let Some(mut labels) = self.labels.take() {
            labels.push(("grpc_code", code));
            self.metrics.grpc_handled.get_or_create(&labels).inc();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let code = if self.deadline.is_some_and(|d| Instant::now() >= d) {
            "DeadlineExceeded"
        } else {
            "Canceled"
        };
        self.record(code);
    }
}

/// A `grpc-timeout` header's duration ("<up to 8 digits><unit>", unit one of H M S m u n).
fn grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A response body that counts its call when the trailers (with `grpc-status`) pass.
struct CountedBody {
    /// The handler's body.
    inner: Body,
    /// Counts the call at the trailers, or when the body is dropped before them.
    done: Done,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // A gRPC body's trailers carry the status; without one it is unknown.
                    let code = trailers
                        .get("grpc-status")
                        .map_or("Unknown", |c| code_name(c.as_bytes()));
                    self.done.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.done.record("Unknown"),
            // The end without trailers: a gRPC body always has them, so the stream was cut.
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_etcd_calls_and_bound_unknown_paths() {
        let req = |path: &str| {
            Request::builder()
                .uri(path)
                .header("content-type", "application/grpc")
                .body(Body::empty())
                .expect("a valid request")
        };
        let l = call_labels(&req("/etcdserverpb.Watch/Watch")).expect("a call");
        assert_eq!(l[0].1, "bidi_stream");
        assert_eq!(l[1].1, "etcdserverpb.Watch");
        let l = call_labels(&req("/etcdserverpb.KV/Range")).expect("a call");
        assert_eq!((l[0].1, l[2].1), ("unary", "Range"));
        for path in [
            "/evil.Service/x",
            "/etcdserverpb.KV/Nope",
            "/etcdserverpb.KV",
        ] {
            let l = call_labels(&req(path)).expect("a call");
            assert_eq!((l[1].1, l[2].1), ("unknown", "unknown"));
        }
        let plain = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .expect("a valid request");
        assert!(call_labels(&plain).is_none());
        assert_eq!(code_name(b"7"), "PermissionDenied");
        assert_eq!(grpc_timeout(b"1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"123456789S"), None, "at most 8 digits");
        assert_eq!(grpc_timeout(b"S"), None);
        assert_eq!(grpc_timeout(b"5x"), None);
        assert_eq!(code_name(b"99"), "Unknown");
    }
}
