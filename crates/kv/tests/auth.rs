//! The auth state through `Store::apply`: client commands are checked at apply against the
//! state the entry applies at (a change earlier in the same batch included), tokens are
//! assigned on apply and go with their user, and a refused request changes nothing.

use skiff_kv::{
    AuthRequest, AuthStamp, Command, Error, KvError, Options, PermType, Permission, PutRequest,
    RangeRequest, Request, Response, Store,
};

fn auth(r: AuthRequest) -> Command {
    Command::new(Request::Auth(r))
}

fn as_user(user: &str, revision: u64, request: Request) -> Command {
    Command {
        session: None,
        request,
        auth: Some(AuthStamp {
            user: user.into(),
            revision,
        }),
    }
}

/// Root, a role `w` with readwrite on the prefix `/a/`, user `u` holding it, enabled; returns
/// the next free index.
fn set_up(store: &Store) -> u64 {
    let requests = [
        AuthRequest::UserAdd {
            name: "root".into(),
            password_hash: Some("$2b$10$r".into()),
        },
        AuthRequest::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        AuthRequest::RoleAdd { name: "w".into() },
        AuthRequest::RoleGrantPermission {
            name: "w".into(),
            perm: Permission {
                perm_type: PermType::ReadWrite,
                key: b"/a/".to_vec(),
                range_end: b"/a0".to_vec(),
            },
        },
        AuthRequest::UserAdd {
            name: "u".into(),
            password_hash: Some("$2b$10$u".into()),
        },
        AuthRequest::UserGrantRole {
            user: "u".into(),
            role: "w".into(),
        },
        AuthRequest::Enable,
    ];
    let mut index = 1;
    for r in requests {
        store.apply(index, &auth(r)).expect("auth request");
        index += 1;
    }
    index
}

