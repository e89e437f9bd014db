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
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

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

/// gRPC status codes by number, named as in go-grpc-prometheus' `grpc_code` label; a code
/// outside 0..=16 is `Unknown` (2).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const DEADLINE_EXCEEDED: usize = 4;

/// The index in [`CODE_NAMES`] of a `grpc-status` value.
fn code_index(code: &[u8]) -> usize {
    std::str::from_utf8(code)
        .ok()
        .filter(|c| c.len() <= 2)
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c < CODE_NAMES.len())
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
fn code_name(code: &[u8]) -> &'static str {
    CODE_NAMES[code_index(code)]
}

/// The number of label sets a call can have: etcd's methods, and one for every other path.
const CALLS: usize = {
    let mut n = 1;
    let mut i = 0;
    while i < ETCD_METHODS.len() {
        n += ETCD_METHODS[i].1.len();
        i += 1;
    }
    n
};

/// The counters of every call kind, created on first use (so that `/metrics` lists only the
/// calls that happened, as before) and then shared: counting a call costs an atomic add, not
/// a label vector and a lookup in the family's map under its lock.
pub struct CallCounters {
    /// `grpc_server_started_total` by call index ([`call_index`]).
    started: [OnceLock<Counter>; CALLS],
    /// `grpc_server_handled_total` by call index and code index.
    handled: [[OnceLock<Counter>; CODE_NAMES.len()]; CALLS],
}

impl Default for CallCounters {
    fn default() -> CallCounters {
        CallCounters {
            started: std::array::from_fn(|_| OnceLock::new()),
            handled: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }
}

impl CallCounters {
    fn started(&self, metrics: &Metrics, call: usize) -> &Counter {
        self.started[call].get_or_init(|| {
            metrics
                .grpc_started
                .get_or_create(&call_labels_of(call))
                .clone()
        })
    }

    fn handled(&self, metrics: &Metrics, call: usize, code: usize) -> &Counter {
        self.handled[call][code].get_or_init(|| {
            let mut labels = call_labels_of(call);
            labels.push(("grpc_code", CODE_NAMES[code]));
            metrics.grpc_handled.get_or_create(&labels).clone()
        })
    }
}

/// The call index of a request ([`CALLS`]), or `None` for a request that is not a gRPC call
/// (`/health`, `/metrics`).
fn call_index(req: &Request) -> Option<usize> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    // "/etcdserverpb.KV/Range"; anything else is still counted, under "unknown".
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    // Bounded label values: a client can send any path, so calls of no etcd method collapse
    // into one series instead of growing the registry without limit.
    let mut base = 0;
    for (s, methods) in ETCD_METHODS {
        if *s == service {
            return Some(
                methods
                    .iter()
                    .position(|m| *m == method)
                    .map_or(CALLS - 1, |i| base + i),
            );
        }
        base += methods.len();
    }
    Some(CALLS - 1)
}

/// The labels of call index `call`.
fn call_labels_of(call: usize) -> StaticLabels {
    let mut base = 0;
    for (service, methods) in ETCD_METHODS {
        if let Some(method) = methods.get(call - base) {
            return vec![
                ("grpc_type", grpc_type(service, method)),
                ("grpc_service", service),
                ("grpc_method", method),
            ];
        }
        base += methods.len();
        if call < base {
            break;
        }
    }
    vec![
        ("grpc_type", "unary"),
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
    ]
}

#[cfg(test)]
fn call_labels(req: &Request) -> Option<StaticLabels> {
    call_index(req).map(call_labels_of)
}

/// Middleware for the client port's router: counts gRPC calls (see the module docs).
pub async fn count_calls(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    let Some(call) = call_index(&req) else {
        return next.run(req).await;
    };
    metrics.grpc_calls.started(&metrics, call).inc();
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| grpc_timeout(v.as_bytes()))
        .map(|t| Instant::now() + t);
    // Created before the handler runs: if this future is dropped (see the module docs), the
    // drop counts the call.
    let mut done = Done {
        metrics,
        call: Some(call),
        deadline,
    };
    let response = next.run(req).await;
    if let Some(code) = response.headers().get("grpc-status") {
        // Trailers-only: the call is over.
        done.record(code_index(code.as_bytes()));
        return response;
    }
    response.map(|body| Body::new(CountedBody { inner: body, done }))
}

/// Counts the call's completion once, with the code it ended with.
struct Done {
    /// Where the call is counted.
    metrics: Arc<Metrics>,
    /// The call's index ([`call_index`]); taken when it is counted (so it is counted once).
    call: Option<usize>,
    /// The client's deadline (`grpc-timeout`), if it sent one.
    deadline: Option<Instant>,
}

impl Done {
    fn record(&mut self, code: usize) {
        if let Some(call) = self.call.take() {
            let metrics = &self.metrics;
            metrics.grpc_calls.handled(metrics, call, code).inc();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let code = if self.deadline.is_some_and(|d| Instant::now() >= d) {
            DEADLINE_EXCEEDED
        } else {
            CANCELED
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
                        .map_or(UNKNOWN, |c| code_index(c.as_bytes()));
                    self.done.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.done.record(UNKNOWN),
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
        assert_eq!(code_name(b"16"), "Unauthenticated");
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"-1"), "Unknown");
        // Every call index names its own labels, and the last is the unknown one.
        let all: std::collections::HashSet<_> = (0..CALLS).map(call_labels_of).collect();
        assert_eq!(all.len(), CALLS);
        assert_eq!(call_labels_of(CALLS - 1)[2].1, "unknown");
        assert_eq!(call_labels_of(0)[2].1, "Range");
    }
}
