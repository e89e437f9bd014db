//! Wiring: open the data dir, build the node, bind the client and peer ports, run until a fault
//! or shutdown.
//!
//! ```text
//!   <data-dir>/raft/     Raft log, hard state, membership, identity (crates/storage)
//!   <data-dir>/kv.redb   MVCC state machine (crates/kv); its applied index says where to resume
//! ```
//!
//! At start: a snapshot file newer than the log start means a crash interrupted installing or
//! taking it, and the install is finished; a state machine behind the log start is restored
//! from the snapshot; the core is told about the snapshot (to send it to followers) and about a
//! half-received one (to resume it).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::{Index, Membership, RawNode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::api::{Api, REQUEST_BYTES_MAX};
use crate::cluster::ClusterSpec;
use crate::error::ServerError;
use crate::node::{CurrentSnapshot, NodeTask, INBOUND_QUEUE_MAX};
use crate::pb::etcdserverpb::{
    kv_server::KvServer, lease_server::LeaseServer, maintenance_server::MaintenanceServer,
    watch_server::WatchServer,
};
use crate::pb::skiff::raft::v1::raft_server::RaftServer;
use crate::transport::{Faults, Peers, RaftService, PEER_MSG_BYTES_MAX};

/// gRPC framing allowance on top of the request limit (etcd's `grpcOverheadBytes`), so that an
/// oversized request reaches the server and gets etcd's "request is too large" message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Largest Raft entry: a maximal request plus the command encoding.
const ENTRY_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// Everything `skiff serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This member's name in the cluster definition.
    pub name: String,
    /// Where the Raft log and state machine live.
    pub data_dir: PathBuf,
    /// Address of the etcd API.
    pub listen_client: SocketAddr,
    /// Address of the peer port.
    pub listen_peer: SocketAddr,
    /// The cluster definition.
    pub cluster: ClusterSpec,
    /// `--initial-cluster-state new` (true) or `existing` (false).
    pub new_cluster: bool,
    /// Leader heartbeat interval; also the tick of the Raft core.
    pub heartbeat: Duration,
    /// Minimum election timeout.
    pub election: Duration,
    /// Serve linearizable reads from the leader's lease (no heartbeat round per read batch)
    /// instead of ReadIndex. Assumes bounded clock drift between members (see
    /// `raft::ReadOnlyOption::LeaseBased`); off by default.
    pub lease_reads: bool,
    /// Automatic compaction of the key-value history (etcd's `--auto-compaction-*`).
    pub auto_compaction: crate::api::compactor::AutoCompaction,
    /// Take a snapshot and compact the log after this many applied entries (etcd's
    /// `--snapshot-count`).
    pub snapshot_count: u64,
    /// Testing only: a file naming members (whitespace-separated) whose traffic with this one is
    /// dropped, re-read every [`FAULT_FILE_POLL`]; missing means none.
    pub fault_file: Option<PathBuf>,
}

/// How often the fault file is re-read.
pub const FAULT_FILE_POLL: Duration = Duration::from_millis(100);

impl ServerConfig {
    /// Checks the settings against each other; the message names the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.member_by_name(&self.name).is_none() {
            return Err(format!(
                "--name {:?} is not a member of --initial-cluster",
                self.name
            ));
        }
        if self.heartbeat.is_zero() {
            return Err("--heartbeat-interval must be at least 1 ms".into());
        }
        if self.election < self.heartbeat * 5 {
            return Err(format!(
                "--election-timeout ({} ms) must be at least 5 times --heartbeat-interval ({} ms)",
                self.election.as_millis(),
                self.heartbeat.as_millis()
            ));
        }
        if self.snapshot_count == 0 {
            return Err("--snapshot-count must be at least 1".into());
        }
        if self.election > Duration::from_secs(50) {
            return Err("--election-timeout must be at most 50000 ms".into());
        }
        Ok(())
    }
}

