//! TLS and mutual TLS on the client and peer ports (issue 17): a TLS cluster serves etcdctl
//! with the CA and a client certificate and nothing else; a member whose peer certificate
//! another CA signed, or with a CN other than `--peer-cert-allowed-cn`, can neither join nor
//! exchange messages, and the logs say why; plaintext to a TLS port fails; bad certificate
//! files stop a member at start with one line naming the flag and the file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{etcdctl_flags, serve_flags, Ca, Pair};
use common::{etcdctl, etcdctl_available, etcdctl_ok, Cluster, PATIENCE};

/// A 3-member cluster with TLS and certificate authentication on both ports, every member
/// with `member`'s certificate and the flags `more`. Not started.
fn tls_cluster(ca: &Ca, member: &Pair, more: &[&str]) -> Cluster {
    let mut c = Cluster::prepare_with_scheme(3, &[], "https");
    let mut flags = serve_flags(&ca.cert, member);
    flags.extend(more.iter().map(|s| s.to_string()));
    for m in &mut c.members {
        m.extra_args = flags.clone();
    }
    c
}

fn ctl(c: &Cluster, i: usize, tls: &[String], args: &[&str]) -> common::CtlOutput {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    etcdctl(&c.endpoint(i), &all, "")
}

fn ctl_ok(c: &Cluster, i: usize, tls: &[String], args: &[&str]) -> common::CtlOutput {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    etcdctl_ok(&c.endpoint(i), &all, "")
}

/// Waits until member `i`'s log has a line containing every one of `needles`; that line.
fn wait_log_line(c: &Cluster, i: usize, needles: &[&str]) -> String {
    wait_any_log_line(c, &[i], needles)
}

