//! Authentication and role-based access control against a real 3-process cluster, driven by
//! the real etcdctl (`--user`) and by gRPC with a token: etcd's rules and errors, a
//! transaction with one denied op denied whole, a watch on a denied range refused, a revoked
//! role enforced on the very next request on every member, tokens that are garbled or from
//! another member's lifetime refused, Authenticate rate-limited per address and per user (an
//! unknown user refused as slowly as a wrong password), and the auth
//! state kept across restarts and carried by the snapshot a lagging member installs.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_available, etcdctl_ok, runtime, Cluster, PATIENCE};
use server::pb::etcdserverpb as epb;
use server::pb::etcdserverpb::auth_client::AuthClient;
use server::pb::etcdserverpb::kv_client::KvClient;
use tonic::Code;

const DENIED: &str = "etcdserver: permission denied";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// etcdctl as `user` (or anonymous) against `ep`; asserts it fails and returns stderr.
fn fails(ep: &str, user: Option<&str>, args: &[&str]) -> String {
    let mut all: Vec<&str> = user.into_iter().collect();
    all.extend_from_slice(args);
    let out = etcdctl(ep, &all, "");
    assert!(!out.ok, "etcdctl {all:?} succeeded: {}", out.stdout);
    out.stderr
}

/// etcdctl as `user` against `ep`, retried until it succeeds; returns stdout.
fn ok(ep: &str, user: &str, args: &[&str]) -> String {
    let mut all = vec![user];
    all.extend_from_slice(args);
    etcdctl_ok(ep, &all, "").stdout
}

/// Root with the root role, a role `reader` with read on the prefix `/a/`, a user `alice`
/// holding it, and auth enabled; `/a/x` = 1 and `/b/x` = 2 written before.
fn set_up(ep: &str) {
    for args in [
        vec!["put", "/a/x", "1"],
        vec!["put", "/b/x", "2"],
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "reader"],
        vec![
            "role",
            "grant-permission",
            "reader",
            "read",
            "/a/",
            "--prefix=true",
        ],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "reader"],
        vec!["auth", "enable"],
    ] {
        etcdctl_ok(ep, &args, "");
    }
}

