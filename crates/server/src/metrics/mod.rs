//! A member's metrics, served as Prometheus text on `GET /metrics` (issue 18).
//!
//! Names, types, labels and histogram buckets follow etcd 3.4's wherever the meaning is the
//! same, so that etcd's Grafana dashboard and its standard alerts read a Skiff cluster
//! unchanged (`etcd_server_*`, `etcd_disk_*`, `etcd_network_*`, `etcd_mvcc_*`, `grpc_server_*`).
//! What etcd has no name for is under `skiff_`: the leader's view of each follower, snapshot
//! transfers, ReadIndex batches, the apply queue and the session table.
//!
//! Counters and histograms are updated where the event happens (the node task, the apply
//! task, the WAL, the state machine's commits, the peer streams, the gRPC layer); gauges that
//! are a reading of state (leader, indexes, sizes, followers) are set when a scrape asks, from
//! what the node task publishes, so nothing is computed for metrics nobody reads.

pub mod grpc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use raft::progress::{FollowerView, ProgressState};

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;
/// Label pairs whose values are all known in advance (no allocation per update).
pub type StaticLabels = Vec<(&'static str, &'static str)>;

/// Builds histograms with fixed buckets for a family (one per label set).
#[derive(Clone)]
pub struct Buckets {
    /// Upper bound of the first bucket, in seconds.
    start: f64,
    /// Each bucket's bound is the previous one's times this.
    factor: f64,
    /// Buckets before +Inf.
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

/// etcd's disk histograms: 1 ms to 8 s (`prometheus.ExponentialBuckets(0.001, 2, 14)`).
const DISK_BUCKETS: Buckets = Buckets {
    start: 0.001,
    factor: 2.0,
    count: 14,
};
/// etcd's peer round-trip histogram: 0.1 ms to 3.3 s (`ExponentialBuckets(0.0001, 2, 16)`).
const RTT_BUCKETS: Buckets = Buckets {
    start: 0.0001,
    factor: 2.0,
    count: 16,
};

/// Buckets of [`LatencyCounts`]: upper bounds 1 ms doubling 14 times, then +Inf.
pub const LATENCY_BUCKETS: usize = 15;
const _: () = assert!(LATENCY_BUCKETS == DISK_BUCKETS.count as usize + 1);

/// Cumulative counts of durations in `DISK_BUCKETS`' buckets (the last is +Inf), readable
/// as numbers (the Prometheus histogram's are not), so that the dashboard can show recent
/// percentiles from the difference of two readings.
#[derive(Default)]
pub struct LatencyCounts([AtomicU64; LATENCY_BUCKETS]);

impl LatencyCounts {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let mut bound = DISK_BUCKETS.start;
        for b in &self.0[..LATENCY_BUCKETS - 1] {
            if secs <= bound {
                b.fetch_add(1, Ordering::Relaxed);
                return;
            }
            bound *= DISK_BUCKETS.factor;
        }
        self.0[LATENCY_BUCKETS - 1].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts per bucket (not cumulative across buckets).
    pub fn read(&self) -> Vec<u64> {
        self.0.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }
}

/// The upper bound, in milliseconds, of the bucket holding the `q` quantile of the durations
/// counted between two readings of [`LatencyCounts::read`]; `None` if none were; infinity if
/// it falls in the last bucket.
pub fn quantile_ms(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let delta: Vec<u64> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    // Peers' readings: saturate rather than trust them not to overflow.
    let total: u64 = delta.iter().fold(0u64, |a, n| a.saturating_add(*n));
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen: u64 = 0;
    let mut bound = DISK_BUCKETS.start * 1000.0;
    for (i, n) in delta.iter().enumerate() {
        seen = seen.saturating_add(*n);
        if seen >= want {
            return Some(if i + 1 == delta.len() {
                f64::INFINITY
            } else {
                bound
            });
        }
        bound *= DISK_BUCKETS.factor;
    }
    Some(f64::INFINITY)
}

/// What the node task publishes for scrapes (and the dashboard): the leader's view of its
/// followers, with its own last index to measure lag against. Empty off the leader.
#[derive(Clone, Debug, Default)]
pub struct ReplicationView {
    /// The leader's last log index when the view was taken.
    pub last_index: u64,
    /// One per follower, by id.
    pub followers: Vec<FollowerView>,
}

/// Every metric of one member. Cheap to update from any task: counters, gauges and
/// histograms are atomics (histograms take a short lock).
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`: 1 when a leader is known.
    pub has_leader: Gauge,
    /// `etcd_server_is_leader`: 1 on the leader.
    pub is_leader: Gauge,
    /// `etcd_server_leader_changes_seen_total`: leaders this member has seen take over.
    pub leader_changes: Counter,
    /// `etcd_server_proposals_committed_total` (a gauge in etcd): the commit index.
    pub proposals_committed: Gauge,
    /// `etcd_server_proposals_applied_total` (a gauge in etcd): the applied index.
    pub proposals_applied: Gauge,
    /// `etcd_server_proposals_pending`: proposals of this member waiting to be applied.
    pub proposals_pending: Gauge,
    /// `etcd_server_proposals_failed_total`: proposals refused or lost to a leader change.
    pub proposals_failed: Counter,
    /// `etcd_server_slow_apply_total`: requests whose apply took longer than
    /// [`kv::SLOW_APPLY`] (each request timed on its own, as etcd does).
    pub slow_apply: Counter,
    /// `etcd_disk_wal_fsync_duration_seconds`: each log append's `fdatasync`.
    pub wal_fsync: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: each state machine commit.
    pub backend_commit: Histogram,
    /// `skiff_apply_duration_seconds`: each batch of committed entries applied.
    pub apply: Histogram,
    /// The WAL fsync durations again, for the dashboard's recent percentiles.
    pub fsync_counts: LatencyCounts,
    /// The apply durations again, for the dashboard.
    pub apply_counts: LatencyCounts,
    /// `etcd_network_peer_round_trip_time_seconds{To}`.
    pub peer_rtt: Family<Labels, Histogram, Buckets>,
    /// `etcd_network_peer_sent_bytes_total{To}`.
    pub peer_sent_bytes: Family<Labels, Counter>,
    /// `etcd_network_peer_received_bytes_total{From}`.
    pub peer_received_bytes: Family<Labels, Counter>,
    /// `etcd_mvcc_db_total_size_in_bytes`.
    pub db_size: Gauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`.
    pub db_size_in_use: Gauge,
    /// `etcd_debugging_mvcc_keys_total`: keys with a live or kept revision.
    pub keys: Gauge,
    /// `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`.
    pub grpc_started: Family<StaticLabels, Counter>,
    /// `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
    pub grpc_handled: Family<StaticLabels, Counter>,
    /// The two families' counters by call, for the gRPC layer's hot path (see [`grpc`]).
    pub grpc_calls: grpc::CallCounters,
    /// `skiff_raft_term`.
    pub term: Gauge,
    /// `skiff_follower_match_index{follower}` (leader only).
    pub follower_match: Family<Labels, Gauge>,
    /// `skiff_follower_lag_entries{follower}`: leader's last index minus the follower's match.
    pub follower_lag: Family<Labels, Gauge>,
    /// `skiff_follower_inflight_appends{follower}`.
    pub follower_inflight: Family<Labels, Gauge>,
    /// `skiff_follower_inflight_bytes{follower}`.
    pub follower_inflight_bytes: Family<Labels, Gauge>,
    /// `skiff_follower_lag_bytes{follower}`: bytes of the leader's entries after the
    /// follower's match index.
    pub follower_lag_bytes: Family<Labels, Gauge>,
    /// `skiff_follower_state{follower,state}`: 1 for the follower's flow-control state.
    pub follower_state: Family<Labels, Gauge>,
    /// `skiff_snapshot_sent_bytes_total`: snapshot chunk bytes sent to followers.
    pub snapshot_sent_bytes: Counter,
    /// `skiff_snapshots_sent_total`: snapshot transfers started (first chunks sent).
    pub snapshots_sent: Counter,
    /// `skiff_snapshots_installed_total`: snapshots from the leader installed here.
    pub snapshots_installed: Counter,
    /// `skiff_snapshot_installed_bytes_total`.
    pub snapshot_installed_bytes: Counter,
    /// `skiff_snapshots_taken_total`: snapshots of this member's state machine written.
    pub snapshots_taken: Counter,
    /// `skiff_read_index_requests_total`: linearizable reads asked of the core.
    pub read_index_requests: Counter,
    /// `skiff_read_index_rounds_total`: heartbeat rounds the core started to confirm reads
    /// (requests that join an open round share it; lease reads take none).
    pub read_index_rounds: Counter,
    /// `skiff_read_index_batch_size`: reads released together in one output batch of the
    /// core (one confirmation round or more).
    pub read_index_batch: Histogram,
    /// `skiff_apply_queue_depth`: jobs waiting for the apply task.
    pub apply_queue: Gauge,
    /// `skiff_sessions`: client sessions kept for exactly-once writes.
    pub sessions: Gauge,
    /// `skiff_disk_free_bytes`: bytes left to write on the data dir's file system (see
    /// `api::disk_space`).
    pub disk_free: Gauge,
    /// The leader's view of its followers, as the node task last published it.
    replication: Mutex<ReplicationView>,
    /// Held while a scrape refreshes the follower series and encodes, so that two scrapes at
    /// once never encode between another's clearing and refilling.
    scrape: Mutex<()>,
}

