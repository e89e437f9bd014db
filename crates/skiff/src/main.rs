//! `skiff`: run one member (`skiff serve`) or a local 3-member cluster (`skiff dev`),
//! load-test an etcd v3 API cluster (`skiff bench`), or check and restore backups (`skiff
//! snapshot status|restore`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod bench;
mod dev;
mod snapshot;
mod tls;

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "A Raft-replicated key-value store speaking the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run one member of a cluster (flags as in etcd).
    Serve(ServeArgs),
    /// Run a local 3-member cluster as child processes on 127.0.0.1.
    Dev(dev::DevArgs),
    /// Load-test an etcd v3 API cluster (Skiff or etcd) and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Check a backup (`etcdctl snapshot save`) or restore one into a new cluster's data dir.
    Snapshot(snapshot::SnapshotArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// Directory for the Raft log and the key-value data (default: <name>.skiff).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URL to serve the etcd API on (one http://IP:PORT, or https:// for TLS with --cert-file).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Client URL to advertise: where clients reach this member, as `member list` shows it.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    advertise_client_urls: String,
    /// URL to serve the peer protocol on (one http://IP:PORT, or https:// for TLS with
    /// --peer-cert-file).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// Extra URLs (comma-separated http://IP:PORT) that serve only /metrics and /health, as
    /// etcd's flag of this name.
    #[arg(long, default_value = "")]
    listen_metrics_urls: String,
    /// This member's peer URL as the others reach it; must match its --initial-cluster entry.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    initial_advertise_peer_urls: String,
    /// All members: name=peer-url,... (default: this member alone).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// new: bootstrap a new cluster (a data dir of another cluster or member is refused);
    /// existing: join a running cluster after `member add` (an empty data dir asks the members
    /// in --initial-cluster who this member is), or restart a member that did.
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    /// Token mixed into the cluster id, so two clusters with the same members differ.
    #[arg(long, default_value = "skiff-cluster")]
    initial_cluster_token: String,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    heartbeat_interval: u64,
    /// Election timeout in milliseconds (at least 5 heartbeats).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(5..=50_000))]
    election_timeout: u64,
    /// How linearizable reads are confirmed: "index" (ReadIndex, a heartbeat round per batch of
    /// reads; safe with any clocks) or "lease" (the leader's lease, no round trip; assumes the
    /// members' clocks run at the same rate within a small drift).
    #[arg(long, default_value = "index", value_parser = ["index", "lease"])]
    read_mode: String,
    /// Automatic compaction of the key-value history: "periodic" (keep --auto-compaction-retention
    /// of time) or "revision" (keep that many revisions).
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: String,
    /// For periodic mode a duration ("1h", "30m", "90s"; a bare number means hours), for
    /// revision mode a number of revisions; "0" turns automatic compaction off.
    #[arg(long, default_value = "0")]
    auto_compaction_retention: String,
    /// Number of applied entries after which a snapshot is taken and the log compacted.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_count: u64,
    /// Space quota of the state machine file, in bytes (etcd's flag): past it, puts,
    /// transactions with puts and lease grants are refused and a NOSPACE alarm is raised.
    /// 0 means etcd's 2 GiB default; a negative value turns the quota off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    quota_backend_bytes: i64,
    /// Kind of auth token (etcd's flag): only "simple" (random tokens held by every member,
    /// expiring after --auth-token-ttl unused); etcd's "jwt,..." is not supported.
    #[arg(long, default_value = "simple")]
    auth_token: String,
    /// Seconds a simple token lives after its last use (etcd's flag).
    #[arg(long, default_value_t = 300)]
    auth_token_ttl: u64,
    /// Cost of the bcrypt hashes of new passwords (etcd's flag; 4..=31).
    #[arg(long, default_value_t = 10)]
    bcrypt_cost: u32,
    /// How often the leader compares its key-value hash with its followers' and raises a
    /// CORRUPT alarm on a mismatch (a duration such as "30s" or "5m"; "0" turns it off).
    #[arg(long, default_value = "0", value_parser = parse_corrupt_check_time)]
    experimental_corrupt_check_time: Duration,
    /// Compare this member's key-value hash with its peers' before serving, and refuse to
    /// start on a mismatch.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    experimental_initial_corrupt_check: bool,
    /// Free space, in bytes, to keep on the data dir's file system: below it this member
    /// raises its NOSPACE alarm (puts refused cluster-wide with "database space exceeded"
    /// until `etcdctl alarm disarm`), so that a filling disk stops writes before it stops the
    /// member. 0 turns the watch off. Skiff's own flag; etcd has none.
    #[arg(long, default_value_t = server::api::disk_space::DISK_RESERVE_BYTES_DEFAULT)]
    experimental_disk_reserve_bytes: u64,
    /// Least severe log level written: debug, info, warn or error (etcd's panic and fatal mean
    /// error here). RUST_LOG, when set, overrides it with a full filter.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    log_level: String,
    /// Log lines as text (default) or as one JSON object per line.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Stop when stdin reaches end of file: `skiff dev` and the tests hold a pipe to each
    /// member, so members never outlive their parent, even if it is SIGKILLed.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
    /// Testing only: a file naming members this one cannot talk to (see `ServerConfig`).
    #[arg(long, hide = true)]
    fault_file: Option<PathBuf>,
    #[command(flatten)]
    tls: tls::TlsArgs,
}

/// `--experimental-corrupt-check-time`, a Go duration as etcd takes it.
fn parse_corrupt_check_time(text: &str) -> Result<Duration, String> {
    server::api::corrupt::parse_go_duration(text)
}