#[test]
fn etcdctl_users_see_what_their_roles_allow_and_etcds_errors_otherwise() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(3);
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    let eps = c.endpoints();

    // Enabling without a root user fails and changes nothing.
    let err = fails(&eps, None, &["auth", "enable"]);
    assert!(
        err.contains("etcdserver: root user does not exist"),
        "{err}"
    );
    etcdctl_ok(&eps, &["put", "free", "yes"], "");
    // (etcdctl answers "root user does not have root role" by creating and granting the
    // role itself: see the gRPC check in `authenticate_is_rate_limited_per_connection`.)

    set_up(&eps);
    // Each member serves alice's reads of her prefix.
    for i in 0..3 {
        assert_eq!(ok(&c.endpoint(i), ALICE, &["get", "/a/x"]), "/a/x\n1\n");
    }
    assert!(fails(&eps, Some(ALICE), &["put", "/a/x", "2"]).contains(DENIED));
    assert!(fails(&eps, Some(ALICE), &["get", "/b/x"]).contains(DENIED));
    // Only an administrator adds users (refused before the password is hashed).
    assert!(fails(&eps, Some(ALICE), &["user", "add", "mallory:pw"]).contains(DENIED));
    // The keys of a lease are data: alice may not list a key she cannot read through
    // LeaseTimeToLive (etcd's CVE-2023-32082), but may see the lease without its keys.
    let granted = ok(&eps, "--user=root:rootpw", &["lease", "grant", "600"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted with TTL(600s)")
        .to_string();
    ok(
        &eps,
        "--user=root:rootpw",
        &["put", "/b/secret", "s", "--lease", &lease],
    );
    let listed = fails(
        &eps,
        Some(ALICE),
        &["lease", "timetolive", &lease, "--keys"],
    );
    assert!(listed.contains(DENIED), "{listed}");
    assert!(!listed.contains("/b/secret"), "{listed}");
    let bare = ok(&eps, ALICE, &["lease", "timetolive", &lease]);
    assert!(bare.contains("remaining"), "{bare}");
    assert!(ok(
        &eps,
        "--user=root:rootpw",
        &["lease", "timetolive", &lease, "--keys"]
    )
    .contains("/b/secret"));
    assert!(fails(
        &eps,
        Some(ALICE),
        &["get", "/a/", "--prefix=false", "--from-key"]
    )
    .contains(DENIED));
    assert_eq!(
        ok(&eps, ALICE, &["get", "/a/", "--prefix"]),
        "/a/x\n1\n",
        "a range inside the grant"
    );

    // A transaction with one denied op is denied whole: nothing of it is applied.
    let txn = etcdctl(
        &eps,
        &[ALICE, "txn"],
        "value(\"/a/x\") = \"1\"\n\nput /a/y 1\nget /a/x\n\n\n",
    );
    assert!(!txn.ok && txn.stderr.contains(DENIED), "{}", txn.stderr);
    let txn = etcdctl(&eps, &[ROOT, "txn"], "\nget /a/x\nput /b/y 1\n\n\n");
    assert!(txn.ok, "root may do anything: {}", txn.stderr);
    assert_eq!(
        ok(&eps, ROOT, &["get", "/b/y", "--print-value-only"]),
        "1\n"
    );
    let mixed = etcdctl(&eps, &[ALICE, "txn"], "\nget /a/x\nget /b/x\n\n\n");
    assert!(
        !mixed.ok && mixed.stderr.contains(DENIED),
        "{}",
        mixed.stderr
    );
    assert_eq!(
        ok(&eps, ROOT, &["get", "/a/y"]),
        "",
        "the denied txn wrote nothing"
    );

    // A watch on a denied range is refused.
    let watch = etcdctl(&eps, &[ALICE, "watch", "/b/", "--prefix"], "");
    assert!(
        !watch.ok
            && format!("{}{}", watch.stdout, watch.stderr)
                .contains("watch was canceled (etcdserver: permission denied)"),
        "{}{}",
        watch.stdout,
        watch.stderr
    );

    // Bad input gets etcd's errors, and changes nothing.
    assert!(fails(&eps, Some("--user=alice:wrong"), &["get", "/a/x"]).contains(AUTH_FAILED));
    assert!(fails(&eps, Some("--user=bob:pw"), &["get", "/a/x"]).contains(AUTH_FAILED));
    assert!(fails(&eps, None, &["put", "/a/x", "9"]).contains(USER_EMPTY));
    assert!(fails(&eps, Some(ALICE), &["auth", "disable"]).contains(DENIED));
    assert!(fails(&eps, Some(ALICE), &["user", "add", "mallory:pw"]).contains(DENIED));
    assert!(fails(&eps, Some(ALICE), &["defrag"]).contains(DENIED));
    let root_del = fails(&eps, Some(ROOT), &["user", "delete", "root"]);
    assert!(
        root_del.contains("etcdserver: invalid auth management"),
        "{root_del}"
    );
    let no_role = fails(&eps, Some(ROOT), &["user", "grant-role", "alice", "nope"]);
    assert!(
        no_role.contains("etcdserver: role name not found"),
        "{no_role}"
    );
    assert_eq!(
        ok(&eps, ROOT, &["get", "/a/x", "--print-value-only"]),
        "1\n"
    );
    assert_eq!(ok(&eps, ROOT, &["user", "list"]), "alice\nroot\n");

    // Disabled again, anyone may write.
    ok(&eps, ROOT, &["auth", "disable"]);
    etcdctl_ok(&eps, &["put", "/a/x", "3"], "");
}

/// A client of member `i`'s Auth and KV services on one connection.
async fn clients(
    c: &Cluster,
    i: usize,
) -> (
    AuthClient<tonic::transport::Channel>,
    KvClient<tonic::transport::Channel>,
) {
    let ch = common::channel(&format!("http://{}", c.endpoint(i)))
        .await
        .expect("connect");
    (AuthClient::new(ch.clone()), KvClient::new(ch))
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    r
}

fn get(key: &str) -> epb::RangeRequest {
    epb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

#[test]
fn a_revoked_role_is_enforced_on_the_next_request_of_every_member() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(3);
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    let eps = c.endpoints();
    set_up(&eps);
    rt.block_on(async {
        let (mut auth, _) = clients(&c, 0).await;
        let token = auth
            .authenticate(epb::AuthenticateRequest {
                name: "alice".into(),
                password: "alicepw".into(),
            })
            .await
            .expect("authenticate")
            .into_inner()
            .token;
        // The token was assigned on every member: each serves alice with it.
        for i in 0..3 {
            let (_, mut kv) = clients(&c, i).await;
            let r = kv.range(with_token(get("/a/x"), &token)).await;
            assert_eq!(r.expect("read").into_inner().kvs[0].value, b"1");
            let garbled = kv.range(with_token(get("/a/x"), "garbage.1")).await;
            let s = garbled.expect_err("a garbled token");
            assert_eq!(
                (s.code(), s.message()),
                (Code::Unauthenticated, INVALID_TOKEN)
            );
            let anonymous = kv.range(get("/a/x")).await.expect_err("no token");
            assert_eq!(
                (anonymous.code(), anonymous.message()),
                (Code::InvalidArgument, USER_EMPTY)
            );
        }
        etcdctl_ok(&eps, &[ROOT, "user", "revoke-role", "alice", "reader"], "");
        // The next request on every member is refused, whichever member applied the revoke
        // last (a linearizable read waits for everything committed before it).
        for i in 0..3 {
            let (_, mut kv) = clients(&c, i).await;
            let s = kv
                .range(with_token(get("/a/x"), &token))
                .await
                .expect_err("revoked");
            assert_eq!(
                (s.code(), s.message()),
                (Code::PermissionDenied, DENIED),
                "member {i}"
            );
        }
    });
}

#[test]
fn authenticate_is_rate_limited_per_address_and_per_user() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(1);
    rt.block_on(c.wait_leader(&[0]));
    rt.block_on(async {
        // Enabling with a root user that lacks the root role fails, and changes nothing.
        let (mut auth, _) = clients(&c, 0).await;
        auth.user_add(epb::AuthUserAddRequest {
            name: "root".into(),
            password: "rootpw".into(),
            options: None,
        })
        .await
        .expect("user add");
        let s = auth
            .auth_enable(epb::AuthEnableRequest {})
            .await
            .expect_err("no root role");
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role"
            )
        );
        let status = auth
            .auth_status(epb::AuthStatusRequest {})
            .await
            .expect("status");
        assert!(!status.into_inner().enabled);
        auth.user_delete(epb::AuthUserDeleteRequest {
            name: "root".into(),
        })
        .await
        .expect("user delete");
    });
    set_up(&c.endpoint(0));
    rt.block_on(async {
        let (auth, _) = clients(&c, 0).await;
        let attempt = |name: &str, password: &str| epb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        };
        // Guesses for alice sent at once on one connection (HTTP/2 multiplexes them): the
        // burst of the address (and of the user) is checked, the rest refused without a
        // check.
        let guesses = 30;
        let (refused_tx, mut refused_rx) = tokio::sync::mpsc::channel(guesses);
        let mut tasks = Vec::new();
        for _ in 0..guesses {
            let mut auth = auth.clone();
            let req = attempt("alice", "guess");
            let refused_tx = refused_tx.clone();
            tasks.push(tokio::spawn(async move {
                let r = auth.authenticate(req).await;
                if matches!(&r, Err(s) if s.code() == Code::ResourceExhausted) {
                    let _ = refused_tx.send(()).await;
                }
                r
            }));
        }
        // Once one is refused, the address's budget is spent: a new connection from the same
        // address does not get a new one (it would if budgets were per connection) ...
        refused_rx.recv().await.expect("one refused");
        let (mut again, _) = clients(&c, 0).await;
        let s = again
            .authenticate(attempt("root", "guess"))
            .await
            .expect_err("same address");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("too many authentication attempts"), "{s:?}");
        // ... and another address gets its own budget, but not for alice, whose budget the
        // guesses spent whatever their address.
        let other_address = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            c.endpoint(0)
        ))
        .expect("url")
        .local_address(Some("127.0.0.2".parse().expect("ip")))
        .connect()
        .await
        .expect("connect from 127.0.0.2");
        let mut other = AuthClient::new(other_address);
        let s = other
            .authenticate(attempt("alice", "alicepw"))
            .await
            .expect_err("alice's budget is spent");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        let s = other
            .authenticate(attempt("root", "guess"))
            .await
            .expect_err("a wrong password");
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, AUTH_FAILED));

        let (mut failed, mut limited) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => panic!("a wrong password was accepted"),
                Err(s) if (s.code(), s.message()) == (Code::InvalidArgument, AUTH_FAILED) => {
                    failed += 1
                }
                Err(s) if s.code() == Code::ResourceExhausted
                    && s.message().contains("too many authentication attempts") =>
                {
                    limited += 1
                }
                Err(s) => panic!("unexpected answer {s:?}"),
            }
        }
        assert_eq!(failed + limited, guesses);
        assert!(
            (20..=21).contains(&failed),
            "the burst of 20 (and at most one refilled) is checked: {failed} checked, {limited} refused"
        );
        // The budgets refill: alice logs in from the other address.
        tokio::time::sleep(Duration::from_millis(500)).await;
        other
            .authenticate(attempt("alice", "alicepw"))
            .await
            .expect("refilled");
    });
}