/// Runs a member until `shutdown` completes (Ok) or something fails (Err).
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let spec = &config.cluster;
    let me = spec
        .member_by_name(&config.name)
        .ok_or_else(|| ServerError::Config("member vanished".into()))?
        .clone();
    let cluster_id = spec.cluster_id;
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServerError::Io {
        what: format!("create data dir {}", config.data_dir.display()),
        error,
    })?;

    // The durable log, checked to belong to this cluster and member.
    let identity = storage::Identity {
        cluster_id,
        node_id: me.id,
    };
    let (mut log, recovered) = storage::Store::open(
        &config.data_dir.join("raft"),
        storage::Options::new(identity),
    )?;
    if log.membership().voters.is_empty() {
        if !config.new_cluster && recovered.created {
            return Err(ServerError::Unsupported(
                "--initial-cluster-state existing with an empty data dir (joining a running cluster)"
                    .into(),
            ));
        }
        log.set_membership(&Membership::new(spec.members.keys().copied()))?;
    }

    // The state machine; entries it has not applied are replayed from the log.
    let kv_path = config.data_dir.join("kv.redb");
    let kv = Arc::new(kv::Store::open(
        &kv_path,
        kv::Options {
            // The Raft log is durable on its own; a crash replays what the state machine lost.
            durability: kv::Durability::Batched {
                commits_per_sync: 64,
            },
            sessions_max: crate::api::SESSIONS_MAX,
        },
    )?);
    let snapshot = recover_snapshot(&mut log, &kv)?;
    let applied = kv.applied_index()?;
    if applied > log.last_index().0 {
        return Err(ServerError::Config(format!(
            "state machine applied index {applied} is past the raft log's last index {}: \
             the data dir is inconsistent",
            log.last_index()
        )));
    }
    let state = storage::initial_state(&log, Index(applied))?;
    let mut raw = RawNode::new(raft_config(&config, me.id, seed()), state)?;
    if let Some(meta) = &snapshot {
        raw.compact(meta.clone()).map_err(|e| {
            ServerError::Invariant(format!(
                "the core refused the snapshot it starts from: {e:?}"
            ))
        })?;
    }
    if let Some(staged) = log.staged() {
        let meta = raft::SnapshotMeta {
            last: staged.meta.last,
            membership: staged.meta.membership.clone(),
            size_bytes: staged.total_bytes,
        };
        raw.resume_staged_snapshot(meta, staged.received_bytes);
    }
    tracing::info!(
        name = %me.name, id = me.id.get(), cluster = format!("{cluster_id:#x}"),
        applied, last = log.last_index().0, "starting member"
    );

    let client_listener = bind(config.listen_client, "client").await?;
    let peer_listener = bind(config.listen_peer, "peer").await?;

    let faults = Arc::new(Faults::default());
    if let Some(path) = config.fault_file.clone() {
        tokio::spawn(watch_fault_file(path, spec.clone(), faults.clone()));
    }
    let peers = Arc::new(
        Peers::start(
            cluster_id,
            spec.members
                .values()
                .filter(|m| m.id != me.id)
                .map(|m| (m.id, m.peer_url.clone())),
            faults.clone(),
        )
        .map_err(ServerError::Config)?,
    );
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let tick = config.heartbeat;
    let (task, handle) = NodeTask::new(
        raw,
        log,
        kv,
        peers.clone(),
        tick,
        inbound_rx,
        snapshot,
        config.snapshot_count,
    );
    let api = Api::new(handle, peers, cluster_id, me.id.get(), kv_path);
    let lessor = api.start_lessor(config.election);
    let compactor = api.start_compactor(config.auto_compaction);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let client_server = tonic::transport::Server::builder()
        // HTTP/1.1 too, for `GET /health` and `GET /metrics` with plain HTTP clients.
        .accept_http1(true)
        .add_routes(client_routes(&api))
        .serve_with_incoming_shutdown(nodelay(client_listener), stopped(stop_rx.clone()));
    let peer_server = tonic::transport::Server::builder()
        .add_service(
            RaftServer::new(RaftService::new(cluster_id, me.id, inbound_tx, api, faults))
                .max_decoding_message_size(PEER_MSG_BYTES_MAX)
                .max_encoding_message_size(PEER_MSG_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(nodelay(peer_listener), stopped(stop_rx));
    let mut node = tokio::spawn(task.run());
    let mut client_server = tokio::spawn(client_server);
    let mut peer_server = tokio::spawn(peer_server);

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = &mut node => flatten(r),
        r = &mut client_server => flatten(r.map(|r| r.map_err(ServerError::from))),
        r = &mut peer_server => flatten(r.map(|r| r.map_err(ServerError::from))),
    };
    let _ = stop_tx.send(true);
    node.abort();
    lessor.abort();
    if let Some(c) = compactor {
        c.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client_server.await;
        let _ = peer_server.await;
    })
    .await;
    result
}

/// The core's configuration for member `id`: one tick per heartbeat, the election timeout in
/// ticks, and the read mode.
fn raft_config(config: &ServerConfig, id: raft::NodeId, seed: u64) -> raft::Config {
    let mut rc = raft::Config::new(id);
    rc.heartbeat_ticks = 1;
    rc.election_ticks = (config.election.as_millis() / config.heartbeat.as_millis().max(1)) as u64;
    rc.msg_bytes_max = ENTRY_BYTES_MAX;
    rc.seed = seed;
    if config.lease_reads {
        rc.read_only = raft::ReadOnlyOption::LeaseBased;
    }
    rc
}

