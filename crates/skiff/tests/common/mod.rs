//! Test harness: a real cluster of `skiff serve` processes on loopback ports. Children are
//! killed when the [`Cluster`] is dropped, also when a test fails; a failing test prints the
//! tail of every member's log.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::cluster_client::ClusterClient;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

pub mod certs;

/// How long a cluster may take to elect a leader, catch up or answer; generous on purpose (the
/// tests check behaviour, never speed).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    /// For a member added to the running cluster (`member add`): the `--initial-cluster` it
    /// starts with, under `--initial-cluster-state existing`.
    pub joins_with: Option<String>,
    /// The host in the peer URL the member advertises (it listens on 127.0.0.1 whatever this
    /// says): `127.0.0.1` unless a test gives a name.
    pub peer_host: String,
    /// Flags added to this member's command line only, after the cluster's (a test gives one
    /// member other certificates).
    pub extra_args: Vec<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    initial_cluster: String,
    /// Flags added to every member's `skiff serve`.
    extra_args: Vec<String>,
    /// The scheme of every client and peer URL: `http`, or `https` for TLS (the test gives
    /// the certificate flags).
    scheme: &'static str,
}

/// The ports [`free_port`] hands out: the 20,000 (at most) below the first port of the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 unless configured), so no outgoing
/// connection (a peer dialling, etcdctl, a client) can be given the port between the test
/// choosing it and the member binding it. Ports from the ephemeral range (`bind(":0")`, then
/// release) were taken that way in CI.
fn port_range() -> std::ops::Range<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let end = ephemeral_low.max(2024);
    end.saturating_sub(20000).max(1024)..end
}

/// A loopback port nobody listens on now, not handed out before by this test process (for
/// its first [`port_range`]-many ports): a process-wide counter walks the range from a start
/// derived from the process id (so test binaries run one after another do not start on the
/// same ports), skipping ports that are taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let range = port_range();
    let span = u32::from(range.end - range.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = range.start + u16::try_from(offset).expect("offset below the span");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {range:?}");
}

