//! `skiff dev`: starts a 3-member cluster, serves etcdctl, and stops its children on SIGINT.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_available, etcdctl_ok, PATIENCE};

#[test]
fn dev_cluster_serves_etcdctl_and_stops_on_ctrl_c() {
    if !etcdctl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let base = common::free_port_run(6);
    let mut dev = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("skiff-data"))
        // Flags after `--` reach every member's `skiff serve`.
        .args(["--", "--quota-backend-bytes", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skiff dev");
    // Kill the dev process however this test ends; its members stop when their stdin pipe
    // from it closes.
    struct Guard(Option<std::process::Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let stdout = dev.stdout.take().expect("stdout");
    // What skiff dev prints, as it prints it.
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut p = printed.lock().expect("lock");
                p.push_str(&line);
                p.push('\n');
            }
        })
    };
    let pid = dev.id();
    let mut guard = Guard(Some(dev));

    let eps = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + 2 * i))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        etcdctl_ok(&eps, &["put", "greeting", "hello"], "").stdout,
        "OK\n"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["get", "greeting"], "").stdout,
        "greeting\nhello\n"
    );
    for n in ["n1", "n2", "n3"] {
        let log = std::fs::read_to_string(dir.path().join("skiff-data").join(format!("{n}.log")))
            .expect("member log");
        assert!(
            log.contains("enabled backend quota quota_size_bytes=100000000"),
            "{n}: {log}"
        );
    }

    // A member removed with etcdctl stops; the dev cluster keeps the other two running.
    let list = etcdctl_ok(&eps, &["member", "list"], "").stdout;
    let n3 = list
        .lines()
        .find(|l| l.contains(", n3, "))
        .and_then(|l| l.split(',').next())
        .expect("n3 listed")
        .to_string();
    etcdctl_ok(&eps, &["member", "remove", &n3], "");
    let n3_port = base + 4;
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", n3_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed member still listens"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its process exits soon after its ports close, and skiff dev says so.
    let deadline = Instant::now() + PATIENCE;
    while !printed
        .lock()
        .expect("lock")
        .contains("member n3 was removed from the cluster; the others keep running")
    {
        assert!(
            Instant::now() < deadline,
            "skiff dev did not report the removal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dev_child = guard.0.as_mut().expect("dev");
    assert!(
        dev_child.try_wait().expect("wait").is_none(),
        "skiff dev stopped when a member was removed"
    );
    let two = format!("127.0.0.1:{},127.0.0.1:{}", base, base + 2);
    assert_eq!(
        etcdctl_ok(&two, &["put", "after", "removal"], "").stdout,
        "OK\n"
    );

    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let mut child = guard.0.take().expect("child");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "skiff dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    reader.join().expect("stdout reader");
    let printed = printed.lock().expect("lock").clone();
    assert!(printed.contains("etcdctl --endpoints="), "{printed}");
    assert!(printed.contains("/dashboard"), "{printed}");
    assert!(printed.contains("stopped"), "{printed}");

    // The members are gone: their client ports refuse connections.
    for i in 0..3 {
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", base + 2 * i)).is_ok() {
            assert!(Instant::now() < deadline, "member {i} still listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
