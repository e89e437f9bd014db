//! The same etcdctl commands against a real etcd 3.4 and against Skiff: what they print must
//! have the same shape (lines with ids, hashes, sizes and addresses normalised; JSON with the
//! same fields of the same types), so that scripts and runbooks written for etcd work. Needs
//! Debian's `etcd-server` (CI installs it); panics with instructions if it is missing, unless
//! `SKIFF_SKIP_ETCD=1`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_available, Cluster, PATIENCE};
use serde_json::Value;

/// A one-member etcd on loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_available() -> bool {
    common::tool_available("etcd", "--version", "etcd-server", "SKIFF_SKIP_ETCD")
}

use common::free_port;

impl Etcd {
    fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    fn start_with(extra_args: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, p) = (free_port(), free_port());
        let client = format!("127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .args(["--name", "e1"])
            .arg("--data-dir")
            .arg(dir.path().join("e1"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e1={peer}")])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let e = Etcd {
            child,
            client,
            _dir: dir,
        };
        wait_ready(&e.client, "etcd");
        e
    }
}

/// Waits until `endpoint` takes a write.
fn wait_ready(endpoint: &str, who: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !etcdctl(endpoint, &["put", "ready", "1"], "").ok {
        assert!(Instant::now() < deadline, "{who} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `text` with every word holding a digit (ids, hashes, sizes, revisions, ports) as `N`, so
/// that two systems' lines compare by their wording.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        // Numbers, and hex words of a UUID's or an id's lengths ("affd" in a client UUID
        // has no digit to give it away).
        let hex = word
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            && matches!(word.len(), 4 | 8 | 12 | 16);
        if hex || word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    // Addresses ("N.N.N.N:N"), decimals and versions ("N.N.N") read as one number; runs of
    // spaces as one (etcdctl pads hex ids to 16 places: "cluster  dc67d030da13e6f").
    loop {
        let joined = out
            .replace("N.N", "N")
            .replace("N:N", "N")
            .replace("  ", " ");
        if joined == out {
            return out;
        }
        out = joined;
    }
}

/// The lines of `text`, sorted: for lists whose order is the data's (members by their
/// random ids).
fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}

/// The shape of a JSON value: field names and value kinds, the distinct shapes of arrays'
/// elements.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect::<serde_json::Map<_, _>>(),
        ),
        // The distinct shapes of the elements, in a fixed order (the elements' order is
        // the data's: members sorted by their random ids).
        Value::Array(a) => {
            let distinct: std::collections::BTreeMap<String, Value> =
                a.iter().map(shape).map(|s| (s.to_string(), s)).collect();
            Value::Array(distinct.into_values().collect())
        }
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Null => Value::Null,
    }
}

/// Runs `args` on both; returns (etcd's output, Skiff's), each `ok` as asserted.
fn both(etcd: &Etcd, skiff: &str, args: &[&str]) -> (String, String) {
    each(etcd, args, skiff, args)
}

/// Runs `etcd_args` on etcd and `skiff_args` on Skiff (where names, ids or files differ);
/// returns their outputs, each `ok` as asserted.
fn each(etcd: &Etcd, etcd_args: &[&str], skiff: &str, skiff_args: &[&str]) -> (String, String) {
    let e = etcdctl(&etcd.client, etcd_args, "");
    let s = etcdctl(skiff, skiff_args, "");
    assert!(
        e.ok,
        "etcd: etcdctl {etcd_args:?}: {}{}",
        e.stdout, e.stderr
    );
    assert!(
        s.ok,
        "skiff: etcdctl {skiff_args:?}: {}{}",
        s.stdout, s.stderr
    );
    (e.stdout, s.stdout)
}

/// Asserts that two JSON outputs of `what` have the same shape.
fn same_shape(what: &str, e: &str, s: &str) {
    let parse = |who: &str, out: &str| -> Value {
        serde_json::from_str(out).unwrap_or_else(|err| panic!("{who}: {err}: {out}"))
    };
    assert_eq!(
        shape(&parse("etcd", e)),
        shape(&parse("skiff", s)),
        "{what}\netcd:\n{e}\nskiff:\n{s}"
    );
}

fn same_lines(etcd: &Etcd, skiff: &str, args: &[&str]) {
    let (e, s) = both(etcd, skiff, args);
    assert_eq!(
        normalise(&e),
        normalise(&s),
        "etcdctl {args:?}\netcd:\n{e}\nskiff:\n{s}"
    );
}

