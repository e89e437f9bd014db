//! Authentication and role-based access control (etcd's `auth` package): users, roles and
//! their key permissions, and whether enforcement is on, replicated through the log
//! ([`crate::Request::Auth`]) and kept in snapshots, so that every member enforces the same
//! rules at the same revision.
//!
//! The whole state ([`AuthState`]) is one redb row (`AUTH`), rewritten by each auth
//! request (they are rare and the state is bounded by [`AUTH_BYTES_MAX`]), and a copy in
//! memory that the permission checks read. Passwords arrive already hashed (bcrypt, hashed by
//! the member that received the request, so the log never holds a password).
//!
//! Rules, as etcd 3.4's `auth/store.go`:
//!
//! - Enabling needs a user `root` holding the role `root`; while enabled, that user and role
//!   cannot be deleted, nor the role revoked from the user ("invalid auth management").
//! - The role `root` grants everything and need not exist as a role to be granted.
//! - Every change bumps the auth revision. A client write carries the revision its member
//!   saw ([`AuthStamp`]): if the state changed before the write applies, it fails with
//!   "revision of auth store is old" rather than pass a check made against an older state.
//! - Permission checks ([`AuthState::check`], in `perms`) follow `authApplierV3`: a put needs
//!   write on the key (and read if it asks for the previous value, and write on every key of
//!   its lease), a delete write on its range, a range read on its range, a transaction every
//!   permission its compares and ops need; auth management needs the root role.
//!
//! Tokens ([`tokens`]) are etcd's simple tokens: assigned when an Authenticate entry applies,
//! held in memory on every member, valid for a TTL refreshed on use.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, TableDefinition};

use crate::codec::{Reader, Writer};
use crate::error::{Error, KvError};

mod apply;
mod perms;
pub mod tokens;

pub(crate) use apply::{apply, Applied};

/// The auth state: one row, key [`AUTH_ROW`], value [`AuthState::encode`].
pub(crate) const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
/// The key of the one row of [`AUTH`].
pub(crate) const AUTH_ROW: &str = "state";

/// Longest user or role name, in bytes (etcd has no limit; a name travels in every write's
/// stamp, so it is kept short).
pub const NAME_BYTES_MAX: usize = 256;
/// Most users.
pub const USERS_MAX: usize = 4096;
/// Most roles.
pub const ROLES_MAX: usize = 4096;
/// Most roles one user holds.
pub const USER_ROLES_MAX: usize = 64;
/// Most permissions one role holds.
pub const ROLE_PERMS_MAX: usize = 256;
/// Largest encoded auth state: every auth request that would grow it past this is refused
/// ([`KvError::AuthStateFull`]). It bounds what a permission check walks and what a snapshot
/// carries, whatever the mix of the limits above.
pub const AUTH_BYTES_MAX: usize = 4 << 20;
/// Longest password, in bytes: bcrypt reads the first 72 bytes only, so a longer one would
/// be accepted for any suffix; it is refused instead.
pub const PASSWORD_BYTES_MAX: usize = 72;

/// The name of the user and of the role that may do everything.
pub const ROOT: &str = "root";

/// What a permission allows (etcd's `authpb.Permission_Type`; the codes are its values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PermType {
    /// Range, watch, compare.
    Read,
    /// Put, delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermType {
    /// etcd's enum value.
    pub fn code(self) -> u8 {
        match self {
            PermType::Read => 0,
            PermType::Write => 1,
            PermType::ReadWrite => 2,
        }
    }

    /// Inverse of [`PermType::code`].
    pub fn from_code(code: u8) -> Option<PermType> {
        match code {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, wanted: PermType) -> bool {
        self == PermType::ReadWrite || self == wanted
    }
}

/// A permission on a key (`range_end` empty), a range `[key, range_end)`, or every key from
/// `key` on (`range_end` = `[0]`, as etcd's `--from-key`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// What it allows.
    pub perm_type: PermType,
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, exclusive; empty for the key alone, `[0]` for no end.
    pub range_end: Vec<u8>,
}

/// A bcrypt password hash. Its `Debug` output is redacted, so that nothing that prints a
/// user, an auth request, a command or the auth state (logs, panics, test failures) shows a
/// hash that could be cracked offline.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// The hash, to check a password against (never to print).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for PasswordHash {
    fn from(hash: String) -> Self {
        PasswordHash(hash)
    }
}

