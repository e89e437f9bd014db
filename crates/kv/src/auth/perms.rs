//! Permission checks (etcd's `authApplierV3` and `range_perm_cache.go`).
//!
//! A user's permissions of one type are the union of the intervals of its roles' grants:
//! a key alone is the interval `[key, key\0)`, a `--from-key` grant (`range_end` = `[0]`)
//! has no end. A request for one key needs a grant containing it; a request for a range needs
//! the union to cover the whole range (etcd's interval tree `Contains`), so that two
//! adjacent grants together allow a range that spans both.

use crate::command::Request;
use crate::error::{Error, KvError};
use crate::types::{RequestOp, TxnRequest};

use super::{AuthStamp, AuthState, PermType, ROOT};

/// The keys attached to a lease (for puts with a lease and lease revokes).
pub type LeaseKeys<'a> = dyn FnMut(i64) -> Result<Vec<Vec<u8>>, Error> + 'a;

/// End of an interval: a key (exclusive) or none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

/// `[start, end)`; a request for one key is `[key, key\0)`.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    let end = match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            End::Key(next)
        }
        [0] => End::Unbounded,
        end => End::Key(end.to_vec()),
    };
    (key.to_vec(), end)
}

impl AuthState {
    /// Checks a write applied from the log, sent by `stamp`: as [`AuthState::check`], after
    /// refusing a stamp older than this state (the permission was checked, or the token
    /// resolved, against a state that changed since).
    pub fn check_stamped(
        &self,
        stamp: &AuthStamp,
        req: &Request,
        lease_keys: &mut LeaseKeys<'_>,
    ) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if stamp.user.is_empty() {
            return Err(KvError::UserEmpty.into());
        }
        if stamp.revision < self.revision {
            return Err(KvError::AuthOldRevision.into());
        }
        self.check(&stamp.user, req, lease_keys)
    }

    /// Whether the sender `stamp` names may run administrative requests on this state, for a
    /// request checked where it runs rather than at apply (a configuration change a follower
    /// forwards to the leader): as [`AuthState::check_admin`], after refusing a stamp older
    /// than this state.
    pub fn check_admin_stamped(&self, stamp: &AuthStamp) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        if stamp.user.is_empty() {
            return Err(KvError::UserEmpty);
        }
        if stamp.revision < self.revision {
            return Err(KvError::AuthOldRevision);
        }
        self.check_admin(&stamp.user)
    }

    /// Whether `user` may run administrative requests (etcd's `IsAdminPermitted`): anyone
    /// while auth is disabled, else a user holding the root role.
    pub fn check_admin(&self, user: &str) -> Result<(), KvError> {
        if !self.enabled || self.is_root(user) {
            Ok(())
        } else if user.is_empty() {
            Err(KvError::UserEmpty)
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// Whether `user` (empty: none authenticated) may run `req` now; `Ok` whenever auth is
    /// disabled. Errors are etcd's: no user is "user name is empty", anything else
    /// "permission denied".
    pub fn check(
        &self,
        user: &str,
        req: &Request,
        lease_keys: &mut LeaseKeys<'_>,
    ) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(KvError::UserEmpty.into());
        }
        if let Request::Auth(super::AuthRequest::Authenticate { name, .. }) = req {
            // Stamped by the member that checked the password with the user it checked: a
            // token is assigned to that user only (the root role does not assign tokens to
            // others).
            return if name == user {
                Ok(())
            } else {
                Err(KvError::PermissionDenied.into())
            };
        }
        if !self.users.contains_key(user) {
            return Err(KvError::PermissionDenied.into());
        }
        if self.is_root(user) {
            return Ok(());
        }
        let deny = || Error::Kv(KvError::PermissionDenied);
        let lease_writable = |lease: i64, lease_keys: &mut LeaseKeys<'_>| {
            if lease == 0 {
                return Ok(());
            }
            for k in lease_keys(lease)? {
                if !self.permits(user, PermType::Write, &k, &[]) {
                    return Err(deny());
                }
            }
            Ok(())
        };
        match req {
            Request::Range(r) => self.need(user, PermType::Read, &r.key, &r.range_end),
            Request::Put(p) => {
                self.need(user, PermType::Write, &p.key, &[])?;
                lease_writable(p.lease, lease_keys)?;
                if p.prev_kv {
                    self.need(user, PermType::Read, &p.key, &[])?;
                }
                Ok(())
            }
            Request::DeleteRange(d) => {
                self.need(user, PermType::Write, &d.key, &d.range_end)?;
                if d.prev_kv {
                    self.need(user, PermType::Read, &d.key, &d.range_end)?;
                }
                Ok(())
            }
            Request::Txn(t) => self.check_txn(user, t, lease_keys),
            Request::LeaseRevoke { id } => lease_writable(*id, lease_keys),
            Request::LeaseGrant { .. } => Ok(()),
            // History belongs to everyone: only an administrator compacts it (etcd 3.4 lets
            // anyone).
            Request::Compact { .. } => Err(deny()),
            Request::Auth(a) if a.needs_admin() => Err(deny()),
            Request::Auth(_) => Ok(()),
            // Member changes and alarms are administrative.
            Request::MemberPublish(_)
            | Request::MembersRemoved(_)
            | Request::MemberAdd(_)
            | Request::MemberUpdate { .. }
            | Request::Alarm { .. } => Err(deny()),
        }
    }

    /// etcd's `checkTxnAuth`: every compare needs read on its range and every op of both
    /// branches its own permissions (a nested transaction too, which etcd 3.4 skips), so a
    /// transaction with one denied op is denied whole, whichever branch would run.
    fn check_txn(
        &self,
        user: &str,
        t: &TxnRequest,
        lease_keys: &mut LeaseKeys<'_>,
    ) -> Result<(), Error> {
        for c in &t.compare {
            self.need(user, PermType::Read, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            let req = match op {
                RequestOp::Range(r) => Request::Range(r.clone()),
                RequestOp::Put(p) => Request::Put(p.clone()),
                RequestOp::DeleteRange(d) => Request::DeleteRange(d.clone()),
                RequestOp::Txn(inner) => {
                    self.check_txn(user, inner, lease_keys)?;
                    continue;
                }
            };
            self.check(user, &req, lease_keys)?;
        }
        Ok(())
    }

    fn need(
        &self,
        user: &str,
        wanted: PermType,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Error> {
        if self.permits(user, wanted, key, range_end) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied.into())
        }
    }

    /// Whether `user`'s grants of type `wanted` cover `[key, range_end)` (a key alone if
    /// `range_end` is empty; no end if it is `[0]`). A range whose end is not after its key
    /// selects nothing (etcd answers it with no keys): it is allowed only as far as its first
    /// key is, so that such a request reveals nothing a denied user could not see otherwise.
    pub fn permits(&self, user: &str, wanted: PermType, key: &[u8], range_end: &[u8]) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT) {
            return true;
        }
        let (start, mut end) = interval(key, range_end);
        if end <= End::Key(start.clone()) {
            end = interval(key, &[]).1;
        }
        let mut grants: Vec<(Vec<u8>, End)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.perms)
            .filter(|p| p.perm_type.allows(wanted))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        grants.sort();
        // Sweep: `covered` is how far from `start` the grants seen so far reach without a gap.
        let mut covered = End::Key(start);
        for (s, e) in grants {
            if covered >= end {
                break;
            }
            if End::Key(s) > covered {
                // A gap before this grant; later grants start later still.
                break;
            }
            if e > covered {
                covered = e;
            }
        }
        covered >= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthRequest, Permission, Role, User};
    use crate::types::{Compare, CompareResult, CompareTarget, PutRequest, RangeRequest};

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t,
            key: key.into(),
            range_end: end.into(),
        }
    }

    /// User `u` with role `r` holding `perms`, auth enabled.
    fn state(perms: Vec<Permission>) -> AuthState {
        let mut s = AuthState::default();
        s.roles.insert("r".into(), Role { perms });
        s.users.insert(
            "u".into(),
            User {
                password_hash: None,
                roles: ["r".to_string()].into(),
            },
        );
        s.users.insert(
            ROOT.into(),
            User {
                password_hash: None,
                roles: [ROOT.to_string()].into(),
            },
        );
        s.enabled = true;
        s.check_invariants().expect("valid");
        s
    }

    fn no_leases(_: i64) -> Result<Vec<Vec<u8>>, Error> {
        Ok(vec![])
    }

    fn refusal(s: &AuthState, user: &str, req: &Request) -> Option<KvError> {
        match s.check(user, req, &mut no_leases) {
            Ok(()) => None,
            Err(Error::Kv(e)) => Some(e),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_prefix_grant_allows_its_keys_and_ranges_inside_it_only() {
        let s = state(vec![perm(PermType::Read, "/a/", "/a0")]);
        assert!(s.permits("u", PermType::Read, b"/a/x", b""));
        assert!(s.permits("u", PermType::Read, b"/a/", b"/a0"));
        assert!(s.permits("u", PermType::Read, b"/a/b", b"/a/c"));
        assert!(
            !s.permits("u", PermType::Read, b"/a/", b"/b"),
            "past the end"
        );
        assert!(
            !s.permits("u", PermType::Read, b"/", b"/a0"),
            "before the start"
        );
        assert!(!s.permits("u", PermType::Read, b"/b/x", b""));
        assert!(!s.permits("u", PermType::Read, b"/a/", b"\0"), "no end");
        assert!(!s.permits("u", PermType::Write, b"/a/x", b""), "read only");
        assert!(!s.permits("nobody", PermType::Read, b"/a/x", b""));
    }

    #[test]
    fn adjacent_grants_cover_a_range_together_and_from_key_has_no_end() {
        let s = state(vec![
            perm(PermType::Read, "a", "c"),
            perm(PermType::ReadWrite, "c", "e"),
            perm(PermType::Write, "k", ""),
            perm(PermType::Read, "x", "\0"),
        ]);
        assert!(s.permits("u", PermType::Read, b"b", b"d"));
        assert!(!s.permits("u", PermType::Read, b"b", b"f"));
        assert!(s.permits("u", PermType::Write, b"k", b""));
        assert!(!s.permits("u", PermType::Write, b"k0", b""), "a key alone");
        assert!(s.permits("u", PermType::Read, b"zzz", b"\0"));
        assert!(s.permits("u", PermType::Read, b"y", b"z"));
        assert!(!s.permits("u", PermType::Read, b"w", b"\0"));
    }

    #[test]
    fn checks_follow_etcds_auth_applier() {
        let s = state(vec![perm(PermType::Read, "/a/", "/a0")]);
        let get = Request::Range(RangeRequest::key("/a/x"));
        let put = Request::Put(PutRequest::new("/a/x", "v"));
        assert_eq!(refusal(&s, "u", &get), None);
        assert_eq!(refusal(&s, "u", &put), Some(KvError::PermissionDenied));
        assert_eq!(refusal(&s, "", &get), Some(KvError::UserEmpty));
        assert_eq!(refusal(&s, "ghost", &get), Some(KvError::PermissionDenied));
        assert_eq!(refusal(&s, ROOT, &put), None);
        let admin = Request::Auth(AuthRequest::RoleAdd { name: "x".into() });
        assert_eq!(refusal(&s, "u", &admin), Some(KvError::PermissionDenied));
        assert_eq!(refusal(&s, ROOT, &admin), None);
        // A transaction with one denied op is denied whole, whatever branch would run; a
        // compare needs read.
        let txn = |success, compare_key: &str| {
            Request::Txn(TxnRequest {
                compare: vec![Compare {
                    key: compare_key.into(),
                    range_end: vec![],
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(0),
                }],
                success,
                failure: vec![],
            })
        };
        let read = RequestOp::Range(RangeRequest::key("/a/y"));
        let write = RequestOp::Put(PutRequest::new("/a/y", "v"));
        assert_eq!(refusal(&s, "u", &txn(vec![read.clone()], "/a/z")), None);
        assert_eq!(
            refusal(&s, "u", &txn(vec![read.clone(), write], "/a/z")),
            Some(KvError::PermissionDenied)
        );
        assert_eq!(
            refusal(&s, "u", &txn(vec![read], "/b/z")),
            Some(KvError::PermissionDenied)
        );
        // Disabled: everything goes.
        let mut off = s.clone();
        off.enabled = false;
        assert_eq!(refusal(&off, "", &put), None);
    }

    #[test]
    fn a_stamp_older_than_the_state_is_refused_and_lease_keys_need_write() {
        let s = state(vec![perm(PermType::ReadWrite, "/a/", "/a0")]);
        let put = Request::Put(PutRequest {
            lease: 7,
            ..PutRequest::new("/a/x", "v")
        });
        let stamp = |rev| AuthStamp {
            user: "u".into(),
            revision: rev,
        };
        let mut ours = |_| Ok(vec![b"/a/y".to_vec()]);
        assert!(s.check_stamped(&stamp(s.revision), &put, &mut ours).is_ok());
        let old = s.check_stamped(&stamp(s.revision - 1), &put, &mut ours);
        assert!(matches!(old, Err(Error::Kv(KvError::AuthOldRevision))));
        let mut theirs = |_| Ok(vec![b"/b/y".to_vec()]);
        let denied = s.check_stamped(&stamp(s.revision), &put, &mut theirs);
        assert!(matches!(denied, Err(Error::Kv(KvError::PermissionDenied))));
        let revoke = Request::LeaseRevoke { id: 7 };
        assert!(s.check("u", &revoke, &mut theirs).is_err());
        assert!(s.check("u", &revoke, &mut ours).is_ok());
    }
}