fn refusal(r: Result<Response, Error>) -> KvError {
    match r {
        Err(Error::Kv(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn stamped_writes_are_checked_at_apply_and_refusals_change_nothing() {
    let store = Store::in_memory(Options::default()).expect("store");
    let mut index = set_up(&store);
    let rev = store.auth_state().revision;
    let put = |k: &str| Request::Put(PutRequest::new(k, "v"));
    let before = store.revision().expect("revision");
    store
        .apply(index, &as_user("u", rev, put("/a/x")))
        .expect("allowed");
    index += 1;
    let denied = store.apply(index, &as_user("u", rev, put("/b/x")));
    assert_eq!(refusal(denied), KvError::PermissionDenied);
    index += 1;
    let anonymous = store.apply(index, &as_user("", rev, put("/a/y")));
    assert_eq!(refusal(anonymous), KvError::UserEmpty);
    index += 1;
    let stale = store.apply(index, &as_user("u", rev - 1, put("/a/y")));
    assert_eq!(refusal(stale), KvError::AuthOldRevision);
    index += 1;
    let not_admin = store.apply(
        index,
        &as_user("u", rev, Request::Auth(AuthRequest::Disable)),
    );
    assert_eq!(refusal(not_admin), KvError::PermissionDenied);
    index += 1;
    assert_eq!(
        store.revision().expect("revision"),
        before + 1,
        "one put applied"
    );
    assert!(store.auth_state().enabled);
    // A put is only ever a client's: without a stamp (lost, or forged on the peer port) it
    // is refused, not taken for the servers' own.
    let unstamped = store.apply(index, &Command::new(put("/b/z")));
    assert_eq!(refusal(unstamped), KvError::PermissionDenied);
    index += 1;
    let unstamped = store.apply(
        index,
        &auth(AuthRequest::UserGrantRole {
            user: "u".into(),
            role: "root".into(),
        }),
    );
    assert_eq!(refusal(unstamped), KvError::PermissionDenied);
    assert!(!store.auth_state().is_root("u"));
    index += 1;
    // The first version with auth wrote Authenticate (and MemberUpdate, alarm disarms)
    // unstamped: such an entry applies as it did then, a token for its user, alike on every
    // member whichever version replays it.
    let old_login = store.apply(
        index,
        &auth(AuthRequest::Authenticate {
            name: "u".into(),
            token_prefix: "abcdefghijklmnop".into(),
            checked_revision: store.auth_state().revision,
        }),
    );
    assert!(
        matches!(old_login, Ok(Response::Auth { token: Some(_), .. })),
        "{old_login:?}"
    );
    index += 1;
    // Unstamped compactions and lease revokes are the servers' own (auto-compaction, lease
    // expiry): not checked.
    store
        .apply(index, &Command::new(Request::Compact { revision: 1 }))
        .expect("internal");
    index += 1;

    // In one batch, a revoke applies before the stamped put after it, which then carries
    // an older revision than the state it applies at.
    let revoke = as_user(
        "root",
        rev,
        Request::Auth(AuthRequest::UserRevokeRole {
            name: "u".into(),
            role: "w".into(),
        }),
    );
    let late = as_user("u", rev, put("/a/late"));
    let out = store
        .apply_batch(&[(index, Some(&revoke)), (index + 1, Some(&late))])
        .expect("batch");
    assert!(matches!(out[0], Some(Ok(Response::Auth { .. }))));
    assert_eq!(out[1], Some(Err(KvError::AuthOldRevision)));
    let fresh = store.auth_state().revision;
    let again = store.apply(index + 2, &as_user("u", fresh, put("/a/late")));
    assert_eq!(refusal(again), KvError::PermissionDenied);
    let got = store.range(&RangeRequest::key("/a/late")).expect("range");
    assert!(got.kvs.is_empty());
}

#[test]
fn tokens_are_assigned_on_apply_and_go_with_their_user() {
    let store = Store::in_memory(Options::default()).expect("store");
    let mut index = set_up(&store);
    let rev = store.auth_state().revision;
    // The entry (what every member's log keeps) carries the hash of the token's random part.
    let hash = skiff_kv::auth::tokens::prefix_hash("abcdefghijklmnop");
    let login = as_user(
        "u",
        rev,
        Request::Auth(AuthRequest::Authenticate {
            name: "u".into(),
            token_prefix: hash.clone(),
            checked_revision: rev,
        }),
    );
    let logged = skiff_kv::codec::encode_command(&login);
    assert!(!logged
        .windows("abcdefghijklmnop".len())
        .any(|w| w == b"abcdefghijklmnop"));
    let key = match store.apply(index, &login).expect("authenticate") {
        Response::Auth {
            token: Some(key), ..
        } => key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key, format!("{hash}.{index}"), "the key, not the token");
    assert_eq!(store.token_user(&key), None, "the key is no token");
    let token = format!("abcdefghijklmnop.{index}");
    assert_eq!(store.token_user(&token).as_deref(), Some("u"));
    assert_eq!(store.auth_state().revision, rev, "a login changes no state");
    index += 1;
    store
        .apply(
            index,
            &as_user(
                "root",
                rev,
                Request::Auth(AuthRequest::UserChangePassword {
                    name: "u".into(),
                    password_hash: "$2b$10$new".into(),
                }),
            ),
        )
        .expect("change password");
    assert_eq!(
        store.token_user(&token),
        None,
        "a new password ends the old tokens"
    );
    index += 1;
    // A password checked before the change is stale.
    let stale = store.apply(index, &login);
    assert_eq!(refusal(stale), KvError::AuthOldRevision);
}

#[test]
fn a_login_assigns_a_token_only_to_the_user_its_stamp_names() {
    let store = Store::in_memory(Options::default()).expect("store");
    let index = set_up(&store);
    let rev = store.auth_state().revision;
    let login = |stamp: Option<&str>| Command {
        session: None,
        request: Request::Auth(AuthRequest::Authenticate {
            name: "root".into(),
            token_prefix: "abcdefghijklmnop".into(),
            checked_revision: rev,
        }),
        auth: stamp.map(|user| AuthStamp {
            user: user.into(),
            revision: rev,
        }),
    };
    // A member that checked u's password cannot have a token assigned to root.
    assert_eq!(
        refusal(store.apply(index, &login(Some("u")))),
        KvError::PermissionDenied
    );
    // An unstamped login is what the first version with auth wrote: it applies as it did
    // then, alike whichever version replays it (the leader refuses one forwarded unstamped
    // before proposing it; see `Request::stamped_by_every_version`).
    assert!(matches!(
        store.apply(index + 1, &login(None)),
        Ok(Response::Auth { token: Some(_), .. })
    ));
    assert!(matches!(
        store.apply(index + 2, &login(Some("root"))),
        Ok(Response::Auth { token: Some(_), .. })
    ));
}

#[test]
fn a_lease_revoke_needs_write_on_every_key_of_the_lease_at_apply() {
    let store = Store::in_memory(Options::default()).expect("store");
    let mut index = set_up(&store);
    let rev = store.auth_state().revision;
    store
        .apply(index, &Command::new(Request::LeaseGrant { id: 7, ttl: 60 }))
        .expect("grant");
    index += 1;
    let put = |k: &str| {
        let mut p = PutRequest::new(k, "v");
        p.lease = 7;
        Request::Put(p)
    };
    store
        .apply(index, &as_user("u", rev, put("/a/x")))
        .expect("u writes /a/x");
    index += 1;
    let revoke = Request::LeaseRevoke { id: 7 };
    // Attached since u's member checked the revoke: the check at apply sees it.
    store
        .apply(index, &as_user("root", rev, put("/b/x")))
        .expect("root writes /b/x");
    index += 1;
    let before = store.revision().expect("revision");
    let denied = store.apply(index, &as_user("u", rev, revoke.clone()));
    assert_eq!(refusal(denied), KvError::PermissionDenied);
    index += 1;
    assert_eq!(
        store.revision().expect("revision"),
        before,
        "nothing changed"
    );
    assert_eq!(
        store
            .range(&RangeRequest::key("/b/x"))
            .expect("range")
            .count,
        1
    );
    store
        .apply(index, &as_user("root", rev, revoke))
        .expect("root may");
    assert_eq!(
        store
            .range(&RangeRequest::key("/b/x"))
            .expect("range")
            .count,
        0
    );
}

/// A restored snapshot replaces the auth state and ends every token: no reader may see the
/// new state while a token from before still resolves (it would pass a check against the
/// new state with a user the old one vouched for). A reader resolves a token between two
/// reads of the state; while a writer restores one snapshot then the other, assigning a
/// token in between, the reader must never find the token live under the same new state on
/// both sides.
#[test]
fn no_reader_sees_a_restored_auth_state_with_a_token_from_before() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let store = Arc::new(Store::in_memory(Options::default()).expect("store"));
    let index = set_up(&store);
    let old_snap = store.snapshot().expect("snapshot");
    let rev = store.auth_state().revision;
    // The new state: one more role, a later revision.
    store
        .apply(
            index,
            &as_user(
                "root",
                rev,
                Request::Auth(AuthRequest::RoleAdd { name: "x".into() }),
            ),
        )
        .expect("role");
    let new_snap = store.snapshot().expect("snapshot");
    let new_rev = store.auth_state().revision;
    assert!(new_rev > rev);
    let login = as_user(
        "u",
        rev,
        Request::Auth(AuthRequest::Authenticate {
            name: "u".into(),
            token_prefix: "abcdefghijklmnop".into(),
            checked_revision: rev,
        }),
    );
    let token = format!("abcdefghijklmnop.{index}");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done, token) = (store.clone(), done.clone(), token.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !done.load(Ordering::Relaxed) {
                let before = store.auth_state();
                let user = store.token_user(&token);
                let after = store.auth_state();
                if before.revision == new_rev && Arc::ptr_eq(&before, &after) && user.is_some() {
                    return Err(format!("token {token} resolved under the restored state"));
                }
                seen += 1;
            }
            Ok(seen)
        })
    };
    for _ in 0..3000 {
        store.restore(&old_snap).expect("restore old");
        store.apply(index, &login).expect("login");
        store.restore(&new_snap).expect("restore new");
        if reader.is_finished() {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let seen = reader.join().expect("reader").expect("consistent");
    assert!(seen > 0);
}