/// `n` distinct free ports (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// A port `base` such that `base..base + n` are all free now and handed out to no one else
/// in this process (for `skiff dev --base-port`).
pub fn free_port_run(n: u16) -> u16 {
    let end = port_range().end;
    'search: for _ in 0..1000 {
        let base = free_port();
        for k in 1..n {
            if base
                .checked_add(k)
                .is_none_or(|p| p >= end || free_port() != p)
            {
                continue 'search;
            }
        }
        return base;
    }
    panic!("no run of {n} free loopback ports in {:?}", port_range());
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with `extra_args` added to every member's command line.
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let mut c = Cluster::prepare_with(n, extra_args);
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Like [`Cluster::start_with`], but starts no member: prepare their data dirs, then
    /// [`Cluster::spawn`] each.
    pub fn prepare_with(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::prepare_with_scheme(n, extra_args, "http")
    }

    /// Like [`Cluster::prepare_with`], with every URL of `scheme` (`https`: TLS on both
    /// ports, with the certificate flags in `extra_args` or each member's
    /// [`Member::extra_args`]).
    pub fn prepare_with_scheme(n: usize, extra_args: &[&str], scheme: &'static str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
                joins_with: None,
                peer_host: "127.0.0.1".into(),
                extra_args: Vec::new(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir,
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            scheme,
        }
    }

    /// The `--initial-cluster` the members start with.
    pub fn initial_cluster_flag(&self) -> &str {
        &self.initial_cluster
    }

    /// Replaces the flags added to every member's command line from the next start on.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    }

    /// A new member `name` with fresh ports, not started: its index. Add it to the cluster
    /// (MemberAdd with [`Cluster::peer_url`]) and start it with [`Cluster::spawn_joining`].
    pub fn new_member(&mut self, name: &str) -> usize {
        let ports = free_ports(2);
        self.members.push(Member {
            name: name.to_string(),
            client_port: ports[0],
            peer_port: ports[1],
            child: None,
            joins_with: None,
            peer_host: "127.0.0.1".into(),
            extra_args: Vec::new(),
        });
        self.members.len() - 1
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("{}://{}:{}", self.scheme, m.peer_host, m.peer_port)
    }

    /// Starts member `i` with `--initial-cluster-state existing` and `initial_cluster` (what
    /// `member add` printed), to join the running cluster.
    pub fn spawn_joining(&mut self, i: usize, initial_cluster: &str) {
        self.members[i].joins_with = Some(initial_cluster.to_string());
        self.spawn(i);
    }

    /// The fault file of member `i` (see `skiff serve --fault-file`).
    pub fn fault_file(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.faults", self.members[i].name))
    }

    /// Cuts member `i` off from every other member, in both directions.
    pub fn isolate(&self, i: usize) {
        let others: Vec<&str> = (0..self.members.len())
            .filter(|&j| j != i)
            .map(|j| self.members[j].name.as_str())
            .collect();
        std::fs::write(self.fault_file(i), others.join(" ")).expect("write fault file");
        for j in (0..self.members.len()).filter(|&j| j != i) {
            std::fs::write(self.fault_file(j), &self.members[i].name).expect("write fault file");
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        for j in 0..self.members.len() {
            let _ = std::fs::remove_file(self.fault_file(j));
        }
    }

    /// Member `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// Starts (or restarts) member `i` with its data dir.
    pub fn spawn(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open log");
        let log_err = log.try_clone().expect("dup log");
        let m = &self.members[i];
        let client = format!("{}://127.0.0.1:{}", self.scheme, m.client_port);
        let peer = format!("{}://127.0.0.1:{}", self.scheme, m.peer_port);
        let advertised_peer = self.peer_url(i);
        let (initial_cluster, state) = match &m.joins_with {
            Some(joining) => (joining.as_str(), "existing"),
            None => (self.initial_cluster.as_str(), "new"),
        };
        // Fast elections unless a test sets its own timing.
        let timing_given =
            self.extra_args.iter().chain(&m.extra_args).any(|a| {
                a.starts_with("--election-timeout") || a.starts_with("--heartbeat-interval")
            });
        let timing: &[&str] = if timing_given {
            &[]
        } else {
            &["--heartbeat-interval", "50", "--election-timeout", "500"]
        };
        // No NOSPACE alarm for a short disk unless a test asks (a small TMPDIR must not
        // stop every test's writes).
        let reserve: &[&str] = if self
            .extra_args
            .iter()
            .chain(&m.extra_args)
            .any(|a| a.starts_with("--experimental-disk-reserve-bytes"))
        {
            &[]
        } else {
            &["--experimental-disk-reserve-bytes", "0"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("serve")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &advertised_peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(timing)
            .args(reserve)
            .args(&self.extra_args)
            .args(&m.extra_args)
            .arg("--stop-on-stdin-eof")
            .arg("--fault-file")
            .arg(self.fault_file(i))
            // The member's default level (info), or what a test's --log-level says.
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn skiff serve");
        self.members[i].child = Some(child);
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until member `i`'s process exits on its own; its exit status, or `None` if it
    /// still runs after [`PATIENCE`].
    pub fn wait_exit(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let child = self.members[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.members[i].child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `127.0.0.1:port,...` of every member (no scheme; see `skiff dev`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    pub async fn kv(&self, i: usize) -> Option<KvClient<Channel>> {
        let ch = channel(&format!("http://{}", self.endpoint(i))).await?;
        Some(KvClient::new(ch))
    }

    pub async fn status(&self, i: usize) -> Option<epb::StatusResponse> {
        let ch = channel(&format!("http://{}", self.endpoint(i))).await?;
        let mut c = MaintenanceClient::new(ch);
        let mut req = tonic::Request::new(epb::StatusRequest {});
        req.set_timeout(Duration::from_secs(5));
        c.status(req).await.ok().map(|r| r.into_inner())
    }

    /// Index of the member every live member agrees leads, once they do.
    pub async fn wait_leader(&self, live: &[usize]) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut leaders = Vec::new();
            let mut ids = Vec::new();
            for &i in live {
                if let Some(s) = self.status(i).await {
                    leaders.push(s.leader);
                    ids.push((s.header.map(|h| h.member_id).unwrap_or(0), i));
                }
            }
            if leaders.len() == live.len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                if let Some((_, i)) = ids.iter().find(|(id, _)| *id == leaders[0]) {
                    return *i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {live:?} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member list member `i` serves, once it answers.
    pub async fn member_list(&self, i: usize) -> Option<epb::MemberListResponse> {
        let ch = channel(&format!("http://{}", self.endpoint(i))).await?;
        let mut c = ClusterClient::new(ch);
        let mut req = tonic::Request::new(epb::MemberListRequest::default());
        req.set_timeout(Duration::from_secs(5));
        c.member_list(req).await.ok().map(|r| r.into_inner())
    }

    /// Waits until every member of `live` lists every member with its client URLs: each has
    /// published its description (an entry of the log each member adds once after it starts;
    /// tests that count log entries wait for it first).
    pub async fn wait_published(&self, live: &[usize]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut done = true;
            for &i in live {
                let list = self.member_list(i).await;
                done &= list.is_some_and(|l| {
                    l.members.len() == live.len()
                        && l.members.iter().all(|m| !m.client_ur_ls.is_empty())
                });
            }
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not publish within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn print_logs(&self) {
        for i in 0..self.members.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {} log (last {} lines) -----",
                self.members[i].name,
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

pub async fn channel(url: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()
}

/// Retries `put` against member `i` until it succeeds (bounded by [`PATIENCE`]).
pub async fn put_retrying(c: &Cluster, i: usize, key: &str, value: &str) -> epb::PutResponse {
    let request = epb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    put_request_retrying(c, i, request).await
}

/// Retries `request` against member `i` until it succeeds (bounded by [`PATIENCE`]).
pub async fn put_request_retrying(
    c: &Cluster,
    i: usize,
    request: epb::PutRequest,
) -> epb::PutResponse {
    let key = String::from_utf8_lossy(&request.key).into_owned();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(mut kv) = c.kv(i).await {
            match kv.put(request.clone()).await {
                Ok(r) => return r.into_inner(),
                Err(s) => eprintln!("put {key} via member {i}: {s:?}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "put {key} via member {i} never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `request` served by member `i` from its own state machine (serializable); `None` if the
/// member did not answer.
pub async fn local_range(
    c: &Cluster,
    i: usize,
    request: epb::RangeRequest,
) -> Option<epb::RangeResponse> {
    let mut kv = c.kv(i).await?;
    let request = epb::RangeRequest {
        serializable: true,
        ..request
    };
    Some(kv.range(request).await.ok()?.into_inner())
}

/// The value of `key` in member `i`'s own state machine; `None` if absent or no answer.
pub async fn local_get(c: &Cluster, i: usize, key: &str) -> Option<Vec<u8>> {
    let r = local_range(
        c,
        i,
        epb::RangeRequest {
            key: key.into(),
            ..Default::default()
        },
    )
    .await?;
    r.kvs.into_iter().next().map(|kv| kv.value)
}

/// Output of one etcdctl run.
#[derive(Debug)]
pub struct CtlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Whether etcdctl is usable; panics with instructions if it is missing, unless
/// `SKIFF_SKIP_ETCDCTL=1`, in which case the caller skips.
pub fn etcdctl_available() -> bool {
    tool_available("etcdctl", "version", "etcd-client", "SKIFF_SKIP_ETCDCTL")
}

/// Whether `program` runs (`program arg` succeeds); panics saying which Debian `package` to
/// install, unless `skip_var=1`, in which case the caller skips.
pub fn tool_available(program: &str, arg: &str, package: &str, skip_var: &str) -> bool {
    let found = Command::new(program)
        .arg(arg)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var(skip_var).as_deref() == Ok("1") {
        eprintln!("{program} not found; skipping because {skip_var}=1");
        return false;
    }
    panic!(
        "{program} is not on PATH: install it (Debian: apt-get install -y {package}) \
         or set {skip_var}=1 to skip the tests that need it"
    );
}

/// A single-threaded runtime for a synchronous test that drives etcdctl and makes a few gRPC
/// calls of its own.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs etcdctl against `endpoints` with `args`, feeding `stdin`; killed after 60 s.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: &str) -> CtlOutput {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=5s", "--command-timeout=20s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    let out = child.wait_with_output().expect("etcdctl output");
    CtlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs etcdctl until it succeeds (bounded by [`PATIENCE`]).
pub fn etcdctl_ok(endpoints: &str, args: &[&str], stdin: &str) -> CtlOutput {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = etcdctl(endpoints, args, stdin);
        if out.ok {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} kept failing: {}{}",
            out.stdout,
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What `etcdctl member add` prints as `ETCD_INITIAL_CLUSTER`, from MemberAdd's answer: every
/// member's name (the new one's given here) and peer URL.
pub fn initial_cluster(resp: &epb::MemberAddResponse, new_name: &str) -> String {
    let new_id = resp.member.as_ref().expect("member").id;
    let mut parts = Vec::new();
    for m in &resp.members {
        for u in &m.peer_ur_ls {
            let name = if m.id == new_id { new_name } else { &m.name };
            parts.push(format!("{name}={u}"));
        }
    }
    parts.join(",")
}

/// `GET path` over plain HTTP/1.1 on a local port: the whole answer, head and body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
