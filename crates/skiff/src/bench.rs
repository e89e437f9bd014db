//! `skiff bench`: a load generator that speaks the etcd v3 gRPC API, so the same run drives a
//! Skiff cluster or a real etcd cluster.
//!
//! `--clients` tasks share `--conns` gRPC channels (client i uses channel i mod conns; channel
//! j dials endpoint j mod endpoints). With `--rate 0` every client is closed-loop: it sends its
//! next request when the previous one answers, and latency is measured from the send. With a
//! rate, request n is due at `start + n / rate` on one schedule shared by all clients, and its
//! latency is measured from that due time, not from when a client got round to sending it: a
//! stalled server then shows up in the percentiles instead of silently lowering the offered
//! load (coordinated omission).
//!
//! Latencies go into an HDR histogram in microseconds. Failed requests are not in the
//! histogram; they are counted by kind (gRPC code and the start of the message).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

/// Most concurrent clients one run may start.
const CLIENTS_MAX: u32 = 10_000;
/// Most gRPC channels one run may open.
const CONNS_MAX: u32 = 1_000;
/// Most keys a read workload preloads; a larger `--key-space` is refused for reads.
const PRELOAD_KEYS_MAX: u64 = 1_000_000;
/// Largest `--key-size` and `--val-size`, in bytes (Skiff refuses requests above 1.5 MiB).
const KEY_BYTES_MAX: u32 = 4096;
const VAL_BYTES_MAX: u32 = 1024 * 1024;
/// Longest `--duration` or `--warmup`: the bench always stops by itself.
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Highest latency the histogram tracks, in microseconds (larger values are clamped).
const LATENCY_US_MAX: u64 = 600_000_000;
/// Characters of a gRPC error message kept in its error kind.
const ERROR_MESSAGE_CHARS_MAX: usize = 60;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Put a random key of the key space.
    Put,
    /// Range (get) one random key of the preloaded key space.
    Get,
    /// Gets with probability --read-ratio, puts otherwise.
    Mixed,
    /// A transaction: if the key's version > -1 (always) put it, else get it.
    Txn,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable reads (etcd's default): served through the leader's ReadIndex.
    L,
    /// Serializable reads: served from the local member's state, possibly stale.
    S,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated etcd v3 gRPC endpoints (host:port, http://host:port, or
    /// https://host:port with --cacert).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// CA (PEM) that signs the servers' certificates: connect with TLS.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present, with --key.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Authenticate as this user (`name:password`, as etcdctl's `--user`) on each connection
    /// and send its token with every request: for clusters with auth enabled.
    #[arg(long, value_parser = parse_user)]
    user: Option<(String, String)>,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Read consistency for get, mixed: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    consistency: Consistency,
    /// Fraction of reads in the mixed workload, from 0 to 1.
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio)]
    read_ratio: f64,
    /// Concurrent clients (each has at most one request in flight).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=CLIENTS_MAX as i64))]
    clients: u32,
    /// gRPC channels (TCP connections) the clients share.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=CONNS_MAX as i64))]
    conns: u32,
    /// Key length in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=KEY_BYTES_MAX as i64))]
    key_size: u32,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=VAL_BYTES_MAX as i64))]
    val_size: u32,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    key_space: u64,
    /// Total requests per second on a fixed schedule; 0 = closed loop, as fast as answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s unless --total is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests instead of after a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    total: Option<u64>,
    /// Load to apply before measuring (not recorded), e.g. 2s.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Format of the results on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// `name:password` (the password may hold colons; the name may not be empty).
fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok((name.to_string(), password.to_string())),
        _ => Err("expected name:password".to_string()),
    }
}

/// One client's way to the cluster: a KV stub on a shared channel, and the token of that
/// channel's member with `--user`.
#[derive(Clone)]
struct Client {
    kv: KvClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// A request carrying `msg`, with the per-request timeout and the token.
    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("token", token.clone());
        }
        req
    }
}