fn same_json(etcd: &Etcd, skiff: &str, args: &[&str]) {
    let (e, s) = both(etcd, skiff, args);
    same_shape(&format!("etcdctl {args:?}"), &e, &s);
}

#[test]
fn etcdctl_prints_the_same_for_etcd_and_skiff() {
    if !etcdctl_available() || !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let skiff = Cluster::start(1);
    let ep = skiff.endpoint(0);
    wait_ready(&ep, "skiff");
    // The same history on both, so that optional fields are set alike.
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        both(&etcd, &ep, &["put", k, v]);
    }

    same_lines(&etcd, &ep, &["defrag"]);
    same_json(&etcd, &ep, &["endpoint", "hashkv", "-w", "json"]);
    same_lines(&etcd, &ep, &["endpoint", "hashkv"]);

    // A backup: the same lines, and a file etcdctl accepted (it checks the trailing sha256).
    let dir = tempfile::tempdir().expect("temp dir");
    let (e_file, s_file) = (dir.path().join("etcd.db"), dir.path().join("skiff.db"));
    let (e, s) = each(
        &etcd,
        &["snapshot", "save", &e_file.to_string_lossy()],
        &ep,
        &["snapshot", "save", &s_file.to_string_lossy()],
    );
    assert_eq!(
        normalise(&e.replace("etcd.db", "FILE")),
        normalise(&s.replace("skiff.db", "FILE")),
        "snapshot save\netcd:\n{e}\nskiff:\n{s}"
    );
    same_lines(&etcd, &ep, &["alarm", "list"]);
    same_json(&etcd, &ep, &["endpoint", "status", "-w", "json"]);
    same_json(&etcd, &ep, &["member", "list", "-w", "json"]);
    same_lines(&etcd, &ep, &["member", "list"]);
    same_json(&etcd, &ep, &["get", "a", "-w", "json"]);
    same_json(&etcd, &ep, &["lease", "grant", "60", "-w", "json"]);

    // Adding a learner prints the member, the whole list and the new member's flags.
    let learner = |port: u16| format!("--peer-urls=http://127.0.0.1:{port}");
    let (e_add, s_add) = each(
        &etcd,
        &["member", "add", "n2", "--learner", &learner(free_port())],
        &ep,
        &["member", "add", "n2", "--learner", &learner(free_port())],
    );
    assert_eq!(
        normalise(&e_add),
        normalise(&s_add),
        "member add\netcd:\n{e_add}\nskiff:\n{s_add}"
    );
    same_json(&etcd, &ep, &["member", "list", "-w", "json"]);
    let (e, s) = both(&etcd, &ep, &["member", "list"]);
    assert_eq!(
        sorted_lines(&normalise(&e)),
        sorted_lines(&normalise(&s)),
        "member list with a learner\netcd:\n{e}\nskiff:\n{s}"
    );

    // Removed again (etcd takes one learner at a time), then added with JSON output.
    let added_id = |out: &str| -> String {
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no id in {out:?}"))
            .to_string()
    };
    let (e_id, s_id) = (added_id(&e_add), added_id(&s_add));
    let (e, s) = each(
        &etcd,
        &["member", "remove", &e_id],
        &ep,
        &["member", "remove", &s_id],
    );
    assert_eq!(normalise(&e), normalise(&s));
    let (e_peer, s_peer) = (learner(free_port()), learner(free_port()));
    let (e, s) = each(
        &etcd,
        &["member", "add", "n3", "--learner", &e_peer, "-w", "json"],
        &ep,
        &["member", "add", "n3", "--learner", &s_peer, "-w", "json"],
    );
    same_shape("member add -w json", &e, &s);
    let (e, s) = both(&etcd, &ep, &["member", "list"]);
    assert_eq!(
        sorted_lines(&normalise(&e)),
        sorted_lines(&normalise(&s)),
        "member list with a learner\netcd:\n{e}\nskiff:\n{s}"
    );
}

