//! Forwarding: every request that must run on the leader (writes, lease grants, revokes,
//! keep-alives, time-to-live queries) goes through [`Forwarder::on_leader`], the one
//! forward-and-retry loop, under one [`RetryPolicy`]:
//!
//! ```text
//!   route:  this member leads        -> run here
//!           the request was forwarded -> "not leader" (never forwarded twice: no loops)
//!           a leader is known         -> send it there over the peer port
//!           none is known             -> "no leader"
//!   failure retryable and time left  -> pause, route again
//! ```
//!
//! Retried: no leader, not leader, leader changed, and a connection failure to the leader;
//! none of them means the request was refused, and the ones that may have been applied
//! (leader changed, connection failure) are writes under a session, which the state machine
//! applies once however often they arrive (Raft thesis §6.3). A forwarded request is tried
//! once on the leader: the follower that forwarded it owns the retries and the deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raft::{NodeId, Role};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::outbound::Peers;
use super::pipe::{ForwardPipes, Forwarded};
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::replica::NodeHandle;
use crate::rpctypes::{ERR_LEADER_CHANGED, ERR_NOT_LEADER, ERR_NO_LEADER, ERR_TIMEOUT};

/// gRPC metadata key carrying the session of a forwarded write: `<client id>` or
/// `<client id>:<opened after>` (the forwarding member's applied index when it opened the
/// session; see `kv::Session::opened_after`).
pub const SESSION_HEADER: &str = "skiff-session-id";

/// The session of a forwarded write, from its metadata: `None` if absent, an error if garbled.
pub fn session_of(md: &tonic::metadata::MetadataMap) -> Result<Option<kv::Session>, Status> {
    let Some(v) = md.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let malformed = || Status::invalid_argument(format!("malformed {SESSION_HEADER}"));
    let text = v.to_str().map_err(|_| malformed())?;
    let (id, after) = match text.split_once(':') {
        Some((id, after)) => (id, Some(after)),
        None => (text, None),
    };
    let client_id = id
        .parse::<u64>()
        .ok()
        .filter(|&id| id != 0)
        .ok_or_else(malformed)?;
    let opened_after = after
        .map(|a| a.parse::<u64>().map_err(|_| malformed()))
        .transpose()?;
    Ok(Some(kv::Session {
        client_id,
        seq: 1,
        opened_after,
    }))
}