impl From<&str> for PasswordHash {
    fn from(hash: &str) -> Self {
        PasswordHash(hash.to_string())
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// A user (etcd's `authpb.User`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// bcrypt hash of the password; `None` for a user added with `no_password` (who cannot
    /// authenticate with a password).
    pub password_hash: Option<PasswordHash>,
    /// Roles granted, sorted (at most [`USER_ROLES_MAX`]; may name `root`, which need not
    /// exist as a role, and never a role that does not exist otherwise).
    pub roles: BTreeSet<String>,
}

/// A role (etcd's `authpb.Role`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// Permissions, sorted by key then range end, at most one per `(key, range_end)` (a grant
    /// on the same range replaces the type, as etcd's); at most [`ROLE_PERMS_MAX`].
    pub perms: Vec<Permission>,
}

/// Who sent a client's write, and the auth revision its member saw when it checked the
/// token: carried in the log entry so that the member applying it checks the permission
/// against the same state (etcd's `RequestHeader.username`/`auth_revision`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthStamp {
    /// The authenticated user; empty for a client that presented none.
    pub user: String,
    /// The auth revision the member saw.
    pub revision: u64,
}

/// The replicated auth state.
///
/// Invariants ([`AuthState::check_invariants`]): if `enabled`, user `root` exists and holds
/// role `root`; every role a user holds exists or is `root`; names are non-empty and at most
/// [`NAME_BYTES_MAX`]; the counts are within their limits; `revision >= 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Bumped by every change of users, roles or `enabled`; starts at 1 (etcd's).
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// One auth management request, as applied (the API layer has hashed passwords and chosen
/// the token's random part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// Turn enforcement on (needs user `root` with role `root`).
    Enable,
    /// Turn it off.
    Disable,
    /// Assign a token to `name`, whose password the receiving member checked at auth
    /// revision `checked_revision`: refused if the state changed since.
    Authenticate {
        /// The user.
        name: String,
        /// The SHA-256 in hex of the token's random part, which the receiving member chose
        /// and keeps to itself ([`tokens::prefix_hash`]); entries written before tokens were
        /// hashed hold the random part itself (16 letters), and apply alike.
        token_prefix: String,
        /// The auth revision the password was checked at.
        checked_revision: u64,
    },
    /// Add a user.
    UserAdd {
        /// Its name.
        name: String,
        /// bcrypt hash of its password; `None` for no password.
        password_hash: Option<PasswordHash>,
    },
    /// Delete a user.
    UserDelete {
        /// Its name.
        name: String,
    },
    /// Change a user's password.
    UserChangePassword {
        /// Its name.
        name: String,
        /// bcrypt hash of the new password.
        password_hash: PasswordHash,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Add a role.
    RoleAdd {
        /// Its name.
        name: String,
    },
    /// Delete a role (and revoke it from every user).
    RoleDelete {
        /// Its name.
        role: String,
    },
    /// Grant (or change the type of) a permission.
    RoleGrantPermission {
        /// The role.
        name: String,
        /// The permission.
        perm: Permission,
    },
    /// Revoke the permission on exactly `[key, range_end)`.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// First key.
        key: Vec<u8>,
        /// End of the range as granted.
        range_end: Vec<u8>,
    },
}

