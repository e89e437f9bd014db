//! `GET /dashboard`: a live picture of the Raft group, served by every member (issue 18).
//!
//! ```text
//!   browser --GET /dashboard--------> the page (one file in the binary; no CDN, no build)
//!   browser --GET /dashboard/events-> server-sent events, one JSON state every 250 ms
//!                                        ^
//!   hub task (one per member, idle without viewers): every 250 ms asks each peer for its
//!   MemberState over the peer port (the leader's answer carries its view of each follower),
//!   adds its own, and publishes one JSON document that every open stream sends
//! ```
//!
//! A member that cannot reach a peer still shows its own view and marks the peer unreachable
//! with the reason. Viewers cost a watch receiver each, not a poll: the hub polls once for all
//! of them, and at most [`VIEWERS_MAX`] streams are open at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Status;

use super::Api;
use crate::metrics::{quantile_ms, state_name};
use crate::pb::skiff::raft::v1 as pb;

/// How often the hub publishes a state (about 4 updates a second).
pub const PUBLISH_PERIOD: Duration = Duration::from_millis(250);
/// Dashboard streams open at once, at most; more are refused with 503.
pub const VIEWERS_MAX: usize = 64;
/// Readings kept per member for recent percentiles: the window is this many periods (1 s).
const WINDOW_PERIODS: usize = 4;

/// Recent bucket readings (WAL fsync, apply) per member, oldest first, for percentiles over
/// the last [`WINDOW_PERIODS`] periods.
type Readings = BTreeMap<u64, VecDeque<(Vec<u64>, Vec<u64>)>>;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// The latest state document, shared by every open stream.
pub struct Hub {
    /// The latest document (JSON); its receivers are the open streams.
    tx: watch::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: watch::channel(Arc::from("{}")).0,
        }
    }
}

impl Api {
    /// This member's view of itself, and on the leader of its followers (the `MemberState`
    /// peer call answers with it; the dashboard shows it).
    pub fn own_state(&self) -> pb::MemberState {
        let node = &self.inner.node;
        let st = node.status();
        let metrics = node.metrics();
        let membership = node.membership();
        let me = self.inner.member_id;
        let role = match st.role {
            raft::Role::Leader => "leader",
            raft::Role::Candidate | raft::Role::PreCandidate => "candidate",
            _ => "follower",
        };
        let replication = metrics.replication();
        // Who this member should hear from and has not, within an election timeout: the
        // leader hears from every follower, a follower from its leader (followers do not talk
        // to each other), a member without a leader from anyone.
        let election = self.inner.members.election;
        let expected: Vec<u64> = match (st.role, st.leader) {
            (raft::Role::Leader, _) | (_, None) => self
                .inner
                .members
                .peers
                .ids()
                .into_iter()
                .map(|id| id.get())
                .collect(),
            (_, Some(leader)) => vec![leader.get()],
        };
        let silent_peers = expected
            .into_iter()
            .filter(|id| {
                self.inner
                    .removal
                    .last_heard(*id)
                    .is_none_or(|t| t.elapsed() > election)
            })
            .collect();
        let ids = |s: &std::collections::BTreeSet<raft::NodeId>| -> Vec<u64> {
            s.iter().map(|id| id.get()).collect()
        };
        pb::MemberState {
            id: me,
            name: self.inner.members.me.name.clone(),
            role: role.to_string(),
            term: st.term,
            leader: st.leader.map_or(0, |l| l.get()),
            commit: st.commit,
            applied: st.applied,
            last_index: st.last,
            learner: membership
                .learners
                .iter()
                .any(|l| l.get() == self.inner.member_id),
            db_size: node.kv.file_size_recent().unwrap_or(0),
            alarms: node
                .kv
                .alarms()
                .iter()
                .map(|a| format!("{:?}@{:x}", a.alarm, a.member_id))
                .collect(),
            followers: replication
                .followers
                .iter()
                .map(|f| pb::FollowerState {
                    id: f.id.get(),
                    learner: f.learner,
                    matched: f.matched.0,
                    next: f.next.0,
                    state: state_name(f.state).to_string(),
                    inflight: f.inflight_msgs as u64,
                    inflight_bytes: f.inflight_bytes,
                    snapshot_size: f.snapshot.map_or(0, |s| s.0),
                    snapshot_acked: f.snapshot.map_or(0, |s| s.1),
                    recent_active: f.recent_active,
                    lag: replication.last_index.saturating_sub(f.matched.0),
                    lag_bytes: f.lag_bytes,
                })
                .collect(),
            silent_peers,
            proposals_failed: metrics.proposals_failed_total(),
            leader_changes: metrics.leader_changes_total(),
            fsync_buckets: metrics.fsync_counts.read(),
            apply_buckets: metrics.apply_counts.read(),
            voters: ids(&membership.voters),
            voters_outgoing: ids(&membership.voters_outgoing),
            learners: ids(&membership.learners),
            cluster_id: self.inner.cluster_id,
        }
    }