/// Largest answer to a forwarded write the leader ships; a larger one is left out, and the
/// forwarding member answers from its own apply (see [`super::pipe`]).
pub const SHIPPED_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// `request` with `session` attached, to forward it to the leader.
pub fn with_session<T>(request: T, session: kv::Session) -> Request<T> {
    let mut r = Request::new(request);
    let text = match session.opened_after {
        Some(after) => format!("{}:{after}", session.client_id),
        None => session.client_id.to_string(),
    };
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(text) {
        r.metadata_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// gRPC metadata key carrying who sent a request a follower forwards to the leader (a
/// compaction, a lease revoke, a member change): `<auth revision>:<user name in hex>`, the
/// [`kv::AuthStamp`] the follower resolved. The leader proposes the entry with it (or checks
/// it, for a configuration change), so that the permission is checked against the state the
/// request applies at, not only the follower's.
pub const AUTH_STAMP_HEADER: &str = "skiff-auth-stamp";
/// Longest user name a stamp header carries, in bytes (a Common Name longer than any user
/// name can be is refused as malformed rather than carried).
const STAMP_USER_BYTES_MAX: usize = 1024;

/// Attaches `stamp` to a request forwarded to the leader.
pub fn set_stamp(md: &mut tonic::metadata::MetadataMap, stamp: &kv::AuthStamp) {
    let hex: String = stamp.user.bytes().map(|b| format!("{b:02x}")).collect();
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(format!("{}:{hex}", stamp.revision)) {
        md.insert(AUTH_STAMP_HEADER, v);
    }
}

/// The stamp of a forwarded request, from its metadata: `None` if absent, an error if
/// garbled.
pub fn stamp_of(md: &tonic::metadata::MetadataMap) -> Result<Option<kv::AuthStamp>, Status> {
    let Some(v) = md.get(AUTH_STAMP_HEADER) else {
        return Ok(None);
    };
    let malformed = || Status::invalid_argument(format!("malformed {AUTH_STAMP_HEADER}"));
    let text = v.to_str().map_err(|_| malformed())?;
    let (revision, hex) = text.split_once(':').ok_or_else(malformed)?;
    let revision = revision.parse::<u64>().map_err(|_| malformed())?;
    if hex.len() % 2 != 0 || hex.len() > 2 * STAMP_USER_BYTES_MAX {
        return Err(malformed());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(malformed)?;
    let user = String::from_utf8(bytes).map_err(|_| malformed())?;
    Ok(Some(kv::AuthStamp { user, revision }))
}

/// `request` with `session` and the sender's `stamp` (if any) attached, to forward it to
/// the leader.
pub fn forwarded<T>(request: T, session: kv::Session, stamp: Option<&kv::AuthStamp>) -> Request<T> {
    let mut r = with_session(request, session);
    if let Some(stamp) = stamp {
        set_stamp(r.metadata_mut(), stamp);
    }
    r
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client of this member: run on the leader wherever it is, retried until the deadline.
    Client,
    /// Forwarded here by a follower: run here once if this member leads, else refused as
    /// "not leader"; the follower retries.
    Peer,
}

/// Where a request ran, with its answer: the state machine's here, the leader's gRPC answer
/// there.
#[derive(Debug, PartialEq, Eq)]
pub enum Reached<H, L> {
    /// On this member, which leads.
    Here(H),
    /// On the leader, over the peer port.
    Leader(L),
}

impl<T> Reached<T, T> {
    /// The answer wherever it ran, for requests answered with the same type here and there.
    pub fn into_answer(self) -> T {
        match self {
            Reached::Here(t) | Reached::Leader(t) => t,
        }
    }
}

/// The retry policy of every request that must reach the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a request may take in all, attempts and pauses together.
    pub timeout: Duration,
    /// Pause between attempts.
    pub pause: Duration,
}

/// How long a request may wait for a leader, a commit or a read confirmation.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// Pause between attempts while no leader is known or it is changing.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: REQUEST_TIMEOUT,
            pause: RETRY_PAUSE,
        }
    }
}

impl RetryPolicy {
    /// Whether a failed attempt may be tried again: the leader was unknown, unreachable, not
    /// the leader any more, or lost the entry to a new leader. A refusal (bad request, too
    /// large, state machine error), a full queue or a passed deadline is final.
    pub fn retryable(status: &Status) -> bool {
        status.code() == Code::Unavailable
            && (is_connection_failure(status)
                || [ERR_NO_LEADER, ERR_NOT_LEADER, ERR_LEADER_CHANGED].contains(&status.message()))
    }
}

/// A failure of the connection to the leader (not an answer from it): tonic's own
/// `Unavailable`, whose message is not one of etcd's.
fn is_connection_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable && !status.message().starts_with("etcdserver:")
}

/// The failure the client is given: a connection failure to the leader says nothing about
/// the request's fate, and is reported as etcd reports an unreachable leader.
fn for_client(status: Status) -> Status {
    if is_connection_failure(&status) {
        Status::unavailable(ERR_NO_LEADER)
    } else {
        status
    }
}

/// Where the next attempt goes.
#[derive(Debug)]
pub enum Route<C> {
    /// This member leads.
    Here,
    /// The leader, through this client.
    Leader(C),
    /// A forwarded request reached a member that does not lead.
    NotLeader,
    /// No leader is known (or it is cut off).
    NoLeader,
}

/// Who leads, as far as this member knows: the replica's status and the peers' clients.
trait Leadership {
    /// A client of the leader's peer port.
    type Client;
    /// Where a request from `origin` goes now.
    fn route(&self, origin: Origin) -> Route<Self::Client>;
}