/// Past a small space quota both refuse a put with the same message and list the same alarm.
#[test]
fn a_full_quota_reads_the_same_for_etcd_and_skiff() {
    if !etcdctl_available() || !etcd_available() {
        return;
    }
    let quota = ["--quota-backend-bytes", "3000000"];
    let etcd = Etcd::start_with(&quota);
    let skiff = Cluster::start_with(1, &quota);
    let ep = skiff.endpoint(0);
    wait_ready(&ep, "skiff");
    let value = "x".repeat(60_000);
    let fill = |endpoint: &str| -> String {
        for i in 0..400 {
            let out = etcdctl(endpoint, &["put", &format!("k{i}"), &value], "");
            if !out.ok {
                return out.stderr;
            }
        }
        panic!("{endpoint}: 24 MB went in under a 3 MB quota");
    };
    let (e, s) = (fill(&etcd.client), fill(&ep));
    assert!(
        e.contains("etcdserver: mvcc: database space exceeded") && normalise(&e) == normalise(&s),
        "etcd:\n{e}\nskiff:\n{s}"
    );
    same_lines(&etcd, &ep, &["alarm", "list"]);
    same_json(&etcd, &ep, &["alarm", "list", "-w", "json"]);
    same_json(&etcd, &ep, &["endpoint", "status", "-w", "json"]);
    same_lines(&etcd, &ep, &["alarm", "disarm"]);
}

/// The error line etcdctl prints last ("Error: ..."), without the client's retry logs
/// (timestamps and random ids).
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .rfind(|l| l.starts_with("Error:"))
        .unwrap_or(stderr)
        .to_string()
}

/// Runs `args` on both and asserts the same outcome: both succeed printing the same
/// (normalised) lines, or both fail with the same error line.
fn same_outcome(etcd: &Etcd, skiff: &str, args: &[&str]) {
    let e = etcdctl(&etcd.client, args, "");
    let s = etcdctl(skiff, args, "");
    assert_eq!(
        (e.ok, normalise(&e.stdout), error_line(&e.stderr)),
        (s.ok, normalise(&s.stdout), error_line(&s.stderr)),
        "etcdctl {args:?}\netcd:\n{}{}\nskiff:\n{}{}",
        e.stdout,
        e.stderr,
        s.stdout,
        s.stderr
    );
}

/// Users, roles, permissions and auth enable: the same transcript, and after enabling the
/// same answers to allowed and denied requests and to bad credentials.
#[test]
fn auth_transcripts_read_the_same_for_etcd_and_skiff() {
    if !etcdctl_available() || !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let skiff = Cluster::start(1);
    let ep = skiff.endpoint(0);
    wait_ready(&ep, "skiff");
    let root = "--user=root:rootpw";
    let alice = "--user=alice:alicepw";
    let transcript: &[&[&str]] = &[
        &["put", "/a/x", "1"],
        &["put", "/b/x", "2"],
        // Refused before there is a root user; nothing changes.
        &["auth", "enable"],
        &["user", "add", "root:rootpw"],
        &["user", "add", "root:again"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/a/",
            "--prefix=true",
        ],
        &["role", "grant-permission", "reader", "readwrite", "k1"],
        &[
            "role",
            "grant-permission",
            "reader",
            "write",
            "from",
            "--from-key",
        ],
        &["role", "grant-permission", "nobody", "read", "k"],
        &["role", "get", "reader"],
        &["role", "revoke-permission", "reader", "k1"],
        &["role", "revoke-permission", "reader", "k2"],
        &["role", "list"],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "alice", "nope"],
        &["user", "grant-role", "ghost", "reader"],
        &["user", "revoke-role", "alice", "root"],
        &["user", "get", "alice"],
        &["user", "list"],
        &["auth", "enable"],
        &[alice, "get", "/a/x"],
        &[alice, "put", "/a/x", "2"],
        &[alice, "get", "/b/x"],
        &[alice, "user", "list"],
        &["--user=alice:wrong", "get", "/a/x"],
        &["--user=ghost:pw", "get", "/a/x"],
        &["put", "/a/x", "3"],
        &[root, "user", "delete", "root"],
        &[root, "role", "delete", "root"],
        &[root, "user", "revoke-role", "root", "root"],
        &[root, "get", "/b/x"],
        &[root, "auth", "disable"],
        &["get", "/b/x"],
    ];
    for args in transcript {
        same_outcome(&etcd, &ep, args);
    }
}

#[test]
fn normalising_keeps_words_and_hides_numbers() {
    assert_eq!(
        normalise("Finished defragmenting etcd member[127.0.0.1:2379]"),
        "Finished defragmenting etcd member[N]"
    );
    assert_eq!(
        normalise("8e9e05c52164694d, started, e1, http://10.0.0.1:2380, , false"),
        "N, started, N, http://N, , false"
    );
    assert_eq!(normalise("3.4.23"), "N");
}