/// A name that has no password to check (no such user) is refused only after a bcrypt
/// check like a wrong password's, so that the time of the refusal does not tell whether
/// the user exists.
#[test]
fn an_unknown_user_is_refused_as_slowly_as_a_wrong_password() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    // A costly hash, so that a check stands well above the noise.
    let c = Cluster::start_with(1, &["--bcrypt-cost", "12"]);
    rt.block_on(c.wait_leader(&[0]));
    set_up(&c.endpoint(0));
    rt.block_on(async {
        let (mut auth, _) = clients(&c, 0).await;
        let refusal_time = |name: &'static str| {
            let mut auth = auth.clone();
            async move {
                let mut fastest = Duration::MAX;
                for _ in 0..3 {
                    let start = Instant::now();
                    let s = auth
                        .authenticate(epb::AuthenticateRequest {
                            name: name.into(),
                            password: "guess".into(),
                        })
                        .await
                        .expect_err("refused");
                    assert_eq!(
                        (s.code(), s.message()),
                        (Code::InvalidArgument, AUTH_FAILED)
                    );
                    fastest = fastest.min(start.elapsed());
                }
                fastest
            }
        };
        let wrong_password = refusal_time("alice").await;
        let no_such_user = refusal_time("nobody").await;
        assert!(
            no_such_user * 2 >= wrong_password,
            "no such user: {no_such_user:?}, a wrong password: {wrong_password:?}"
        );
        auth.authenticate(epb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("the right password");
    });
}

