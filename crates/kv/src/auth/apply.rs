//! Applying an [`AuthRequest`] to the state (etcd's `authStore` methods), as a pure
//! function: the caller stores the state it returns.

use crate::error::KvError;

use super::{
    AuthRequest, AuthState, Role, User, AUTH_BYTES_MAX, ROLES_MAX, ROLE_PERMS_MAX, ROOT, USERS_MAX,
    USER_ROLES_MAX,
};

/// What applying an auth request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The new state, if the request changed it (its revision is one more).
    pub(crate) state: Option<AuthState>,
    /// The key of the token assigned by an Authenticate (see [`super::tokens::key_of`]),
    /// and its user.
    pub(crate) token: Option<(String, String)>,
    /// A user whose tokens must go (deleted, or a new password).
    pub(crate) invalidated: Option<String>,
}

/// Applies `req` (the entry at Raft `index`) to `state`. Refusals are etcd's errors and
/// change nothing; a request that would change nothing (enable twice, grant a role held)
/// succeeds without a new revision, as etcd's.
pub(crate) fn apply(state: &AuthState, req: &AuthRequest, index: u64) -> Result<Applied, KvError> {
    req.check()?;
    let mut s = state.clone();
    let mut out = Applied {
        state: None,
        token: None,
        invalidated: None,
    };
    match req {
        AuthRequest::Enable => {
            if s.enabled {
                return Ok(out);
            }
            let root = s.users.get(ROOT).ok_or(KvError::RootUserNotExist)?;
            if !root.roles.contains(ROOT) {
                return Err(KvError::RootRoleNotExist);
            }
            s.enabled = true;
        }
        AuthRequest::Disable => {
            if !s.enabled {
                return Ok(out);
            }
            s.enabled = false;
        }
        AuthRequest::Authenticate {
            name,
            token_prefix,
            checked_revision,
        } => {
            if !s.enabled {
                return Err(KvError::AuthNotEnabled);
            }
            let user = s.users.get(name).ok_or(KvError::AuthFailed)?;
            if user.password_hash.is_none() {
                return Err(KvError::AuthFailed);
            }
            // The password was checked against this revision's hash: a change since (a new
            // password, the user deleted and added again) makes the check stale.
            if *checked_revision != s.revision {
                return Err(KvError::AuthOldRevision);
            }
            // Held by key: the hash of the random part (an older entry's part is hashed here).
            let hash = if super::tokens::is_token_prefix(token_prefix) {
                super::tokens::prefix_hash(token_prefix)
            } else {
                token_prefix.clone()
            };
            out.token = Some((format!("{hash}.{index}"), name.clone()));
            return Ok(out);
        }
        AuthRequest::UserAdd {
            name,
            password_hash,
        } => {
            if s.users.contains_key(name) {
                return Err(KvError::UserAlreadyExist);
            }
            if s.users.len() >= USERS_MAX {
                return Err(KvError::AuthStateFull);
            }
            s.users.insert(
                name.clone(),
                User {
                    password_hash: password_hash.clone(),
                    roles: Default::default(),
                },
            );
        }
        AuthRequest::UserDelete { name } => {
            if s.enabled && name == ROOT {
                return Err(KvError::InvalidAuthMgmt);
            }
            s.users.remove(name).ok_or(KvError::UserNotFound)?;
            out.invalidated = Some(name.clone());
        }
        AuthRequest::UserChangePassword {
            name,
            password_hash,
        } => {
            let user = s.users.get_mut(name).ok_or(KvError::UserNotFound)?;
            user.password_hash = Some(password_hash.clone());
            out.invalidated = Some(name.clone());
        }
        AuthRequest::UserGrantRole { user, role } => {
            if !s.users.contains_key(user) {
                return Err(KvError::UserNotFound);
            }
            if role != ROOT && !s.roles.contains_key(role) {
                return Err(KvError::RoleNotFound);
            }
            let u = s.users.get_mut(user).expect("checked above");
            if u.roles.contains(role) {
                return Ok(out);
            }
            if u.roles.len() >= USER_ROLES_MAX {
                return Err(KvError::AuthStateFull);
            }
            u.roles.insert(role.clone());
        }
        AuthRequest::UserRevokeRole { name, role } => {
            if s.enabled && name == ROOT && role == ROOT {
                return Err(KvError::InvalidAuthMgmt);
            }
            let u = s.users.get_mut(name).ok_or(KvError::UserNotFound)?;
            if !u.roles.remove(role) {
                return Err(KvError::RoleNotGranted);
            }
        }
        AuthRequest::RoleAdd { name } => {
            if s.roles.contains_key(name) {
                return Err(KvError::RoleAlreadyExist);
            }
            if s.roles.len() >= ROLES_MAX {
                return Err(KvError::AuthStateFull);
            }
            s.roles.insert(name.clone(), Role::default());
        }
        AuthRequest::RoleDelete { role } => {
            if s.enabled && role == ROOT {
                return Err(KvError::InvalidAuthMgmt);
            }
            s.roles.remove(role).ok_or(KvError::RoleNotFound)?;
            for u in s.users.values_mut() {
                u.roles.remove(role);
            }
        }
        AuthRequest::RoleGrantPermission { name, perm } => {
            let r = s.roles.get_mut(name).ok_or(KvError::RoleNotFound)?;
            let at = r
                .perms
                .binary_search_by(|p| (&p.key, &p.range_end).cmp(&(&perm.key, &perm.range_end)));
            match at {
                Ok(i) => r.perms[i].perm_type = perm.perm_type,
                Err(_) if r.perms.len() >= ROLE_PERMS_MAX => return Err(KvError::AuthStateFull),
                Err(i) => r.perms.insert(i, perm.clone()),
            }
        }
        AuthRequest::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            let r = s.roles.get_mut(role).ok_or(KvError::RoleNotFound)?;
            let before = r.perms.len();
            r.perms
                .retain(|p| !(p.key == *key && p.range_end == *range_end));
            if r.perms.len() == before {
                return Err(KvError::PermissionNotGranted);
            }
        }
    }
    if s.encode().len() > AUTH_BYTES_MAX {
        return Err(KvError::AuthStateFull);
    }
    s.revision += 1;
    if let Err(why) = s.check_invariants() {
        panic!("auth request {req:?} broke an invariant: {why}");
    }
    out.state = Some(s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PermType, Permission};

    fn run(s: &mut AuthState, req: AuthRequest) -> Result<Applied, KvError> {
        let applied = apply(s, &req, 9)?;
        if let Some(next) = &applied.state {
            *s = next.clone();
        }
        Ok(applied)
    }

    fn user_add(name: &str) -> AuthRequest {
        AuthRequest::UserAdd {
            name: name.into(),
            password_hash: Some("$2b$10$hash".into()),
        }
    }

    #[test]
    fn enabling_needs_root_with_the_root_role_and_then_protects_them() {
        let mut s = AuthState::default();
        assert_eq!(
            run(&mut s, AuthRequest::Enable),
            Err(KvError::RootUserNotExist)
        );
        run(&mut s, user_add(ROOT)).expect("add");
        assert_eq!(
            run(&mut s, AuthRequest::Enable),
            Err(KvError::RootRoleNotExist)
        );
        assert!(!s.enabled, "nothing changed");
        let grant = AuthRequest::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        run(&mut s, grant).expect("root needs no role object");
        let rev = s.revision;
        run(&mut s, AuthRequest::Enable).expect("enable");
        assert!(s.enabled);
        assert_eq!(s.revision, rev + 1);
        run(&mut s, AuthRequest::Enable).expect("again: a no-op");
        assert_eq!(s.revision, rev + 1);
        let refused = [
            AuthRequest::UserDelete { name: ROOT.into() },
            AuthRequest::UserRevokeRole {
                name: ROOT.into(),
                role: ROOT.into(),
            },
        ];
        for r in refused {
            assert_eq!(run(&mut s, r), Err(KvError::InvalidAuthMgmt));
        }
        run(&mut s, AuthRequest::Disable).expect("disable");
        assert!(!s.enabled);
    }

    #[test]
    fn users_roles_and_permissions_follow_etcds_errors() {
        let mut s = AuthState::default();
        run(&mut s, user_add("u")).expect("add");
        assert_eq!(run(&mut s, user_add("u")), Err(KvError::UserAlreadyExist));
        assert_eq!(run(&mut s, user_add("")), Err(KvError::UserEmpty));
        let grant = |role: &str| AuthRequest::UserGrantRole {
            user: "u".into(),
            role: role.into(),
        };
        assert_eq!(run(&mut s, grant("r")), Err(KvError::RoleNotFound));
        run(&mut s, AuthRequest::RoleAdd { name: "r".into() }).expect("role");
        assert_eq!(
            run(&mut s, AuthRequest::RoleAdd { name: "r".into() }),
            Err(KvError::RoleAlreadyExist)
        );
        run(&mut s, grant("r")).expect("grant");
        let perm = |t| AuthRequest::RoleGrantPermission {
            name: "r".into(),
            perm: Permission {
                perm_type: t,
                key: b"/a/".to_vec(),
                range_end: b"/a0".to_vec(),
            },
        };
        run(&mut s, perm(PermType::Read)).expect("perm");
        run(&mut s, perm(PermType::ReadWrite)).expect("same range: the type changes");
        assert_eq!(s.roles["r"].perms.len(), 1);
        assert_eq!(s.roles["r"].perms[0].perm_type, PermType::ReadWrite);
        let revoke = AuthRequest::RoleRevokePermission {
            role: "r".into(),
            key: b"/a/".to_vec(),
            range_end: vec![],
        };
        assert_eq!(run(&mut s, revoke), Err(KvError::PermissionNotGranted));
        // Deleting a role revokes it from its users.
        run(&mut s, AuthRequest::RoleDelete { role: "r".into() }).expect("delete");
        assert!(s.users["u"].roles.is_empty());
        let revoke_role = AuthRequest::UserRevokeRole {
            name: "u".into(),
            role: "r".into(),
        };
        assert_eq!(run(&mut s, revoke_role), Err(KvError::RoleNotGranted));
        let deleted = run(&mut s, AuthRequest::UserDelete { name: "u".into() }).expect("del");
        assert_eq!(deleted.invalidated.as_deref(), Some("u"));
        assert_eq!(
            run(&mut s, AuthRequest::UserDelete { name: "u".into() }),
            Err(KvError::UserNotFound)
        );
    }

    #[test]
    fn authenticate_needs_auth_on_a_user_with_a_password_and_a_fresh_check() {
        let mut s = AuthState::default();
        let auth = |name: &str, rev| AuthRequest::Authenticate {
            name: name.into(),
            token_prefix: "abcdefghijklmnop".into(),
            checked_revision: rev,
        };
        assert_eq!(run(&mut s, auth("u", 1)), Err(KvError::AuthNotEnabled));
        run(&mut s, user_add(ROOT)).expect("root");
        run(
            &mut s,
            AuthRequest::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
        )
        .expect("grant");
        run(&mut s, AuthRequest::Enable).expect("enable");
        run(
            &mut s,
            AuthRequest::UserAdd {
                name: "np".into(),
                password_hash: None,
            },
        )
        .expect("no password");
        let rev = s.revision;
        assert_eq!(run(&mut s, auth("ghost", rev)), Err(KvError::AuthFailed));
        assert_eq!(run(&mut s, auth("np", rev)), Err(KvError::AuthFailed));
        assert_eq!(
            run(&mut s, auth(ROOT, rev - 1)),
            Err(KvError::AuthOldRevision)
        );
        let ok = run(&mut s, auth(ROOT, rev)).expect("auth");
        let key = format!(
            "{}.9",
            super::super::tokens::prefix_hash("abcdefghijklmnop")
        );
        assert_eq!(ok.token, Some((key.clone(), ROOT.to_string())));
        // An entry written with the hash (as members write them now) gives the same key.
        let hashed = AuthRequest::Authenticate {
            name: ROOT.into(),
            token_prefix: super::super::tokens::prefix_hash("abcdefghijklmnop"),
            checked_revision: rev,
        };
        let again = run(&mut s, hashed).expect("auth");
        assert_eq!(again.token, Some((key, ROOT.to_string())));
        let garbled = AuthRequest::Authenticate {
            name: ROOT.into(),
            token_prefix: "not a prefix".into(),
            checked_revision: rev,
        };
        assert_eq!(run(&mut s, garbled), Err(KvError::AuthFailed));
        assert_eq!(ok.state, None, "tokens are not replicated state");
    }
}