/// Accepted connections with `TCP_NODELAY`: small gRPC responses must not wait for Nagle's
/// algorithm to meet the peer's delayed ACK (a 40 ms floor on every read, BENCHMARKS.md).
fn nodelay(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Brings the log and the state machine in line with the newest snapshot file and returns it.
///
/// - A snapshot newer than the log start: a crash came between saving it and resetting the log
///   (installing one from the leader, or taking one here). Its entries are committed, so the
///   log restarts after it, keeping a suffix that matches it.
/// - A state machine behind the log start (it syncs in batches, or a crash came before an
///   install restored it): it is restored from the snapshot; the log replays the rest.
fn recover_snapshot(
    log: &mut storage::Store,
    kv: &kv::Store,
) -> Result<Option<CurrentSnapshot>, ServerError> {
    let Some((meta, _)) = log.latest_snapshot()? else {
        return Ok(None);
    };
    if meta.last.index > log.log_start().index {
        let mut hs = log.hard_state();
        hs.commit = hs.commit.max(meta.last.index);
        tracing::warn!(
            index = meta.last.index.0,
            "finishing a snapshot install or compaction interrupted by a crash"
        );
        log.reset_to_snapshot(meta.last, &hs)?;
    }
    let size_bytes = if kv.applied_index()? < meta.last.index.0 {
        tracing::info!(
            index = meta.last.index.0,
            "restoring the state machine from the snapshot"
        );
        let (_, size, mut data) = log
            .open_snapshot()?
            .ok_or_else(|| ServerError::Invariant("the snapshot file vanished".into()))?;
        kv.restore_from(&mut data)?;
        kv.sync()?;
        size
    } else {
        // Not needed here, but followers may be sent it: check it now, a slice at a time.
        log.verify_snapshot()?
            .ok_or_else(|| ServerError::Invariant("the snapshot file vanished".into()))?
            .1
    };
    Ok(Some(raft::SnapshotMeta {
        last: meta.last,
        membership: meta.membership,
        size_bytes,
    }))
}

/// The client port: the etcd gRPC services plus `GET /health` and `GET /metrics`.
fn client_routes(api: &Api) -> tonic::service::Routes {
    use axum::http::StatusCode;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(api.clone())
            .max_decoding_message_size(REQUEST_BYTES_MAX + GRPC_OVERHEAD_BYTES),
    );
    grpc.add_service(MaintenanceServer::new(api.clone()));
    grpc.add_service(LeaseServer::new(api.clone()));
    grpc.add_service(WatchServer::new(api.clone()));
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

/// Applies the fault file to `faults` until the server stops.
async fn watch_fault_file(path: PathBuf, spec: ClusterSpec, faults: Arc<Faults>) {
    let mut last = None;
    loop {
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if last.as_ref() != Some(&text) {
            let blocked = text
                .split_whitespace()
                .filter_map(|name| spec.member_by_name(name).map(|m| m.id))
                .collect();
            tracing::warn!(file = %path.display(), cut_off = %text.trim(), "fault hook: peers cut off");
            faults.set_blocked(blocked);
            last = Some(text);
        }
        tokio::time::sleep(FAULT_FILE_POLL).await;
    }
}

fn flatten(r: Result<Result<(), ServerError>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ServerError::Unsupported(format!("task failed: {e}"))),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Io {
            what: format!("bind {what} address {addr}"),
            error,
        })
}