/// Whether member `i`'s log says it installed a snapshot from the leader.
fn installed_snapshot(c: &Cluster, i: usize) -> bool {
    std::fs::read_to_string(c.log_path(i))
        .map(|t| t.contains("installed a snapshot from the leader"))
        .unwrap_or(false)
}

/// Member `i`'s auth status.
async fn auth_status(c: &Cluster, i: usize) -> Option<epb::AuthStatusResponse> {
    let ch = common::channel(&format!("http://{}", c.endpoint(i))).await?;
    let r = AuthClient::new(ch)
        .auth_status(epb::AuthStatusRequest {})
        .await
        .ok()?;
    Some(r.into_inner())
}

#[test]
fn the_auth_state_survives_restart_and_snapshot_install() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let mut c = Cluster::start_with(3, &["--snapshot-count", "20"]);
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let behind = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let up = format!("{},{}", c.endpoint(leader), c.endpoint(other));
    rt.block_on(common::put_retrying(&c, leader, "warm", "up"));

    // Down while auth is set up and the others compact their logs past it.
    c.kill(behind);
    set_up(&up);
    for k in 0..60 {
        ok(&up, ROOT, &["put", &format!("k{k:02}"), "v"]);
    }
    c.spawn(behind);
    let deadline = Instant::now() + PATIENCE;
    let want = rt.block_on(auth_status(&c, leader)).expect("status");
    assert!(want.enabled);
    loop {
        let got = rt.block_on(auth_status(&c, behind));
        if got
            .as_ref()
            .is_some_and(|s| s.enabled && s.auth_revision == want.auth_revision)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member {behind} never caught up: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        installed_snapshot(&c, behind),
        "the member caught up without a snapshot although the log was compacted"
    );
    // It enforces the rules the snapshot carried, on reads it serves alone.
    let lagger = c.endpoint(behind);
    assert_eq!(
        ok(
            &lagger,
            ALICE,
            &["get", "/a/x", "--consistency=s", "--print-value-only"]
        ),
        "1\n"
    );
    assert!(fails(&lagger, Some(ALICE), &["get", "/b/x", "--consistency=s"]).contains(DENIED));

    // The whole cluster restarted keeps auth on and the same rules.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    let eps = c.endpoints();
    assert_eq!(
        ok(&eps, ALICE, &["get", "/a/x", "--print-value-only"]),
        "1\n"
    );
    assert!(fails(&eps, Some(ALICE), &["get", "/b/x"]).contains(DENIED));
    assert!(fails(&eps, None, &["put", "/a/x", "2"]).contains(USER_EMPTY));
    for i in 0..3 {
        let s = rt.block_on(auth_status(&c, i)).expect("status");
        assert!(s.enabled, "member {i}");
        assert_eq!(s.auth_revision, want.auth_revision, "member {i}");
    }
}

