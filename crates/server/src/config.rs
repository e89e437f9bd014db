//! A member's settings (`skiff serve`'s flags), checked against each other, and the core's
//! configuration derived from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::compactor::AutoCompaction;
use crate::cluster::ClusterSpec;

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
    /// Extra plain-HTTP listeners that serve only `GET /metrics` and `GET /health`
    /// (`--listen-metrics-urls`), for scrapers kept off the client port.
    pub listen_metrics: Vec<SocketAddr>,
    /// Where clients reach this member (`--advertise-client-urls`), as MemberList shows it.
    pub advertise_client_urls: Vec<String>,
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
    pub auto_compaction: AutoCompaction,
    /// Take a snapshot and compact the log after this many applied entries (etcd's
    /// `--snapshot-count`).
    pub snapshot_count: u64,
    /// Testing only: a file naming members (whitespace-separated; by `--initial-cluster` name
    /// or by hex id) whose traffic with this one is dropped, re-read every
    /// [`crate::peer::faults::FAULT_FILE_POLL`]; missing means none.
    pub fault_file: Option<PathBuf>,
    /// Space quota and consistency checks of the state machine (see [`DataChecks`]).
    pub data_checks: DataChecks,
    /// TLS on the client and peer ports, and to peers (see [`crate::tls`]).
    pub tls: crate::tls::TlsConfig,
    /// Auth tokens and password hashes (`--auth-token-ttl`, `--bcrypt-cost`).
    pub auth: crate::api::auth::AuthConfig,
}

/// etcd's flags that guard the state machine's data. The default is `skiff serve`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataChecks {
    /// `--quota-backend-bytes`: 0 means etcd's 2 GiB default, negative turns the quota off
    /// (see [`crate::api::quota`]).
    pub quota_backend_bytes: i64,
    /// `--experimental-corrupt-check-time`: how often the leader compares its hash with its
    /// followers' (zero: never; see [`crate::api::corrupt`]).
    pub corrupt_check_every: Duration,
    /// `--experimental-initial-corrupt-check`: compare with the peers before starting, and
    /// refuse to start on a mismatch.
    pub initial_corrupt_check: bool,
    /// `--experimental-disk-reserve-bytes`: below this much free space on the data dir's
    /// file system the member raises its NOSPACE alarm (0: never; see
    /// [`crate::api::disk_space`]).
    pub disk_reserve_bytes: u64,
}

impl Default for DataChecks {
    fn default() -> DataChecks {
        DataChecks {
            quota_backend_bytes: 0,
            corrupt_check_every: Duration::ZERO,
            initial_corrupt_check: false,
            disk_reserve_bytes: crate::api::disk_space::DISK_RESERVE_BYTES_DEFAULT,
        }
    }
}

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
        self.auth.validate()?;
        let https_peers =
            (self.cluster.members.values()).any(|m| m.peer_url.starts_with("https://"));
        self.tls.validate(https_peers)
    }
}

/// The core's configuration for member `id`: one tick per heartbeat, the election timeout in
/// ticks, and the read mode.
pub fn raft_config(config: &ServerConfig, id: raft::NodeId, seed: u64) -> raft::Config {
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

/// Election jitter seed. The core is deterministic given its seed; the server picks a fresh one
/// per start so that members restarted together do not time out in lockstep.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::NodeId;

    #[test]
    fn the_read_mode_flag_reaches_the_core() {
        let cluster =
            ClusterSpec::parse("n1=http://127.0.0.1:2380", "t").expect("cluster definition");
        let mut config = ServerConfig {
            name: "n1".into(),
            data_dir: "unused".into(),
            listen_client: "127.0.0.1:2379".parse().expect("addr"),
            listen_peer: "127.0.0.1:2380".parse().expect("addr"),
            listen_metrics: Vec::new(),
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            cluster,
            new_cluster: true,
            heartbeat: std::time::Duration::from_millis(100),
            election: std::time::Duration::from_millis(1000),
            lease_reads: false,
            auto_compaction: AutoCompaction::Off,
            snapshot_count: 100,
            fault_file: None,
            data_checks: DataChecks::default(),
            tls: Default::default(),
            auth: Default::default(),
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
}