impl AuthRequest {
    /// Whether etcd requires the root role for it (`needAdminPermission`); Authenticate
    /// needs a password instead.
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthRequest::Authenticate { .. })
    }

    /// Static checks (names, bounds), before anything is read.
    pub(crate) fn check(&self) -> Result<(), KvError> {
        let name_ok = |n: &str, empty: KvError| {
            if n.is_empty() {
                Err(empty)
            } else if n.len() > NAME_BYTES_MAX {
                Err(KvError::AuthStateFull)
            } else {
                Ok(())
            }
        };
        let user = |n: &str| name_ok(n, KvError::UserEmpty);
        let role = |n: &str| name_ok(n, KvError::RoleEmpty);
        match self {
            AuthRequest::Enable | AuthRequest::Disable => Ok(()),
            AuthRequest::Authenticate {
                name, token_prefix, ..
            } => {
                // Every token a member assigns has this shape, which lets a member tell a
                // garbled token from one it has not applied yet (see `tokens::assigned_at`).
                if !tokens::is_prefix_hash(token_prefix) && !tokens::is_token_prefix(token_prefix) {
                    return Err(KvError::AuthFailed);
                }
                user(name)
            }
            AuthRequest::UserAdd { name, .. }
            | AuthRequest::UserDelete { name }
            | AuthRequest::UserChangePassword { name, .. } => user(name),
            AuthRequest::UserGrantRole { user: u, role: r }
            | AuthRequest::UserRevokeRole { name: u, role: r } => {
                user(u)?;
                role(r)
            }
            AuthRequest::RoleAdd { name } => role(name),
            AuthRequest::RoleDelete { role: r } => role(r),
            AuthRequest::RoleGrantPermission { name, .. } => role(name),
            AuthRequest::RoleRevokePermission { role: r, .. } => role(r),
        }
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        let s = |w: &mut Writer, t: &str| w.bytes(t.as_bytes());
        match self {
            AuthRequest::Enable => w.u8(0),
            AuthRequest::Disable => w.u8(1),
            AuthRequest::Authenticate {
                name,
                token_prefix,
                checked_revision,
            } => {
                w.u8(2);
                s(w, name);
                s(w, token_prefix);
                w.u64(*checked_revision);
            }
            AuthRequest::UserAdd {
                name,
                password_hash,
            } => {
                w.u8(3);
                s(w, name);
                match password_hash {
                    None => w.u8(0),
                    Some(h) => {
                        w.u8(1);
                        s(w, h.expose());
                    }
                }
            }
            AuthRequest::UserDelete { name } => {
                w.u8(4);
                s(w, name);
            }
            AuthRequest::UserChangePassword {
                name,
                password_hash,
            } => {
                w.u8(5);
                s(w, name);
                s(w, password_hash.expose());
            }
            AuthRequest::UserGrantRole { user, role } => {
                w.u8(6);
                s(w, user);
                s(w, role);
            }
            AuthRequest::UserRevokeRole { name, role } => {
                w.u8(7);
                s(w, name);
                s(w, role);
            }
            AuthRequest::RoleAdd { name } => {
                w.u8(8);
                s(w, name);
            }
            AuthRequest::RoleDelete { role } => {
                w.u8(9);
                s(w, role);
            }
            AuthRequest::RoleGrantPermission { name, perm } => {
                w.u8(10);
                s(w, name);
                encode_perm(w, perm);
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                w.u8(11);
                s(w, role);
                w.bytes(key);
                w.bytes(range_end);
            }
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<AuthRequest, Error> {
        Ok(match r.u8()? {
            0 => AuthRequest::Enable,
            1 => AuthRequest::Disable,
            2 => AuthRequest::Authenticate {
                name: text(r)?,
                token_prefix: text(r)?,
                checked_revision: r.u64()?,
            },
            3 => AuthRequest::UserAdd {
                name: text(r)?,
                password_hash: match r.u8()? {
                    0 => None,
                    1 => Some(text(r)?.into()),
                    t => return Err(Error::Decode(format!("user add: password tag {t}"))),
                },
            },
            4 => AuthRequest::UserDelete { name: text(r)? },
            5 => AuthRequest::UserChangePassword {
                name: text(r)?,
                password_hash: text(r)?.into(),
            },
            6 => AuthRequest::UserGrantRole {
                user: text(r)?,
                role: text(r)?,
            },
            7 => AuthRequest::UserRevokeRole {
                name: text(r)?,
                role: text(r)?,
            },
            8 => AuthRequest::RoleAdd { name: text(r)? },
            9 => AuthRequest::RoleDelete { role: text(r)? },
            10 => AuthRequest::RoleGrantPermission {
                name: text(r)?,
                perm: decode_perm(r)?,
            },
            11 => AuthRequest::RoleRevokePermission {
                role: text(r)?,
                key: r.bytes()?,
                range_end: r.bytes()?,
            },
            t => return Err(Error::Decode(format!("auth request tag {t}"))),
        })
    }
}

fn text(r: &mut Reader<'_>) -> Result<String, Error> {
    String::from_utf8(r.bytes()?).map_err(|_| Error::Decode("auth: a name is not UTF-8".into()))
}

fn encode_perm(w: &mut Writer, p: &Permission) {
    w.u8(p.perm_type.code());
    w.bytes(&p.key);
    w.bytes(&p.range_end);
}

fn decode_perm(r: &mut Reader<'_>) -> Result<Permission, Error> {
    let code = r.u8()?;
    Ok(Permission {
        perm_type: PermType::from_code(code)
            .ok_or_else(|| Error::Decode(format!("permission type {code}")))?,
        key: r.bytes()?,
        range_end: r.bytes()?,
    })
}

impl AuthState {
    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// The state as one byte string (the row of `AUTH` and the snapshot's auth section).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.bool(self.enabled);
        w.u64(self.revision);
        w.u64(self.users.len() as u64);
        for (name, u) in &self.users {
            w.bytes(name.as_bytes());
            match &u.password_hash {
                None => w.u8(0),
                Some(h) => {
                    w.u8(1);
                    w.bytes(h.expose().as_bytes());
                }
            }
            w.u64(u.roles.len() as u64);
            for r in &u.roles {
                w.bytes(r.as_bytes());
            }
        }
        w.u64(self.roles.len() as u64);
        for (name, role) in &self.roles {
            w.bytes(name.as_bytes());
            w.u64(role.perms.len() as u64);
            for p in &role.perms {
                encode_perm(&mut w, p);
            }
        }
        w.0
    }

    /// Inverse of [`AuthState::encode`]; refuses a state that breaks an invariant, so that a
    /// corrupt row or snapshot is never enforced.
    pub fn decode(bytes: &[u8]) -> Result<AuthState, Error> {
        let mut r = Reader::raw(bytes);
        let mut s = AuthState {
            enabled: r.bool()?,
            revision: r.u64()?,
            ..AuthState::default()
        };
        for _ in 0..r.len()? {
            let name = text(&mut r)?;
            let password_hash = match r.u8()? {
                0 => None,
                1 => Some(text(&mut r)?.into()),
                t => return Err(Error::Decode(format!("auth: password tag {t}"))),
            };
            let mut roles = BTreeSet::new();
            for _ in 0..r.len()? {
                roles.insert(text(&mut r)?);
            }
            let user = User {
                password_hash,
                roles,
            };
            if s.users.insert(name, user).is_some() {
                return Err(Error::Decode("auth: a user twice".into()));
            }
        }
        for _ in 0..r.len()? {
            let name = text(&mut r)?;
            let mut perms = Vec::new();
            for _ in 0..r.len()? {
                perms.push(decode_perm(&mut r)?);
            }
            if s.roles.insert(name, Role { perms }).is_some() {
                return Err(Error::Decode("auth: a role twice".into()));
            }
        }
        r.finish()?;
        s.check_invariants()
            .map_err(|why| Error::Decode(format!("auth state: {why}")))?;
        Ok(s)
    }

    /// Checks the invariants of [`AuthState`]; says which one is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.revision == 0 {
            return Err("revision 0".into());
        }
        if self.enabled && !self.is_root(ROOT) {
            return Err("enabled without a root user holding the root role".into());
        }
        if self.users.len() > USERS_MAX || self.roles.len() > ROLES_MAX {
            return Err("too many users or roles".into());
        }
        let name_ok = |n: &String| !n.is_empty() && n.len() <= NAME_BYTES_MAX;
        for (name, u) in &self.users {
            if !name_ok(name) || u.roles.len() > USER_ROLES_MAX {
                return Err(format!("user {name:?} over the limits"));
            }
            if let Some(r) = u
                .roles
                .iter()
                .find(|r| r.as_str() != ROOT && !self.roles.contains_key(*r))
            {
                return Err(format!(
                    "user {name:?} holds role {r:?}, which does not exist"
                ));
            }
        }
        for (name, role) in &self.roles {
            if !name_ok(name) || role.perms.len() > ROLE_PERMS_MAX {
                return Err(format!("role {name:?} over the limits"));
            }
            let sorted = role
                .perms
                .windows(2)
                .all(|w| (&w[0].key, &w[0].range_end) < (&w[1].key, &w[1].range_end));
            if !sorted {
                return Err(format!("role {name:?}: permissions out of order or twice"));
            }
        }
        Ok(())
    }
}