/// Authenticates `name` on member `i`; the token.
async fn login(c: &Cluster, i: usize, name: &str, password: &str) -> String {
    let (mut auth, _) = clients(c, i).await;
    auth.authenticate(epb::AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("authenticate {name}: {s:?}"))
    .into_inner()
    .token
}

/// The cluster id, from member `i`'s answer to a read.
async fn cluster_id(c: &Cluster, i: usize, token: &str) -> u64 {
    let (_, mut kv) = clients(c, i).await;
    kv.range(with_token(get("/a/x"), token))
        .await
        .expect("read")
        .into_inner()
        .header
        .expect("header")
        .cluster_id
}

const OLD_REVISION: &str = "etcdserver: revision of auth store is old";

/// A lease revoke, a compaction, an alarm change and a member removal are checked where they
/// arrive and again where they run, against the sender's stamp: a follower the leader
/// stopped replicating to (whose state lags) lets them through, and the leader refuses them, changing
/// nothing: the revoke because a key the sender may not write was attached to the lease
/// since ("permission denied", as etcd's `checkLeasePuts` at apply), the others because the
/// sender lost the root role since ("revision of auth store is old", as etcd's
/// `IsAdminPermitted` at apply).
#[test]
fn lease_revoke_compaction_alarm_and_member_changes_are_checked_at_the_leader_too() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    // Slow elections: the follower cut off below believes in its leader for 3 s at least.
    let c = Cluster::start_with(
        3,
        &["--heartbeat-interval", "100", "--election-timeout", "3000"],
    );
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let eps = c.endpoints();
    set_up(&eps);
    for args in [
        vec!["role", "add", "writer"],
        vec![
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "/a/",
            "--prefix=true",
        ],
        vec!["user", "grant-role", "alice", "writer"],
        vec!["user", "add", "adm:admpw"],
        vec!["user", "grant-role", "adm", "root"],
    ] {
        ok(&eps, ROOT, &args);
    }
    rt.block_on(async {
        let root = login(&c, leader, "root", "rootpw").await;
        let alice = login(&c, follower, "alice", "alicepw").await;
        let adm = login(&c, follower, "adm", "admpw").await;
        let leader_ch = common::channel(&format!("http://{}", c.endpoint(leader)))
            .await
            .expect("connect");
        let follower_ch = common::channel(&format!("http://{}", c.endpoint(follower)))
            .await
            .expect("connect");
        let mut leases = epb::lease_client::LeaseClient::new(leader_ch.clone());
        let lease = leases
            .lease_grant(with_token(
                epb::LeaseGrantRequest { ttl: 600, id: 0 },
                &root,
            ))
            .await
            .expect("grant")
            .into_inner()
            .id;
        let put = |key: &str, token: &str| {
            with_token(
                epb::PutRequest {
                    key: key.into(),
                    value: b"v".to_vec(),
                    lease,
                    ..Default::default()
                },
                token,
            )
        };
        let (_, mut leader_kv) = clients(&c, leader).await;
        leader_kv
            .put(put("/a/leased", &alice))
            .await
            .expect("alice's put");
        // The follower has applied all of it (a linearizable read waits for that).
        let (_, mut follower_kv) = clients(&c, follower).await;
        follower_kv
            .range(with_token(get("/a/leased"), &alice))
            .await
            .expect("read on the follower");

        // The leader stops sending the follower anything (and drops what it hears from it),
        // but still serves the requests the follower forwards: the follower's state lags.
        std::fs::write(c.fault_file(leader), &c.members[follower].name).expect("fault file");
        // The fault files are read every 100 ms.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let cut_at = Instant::now();
        // On the leader only: a key alice may not write joins her lease.
        leader_kv
            .put(put("/b/leased", &root))
            .await
            .expect("root's put");

        let mut f_leases = epb::lease_client::LeaseClient::new(follower_ch.clone());
        let revoke = f_leases
            .lease_revoke(with_token(epb::LeaseRevokeRequest { id: lease }, &alice))
            .await
            .expect_err("alice may not write /b/leased");
        assert_eq!(
            (revoke.code(), revoke.message()),
            (Code::PermissionDenied, DENIED)
        );
        // On the leader only: adm loses the root role.
        etcdctl_ok(
            &c.endpoint(leader),
            &[ROOT, "user", "revoke-role", "adm", "root"],
            "",
        );
        let mut f_kv = KvClient::new(follower_ch.clone());
        let compact = f_kv
            .compact(with_token(
                epb::CompactionRequest {
                    revision: 2,
                    physical: false,
                },
                &adm,
            ))
            .await
            .expect_err("adm is no administrator any more");
        assert_eq!(compact.message(), OLD_REVISION, "{compact:?}");
        let mut f_maint = epb::maintenance_client::MaintenanceClient::new(follower_ch.clone());
        let disarm = f_maint
            .alarm(with_token(
                epb::AlarmRequest {
                    action: epb::alarm_request::AlarmAction::Deactivate as i32,
                    member_id: 0,
                    alarm: epb::AlarmType::Nospace as i32,
                },
                &adm,
            ))
            .await
            .expect_err("adm is no administrator any more");
        assert_eq!(disarm.message(), OLD_REVISION, "{disarm:?}");
        let mut f_cluster = epb::cluster_client::ClusterClient::new(follower_ch.clone());
        let remove = f_cluster
            .member_remove(with_token(epb::MemberRemoveRequest { id: 0xdead }, &adm))
            .await
            .expect_err("adm is no administrator any more");
        assert_eq!(remove.message(), OLD_REVISION, "{remove:?}");
        assert!(
            cut_at.elapsed() < Duration::from_millis(2500),
            "the follower may have stopped following: the test did not check what it meant to"
        );

        c.heal();
        // Nothing changed: the lease and its keys are there, and history was not compacted.
        let still = leader_kv
            .range(with_token(
                epb::RangeRequest {
                    key: b"/b/leased".to_vec(),
                    revision: 2,
                    ..Default::default()
                },
                &root,
            ))
            .await;
        assert!(still.is_ok(), "revision 2 was compacted: {still:?}");
        let keys = leases
            .lease_time_to_live(with_token(
                epb::LeaseTimeToLiveRequest {
                    id: lease,
                    keys: true,
                },
                &root,
            ))
            .await
            .expect("the lease is there")
            .into_inner();
        assert_eq!(keys.keys.len(), 2, "{keys:?}");
    });
}