impl Metrics {
    /// All metrics of member `member_id`, registered.
    pub fn new(member_id: u64) -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            slow_apply: Counter::default(),
            wal_fsync: DISK_BUCKETS.new_metric(),
            backend_commit: DISK_BUCKETS.new_metric(),
            apply: DISK_BUCKETS.new_metric(),
            fsync_counts: LatencyCounts::default(),
            apply_counts: LatencyCounts::default(),
            peer_rtt: Family::new_with_constructor(RTT_BUCKETS),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            keys: Gauge::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_calls: grpc::CallCounters::default(),
            term: Gauge::default(),
            follower_match: Family::default(),
            follower_lag: Family::default(),
            follower_inflight: Family::default(),
            follower_inflight_bytes: Family::default(),
            follower_lag_bytes: Family::default(),
            follower_state: Family::default(),
            snapshot_sent_bytes: Counter::default(),
            snapshots_sent: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_installed_bytes: Counter::default(),
            snapshots_taken: Counter::default(),
            read_index_requests: Counter::default(),
            read_index_rounds: Counter::default(),
            read_index_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_queue: Gauge::default(),
            sessions: Gauge::default(),
            disk_free: Gauge::default(),
            replication: Mutex::new(ReplicationView::default()),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        // prometheus-client adds `_total` to counters' names itself.
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            m.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            m.is_leader.clone(),
        );
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            m.leader_changes.clone(),
        );
        r.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed",
            m.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied",
            m.proposals_applied.clone(),
        );
        r.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit",
            m.proposals_pending.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            m.proposals_failed.clone(),
        );
        r.register(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk)",
            m.slow_apply.clone(),
        );
        let id: Labels = vec![("server_id", format!("{member_id:x}"))];
        let server_id = Family::<Labels, Gauge>::default();
        server_id.get_or_create(&id).set(1);
        r.register(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID",
            server_id,
        );
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            m.wal_fsync.clone(),
        );
        r.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend",
            m.backend_commit.clone(),
        );
        r.register(
            "skiff_apply_duration_seconds",
            "The latency distributions of applying a batch of committed entries",
            m.apply.clone(),
        );
        r.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            m.peer_rtt.clone(),
        );
        r.register(
            "etcd_network_peer_sent_bytes",
            "The total number of bytes sent to peers",
            m.peer_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_received_bytes",
            "The total number of bytes received from peers",
            m.peer_received_bytes.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            m.db_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes",
            m.db_size_in_use.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys",
            m.keys.clone(),
        );
        r.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            m.grpc_started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.grpc_handled.clone(),
        );
        r.register("skiff_raft_term", "Current Raft term", m.term.clone());
        r.register(
            "skiff_follower_match_index",
            "Leader only: highest log index known replicated on each follower",
            m.follower_match.clone(),
        );
        r.register(
            "skiff_follower_lag_entries",
            "Leader only: entries each follower is behind the leader's last index",
            m.follower_lag.clone(),
        );
        r.register(
            "skiff_follower_inflight_appends",
            "Leader only: appends sent to each follower and not yet acknowledged",
            m.follower_inflight.clone(),
        );
        r.register(
            "skiff_follower_inflight_bytes",
            "Leader only: entry bytes of the appends in flight to each follower",
            m.follower_inflight_bytes.clone(),
        );
        r.register(
            "skiff_follower_lag_bytes",
            "Leader only: bytes of the leader's log entries each follower has yet to match",
            m.follower_lag_bytes.clone(),
        );
        r.register(
            "skiff_follower_state",
            "Leader only: 1 for each follower's flow-control state (probe, replicate, snapshot)",
            m.follower_state.clone(),
        );
        r.register(
            "skiff_snapshot_sent_bytes",
            "Snapshot bytes sent to followers in InstallSnapshot chunks",
            m.snapshot_sent_bytes.clone(),
        );
        r.register(
            "skiff_snapshots_sent",
            "Snapshot transfers to followers started (first chunk sent)",
            m.snapshots_sent.clone(),
        );
        r.register(
            "skiff_snapshots_installed",
            "Snapshots received from the leader and installed",
            m.snapshots_installed.clone(),
        );
        r.register(
            "skiff_snapshot_installed_bytes",
            "Bytes of the snapshots installed from the leader",
            m.snapshot_installed_bytes.clone(),
        );
        r.register(
            "skiff_snapshots_taken",
            "Snapshots of this member's state machine written (and the log compacted)",
            m.snapshots_taken.clone(),
        );
        r.register(
            "skiff_read_index_requests",
            "Linearizable reads asked of the Raft core (ReadIndex or lease)",
            m.read_index_requests.clone(),
        );
        r.register(
            "skiff_read_index_rounds",
            "Heartbeat rounds started to confirm leadership for reads (ReadIndex); reads asked together share one",
            m.read_index_rounds.clone(),
        );
        r.register(
            "skiff_read_index_batch_size",
            "Reads released together in one output batch of the Raft core",
            m.read_index_batch.clone(),
        );
        r.register(
            "skiff_apply_queue_depth",
            "Batches of committed entries waiting for the apply task",
            m.apply_queue.clone(),
        );
        r.register(
            "skiff_sessions",
            "Client sessions kept for exactly-once writes",
            m.sessions.clone(),
        );
        r.register(
            "skiff_disk_free_bytes",
            "Bytes left to write on the file system of the data dir",
            m.disk_free.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Records one WAL append's fsync.
    pub fn observe_fsync(&self, d: Duration) {
        self.wal_fsync.observe(seconds(d));
        self.fsync_counts.observe(d);
    }

    /// Records one batch of `entries` applied in `d`, and the state machine's count of slow
    /// requests ([`kv::Store::slow_applies`]) after it.
    pub fn observe_apply(&self, d: Duration, slow_applies: u64) {
        self.apply.observe(seconds(d));
        self.apply_counts.observe(d);
        let counted = self.slow_apply.get();
        if slow_applies > counted {
            self.slow_apply.inc_by(slow_applies - counted);
        }
    }

    /// The counter's value (for the dashboard).
    pub fn proposals_failed_total(&self) -> u64 {
        self.proposals_failed.get()
    }

    /// The counter's value (for the dashboard).
    pub fn leader_changes_total(&self) -> u64 {
        self.leader_changes.get()
    }

    /// Records a change of leader seen by this member (etcd counts each new leader).
    pub fn leader_seen(&self) {
        self.leader_changes.inc();
    }

    /// Replaces the leader's view of its followers (the node task calls this, throttled).
    pub fn publish_replication(&self, view: ReplicationView) {
        *self.replication.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// The leader's view of its followers, as last published (empty off the leader).
    pub fn replication(&self) -> ReplicationView {
        self.replication
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the follower families from the published view: series of followers that left (or
    /// of every follower, off the leader) disappear rather than go stale.
    fn refresh_followers(&self) {
        let view = self.replication();
        for f in [
            &self.follower_match,
            &self.follower_lag,
            &self.follower_inflight,
            &self.follower_inflight_bytes,
            &self.follower_lag_bytes,
            &self.follower_state,
        ] {
            f.clear();
        }
        for v in &view.followers {
            let who: Labels = vec![("follower", format!("{:x}", v.id.get()))];
            let set = |f: &Family<Labels, Gauge>, x: u64| {
                f.get_or_create(&who)
                    .set(i64::try_from(x).unwrap_or(i64::MAX));
            };
            set(&self.follower_match, v.matched.0);
            set(
                &self.follower_lag,
                view.last_index.saturating_sub(v.matched.0),
            );
            set(&self.follower_inflight, v.inflight_msgs as u64);
            set(&self.follower_inflight_bytes, v.inflight_bytes);
            set(&self.follower_lag_bytes, v.lag_bytes);
            let mut labels = who.clone();
            labels.push(("state", state_name(v.state).to_string()));
            self.follower_state.get_or_create(&labels).set(1);
        }
    }

    /// The Prometheus text of every metric (OpenMetrics flavour, which Prometheus reads),
    /// after the readings of state were refreshed by the caller.
    pub fn encode(&self) -> String {
        let _one_scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_followers();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `GET /metrics`'s content type for [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A flow-control state's name, as the metrics and the dashboard show it.
pub fn state_name(s: ProgressState) -> &'static str {
    match s {
        ProgressState::Probe => "probe",
        ProgressState::Replicate => "replicate",
        ProgressState::Snapshot => "snapshot",
    }
}

/// Seconds as a histogram observation.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Labels naming a peer as etcd does (`To` or `From`, the member id in hex).
pub fn peer_label(key: &'static str, id: u64) -> Labels {
    vec![(key, format!("{id:x}"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow-apply counter follows the state machine's per-request count, whatever the
    /// batches: a batch of one slow request among fast ones counts one.
    #[test]
    fn slow_applies_count_requests_not_batches() {
        let m = Metrics::new(1);
        m.observe_apply(Duration::from_millis(150), 0);
        assert_eq!(
            m.slow_apply.get(),
            0,
            "a long batch of fast requests is not slow"
        );
        m.observe_apply(Duration::from_millis(120), 1);
        m.observe_apply(Duration::from_millis(400), 3);
        assert_eq!(m.slow_apply.get(), 3);
        m.observe_apply(Duration::from_millis(1), 3);
        assert_eq!(m.slow_apply.get(), 3, "nothing new");
    }

    #[test]
    fn recent_quantiles_come_from_the_difference_of_two_readings() {
        let c = LatencyCounts::default();
        for _ in 0..98 {
            c.observe(Duration::from_micros(500)); // <= 1 ms
        }
        let before = c.read();
        assert_eq!(quantile_ms(&before, &c.read(), 0.99), None, "nothing new");
        for _ in 0..99 {
            c.observe(Duration::from_micros(1500)); // <= 2 ms
        }
        c.observe(Duration::from_millis(30)); // <= 32 ms
        let after = c.read();
        assert_eq!(quantile_ms(&before, &after, 0.99), Some(2.0));
        assert_eq!(quantile_ms(&before, &after, 1.0), Some(32.0));
        c.observe(Duration::from_secs(60));
        assert_eq!(quantile_ms(&after, &c.read(), 0.99), Some(f64::INFINITY));
    }
}