/// Runs requests on the leader: the replica's status says who leads, the peers' channels
/// reach it. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    node: NodeHandle,
    peers: Arc<Peers>,
    me: NodeId,
    policy: RetryPolicy,
    /// The batched stream that carries key-value writes to the leader.
    pipes: Arc<ForwardPipes>,
}

impl Forwarder {
    /// The forwarder of member `me` of cluster `cluster_id`.
    pub fn new(
        node: NodeHandle,
        peers: Arc<Peers>,
        me: NodeId,
        policy: RetryPolicy,
        cluster_id: u64,
    ) -> Self {
        let pipes = Arc::new(ForwardPipes::new(cluster_id, peers.clone()));
        Forwarder {
            node,
            peers,
            me,
            policy,
            pipes,
        }
    }

    /// Sends an encoded key-value write to the leader this member knows, on the pipe to it
    /// (for [`Forwarder::on_leader`]'s `via`: it fails as a connection failure when the
    /// leader is unknown or changed, and the loop routes again).
    pub fn pipe(
        &self,
        command: Vec<u8>,
        can_answer: bool,
    ) -> impl Future<Output = Result<Forwarded, Status>> + Send + 'static {
        let leader = self.node.status().leader.filter(|&l| l != self.me);
        let pipes = self.pipes.clone();
        async move {
            let leader = leader.ok_or_else(|| Status::unavailable("no leader to forward to"))?;
            pipes.forward(leader, command, can_answer).await
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Runs a request on the leader: `here` when this member leads, `via` with a client of
    /// the leader's peer port otherwise, retried under the policy (see the module docs). A
    /// `via` that forwards a write attaches its session ([`with_session`]); one that does not
    /// must be safe to repeat.
    pub async fn on_leader<H, L, HereFut, ViaFut>(
        &self,
        origin: Origin,
        here: impl FnMut() -> HereFut,
        via: impl FnMut(RaftClient<Channel>) -> ViaFut,
    ) -> Result<Reached<H, L>, Status>
    where
        HereFut: Future<Output = Result<H, Status>>,
        ViaFut: Future<Output = Result<Response<L>, Status>>,
    {
        run_on_leader(self, self.policy, origin, here, via).await
    }
}

impl Leadership for Forwarder {
    type Client = RaftClient<Channel>;