/// Whoever reaches the peer port (a client certificate the peer port should not take, a
/// stranger on a plain peer port) cannot make the leader skip the permission checks by
/// leaving the sender out: a forwarded write, auth change or login without a stamp, and a
/// forwarded compaction, lease revoke or member change without one, are refused while auth
/// is enabled, and change nothing.
#[test]
fn requests_forwarded_without_a_stamp_are_refused_once_auth_is_on() {
    if !etcdctl_available() {
        return;
    }
    use server::pb::skiff::raft::v1 as rpb;
    let rt = runtime();
    let c = Cluster::start(1);
    rt.block_on(c.wait_leader(&[0]));
    let eps = c.endpoints();
    set_up(&eps);
    rt.block_on(async {
        let root = login(&c, 0, "root", "rootpw").await;
        let cluster_id = cluster_id(&c, 0, &root).await;
        let peer = common::channel(&format!("http://127.0.0.1:{}", c.members[0].peer_port))
            .await
            .expect("connect to the peer port");
        let mut raft = rpb::raft_client::RaftClient::new(peer);
        let unstamped = |client_id: u64, request: kv::Request| {
            kv::codec::encode_command(&kv::Command {
                session: Some(kv::Session::opened(client_id, 1, 0)),
                request,
                auth: None,
            })
        };
        let commands = vec![
            unstamped(
                9001,
                kv::Request::Auth(kv::AuthRequest::UserGrantRole {
                    user: "alice".into(),
                    role: "root".into(),
                }),
            ),
            unstamped(
                9002,
                kv::Request::Auth(kv::AuthRequest::Authenticate {
                    name: "root".into(),
                    token_prefix: "abcdefghijklmnop".into(),
                    checked_revision: 1,
                }),
            ),
            unstamped(
                9003,
                kv::Request::Put(kv::PutRequest::new("/b/x", "stolen")),
            ),
        ];
        let n = commands.len();
        let writes = commands
            .into_iter()
            .enumerate()
            .map(|(i, command)| rpb::ForwardedWrite {
                id: i as u64 + 1,
                command,
                can_answer: false,
            })
            .collect();
        let batch = rpb::ForwardBatch { cluster_id, writes };
        let mut results = raft
            .forward(tokio_stream::iter(vec![batch]))
            .await
            .expect("forward stream")
            .into_inner();
        let mut seen = 0;
        while seen < n {
            let batch = results.message().await.expect("results").expect("more");
            for r in batch.results {
                seen += 1;
                match r.outcome.expect("an outcome") {
                    rpb::forward_result::Outcome::Error(e) => {
                        assert_eq!(e.message, DENIED, "write {}", r.id)
                    }
                    rpb::forward_result::Outcome::Answer(bytes) => {
                        let result = kv::codec::decode_result(&bytes).expect("decodes");
                        assert_eq!(result, Err(kv::KvError::PermissionDenied), "write {}", r.id);
                    }
                    other => panic!("write {}: {other:?}", r.id),
                }
            }
        }
        let compact = raft
            .compact(epb::CompactionRequest {
                revision: 2,
                physical: false,
            })
            .await
            .expect_err("an unstamped compaction");
        assert_eq!(compact.message(), DENIED);
        let revoke = raft
            .lease_revoke(epb::LeaseRevokeRequest { id: 1 })
            .await
            .expect_err("an unstamped revoke");
        assert_eq!(revoke.message(), DENIED);
        let remove = raft
            .member_remove(epb::MemberRemoveRequest { id: 0xdead })
            .await
            .expect_err("an unstamped removal");
        assert_eq!(remove.message(), DENIED);
    });
    // Nothing changed: alice holds no root role, /b/x holds what it held.
    let alice = ok(&eps, ROOT, &["user", "get", "alice"]);
    assert!(!alice.contains("root"), "{alice}");
    assert_eq!(
        ok(&eps, ROOT, &["get", "/b/x", "--print-value-only"]),
        "2\n"
    );
}