/// Waits until the log of one of `members` has a line containing every one of `needles`;
/// that line.
fn wait_any_log_line(c: &Cluster, members: &[usize], needles: &[&str]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let logs: Vec<String> = members
            .iter()
            .map(|&i| std::fs::read_to_string(c.log_path(i)).unwrap_or_default())
            .collect();
        let mut lines = logs.iter().flat_map(|l| l.lines());
        if let Some(line) = lines.find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        if Instant::now() > deadline {
            let near: Vec<&str> = (logs.iter().flat_map(|l| l.lines()))
                .filter(|l| l.contains(needles[0]))
                .collect();
            panic!("no log of {members:?} had a line with {needles:?}; lines with the first: {near:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether member `i`'s own state machine has `key` (a serializable read, so a member cut off
/// from the leader answers too).
fn has_key(c: &Cluster, i: usize, tls: &[String], key: &str) -> bool {
    let out = ctl(
        c,
        i,
        tls,
        &["get", "--consistency=s", "--print-value-only", key],
    );
    out.ok && !out.stdout.trim().is_empty()
}

#[test]
fn a_tls_cluster_serves_etcdctl_with_the_ca_and_a_client_certificate_only() {
    if !etcdctl_available() {
        return;
    }
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let client = ca.client(pki.path(), "client", "alice");
    let mut c = tls_cluster(&ca, &member, &["--peer-cert-allowed-cn", "skiff-member"]);
    for i in 0..3 {
        c.spawn(i);
    }
    let tls = etcdctl_flags(&ca.cert, &client);

    // A put through every member: the followers forward theirs to the leader over the peer
    // port's TLS, and every member applies all three.
    for i in 0..3 {
        let key = format!("k{i}");
        ctl_ok(&c, i, &tls, &["put", &key, "v"]);
    }
    for i in 0..3 {
        let out = ctl_ok(&c, i, &tls, &["get", "--prefix", "k", "--keys-only"]);
        assert_eq!(
            out.stdout.split_whitespace().collect::<Vec<_>>(),
            ["k0", "k1", "k2"],
            "member {i}"
        );
    }
    let list = ctl_ok(&c, 0, &tls, &["member", "list"]);
    assert_eq!(
        list.stdout.matches("https://127.0.0.1:").count(),
        6,
        "{}",
        list.stdout
    );

    // Without a client certificate, without the CA, or without TLS at all: refused.
    let ca_only = vec![format!("--cacert={}", ca.cert.display())];
    let no_ca = tls[1..].to_vec();
    for (what, flags) in [
        ("no client certificate", ca_only),
        ("no CA", no_ca),
        ("plaintext", Vec::new()),
    ] {
        let out = ctl(&c, 0, &flags, &["get", "k0"]);
        assert!(!out.ok, "{what}: {}{}", out.stdout, out.stderr);
        assert!(!out.stdout.contains("k0"), "{what}: {}", out.stdout);
    }
    wait_log_line(
        &c,
        0,
        &["TLS handshake failed", "port=\"client\"", "no certificates"],
    );

    // The HTTP endpoints speak TLS too, with the same client certificate.
    if common::tool_available("curl", "--version", "curl", "SKIFF_SKIP_CURL") {
        let curl = |args: &[&str]| {
            Command::new("curl")
                .args(["-s", "--max-time", "10"])
                .args(args)
                .output()
                .expect("run curl")
        };
        let url = format!("https://{}/health", c.endpoint(0));
        let ok = curl(&[
            "--cacert",
            &ca.cert.display().to_string(),
            "--cert",
            &client.cert.display().to_string(),
            "--key",
            &client.key.display().to_string(),
            &url,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout),
            r#"{"health":"true","reason":""}"#
        );
        let plain = curl(&[&format!("http://{}/health", c.endpoint(0))]);
        assert!(
            !String::from_utf8_lossy(&plain.stdout).contains("health"),
            "plaintext HTTP to the TLS port"
        );
    }

    // Plaintext gRPC to the peer port reaches no Raft service.
    let rt = common::runtime();
    let answered = rt.block_on(async {
        let url = format!("http://127.0.0.1:{}", c.members[1].peer_port);
        let channel = common::channel(&url).await?;
        let mut raft = server::pb::skiff::raft::v1::raft_client::RaftClient::new(channel);
        let mut request = tonic::Request::new(server::pb::skiff::raft::v1::ProbeRequest {
            cluster_id: 1,
            from: 1,
        });
        request.set_timeout(Duration::from_secs(5));
        raft.probe(request).await.ok()
    });
    assert!(answered.is_none(), "plaintext Probe answered: {answered:?}");
    wait_log_line(&c, 1, &["TLS handshake failed", "port=\"peer\""]);
}

#[test]
fn a_member_with_a_certificate_of_another_ca_cannot_exchange_messages() {
    if !etcdctl_available() {
        return;
    }
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let foreign = Ca::new(pki.path(), "foreign-ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let intruder = foreign.member(pki.path(), "intruder", "skiff-member");
    let client = ca.client(pki.path(), "client", "alice");
    let mut c = Cluster::prepare_with_scheme(3, &[], "https");
    for i in 0..3 {
        // The third member trusts the right CA, but its peer certificate is the other CA's;
        // its client port is fine, so that it can be asked what it has.
        let peer = if i == 2 { &intruder } else { &member };
        let mut flags = serve_flags(&ca.cert, &member);
        flags[8] = peer.cert.display().to_string();
        flags[10] = peer.key.display().to_string();
        assert_eq!(flags[7], "--peer-cert-file");
        c.members[i].extra_args = flags;
    }
    for i in 0..3 {
        c.spawn(i);
    }
    let tls = etcdctl_flags(&ca.cert, &client);
    // The other two make a quorum; the third is reached by no message and reaches no one.
    ctl_ok(&c, 0, &tls, &["put", "greeting", "hello"]);
    assert!(
        has_key(&c, 1, &tls, "greeting") || {
            std::thread::sleep(Duration::from_secs(2));
            has_key(&c, 1, &tls, "greeting")
        }
    );
    // Refused in the handshake, both ways: its certificate by the others' peer ports, and the
    // others by it as clients (its server certificate is not of the CA they trust).
    let refused = wait_any_log_line(
        &c,
        &[0, 1],
        &["TLS handshake failed", "port=\"peer\"", "UnknownIssuer"],
    );
    assert!(refused.contains("invalid peer certificate"), "{refused}");
    // The leader, whichever it is, fails to reach the third (its own check of the third's
    // certificate says why); the third fails to reach anyone with its votes (what it sees of
    // the others' refusal varies with the timing of TLS 1.3's alert: the refusing side's line
    // above is the one that says why).
    wait_any_log_line(&c, &[0, 1], &["stream to peer broke", "UnknownIssuer"]);
    wait_log_line(&c, 2, &["stream to peer broke"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !has_key(&c, 2, &tls, "greeting"),
        "the member with the foreign certificate got the data"
    );
    let status = ctl_ok(&c, 2, &tls, &["endpoint", "status", "-w", "fields"]);
    assert!(
        status.stdout.contains(r#""Leader" : 0"#),
        "it knows no leader: {}",
        status.stdout
    );
}

#[test]
fn a_member_whose_cn_is_not_allowed_cannot_join() {
    if !etcdctl_available() {
        return;
    }
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let stranger = ca.member(pki.path(), "stranger", "someone-else");
    let client = ca.client(pki.path(), "client", "alice");
    let mut c = tls_cluster(&ca, &member, &["--peer-cert-allowed-cn", "skiff-member"]);
    for i in 0..3 {
        c.spawn(i);
    }
    let tls = etcdctl_flags(&ca.cert, &client);
    ctl_ok(&c, 0, &tls, &["put", "k", "v"]);

    // Added with `member add`, then started with a certificate of the right CA but another CN.
    let new = c.new_member("m4");
    c.members[new].extra_args = serve_flags(&ca.cert, &stranger);
    let url = c.peer_url(new);
    let added = ctl_ok(
        &c,
        0,
        &tls,
        &["member", "add", "m4", &format!("--peer-urls={url}")],
    );
    let initial = added
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {}", added.stdout))
        .to_string();
    c.spawn_joining(new, &initial);
    let status = c.wait_exit(new).expect("the refused member gives up");
    assert!(!status.success());
    // Refused by the member it asked (the first in --initial-cluster it has, but any may be).
    let refused = wait_any_log_line(
        &c,
        &[0, 1, 2],
        &["TLS handshake failed", "port=\"peer\"", "someone-else"],
    );
    assert!(refused.contains("not the allowed CN"), "{refused}");
    // Its last attempt's error (an alert, or the connection closed, depending on timing).
    wait_log_line(
        &c,
        new,
        &[
            "no member in --initial-cluster told this member",
            "transport error",
        ],
    );
    // The cluster is unharmed.
    ctl_ok(&c, 1, &tls, &["put", "k2", "v2"]);
}

/// Runs `skiff serve` with `args` on free ports in `dir`; its exit status and stderr.
fn serve_fails(dir: &Path, args: &[String]) -> String {
    let (client, peer) = (common::free_port(), common::free_port());
    let peer_url = format!("https://127.0.0.1:{peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &format!("https://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("https://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "{args:?} started");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_certificate_files_stop_the_member_with_one_line_naming_the_flag_and_file() {
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let other = ca.member(pki.path(), "other", "skiff-member");
    let good = serve_flags(&ca.cert, &member);
    let with = |index: usize, value: &Path| {
        let mut flags = good.clone();
        flags[index] = value.display().to_string();
        flags
    };
    let missing = pki.path().join("missing.pem");
    let unreadable = pki.path(); // a directory
    for (flags, flag, file) in [
        (with(1, &missing), "--cert-file", missing.as_path()),
        (with(3, &other.key), "--key-file", other.key.as_path()),
        (
            with(5, &member.key),
            "--trusted-ca-file",
            member.key.as_path(),
        ),
        (with(10, &missing), "--peer-key-file", missing.as_path()),
        (with(8, unreadable), "--peer-cert-file", unreadable),
        (
            with(12, &member.key),
            "--peer-trusted-ca-file",
            member.key.as_path(),
        ),
    ] {
        let stderr = serve_fails(pki.path(), &flags);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{flag}: {stderr}");
        let file = file.display().to_string();
        assert!(
            lines[0].contains(flag) && lines[0].contains(&file),
            "{flag} {file}: {stderr}"
        );
    }
    // https:// without certificates, and certificate authentication without a CA.
    let stderr = serve_fails(pki.path(), &[]);
    assert!(stderr.contains("--cert-file, --key-file"), "{stderr}");
    let no_ca: Vec<String> = good[..4]
        .iter()
        .cloned()
        .chain(["--client-cert-auth".to_string()])
        .chain(good[7..11].iter().cloned())
        .collect();
    let stderr = serve_fails(pki.path(), &no_ca);
    assert!(
        stderr.contains("--client-cert-auth requires --trusted-ca-file"),
        "{stderr}"
    );
}

#[test]
fn skiff_dev_tls_makes_certificates_and_prints_the_etcdctl_flags() {
    if !etcdctl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("skiff-data");
    let base = common::free_port_run(6);
    let mut dev = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "dev",
            "--tls",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skiff dev --tls");
    // Killed however the test ends; its members stop when their stdin pipe closes.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = dev.stdout.take().expect("stdout");
    let _guard = Guard(dev);
    use std::io::BufRead;
    let printed: Vec<String> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("Ctrl-C"))
        .collect();
    let line = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TLS=\""))
        .unwrap_or_else(|| panic!("no TLS flags printed: {printed:#?}"));
    let flags: Vec<String> = line
        .split('"')
        .next()
        .expect("quoted")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let tls_dir = data.join("tls");
    assert_eq!(
        flags,
        [
            format!("--cacert={}", tls_dir.join("ca.pem").display()),
            format!("--cert={}", tls_dir.join("client.pem").display()),
            format!("--key={}", tls_dir.join("client-key.pem").display()),
        ]
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("https://127.0.0.1:{base}"))),
        "{printed:#?}"
    );
    let eps = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + 2 * i))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["put", "greeting", "hello"]);
    assert_eq!(etcdctl_ok(&eps, &args, "").stdout, "OK\n");
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["get", "greeting"]);
    assert_eq!(etcdctl_ok(&eps, &args, "").stdout, "greeting\nhello\n");
    // The members require the client certificate.
    let without = etcdctl(&eps, &[&flags[0], "get", "greeting"], "");
    assert!(!without.ok, "{}", without.stdout);

    // The client certificate, signed by the same CA, does not open the peer port: only the
    // member certificate's CN is allowed there. The member certificate gets an answer (the
    // made-up cluster id is refused, but by the Raft service, past the handshake).
    let rt = common::runtime();
    let peer_port = base + 1;
    let probe = |cert: &str, key: &str| {
        let pem = |name: &str| std::fs::read(tls_dir.join(name)).expect("read pem");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem("ca.pem")))
            .identity(tonic::transport::Identity::from_pem(pem(cert), pem(key)))
            .domain_name("localhost");
        rt.block_on(async {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{peer_port}"))
                    .expect("url")
                    .tls_config(tls)
                    .expect("tls")
                    .connect_timeout(Duration::from_secs(5));
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => return Err(format!("connect: {e:?}")),
            };
            let mut raft = server::pb::skiff::raft::v1::raft_client::RaftClient::new(channel);
            let mut request = tonic::Request::new(server::pb::skiff::raft::v1::ProbeRequest {
                cluster_id: 1,
                from: 1,
            });
            request.set_timeout(Duration::from_secs(5));
            match raft.probe(request).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(()),
                Err(s) => Err(format!("{s:?}")),
            }
        })
    };
    probe("member.pem", "member-key.pem").expect("a member opens the peer port");
    let refused = probe("client.pem", "client-key.pem");
    assert!(
        refused.is_err(),
        "the client certificate opened the peer port"
    );
}