/// The token of `user` from the member at the other end of `ch`. Each connection
/// authenticates where it connects: a token is assigned when its Authenticate entry applies
/// on each member, and a member that has not applied it yet would refuse it.
async fn authenticate(
    ch: &Channel,
    url: &str,
    (name, password): &(String, String),
    timeout: Duration,
) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let mut auth = server::pb::etcdserverpb::auth_client::AuthClient::new(ch.clone());
    let mut req = tonic::Request::new(epb::AuthenticateRequest {
        name: name.clone(),
        password: password.clone(),
    });
    req.set_timeout(timeout);
    let resp = auth
        .authenticate(req)
        .await
        .map_err(|s| anyhow::anyhow!("--user {name}: authenticate at {url}: {}", s.message()))?;
    resp.into_inner()
        .token
        .parse()
        .map_err(|_| anyhow::anyhow!("--user {name}: {url} answered a token that is not ASCII"))
}

/// Accepts `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit_s) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a duration like 10s, 500ms or 2m"));
    }
    let d = Duration::try_from_secs_f64(v * unit_s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > DURATION_MAX {
        return Err(format!(
            "{s:?} is longer than {}h",
            DURATION_MAX.as_secs() / 3600
        ));
    }
    Ok(d)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is not between 0 and 1"));
    }
    Ok(v)
}

/// `host:port`, `http://host:port` or `https://host:port` to a URL tonic can dial; with
/// `tls` (--cacert), `host:port` is dialed over TLS and `http://` is refused.
fn endpoint_url(ep: &str, tls: bool) -> anyhow::Result<String> {
    let ep = ep.trim();
    if ep.is_empty() {
        bail!("--endpoints: empty endpoint");
    }
    if ep.starts_with("https://") && !tls {
        bail!("--endpoints: {ep}: https:// needs --cacert");
    }
    if ep.starts_with("http://") && tls {
        bail!("--endpoints: {ep}: http:// with --cacert (use https:// or host:port)");
    }
    let url = if ep.starts_with("http://") || ep.starts_with("https://") {
        ep.to_string()
    } else if tls {
        format!("https://{ep}")
    } else {
        format!("http://{ep}")
    };
    tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("--endpoints: {ep}: {e}"))?;
    Ok(url)
}

/// What the whole run was asked to do, validated.
struct Plan {
    args: BenchArgs,
    urls: Vec<String>,
    /// TLS to the endpoints (--cacert, --cert, --key), read when the plan is made.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Measured phase: stop at this duration after its start, unless `total` is set.
    duration: Duration,
}