/// A token this member can tell it will never know is refused at once, without the read
/// barrier an unknown token otherwise waits for: one not shaped like the tokens members
/// assign (`<16 letters>.<index>`), or one naming an entry this member has applied. A
/// well-shaped token naming a later entry may come from a member ahead of this one, and
/// still waits. Shown on a member cut off from the others, where a barrier cannot complete.
#[test]
fn a_token_a_member_can_tell_is_garbage_costs_no_read_barrier() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(3);
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let cut = (leader + 1) % 3;
    set_up(&c.endpoints());
    rt.block_on(async {
        // The member has applied the setup (a linearizable read waits for that).
        let alice = login(&c, cut, "alice", "alicepw").await;
        let (_, mut kv) = clients(&c, cut).await;
        kv.range(with_token(get("/a/x"), &alice))
            .await
            .expect("read");
        c.isolate(cut);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ask = |token: &str| {
            let mut kv = kv.clone();
            let mut request = with_token(
                epb::RangeRequest {
                    serializable: true,
                    ..get("/a/x")
                },
                token,
            );
            request.set_timeout(Duration::from_millis(1500));
            async move {
                let start = Instant::now();
                let answer = kv.range(request).await;
                (answer, start.elapsed())
            }
        };
        for garbage in ["garbage.1", "abcdefghijklmnop.3", "abcdefghijklmnop.0x10"] {
            let (answer, took) = ask(garbage).await;
            let s = answer.expect_err(garbage);
            assert_eq!(
                (s.code(), s.message()),
                (Code::Unauthenticated, INVALID_TOKEN),
                "{garbage}"
            );
            assert!(took < Duration::from_secs(1), "{garbage}: {took:?}");
        }
        // Alice's token is known here: served (a serializable read needs no barrier).
        let (answer, _) = ask(&alice).await;
        answer.expect("alice's token");
        // A token of an entry not applied here may be real: it waits for a barrier, which
        // the cut-off member cannot get.
        let (answer, took) = ask("abcdefghijklmnop.999999999").await;
        let s = answer.expect_err("no barrier");
        assert_ne!(s.message(), INVALID_TOKEN, "{s:?}");
        assert!(took >= Duration::from_secs(1), "{took:?}");
    });
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The Raft log (the WAL every member keeps until it is compacted) holds no live token: a
/// login's entry carries the hash of the token's random part, so whoever reads a member's
/// data dir cannot act as the user.
#[test]
fn no_live_token_is_written_to_the_data_dir() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(1);
    rt.block_on(c.wait_leader(&[0]));
    set_up(&c.endpoint(0));
    let token = rt.block_on(async {
        let token = login(&c, 0, "alice", "alicepw").await;
        let (_, mut kv) = clients(&c, 0).await;
        kv.range(with_token(get("/a/x"), &token))
            .await
            .expect("the token works");
        token
    });
    let (random, index) = token.split_once('.').expect("<random>.<index>");
    assert_eq!(random.len(), 16, "{token}");
    assert!(index.parse::<u64>().is_ok(), "{token}");
    let files = files_under(&c.data_dir(0));
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        assert!(
            !bytes.windows(random.len()).any(|w| w == random.as_bytes()),
            "{} holds the token {token}",
            file.display()
        );
    }
}