/// With `--client-cert-auth`, a request without a token is the user its certificate's CN
/// names (etcd's `AuthInfoFromTLS`): alice, with read on `/a/` only, reads `/a/x` and is
/// refused writing it and reading `/b/x`, with no `--user` at all; a token still wins.
#[test]
fn the_client_certificate_cn_is_the_user_under_client_cert_auth() {
    if !etcdctl_available() {
        return;
    }
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let alice = ca.client(pki.path(), "alice", "alice");
    let mut c = tls_cluster(&ca, &member, &[]);
    for i in 0..3 {
        c.spawn(i);
    }
    let tls = etcdctl_flags(&ca.cert, &alice);
    let root = |args: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        ctl_ok(&c, 0, &tls, &all)
    };
    ctl_ok(&c, 0, &tls, &["put", "/a/x", "1"]);
    ctl_ok(&c, 0, &tls, &["put", "/b/x", "2"]);
    ctl_ok(&c, 0, &tls, &["user", "add", "root:rootpw"]);
    ctl_ok(&c, 0, &tls, &["user", "grant-role", "root", "root"]);
    ctl_ok(&c, 0, &tls, &["user", "add", "alice:alicepw"]);
    ctl_ok(&c, 0, &tls, &["role", "add", "reader"]);
    ctl_ok(
        &c,
        0,
        &tls,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/a/",
            "--prefix=true",
        ],
    );
    ctl_ok(&c, 0, &tls, &["user", "grant-role", "alice", "reader"]);
    ctl_ok(&c, 0, &tls, &["auth", "enable"]);

    for i in 0..3 {
        let read = ctl_ok(&c, i, &tls, &["get", "/a/x", "--print-value-only"]);
        assert_eq!(read.stdout.trim(), "1", "member {i}");
        let write = ctl(&c, i, &tls, &["put", "/a/x", "3"]);
        assert!(!write.ok, "member {i}: alice may not write");
        assert!(
            write.stderr.contains("permission denied"),
            "member {i}: {}",
            write.stderr
        );
        let other = ctl(&c, i, &tls, &["get", "/b/x"]);
        assert!(
            !other.ok && other.stderr.contains("permission denied"),
            "{}",
            other.stderr
        );
    }
    // A token (root's password login) wins over the certificate's name.
    let as_root = root(&["get", "/b/x", "--print-value-only"]);
    assert_eq!(as_root.stdout.trim(), "2");
}