impl Plan {
    fn new(args: BenchArgs) -> anyhow::Result<Plan> {
        let urls = args
            .endpoints
            .split(',')
            .map(|ep| endpoint_url(ep, args.cacert.is_some()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
        };
        let tls = match (&args.cacert, &args.cert, &args.key) {
            (None, None, None) => None,
            (None, _, _) => bail!("--cert and --key need --cacert"),
            (Some(ca), cert, key) => {
                let ca = tonic::transport::Certificate::from_pem(read("--cacert", ca)?);
                let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
                if let (Some(cert), Some(key)) = (cert, key) {
                    config = config.identity(tonic::transport::Identity::from_pem(
                        read("--cert", cert)?,
                        read("--key", key)?,
                    ));
                }
                Some(config)
            }
        };
        let digits = (args.key_space - 1).max(1).ilog10() + 1;
        if args.key_size < digits {
            bail!(
                "--key-size {} is too short for --key-space {} (needs {digits} bytes)",
                args.key_size,
                args.key_space
            );
        }
        let reads = matches!(args.workload, Workload::Get | Workload::Mixed);
        if reads && args.key_space > PRELOAD_KEYS_MAX {
            bail!(
                "--key-space above {PRELOAD_KEYS_MAX} with a read workload: the preload is bounded"
            );
        }
        if args.timeout.is_zero() {
            bail!("--timeout must be above 0");
        }
        let duration = args.duration.unwrap_or(Duration::from_secs(10));
        if args.total.is_none() && duration.is_zero() {
            bail!("--duration must be above 0");
        }
        Ok(Plan {
            args,
            urls,
            tls,
            duration,
        })
    }

    fn key(&self, n: u64) -> Vec<u8> {
        debug_assert!(n < self.args.key_space);
        format!("{n:0width$}", width = self.args.key_size as usize).into_bytes()
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_async(Arc::new(plan)))
}

async fn run_async(plan: Arc<Plan>) -> anyhow::Result<()> {
    let args = &plan.args;
    let mut channels = Vec::new();
    for j in 0..args.conns as usize {
        let url = &plan.urls[j % plan.urls.len()];
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .with_context(|| format!("--endpoints: {url}"))?;
        if let Some(tls) = &plan.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| anyhow::anyhow!("--cacert/--cert/--key: {}", error_chain(&e)))?;
        }
        let ch = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("connect to {url}: {}", error_chain(&e)))?;
        let token = match &args.user {
            Some(user) => Some(authenticate(&ch, url, user, args.timeout).await?),
            None => None,
        };
        channels.push((ch, token));
    }
    let clients: Vec<Client> = (0..args.clients as usize)
        .map(|i| {
            let (ch, token) = &channels[i % channels.len()];
            Client {
                kv: KvClient::new(ch.clone()),
                token: token.clone(),
            }
        })
        .collect();

    if matches!(args.workload, Workload::Get | Workload::Mixed) {
        preload(&plan, &clients).await?;
    }
    if !args.warmup.is_zero() {
        eprintln!("bench: warming up for {:?}", args.warmup);
        let stop = Stop {
            deadline: Some(args.warmup),
            total: None,
        };
        run_phase(&plan, &clients, stop, "warmup").await?;
    }
    let stop = Stop {
        deadline: if args.total.is_some() {
            None
        } else {
            Some(plan.duration)
        },
        total: args.total,
    };
    let result = run_phase(&plan, &clients, stop, "bench").await?;
    let report = Report::new(&plan, &result)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encode JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    match args.output {
        OutputFormat::Table => print!("{}", report.table()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encode JSON")?
        ),
    }
    if report.ops == 0 {
        bail!(
            "no request succeeded; errors: {}",
            report
                .errors
                .iter()
                .map(|(k, n)| format!("{n}x {k}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Puts every key of the key space once, with all clients, closed-loop.
async fn preload(plan: &Arc<Plan>, clients: &[Client]) -> anyhow::Result<()> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        let (plan, next, mut c) = (plan.clone(), next.clone(), c.clone());
        tasks.spawn(async move {
            let value = vec![b'v'; plan.args.val_size as usize];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.args.key_space {
                    return Ok::<(), anyhow::Error>(());
                }
                let req = epb::PutRequest {
                    key: plan.key(n),
                    value: value.clone(),
                    ..Default::default()
                };
                let req = c.request(req, plan.args.timeout);
                c.kv.put(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("preload put: {}", error_kind(&s)))?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("preload task")??;
    }
    eprintln!(
        "bench: preloaded {} keys in {:.1} s",
        plan.args.key_space,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// When a phase ends.
#[derive(Clone, Copy)]
struct Stop {
    /// Issue no request due after this long from the phase start.
    deadline: Option<Duration>,
    /// Issue no more than this many requests.
    total: Option<u64>,
}

/// What one client (or, merged, the whole phase) observed.
struct Tally {
    /// Latency of each successful request, in microseconds.
    latency_us: Histogram<u64>,
    /// Failed requests by kind.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .context("create histogram")?,
            errors: BTreeMap::new(),
        })
    }
}

struct PhaseResult {
    tally: Tally,
    elapsed: Duration,
}

/// Counters the progress line reads.
#[derive(Default)]
struct Progress {
    ops: AtomicU64,
    errors: AtomicU64,
}

async fn run_phase(
    plan: &Arc<Plan>,
    clients: &[Client],
    stop: Stop,
    label: &'static str,
) -> anyhow::Result<PhaseResult> {
    assert!(stop.deadline.is_some() || stop.total.is_some());
    let progress = Arc::new(Progress::default());
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let (plan, progress, next, c) = (plan.clone(), progress.clone(), next.clone(), c.clone());
        tasks.spawn(client_loop(plan, c, i as u64, start, stop, next, progress));
    }
    let reporter = {
        let (progress, done) = (progress.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start) + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut last_ops = 0;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let ops = progress.ops.load(Ordering::Relaxed);
                let errors = progress.errors.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "{label}: {secs:5.1} s  {ops} ops  {:.0} ops/s (last second {})  {errors} errors",
                    ops as f64 / secs,
                    ops - last_ops,
                );
                last_ops = ops;
            }
        })
    };
    let mut tally = Tally::new()?;
    while let Some(r) = tasks.join_next().await {
        let t = r.context("client task")??;
        tally
            .latency_us
            .add(&t.latency_us)
            .context("merge histograms")?;
        for (k, n) in t.errors {
            *tally.errors.entry(k).or_default() += n;
        }
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    reporter.abort();
    Ok(PhaseResult { tally, elapsed })
}