impl ServeArgs {
    fn to_config(&self) -> anyhow::Result<server::ServerConfig> {
        let single = |flag: &str, v: &str| -> anyhow::Result<std::net::SocketAddr> {
            if v.contains(',') {
                bail!("--{flag}: only one URL is supported, got {v:?}");
            }
            server::cluster::parse_url(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let advertised = |flag: &str, v: &str| -> anyhow::Result<()> {
            if v.contains(',') {
                bail!("--{flag}: only one URL is supported, got {v:?}");
            }
            server::cluster::check_url(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let listen_client = single("listen-client-urls", &self.listen_client_urls)?;
        let listen_peer = single("listen-peer-urls", &self.listen_peer_urls)?;
        let listen_metrics = self
            .listen_metrics_urls
            .split(',')
            .filter(|u| !u.is_empty())
            .map(|u| {
                server::cluster::parse_url(u)
                    .map_err(|e| anyhow::anyhow!("--listen-metrics-urls: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        advertised("advertise-client-urls", &self.advertise_client_urls)?;
        advertised(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let initial_cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls));
        let joining = self.initial_cluster_state == "existing";
        let cluster =
            server::ClusterSpec::parse_with(&initial_cluster, &self.initial_cluster_token, joining)
                .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
        let Some(me) = cluster.member_by_name(&self.name) else {
            bail!(
                "--name {:?} is not a member of --initial-cluster",
                self.name
            );
        };
        if me.peer_url != self.initial_advertise_peer_urls {
            bail!(
                "--initial-advertise-peer-urls {} does not match {}'s entry {} in --initial-cluster",
                self.initial_advertise_peer_urls,
                self.name,
                me.peer_url
            );
        }
        if self.auth_token != "simple" {
            let kind = self.auth_token.split(',').next().unwrap_or_default();
            bail!(
                "--auth-token {kind:?}: only \"simple\" tokens are supported{}",
                if kind == "jwt" {
                    " (JWT is not implemented)"
                } else {
                    ""
                }
            );
        }
        let config = server::ServerConfig {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.skiff", self.name))),
            listen_client,
            listen_peer,
            listen_metrics,
            advertise_client_urls: vec![self.advertise_client_urls.clone()],
            cluster,
            new_cluster: self.initial_cluster_state == "new",
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            lease_reads: self.read_mode == "lease",
            auto_compaction: server::api::compactor::AutoCompaction::parse(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )
            .map_err(anyhow::Error::msg)?,
            fault_file: self.fault_file.clone(),
            data_checks: server::config::DataChecks {
                quota_backend_bytes: self.quota_backend_bytes,
                corrupt_check_every: self.experimental_corrupt_check_time,
                initial_corrupt_check: self.experimental_initial_corrupt_check,
                disk_reserve_bytes: self.experimental_disk_reserve_bytes,
            },
            tls: self
                .tls
                .to_config(&self.listen_client_urls, &self.listen_peer_urls),
            auth: server::api::auth::AuthConfig {
                token_ttl: Duration::from_secs(self.auth_token_ttl),
                bcrypt_cost: self.bcrypt_cost,
                // Set by the server from the TLS flags.
                client_cert_auth: false,
            },
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// mimalloc instead of glibc's malloc: allocation was 13% of the leader's samples under
/// put-c256 (see BENCHMARKS.md for the A/B run that keeps it). Built without transparent huge
/// pages (`no_thp`): with them, 8.7% of a loaded cluster's CPU went to the kernel zeroing
/// fresh 2 MiB pages that mimalloc had purged, and put-c256's p99 was 30% higher.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line that names the flag; clap's usage block would bury it.
            let text = e.to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    let (level, json) = match &cli.command {
        Command::Serve(a) => (
            match a.log_level.as_str() {
                "panic" | "fatal" => "error",
                l => l,
            },
            a.log_format == "json",
        ),
        _ => ("info", false),
    };
    // The level is Skiff's own (as etcd's applies to etcd): at debug, the libraries under it
    // (h2, hyper, tonic) stay at info.
    let directives = if level == "debug" {
        ["raft", "storage", "kv", "server", "skiff"]
            .iter()
            .flat_map(|c| [format!("{c}=debug"), format!("skiff_{c}=debug")])
            .fold("info".to_string(), |acc, d| acc + "," + &d)
    } else {
        level.to_string()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Dev(args) => dev::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Snapshot(args) => snapshot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if matches!(
                e.downcast_ref::<server::ServerError>(),
                Some(server::ServerError::Removed)
            ) {
                ExitCode::from(EXIT_REMOVED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `skiff serve`'s exit code when the member was removed from the cluster (1 for every other
/// failure): `skiff dev` keeps the other members running then.
pub(crate) const EXIT_REMOVED: u8 = 3;

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let watch_stdin = args.stop_on_stdin_eof;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = rt.block_on(async move {
        let shutdown = async {
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; shutting down"),
                _ = stdin_eof(), if watch_stdin => tracing::info!("parent gone; shutting down"),
            }
        };
        server::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    // Dropping the runtime would wait for its blocking threads, among them the one reading
    // stdin, which never returns while the parent holds the pipe: a member that stops on its
    // own (a fault, or removed from the cluster) must exit all the same. Its tasks are gone by
    // then (the state machine is dropped, committing what it applied); whatever blocking work
    // is cut short is replayed from the log at the next start, as after a crash.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Completes when stdin is closed (or fails).
async fn stdin_eof() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