/// A peer port told to authenticate its peers (`--peer-client-cert-auth`,
/// `--peer-trusted-ca-file`) but listening on `http://` would take Raft messages from anyone:
/// the member refuses to start, naming the flags.
#[test]
fn peer_authentication_flags_on_a_plain_peer_port_stop_the_member() {
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let port = common::free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("serve")
        .arg("--data-dir")
        .arg(pki.path().join("data"))
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .arg("--peer-trusted-ca-file")
        .arg(&ca.cert)
        .arg("--peer-client-cert-auth")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer-client-cert-auth"), "{err}");
    assert!(err.contains("https://"), "{err}");
}

/// One address cannot hold every TLS handshake slot of a port: with
/// `HANDSHAKES_PER_IP_MAX` stalled handshakes from 127.0.0.1 (connections that send
/// nothing), a new connection from it is closed at once, while one from 127.0.0.2 is served;
/// once the stalled ones go, 127.0.0.1 is served again.
#[test]
fn one_address_cannot_hold_every_tls_handshake_slot() {
    if !etcdctl_available() {
        return;
    }
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(pki.path(), "ca");
    let member = ca.member(pki.path(), "member", "skiff-member");
    let client = ca.client(pki.path(), "client", "alice");
    let mut c = tls_cluster(&ca, &member, &[]);
    for i in 0..3 {
        c.spawn(i);
    }
    let tls = etcdctl_flags(&ca.cert, &client);
    ctl_ok(&c, 0, &tls, &["put", "k", "v"]);
    let port = c.members[0].client_port;
    let rt = common::runtime();
    let get_from = |from: &str| {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&ca.cert).expect("ca"),
            ))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(&client.cert).expect("cert"),
                std::fs::read(&client.key).expect("key"),
            ))
            .domain_name("localhost");
        let from: std::net::IpAddr = from.parse().expect("ip");
        rt.block_on(async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                    .expect("url")
                    .local_address(Some(from))
                    .tls_config(config)
                    .expect("tls")
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(3))
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e:?}"))?;
            let mut kv = server::pb::etcdserverpb::kv_client::KvClient::new(channel);
            kv.range(server::pb::etcdserverpb::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
        })
    };
    get_from("127.0.0.1").expect("served before");
    let stalled: Vec<std::net::TcpStream> = (0..server::tls::HANDSHAKES_PER_IP_MAX)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // The member has accepted them (and waits for their hellos).
    std::thread::sleep(Duration::from_millis(300));
    let refused = get_from("127.0.0.1");
    assert!(
        refused.is_err(),
        "a 33rd handshake from one address was served"
    );
    get_from("127.0.0.2").expect("another address is served");
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_from("127.0.0.1").is_err() {
        assert!(Instant::now() < deadline, "127.0.0.1 not served again");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_log_line(
        &c,
        0,
        &["too many TLS handshakes in progress from this address"],
    );
}