/// An open watch is checked again once the auth state changes: after alice loses the role
/// that let her read `/a/`, her watch on it is canceled with etcd's "permission denied" and
/// she is sent no later change (etcd 3.4 goes on sending them).
#[test]
fn an_open_watch_is_canceled_when_its_user_may_no_longer_read() {
    if !etcdctl_available() {
        return;
    }
    let rt = runtime();
    let c = Cluster::start(1);
    rt.block_on(c.wait_leader(&[0]));
    let eps = c.endpoints();
    set_up(&eps);
    rt.block_on(async {
        let alice = login(&c, 0, "alice", "alicepw").await;
        let ch = common::channel(&format!("http://{}", c.endpoint(0)))
            .await
            .expect("connect");
        let mut watch = epb::watch_client::WatchClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = epb::WatchRequest {
            request_union: Some(epb::watch_request::RequestUnion::CreateRequest(
                epb::WatchCreateRequest {
                    key: b"/a/".to_vec(),
                    range_end: b"/a0".to_vec(),
                    ..Default::default()
                },
            )),
        };
        tx.send(create).await.expect("queue the create");
        let mut responses = watch
            .watch(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &alice,
            ))
            .await
            .expect("watch")
            .into_inner();
        async fn next(responses: &mut tonic::Streaming<epb::WatchResponse>) -> epb::WatchResponse {
            tokio::time::timeout(Duration::from_secs(10), responses.message())
                .await
                .expect("an answer in time")
                .expect("the stream")
                .expect("open")
        }
        let created = next(&mut responses).await;
        assert!(created.created && !created.canceled, "{created:?}");
        etcdctl_ok(&eps, &[ROOT, "put", "/a/1", "one"], "");
        let first = next(&mut responses).await;
        assert_eq!(first.events.len(), 1, "{first:?}");
        etcdctl_ok(&eps, &[ROOT, "user", "revoke-role", "alice", "reader"], "");
        etcdctl_ok(&eps, &[ROOT, "put", "/a/2", "two"], "");
        let after = next(&mut responses).await;
        assert!(
            after.events.is_empty(),
            "an event sent after the revoke: {after:?}"
        );
        assert!(after.canceled, "{after:?}");
        assert_eq!(after.cancel_reason, DENIED);
        drop(tx);
    });
}