/// Election jitter seed. The core is deterministic given its seed; the server picks a fresh one
/// per start so that members restarted together do not time out in lockstep.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{Entry, EntryId, EntryKind, HardState, NodeId, Term};

    fn put(index: u64, term: u64) -> Entry {
        let cmd = kv::Command::new(kv::Request::Put(kv::PutRequest::new(
            format!("k{index}"),
            format!("v{index}"),
        )));
        Entry {
            term: Term(term),
            index: Index(index),
            kind: EntryKind::Normal,
            data: kv::codec::encode_command(&cmd),
        }
    }

    fn open(dir: &std::path::Path) -> (storage::Store, kv::Store) {
        let id = storage::Identity {
            cluster_id: 7,
            node_id: NodeId::new(1).expect("non-zero"),
        };
        let (mut log, _) =
            storage::Store::open(&dir.join("raft"), storage::Options::new(id)).expect("open log");
        if log.membership().voters.is_empty() {
            log.set_membership(&Membership::new([NodeId::new(1).expect("non-zero")]))
                .expect("membership");
        }
        let kv = kv::Store::open(dir.join("kv.redb"), kv::Options::default()).expect("open kv");
        (log, kv)
    }

    /// A snapshot at 6 taken from a state machine that applied entries 1..=6 of `entries`.
    fn snapshot_of(entries: &[Entry]) -> (storage::SnapshotMeta, Vec<u8>) {
        let source = kv::Store::in_memory(kv::Options::default()).expect("kv");
        for e in &entries[..6] {
            let cmd = kv::codec::decode_command(&e.data).expect("decode");
            source.apply(e.index.0, &cmd).expect("apply");
        }
        let meta = storage::SnapshotMeta {
            last: EntryId {
                term: entries[5].term,
                index: Index(6),
            },
            membership: Membership::new([NodeId::new(1).expect("non-zero")]),
        };
        (meta, source.snapshot().expect("snapshot"))
    }

    fn value(kv: &kv::Store, key: &str) -> Option<Vec<u8>> {
        let req = kv::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        kv.range(&req)
            .expect("range")
            .kvs
            .into_iter()
            .next()
            .map(|kv| kv.value)
    }

    #[test]
    fn the_read_mode_flag_reaches_the_core() {
        let cluster =
            ClusterSpec::parse("n1=http://127.0.0.1:2380", "t").expect("cluster definition");
        let mut config = ServerConfig {
            name: "n1".into(),
            data_dir: "unused".into(),
            listen_client: "127.0.0.1:2379".parse().expect("addr"),
            listen_peer: "127.0.0.1:2380".parse().expect("addr"),
            cluster,
            new_cluster: true,
            heartbeat: std::time::Duration::from_millis(100),
            election: std::time::Duration::from_millis(1000),
            lease_reads: false,
            auto_compaction: crate::api::compactor::AutoCompaction::Off,
            snapshot_count: 100,
            fault_file: None,
        };
        let id = NodeId::new(1).expect("non-zero");
        let rc = raft_config(&config, id, 7);
        assert_eq!(rc.read_only, raft::ReadOnlyOption::Safe);
        assert_eq!(rc.election_ticks, 10);
        config.lease_reads = true;
        let rc = raft_config(&config, id, 7);
        assert_eq!(rc.read_only, raft::ReadOnlyOption::LeaseBased);
        rc.validate()
            .expect("lease reads come with check quorum on");
    }

    #[test]
    fn a_compaction_interrupted_after_saving_the_snapshot_is_finished_at_start() {
        // Crash after `save_snapshot`, before `compact`, with a state machine that lost its
        // unsynced applies: the log restarts after the snapshot keeping 7..=10, and the state
        // machine is restored to 6 (the log replays the rest).
        let dir = tempfile::tempdir().expect("tempdir");
        let entries: Vec<Entry> = (1..=10).map(|i| put(i, 1)).collect();
        let (mut log, kv) = open(dir.path());
        let hs = HardState {
            term: Term(1),
            vote: None,
            commit: Index(10),
        };
        log.write(Some(&hs), &entries).expect("write");
        let (meta, data) = snapshot_of(&entries);
        log.save_snapshot(&meta, &data).expect("save");

        let current = recover_snapshot(&mut log, &kv)
            .expect("recover")
            .expect("snapshot");
        assert_eq!(current.last, meta.last);
        assert_eq!(current.size_bytes, data.len() as u64);
        assert_eq!(log.log_start(), meta.last);
        assert_eq!(log.last_index(), Index(10));
        assert_eq!(log.hard_state().commit, Index(10));
        assert_eq!(kv.applied_index().expect("applied"), 6);
        assert_eq!(value(&kv, "k6"), Some(b"v6".to_vec()));
        assert_eq!(value(&kv, "k7"), None);
        // A second start finds nothing to do.
        recover_snapshot(&mut log, &kv).expect("recover again");
        assert_eq!(log.last_index(), Index(10));
    }

    #[test]
    fn an_install_interrupted_before_the_log_reset_is_finished_at_start() {
        // The leader's snapshot (term 2 at 6) conflicts with this member's log (term 1 at 6):
        // a crash came after the snapshot file was saved; the log must restart empty after
        // it, committed through it, with the state machine restored.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, kv) = open(dir.path());
        let hs = HardState {
            term: Term(2),
            vote: None,
            commit: Index(3),
        };
        let ours: Vec<Entry> = (1..=8).map(|i| put(i, 1)).collect();
        log.write(Some(&hs), &ours).expect("write");
        let leaders: Vec<Entry> = (1..=6).map(|i| put(i, if i < 4 { 1 } else { 2 })).collect();
        let (meta, data) = snapshot_of(&leaders);
        log.save_snapshot(&meta, &data).expect("save");

        recover_snapshot(&mut log, &kv)
            .expect("recover")
            .expect("snapshot");
        assert_eq!(log.log_start(), meta.last);
        assert_eq!(log.last_index(), Index(6));
        assert_eq!(log.hard_state().commit, Index(6));
        assert_eq!(kv.applied_index().expect("applied"), 6);
        // The state machine and the log start the core from a consistent place.
        let state = storage::initial_state(&log, Index(6)).expect("initial state");
        assert!(state.entries.is_empty());
        assert_eq!(state.snapshot, meta.last);
    }
}