/// One client: takes request numbers from the shared counter until the phase ends.
async fn client_loop(
    plan: Arc<Plan>,
    mut c: Client,
    id: u64,
    start: Instant,
    stop: Stop,
    next: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> anyhow::Result<Tally> {
    let args = &plan.args;
    let mut tally = Tally::new()?;
    let mut rng = SplitMix64(0x5eed_0000 + id);
    let value = vec![b'v'; args.val_size as usize];
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if stop.total.is_some_and(|t| n >= t) {
            break;
        }
        // The time the request is due: on the shared schedule with a rate, else now.
        let due = if args.rate > 0 {
            let due = start + Duration::from_secs_f64(n as f64 / args.rate as f64);
            if stop.deadline.is_some_and(|d| due >= start + d) {
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            due
        } else {
            let now = Instant::now();
            if stop.deadline.is_some_and(|d| now >= start + d) {
                break;
            }
            now
        };
        let key = plan.key(rng.next() % args.key_space);
        let read = match args.workload {
            Workload::Get => true,
            Workload::Mixed => rng.next_f64() < args.read_ratio,
            Workload::Put | Workload::Txn => false,
        };
        let timeout = args.timeout;
        let result = if read {
            let req = c.request(range_request(key, args.consistency), timeout);
            c.kv.range(req).await.map(|_| ())
        } else if args.workload == Workload::Txn {
            let req = c.request(txn_request(key, value.clone()), timeout);
            c.kv.txn(req).await.map(|_| ())
        } else {
            let put = epb::PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            };
            let req = c.request(put, timeout);
            c.kv.put(req).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
                progress.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => {
                *tally.errors.entry(error_kind(&s)).or_default() += 1;
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(tally)
}

fn range_request(key: Vec<u8>, consistency: Consistency) -> epb::RangeRequest {
    epb::RangeRequest {
        key,
        serializable: consistency == Consistency::S,
        ..Default::default()
    }
}

/// `if version(key) > -1 then put(key) else get(key)`: the comparison always holds, so the
/// transaction always writes, and the server still evaluates a comparison.
fn txn_request(key: Vec<u8>, value: Vec<u8>) -> epb::TxnRequest {
    use epb::compare::{CompareResult, CompareTarget, TargetUnion};
    epb::TxnRequest {
        compare: vec![epb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(-1)),
            range_end: Vec::new(),
        }],
        success: vec![epb::RequestOp {
            request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![epb::RequestOp {
            request: Some(epb::request_op::Request::RequestRange(epb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// `Code: message prefix`, so that errors that differ only in details group together.
fn error_kind(s: &tonic::Status) -> String {
    let msg: String = s.message().chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
    format!("{:?}: {msg}", s.code())
}

/// `e: its source: its source's source`, since tonic's transport errors say little alone.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// A tiny seeded PRNG (SplitMix64): reproducible key choice without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(serde::Serialize)]
struct LatencyMs {
    p50: f64,
    p90: f64,
    p99: f64,
    #[serde(rename = "p99.9")]
    p999: f64,
    max: f64,
    mean: f64,
}

/// The results, as printed and as written to `--json`.
#[derive(serde::Serialize)]
struct Report {
    workload: String,
    consistency: Option<String>,
    read_ratio: Option<f64>,
    endpoints: Vec<String>,
    clients: u32,
    conns: u32,
    key_size: u32,
    val_size: u32,
    key_space: u64,
    /// Requested rate in ops/s; 0 = closed loop.
    rate: u64,
    /// Successful requests.
    ops: u64,
    /// Failed requests.
    errors_total: u64,
    duration_s: f64,
    throughput_ops_s: f64,
    latency_ms: LatencyMs,
    errors: BTreeMap<String, u64>,
}

impl Report {
    fn new(plan: &Plan, r: &PhaseResult) -> anyhow::Result<Report> {
        let args = &plan.args;
        let h = &r.tally.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let reads = matches!(args.workload, Workload::Get | Workload::Mixed);
        let duration_s = r.elapsed.as_secs_f64();
        Ok(Report {
            workload: format!("{:?}", args.workload).to_lowercase(),
            consistency: reads.then(|| format!("{:?}", args.consistency).to_lowercase()),
            read_ratio: (args.workload == Workload::Mixed).then_some(args.read_ratio),
            endpoints: plan.urls.clone(),
            clients: args.clients,
            conns: args.conns,
            key_size: args.key_size,
            val_size: args.val_size,
            key_space: args.key_space,
            rate: args.rate,
            ops: h.len(),
            errors_total: r.tally.errors.values().sum(),
            duration_s,
            throughput_ops_s: if duration_s > 0.0 {
                h.len() as f64 / duration_s
            } else {
                0.0
            },
            latency_ms: LatencyMs {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            },
            errors: r.tally.errors.clone(),
        })
    }

    fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<16} {v}");
        };
        let mut workload = self.workload.clone();
        if let Some(c) = &self.consistency {
            workload += &format!(" ({c})");
        }
        if let Some(r) = self.read_ratio {
            workload += &format!(" read ratio {r}");
        }
        row("workload", workload);
        row(
            "clients",
            format!(
                "{} over {} conns to {} endpoints",
                self.clients,
                self.conns,
                self.endpoints.len()
            ),
        );
        row(
            "sizes",
            format!(
                "key {} B, value {} B, {} keys",
                self.key_size, self.val_size, self.key_space
            ),
        );
        row(
            "rate",
            if self.rate == 0 {
                "closed loop".to_string()
            } else {
                format!("{} ops/s", self.rate)
            },
        );
        row(
            "ops",
            format!("{} ok, {} errors", self.ops, self.errors_total),
        );
        row("duration", format!("{:.2} s", self.duration_s));
        row("throughput", format!("{:.1} ops/s", self.throughput_ops_s));
        let l = &self.latency_ms;
        row(
            "latency ms",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            ),
        );
        for (k, n) in &self.errors {
            row("error", format!("{n} x {k}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_as_etcdctl_takes_them() {
        assert_eq!(
            parse_user("alice:pa:ss"),
            Ok(("alice".to_string(), "pa:ss".to_string()))
        );
        assert_eq!(parse_user("bob:"), Ok(("bob".to_string(), String::new())));
        assert!(parse_user("alice").is_err());
        assert!(parse_user(":pw").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("1000h").is_err());
    }

    #[test]
    fn endpoints_take_both_forms() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false).ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:2379", false).ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert!(endpoint_url("", false).is_err());
        assert!(endpoint_url("https://127.0.0.1:2379", false).is_err());
        assert_eq!(
            endpoint_url("127.0.0.1:2379", true).ok().as_deref(),
            Some("https://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_url("https://127.0.0.1:2379", true).ok().as_deref(),
            Some("https://127.0.0.1:2379")
        );
        assert!(endpoint_url("http://127.0.0.1:2379", true).is_err());
    }

    #[test]
    fn prng_is_uniform_enough() {
        let mut r = SplitMix64(1);
        let reads = (0..10_000).filter(|_| r.next_f64() < 0.9).count();
        assert!((8_800..9_200).contains(&reads), "{reads}");
    }
}