    fn route(&self, origin: Origin) -> Route<Self::Client> {
        let st = self.node.status();
        if st.role == Role::Leader {
            return Route::Here;
        }
        if origin == Origin::Peer {
            return Route::NotLeader;
        }
        match st.leader.filter(|&l| l != self.me) {
            Some(l) => self.peers.client(l).map_or(Route::NoLeader, Route::Leader),
            None => Route::NoLeader,
        }
    }
}

/// The loop itself, over any [`Leadership`] (so that the policy is tested without a cluster).
async fn run_on_leader<C, H, L, HereFut, ViaFut>(
    leadership: &impl Leadership<Client = C>,
    policy: RetryPolicy,
    origin: Origin,
    mut here: impl FnMut() -> HereFut,
    mut via: impl FnMut(C) -> ViaFut,
) -> Result<Reached<H, L>, Status>
where
    HereFut: Future<Output = Result<H, Status>>,
    ViaFut: Future<Output = Result<Response<L>, Status>>,
{
    let deadline = Instant::now() + policy.timeout;
    loop {
        let failure = match leadership.route(origin) {
            Route::Here => match tokio::time::timeout_at(deadline, here()).await {
                Ok(Ok(answer)) => return Ok(Reached::Here(answer)),
                Ok(Err(s)) => s,
                Err(_) => return Err(Status::unavailable(ERR_TIMEOUT)),
            },
            Route::Leader(client) => match tokio::time::timeout_at(deadline, via(client)).await {
                Ok(Ok(answer)) => return Ok(Reached::Leader(answer.into_inner())),
                Ok(Err(s)) => s,
                Err(_) => return Err(Status::unavailable(ERR_TIMEOUT)),
            },
            Route::NotLeader => Status::unavailable(ERR_NOT_LEADER),
            Route::NoLeader => Status::unavailable(ERR_NO_LEADER),
        };
        if origin == Origin::Peer
            || !RetryPolicy::retryable(&failure)
            || Instant::now() + policy.pause >= deadline
        {
            return Err(for_client(failure));
        }
        tracing::debug!(error = %failure.message(), "retrying a request that must reach the leader");
        tokio::time::sleep(policy.pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// Routes from a script; the last one repeats.
    struct Script(RefCell<VecDeque<Route<u32>>>);

    impl Leadership for Script {
        type Client = u32;
        fn route(&self, _origin: Origin) -> Route<u32> {
            let mut s = self.0.borrow_mut();
            if s.len() > 1 {
                return s.pop_front().expect("non-empty");
            }
            match s.front().expect("a script") {
                Route::Here => Route::Here,
                Route::Leader(c) => Route::Leader(*c),
                Route::NotLeader => Route::NotLeader,
                Route::NoLeader => Route::NoLeader,
            }
        }
    }

    /// Runs the loop with scripted routes and answers; returns the result, how many times
    /// each side ran and the (paused) time it took.
    async fn run(
        origin: Origin,
        routes: Vec<Route<u32>>,
        here: Vec<Result<&'static str, Status>>,
        via: Vec<Result<&'static str, Status>>,
    ) -> (
        Result<Reached<&'static str, &'static str>, Status>,
        usize,
        usize,
        Duration,
    ) {
        let policy = RetryPolicy::default();
        let script = Script(RefCell::new(routes.into()));
        let here = RefCell::new(VecDeque::from(here));
        let via = RefCell::new(VecDeque::from(via));
        let (here_runs, via_runs) = (RefCell::new(0), RefCell::new(0));
        let start = Instant::now();
        let r = run_on_leader(
            &script,
            policy,
            origin,
            || {
                *here_runs.borrow_mut() += 1;
                let next = here.borrow_mut().pop_front();
                async move {
                    match next {
                        Some(r) => r,
                        // Out of script: hang (the deadline must end it).
                        None => std::future::pending().await,
                    }
                }
            },
            |_client| {
                *via_runs.borrow_mut() += 1;
                let next = via.borrow_mut().pop_front();
                async move {
                    match next {
                        Some(r) => r.map(Response::new),
                        None => std::future::pending().await,
                    }
                }
            },
        )
        .await;
        (
            r,
            here_runs.into_inner(),
            via_runs.into_inner(),
            start.elapsed(),
        )
    }

    #[test]
    fn the_session_header_round_trips_and_garbage_is_refused() {
        for s in [
            kv::Session::opened(7, 1, 42),
            kv::Session {
                client_id: u64::MAX,
                seq: 1,
                opened_after: None,
            },
        ] {
            let r = with_session((), s);
            assert_eq!(session_of(r.metadata()).expect("parses"), Some(s));
        }
        for bad in ["0", "x", "7:", "7:y", ":3", "-1"] {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert(SESSION_HEADER, bad.parse().expect("ascii"));
            let e = session_of(r.metadata()).expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(
            session_of(Request::new(()).metadata()).expect("absent"),
            None
        );
    }

    #[test]
    fn the_stamp_header_round_trips_and_garbage_is_refused() {
        for user in ["", "alice", "ü ser:with\ncontrol"] {
            let stamp = kv::AuthStamp {
                user: user.into(),
                revision: 17,
            };
            let r = forwarded((), kv::Session::opened(7, 1, 42), Some(&stamp));
            assert_eq!(stamp_of(r.metadata()).expect("parses"), Some(stamp));
        }
        for bad in ["", "7", "x:61", "7:6", "7:zz", "7:ff", ":61"] {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert(AUTH_STAMP_HEADER, bad.parse().expect("ascii"));
            let e = stamp_of(r.metadata()).expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(stamp_of(Request::new(()).metadata()).expect("absent"), None);
    }

    fn unavailable(m: &str) -> Status {
        Status::unavailable(m)
    }

    #[tokio::test(start_paused = true)]
    async fn one_policy_for_every_request_that_must_reach_the_leader() {
        let pause = RETRY_PAUSE;

        // A client's request rides out no leader, an unreachable leader, a leader change and
        // a leader that stepped down, then succeeds: one pause per failed attempt.
        let (r, here, via, took) = run(
            Origin::Client,
            vec![
                Route::NoLeader,
                Route::Leader(1),
                Route::Leader(2),
                Route::Leader(2),
                Route::Here,
            ],
            vec![Ok("applied here")],
            vec![
                Err(unavailable("transport error")),
                Err(unavailable(ERR_LEADER_CHANGED)),
                Err(unavailable(ERR_NOT_LEADER)),
            ],
        )
        .await;
        assert_eq!(r.expect("succeeds"), Reached::Here("applied here"));
        assert_eq!((here, via), (1, 3));
        assert_eq!(took, pause * 4);

        // The leader's answer comes back as the leader's.
        let (r, _, via, _) = run(
            Origin::Client,
            vec![Route::Leader(1)],
            vec![],
            vec![Ok("from the leader")],
        )
        .await;
        assert_eq!(r.expect("succeeds"), Reached::Leader("from the leader"));
        assert_eq!(via, 1);

        // Refusals, a full queue and a passed deadline are final: no second attempt.
        for final_status in [
            Status::invalid_argument("etcdserver: request is too large"),
            Status::resource_exhausted("etcdserver: too many requests"),
            unavailable(ERR_TIMEOUT),
            Status::failed_precondition("etcdserver: requested lease not found"),
        ] {
            let (r, _, via, took) = run(
                Origin::Client,
                vec![Route::Leader(1)],
                vec![],
                vec![Err(final_status.clone())],
            )
            .await;
            let s = r.expect_err("final");
            assert_eq!(
                (s.code(), s.message()),
                (final_status.code(), final_status.message())
            );
            assert_eq!((via, took), (1, Duration::ZERO));
        }

        // A forwarded request runs here once, or is refused at once: the follower retries.
        let (r, here, via, took) = run(
            Origin::Peer,
            vec![Route::Here],
            vec![Err(unavailable(ERR_LEADER_CHANGED))],
            vec![],
        )
        .await;
        assert_eq!(r.expect_err("not retried").message(), ERR_LEADER_CHANGED);
        assert_eq!((here, via, took), (1, 0, Duration::ZERO));
        let (r, here, via, _) = run(Origin::Peer, vec![Route::NotLeader], vec![], vec![]).await;
        let s = r.expect_err("refused");
        assert_eq!((s.code(), s.message()), (Code::Unavailable, ERR_NOT_LEADER));
        assert_eq!((here, via), (0, 0));

        // Retried until the deadline; a leader that stayed unreachable is "no leader".
        let (r, _, via, took) = run(
            Origin::Client,
            vec![Route::Leader(1)],
            vec![],
            (0..1000)
                .map(|_| Err(unavailable("transport error")))
                .collect(),
        )
        .await;
        assert_eq!(r.expect_err("gives up").message(), ERR_NO_LEADER);
        assert!(
            took <= REQUEST_TIMEOUT && took + pause >= REQUEST_TIMEOUT,
            "{took:?}"
        );
        assert_eq!(
            via as u32,
            REQUEST_TIMEOUT.as_millis() as u32 / pause.as_millis() as u32
        );
        let (r, ..) = run(Origin::Client, vec![Route::NoLeader], vec![], vec![]).await;
        assert_eq!(r.expect_err("no leader").message(), ERR_NO_LEADER);

        // An attempt that outlives the deadline is "request timed out" (it may still apply).
        let (r, here, _, took) = run(Origin::Client, vec![Route::Here], vec![], vec![]).await;
        assert_eq!(r.expect_err("timed out").message(), ERR_TIMEOUT);
        assert_eq!((here, took), (1, REQUEST_TIMEOUT));
    }
}