    /// Answers a peer's `MemberState` call.
    pub(super) fn peer_member_state(
        &self,
        r: &pb::MemberStateRequest,
    ) -> Result<pb::MemberState, Status> {
        if r.cluster_id != self.inner.cluster_id {
            return Err(Status::failed_precondition(format!(
                "asked by cluster {:#x}, this is cluster {:#x}",
                r.cluster_id, self.inner.cluster_id
            )));
        }
        Ok(self.own_state())
    }

    /// Starts the hub task (see the module docs).
    pub fn start_dashboard(&self) -> tokio::task::JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move { api.hub_loop().await })
    }

    async fn hub_loop(self) {
        let mut tick = tokio::time::interval(PUBLISH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut history = Readings::new();
        let started = Instant::now();
        loop {
            tick.tick().await;
            if self.inner.dashboard.tx.receiver_count() == 0 {
                history.clear();
                continue;
            }
            let doc = self.cluster_view(&mut history, started).await;
            self.inner
                .dashboard
                .tx
                .send_replace(Arc::from(doc.to_string()));
        }
    }

    /// Asks every peer for its state (in parallel, each bounded by the period) and builds the
    /// document the page renders.
    async fn cluster_view(&self, history: &mut Readings, started: Instant) -> Value {
        let peers = &self.inner.members.peers;
        let me = self.inner.member_id;
        let mut asks = tokio::task::JoinSet::new();
        for id in peers.ids() {
            let client = peers.client(id);
            let req = pb::MemberStateRequest {
                cluster_id: self.inner.cluster_id,
                from: me,
            };
            asks.spawn(async move {
                let answer = match client {
                    None => Err("not connected (no address known, or cut off)".to_string()),
                    Some(mut c) => {
                        match tokio::time::timeout(PUBLISH_PERIOD, c.member_state(req)).await {
                            Ok(Ok(r)) => Ok(r.into_inner()),
                            Ok(Err(s)) => Err(s.message().to_string()),
                            Err(_) => Err(format!(
                                "no answer within {} ms",
                                PUBLISH_PERIOD.as_millis()
                            )),
                        }
                    }
                };
                (id.get(), answer)
            });
        }
        let mut answers: Vec<(u64, Result<pb::MemberState, String>)> = asks.join_all().await;
        answers.push((me, Ok(self.own_state())));
        answers.sort_by_key(|(id, _)| *id);
        // A redb read: off the runtime (a defragmentation holds the database for a while).
        let names: BTreeMap<u64, String> = self
            .read_kv(|kv| kv.members())
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.id, m.name))
            .collect();
        // Members that left (or are unreachable now) keep no readings.
        history.retain(|id, _| answers.iter().any(|(a, r)| a == id && r.is_ok()));
        let mut members = Vec::new();
        for (id, answer) in &answers {
            let name = names.get(id).cloned().unwrap_or_default();
            let m = match answer {
                Ok(s) => {
                    let h = history.entry(*id).or_default();
                    h.push_back((s.fsync_buckets.clone(), s.apply_buckets.clone()));
                    while h.len() > WINDOW_PERIODS + 1 {
                        h.pop_front();
                    }
                    let (old_f, old_a) = h.front().cloned().unwrap_or_default();
                    let p99 = |before: &[u64], after: &[u64]| {
                        quantile_ms(before, after, 0.99)
                            .map(|v| if v.is_finite() { v } else { -1.0 })
                    };
                    json!({
                        "id": hex(*id),
                        "name": if s.name.is_empty() { name } else { s.name.clone() },
                        "reachable": true,
                        "self": *id == me,
                        "role": s.role,
                        "learner": s.learner,
                        "term": s.term,
                        "leader": (s.leader != 0).then(|| hex(s.leader)),
                        "commit": s.commit,
                        "applied": s.applied,
                        "last_index": s.last_index,
                        "db_size": s.db_size,
                        "alarms": s.alarms,
                        "silent_peers": s.silent_peers.iter().map(|p| hex(*p)).collect::<Vec<_>>(),
                        "proposals_failed": s.proposals_failed,
                        "leader_changes": s.leader_changes,
                        "fsync_p99_ms": p99(&old_f, &s.fsync_buckets),
                        "apply_p99_ms": p99(&old_a, &s.apply_buckets),
                        "last_contact_ms": if *id == me { None } else {
                            self.inner.removal.last_heard(*id).map(|t| t.elapsed().as_millis() as u64)
                        },
                        "followers": s.followers.iter().map(|f| json!({
                            "id": hex(f.id),
                            "learner": f.learner,
                            "matched": f.matched,
                            "next": f.next,
                            "state": f.state,
                            "inflight": f.inflight,
                            "inflight_bytes": f.inflight_bytes,
                            "snapshot_size": f.snapshot_size,
                            "snapshot_acked": f.snapshot_acked,
                            "recent_active": f.recent_active,
                            "lag": f.lag,
                            "lag_bytes": f.lag_bytes,
                        })).collect::<Vec<_>>(),
                        "membership": {
                            "voters": s.voters.iter().map(|v| hex(*v)).collect::<Vec<_>>(),
                            "outgoing": s.voters_outgoing.iter().map(|v| hex(*v)).collect::<Vec<_>>(),
                            "learners": s.learners.iter().map(|v| hex(*v)).collect::<Vec<_>>(),
                        },
                    })
                }
                Err(why) => {
                    history.remove(id);
                    json!({
                        "id": hex(*id),
                        "name": name,
                        "reachable": false,
                        "error": why,
                        "last_contact_ms": self.inner.removal.last_heard(*id).map(|t| t.elapsed().as_millis() as u64),
                    })
                }
            };
            members.push(m);
        }
        json!({
            "served_by": hex(me),
            "cluster_id": hex(self.inner.cluster_id),
            "uptime_ms": started.elapsed().as_millis() as u64,
            "members": members,
        })
    }

    /// `GET /dashboard/events`: the state documents as server-sent events.
    pub fn dashboard_events(&self) -> Response {
        let hub = &self.inner.dashboard;
        if hub.tx.receiver_count() >= VIEWERS_MAX {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("too many dashboards open (at most {VIEWERS_MAX})"),
            )
                .into_response();
        }
        let mut rx = hub.tx.subscribe();
        // The first document waits for the hub's first poll (it had no viewer until now).
        rx.mark_unchanged();
        let stream = tokio_stream::wrappers::WatchStream::from_changes(rx).map(|doc| {
            Ok::<_, std::convert::Infallible>(Event::default().event("state").data(&*doc))
        });
        Sse::new(stream).into_response()
    }
}

/// `GET /dashboard`: the page.
pub fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// A member id as the dashboard (and etcdctl) prints it.
fn hex(id: u64) -> String {
    format!("{id:x}")
}
