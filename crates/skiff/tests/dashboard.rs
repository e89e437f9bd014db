//! `GET /dashboard` in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`). The page shows three members and one leader; after the
//! leader is killed it shows the new leader and term without a reload, and the dead member as
//! unreachable. A screenshot is saved under the cargo target dir (its path is printed).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{tool_available, Cluster};
use serde_json::{json, Value};

/// How long the page may take to show a change: a few update periods after an election (the
/// harness's election timeout is 500 ms).
const SHOWN_WITHIN: Duration = Duration::from_secs(15);

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = self.call("DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        let port = common::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let d = Driver {
            child,
            port,
            session: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// One WebDriver call: `method path` with a JSON body; the answer's `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // chromedriver may keep the connection open: read the head, then Content-Length bytes.
        let mut resp = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let (head, body) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before the answer".into());
            }
            resp.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&resp);
            let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or("no Content-Length")?;
            if rest.len() >= len {
                break (head.to_string(), rest[..len].to_string());
            }
        };
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{head}: {v}"));
        }
        Ok(v["value"].clone())
    }

    fn open(&mut self, url: &str, profile: &std::path::Path) {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let v = self
            .call("POST", "/session", Some(&caps))
            .expect("a browser session");
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        self.session = Some(id.clone());
        self.call(
            "POST",
            &format!("/session/{id}/url"),
            Some(&json!({"url": url})),
        )
        .expect("the page loads");
    }

    /// Runs `script` in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        let id = self.session.as_deref().expect("a session");
        self.call(
            "POST",
            &format!("/session/{id}/execute/sync"),
            Some(&json!({"script": script, "args": []})),
        )
        .expect("the script runs")
    }

    fn screenshot(&self) -> Vec<u8> {
        let id = self.session.as_deref().expect("a session");
        let b64 = self
            .call("GET", &format!("/session/{id}/screenshot"), None)
            .expect("a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 text"))
            .expect("a PNG")
    }
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"
  const rows = [...document.querySelectorAll('#members tbody tr[data-member]')];
  return {
    members: rows.map(r => [r.dataset.member, r.dataset.role]),
    leader: document.getElementById('leader').textContent,
    term: Number(document.getElementById('term').textContent),
    followers: document.querySelectorAll('#followers tbody tr[data-follower]').length,
    conn: document.getElementById('conn').textContent,
  };
"#;

/// Polls the page until `ok` holds of what it shows, within [`SHOWN_WITHIN`].
fn wait_page(d: &Driver, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SHOWN_WITHIN;
    loop {
        let v = d.eval(READ_PAGE);
        if ok(&v) {
            return v;
        }
        if Instant::now() >= deadline {
            // What the page showed instead is the first thing to look at.
            let path = screenshot_path("dashboard-failure.png");
            let saved = std::fs::write(&path, d.screenshot()).map(|()| path.display().to_string());
            panic!("the page never showed {what}: {v} (screenshot: {saved:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where screenshots go: the cargo target dir's scratch space.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn roles(v: &Value) -> Vec<(String, String)> {
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap_or_default().to_string(),
                m[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn dashboard_shows_the_group_and_a_new_leader_live() {
    if !tool_available(
        "chromedriver",
        "--version",
        "chromium-driver",
        "SKIFF_SKIP_BROWSER",
    ) || !tool_available("chromium", "--version", "chromium", "SKIFF_SKIP_BROWSER")
    {
        return;
    }
    let mut c = Cluster::start(3);
    let leader = common::runtime().block_on(c.wait_leader(&[0, 1, 2]));
    // Served by a member that stays up.
    let viewer = (leader + 1) % 3;
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let mut d = Driver::start();
    d.open(
        &format!(
            "http://127.0.0.1:{}/dashboard",
            c.members[viewer].client_port
        ),
        profile.path(),
    );
    let before = wait_page(&d, "three members and one leader", |v| {
        let r = roles(v);
        r.len() == 3
            && r.iter().filter(|(_, role)| role == "leader").count() == 1
            && v["followers"] == 2
            && v["conn"] == "live"
    });
    let (old_leader, _) = roles(&before)
        .into_iter()
        .find(|(_, r)| r == "leader")
        .expect("a leader row");
    assert_eq!(before["leader"], old_leader.as_str());
    let old_term = before["term"].as_u64().expect("a term");

    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = common::runtime().block_on(c.wait_leader(&others));
    let new_id = common::etcdctl_ok(&c.endpoint(new_leader), &["endpoint", "status"], "")
        .stdout
        .split(", ")
        .nth(1)
        .expect("an id")
        .to_string();
    let after = wait_page(&d, "the new leader in a later term", |v| {
        let r = roles(v);
        v["leader"] == new_id.as_str()
            && v["term"].as_u64() > Some(old_term)
            && r.iter()
                .any(|(id, role)| *id == old_leader && role == "unreachable")
            && r.iter().filter(|(_, role)| role == "leader").count() == 1
    });
    let png = d.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = screenshot_path("dashboard.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    println!(
        "dashboard screenshot: {} (leader {} in term {})",
        path.display(),
        after["leader"],
        after["term"]
    );
}