/// The state stored in `table` (the default state if it was never written).
pub(crate) fn load(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<AuthState, Error> {
    match table.get(AUTH_ROW)? {
        None => Ok(AuthState::default()),
        Some(row) => AuthState::decode(row.value()).map_err(|e| match e {
            Error::Decode(why) => Error::Corrupt(why),
            other => other,
        }),
    }
}

/// Stores `state` as the one row of `table`.
pub(crate) fn store(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    state: &AuthState,
) -> Result<(), Error> {
    table.insert(AUTH_ROW, state.encode().as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_password_hash() {
        let hash = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
        let mut state = AuthState::default();
        state.users.insert(
            "alice".into(),
            User {
                password_hash: Some(hash.into()),
                roles: BTreeSet::new(),
            },
        );
        let add = AuthRequest::UserAdd {
            name: "bob".into(),
            password_hash: Some(hash.into()),
        };
        let change = AuthRequest::UserChangePassword {
            name: "bob".into(),
            password_hash: hash.into(),
        };
        let command = crate::Command::new(crate::Request::Auth(add.clone()));
        for printed in [
            format!("{state:?}"),
            format!("{:?}", state.users["alice"]),
            format!("{add:?}"),
            format!("{change:#?}"),
            format!("{command:?}"),
        ] {
            assert!(!printed.contains("$2b$"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
        // The hash itself is intact where it is needed.
        assert_eq!(
            state.users["alice"]
                .password_hash
                .as_ref()
                .map(PasswordHash::expose),
            Some(hash)
        );
        assert_eq!(AuthState::decode(&state.encode()).expect("decodes"), state);
    }
}
