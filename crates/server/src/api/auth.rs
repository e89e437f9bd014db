//! etcd's Auth service (`etcdserverpb.Auth`; etcd's `v3rpc/auth.go` and the auth half of
//! `v3_server.go`), and who sent a request ([`Api::caller`]), which every other service asks
//! before it serves one.
//!
//! Changes (users, roles, permissions, enable/disable) are [`kv::AuthRequest`]s proposed
//! through the log like any write, stamped with the sender ([`kv::AuthStamp`]), so the
//! applying member refuses them unless the sender holds the root role at that revision.
//! Passwords are hashed here, with bcrypt at etcd's cost, on a blocking thread: the log never
//! holds a password, and nothing logs one.
//!
//! Authenticate, as etcd's: after a linearizable read barrier, the password is checked here
//! against this member's applied state, then an entry assigns the token on every member (the
//! entry carries the SHA-256 of the token's random part, which only this member knows, so
//! the log holds no live token; see `kv::auth::tokens`); it carries the auth revision of the
//! check, and is refused if the state changed since (a new
//! password), in which case the check runs again. Attempts are rate-limited per client
//! address, per user name and per member ([`AuthLimiter`]) and the bcrypt checks in flight
//! are bounded, so a password cannot be guessed at line rate and logins cannot take every
//! core. A name with no password to check (no such user, or one without a password) costs
//! a bcrypt check all the same, so that the time of a refusal does not tell which names
//! exist; names are cut short and escaped in the log.
//!
//! Reads of the auth state (AuthStatus, UserGet/List, RoleGet/List) are served from this
//! member's state after a linearizable read barrier, without a log entry.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub use super::auth_limit::{AuthLimiter, AUTH_CHECK_WAIT_MAX};
use super::{unexpected, Api};
use crate::pb::authpb;
use crate::pb::etcdserverpb as epb;
use crate::rpctypes::{kv_error_status, ERR_TOO_MANY_REQUESTS};

/// etcd's default `--bcrypt-cost` (Go's `bcrypt.DefaultCost`).
pub const BCRYPT_COST_DEFAULT: u32 = 10;
/// Times an Authenticate is re-checked when the auth state changes between the password
/// check and the entry that assigns the token.
const AUTHENTICATE_TRIES_MAX: usize = 3;
/// The password the dummy hash is made of (see [`Api::password_matches`]); it is never
/// compared with anything that could match.
const DUMMY_PASSWORD: &str = "skiff: no such user";

/// The gRPC metadata keys a token arrives in: etcd 3.4's clients send `token`, 3.5's
/// `authorization`.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// A password over bcrypt's 72 bytes (bcrypt ignores the rest, so it would match any
/// password sharing the prefix; refused rather than truncated).
pub const ERR_PASSWORD_TOO_LONG: &str = "skiff: password is longer than 72 bytes";
/// An Authenticate over one of its budgets (its address's, its user's, the member's; see
/// [`AuthLimiter`]).
pub const ERR_AUTH_RATE: &str = "skiff: too many authentication attempts; try again later";
/// Longest user name a log line carries, in characters (names come from whoever calls
/// Authenticate; the rest is cut, and control characters are escaped).
pub const LOGGED_NAME_CHARS_MAX: usize = 64;

/// etcd's auth flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// `--auth-token-ttl`: how long a simple token lives after its last use.
    pub token_ttl: Duration,
    /// `--bcrypt-cost`: the cost of new password hashes (4..=31).
    pub bcrypt_cost: u32,
    /// `--client-cert-auth` on an `https://` client port: a request without a token is the
    /// user its verified client certificate names (CN), as etcd's `AuthInfoFromTLS`.
    pub client_cert_auth: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: kv::auth::tokens::TOKEN_TTL_DEFAULT,
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            client_cert_auth: false,
        }
    }
}

impl AuthConfig {
    /// Checks the flags; the message names the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.token_ttl.is_zero() {
            return Err("--auth-token-ttl must be at least 1 second".into());
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(format!(
                "--bcrypt-cost {} is out of bcrypt's range 4..=31",
                self.bcrypt_cost
            ));
        }
        Ok(())
    }
}

/// Who sent a request, as this member resolved it: the user (empty: none) and the auth
/// revision it was resolved at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated user; empty if the request carried no token.
    pub user: String,
    /// This member's auth revision when the token was resolved.
    pub revision: u64,
}

impl Caller {
    /// The stamp a write of this caller carries in the log.
    pub fn stamp(&self) -> kv::AuthStamp {
        kv::AuthStamp {
            user: self.user.clone(),
            revision: self.revision,
        }
    }
}

/// The token a request carries, if any (etcd 3.5's clients may prefix it with nothing else).
fn token_of(metadata: &MetadataMap) -> Option<&str> {
    TOKEN_KEYS
        .iter()
        .find_map(|k| metadata.get(*k))
        .and_then(|v| v.to_str().ok())
}

/// A random token prefix: 16 letters, as etcd's `genTokenPrefix`, from the OS's generator.
fn token_prefix() -> Result<String, Status> {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    // 256 % 52 = 48: a slight bias towards the first 48 letters, immaterial for 16 of them
    // (over 90 bits either way).
    Ok(bytes
        .iter()
        .map(|b| LETTERS[usize::from(*b) % LETTERS.len()] as char)
        .collect())
}

/// A bcrypt hash at `cost` of [`DUMMY_PASSWORD`] (empty if bcrypt fails, which the
/// validated cost rules out).
pub(super) fn dummy_hash(cost: u32) -> String {
    bcrypt::hash(DUMMY_PASSWORD, cost).unwrap_or_default()
}

/// `name` as a log line carries it: at most [`LOGGED_NAME_CHARS_MAX`] characters, escaped
/// (quotes, control characters), with `...` when cut. Names come from whoever calls.
pub fn logged_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(LOGGED_NAME_CHARS_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if name.chars().nth(LOGGED_NAME_CHARS_MAX).is_some() {
        out.push_str("...");
    }
    out
}

fn kv_refusal(e: kv::KvError) -> Status {
    kv_error_status(e)
}

impl Api {
    /// Who sent a request (etcd's `AuthInfoFromCtx`): the user of the token in its metadata.
    /// While auth is disabled every request is anonymous and tokens are ignored; while it is
    /// enabled, a token this member does not know (garbled, expired, from before a restart)
    /// is "invalid auth token", and no token is an anonymous caller (refused later, where a
    /// permission is needed, with "user name is empty").
    ///
    /// A token is assigned when its Authenticate entry applies, on each member in its own
    /// time: a token this member does not know yet may come from a client that authenticated
    /// through a member ahead of it. So an unknown token is looked up again once this member
    /// has applied everything committed (a read barrier), before it is refused, unless this
    /// member can tell at once that it will never know it: it is not shaped like the tokens
    /// members assign (`<16 letters>.<index>`), or the entry at its index is applied here
    /// already (a token is assigned by the entry at its index, on every member alike). Only a
    /// well-shaped token naming an entry past this member's applied index costs a barrier,
    /// so garbage costs none.
    ///
    /// The one place that decides who a request comes from: the common name of a verified
    /// client certificate (etcd's `AuthInfoFromTLS`, used when no token is given) belongs
    /// here too, as a second source after the token.
    ///
    /// `cert_cn` is the verified client certificate's common name
    /// ([`crate::tls::client_cert_cn`]); it names the caller only under `--client-cert-auth`
    /// and only when no token is given (a token wins, as in etcd).
    pub async fn caller(
        &self,
        metadata: &MetadataMap,
        cert_cn: Option<String>,
    ) -> Result<Caller, Status> {
        let cert_user = cert_cn.filter(|cn| self.inner.auth.client_cert_auth && !cn.is_empty());
        if let Some(known) = self.caller_now(metadata, cert_user.as_deref())? {
            return Ok(known);
        }
        self.linearizable_read().await?;
        self.caller_now(metadata, cert_user.as_deref())?
            .ok_or_else(|| kv_refusal(kv::KvError::InvalidAuthToken))
    }

    /// [`Api::caller`] of a gRPC request: its token, and under `--client-cert-auth` (with auth
    /// on) its certificate's CN, which is parsed only then (not on every request).
    pub(super) async fn caller_of<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let cert_cn = if self.inner.auth.client_cert_auth && self.inner.node.kv.auth_state().enabled
        {
            crate::tls::client_cert_cn(request)
        } else {
            None
        };
        self.caller(request.metadata(), cert_cn).await
    }

    /// [`Api::caller`] from what this member has applied; `None` for a token it does not
    /// know yet, "invalid auth token" for one it never will.
    fn caller_now(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
    ) -> Result<Option<Caller>, Status> {
        let kv = &self.inner.node.kv;
        // The revision is read before the token is resolved: a change in between makes the
        // stamp older than the state, which the applying member refuses, never the reverse.
        let state = kv.auth_state();
        let anonymous = Caller {
            user: String::new(),
            revision: state.revision,
        };
        if !state.enabled {
            return Ok(Some(anonymous));
        }
        Ok(match token_of(metadata) {
            None => Some(match cert_user {
                Some(user) => Caller {
                    user: user.to_string(),
                    revision: state.revision,
                },
                None => anonymous,
            }),
            Some(token) => match kv.lookup_token(token) {
                kv::TokenLookup::Live(user) => Some(Caller {
                    user,
                    revision: state.revision,
                }),
                kv::TokenLookup::NotYet => None,
                kv::TokenLookup::Invalid => {
                    return Err(kv_refusal(kv::KvError::InvalidAuthToken));
                }
            },
        })
    }

    /// Refuses the request `req` builds unless `caller` may run it on this member's applied
    /// state now (reads served without the log, watches, lease revokes before they are
    /// proposed). The request is built only while auth is enabled: reads pay nothing
    /// otherwise.
    pub(super) fn check_permission(
        &self,
        caller: &Caller,
        req: impl FnOnce() -> kv::Request,
    ) -> Result<(), Status> {
        let kv = &self.inner.node.kv;
        if !kv.auth_state().enabled {
            return Ok(());
        }
        kv.auth_check(&caller.user, &req())
            .map_err(crate::rpctypes::kv_status)
    }

    /// The stamp of a request a follower forwarded here (the leader), which the entry will
    /// carry: while auth is enabled one must be there, since anything that reaches the peer
    /// port could send a request without one (the servers' own requests are never
    /// forwarded: the leader makes them itself).
    pub(super) fn forwarded_stamp(
        &self,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<Option<kv::AuthStamp>, Status> {
        if stamp.is_none() && self.inner.node.kv.auth_state().enabled {
            return Err(kv_refusal(kv::KvError::PermissionDenied));
        }
        Ok(stamp)
    }

    /// Refuses a configuration change a follower forwarded here (the leader) unless its
    /// sender's `stamp` names an administrator on the state after everything committed
    /// (etcd checks member changes only where they arrive; the follower did, against its
    /// own state, which may lag). A configuration change is not a state machine entry, so
    /// this is the last check before it is proposed.
    pub(super) async fn check_forwarded_admin(
        &self,
        stamp: Option<&kv::AuthStamp>,
    ) -> Result<(), Status> {
        self.linearizable_read().await?;
        let state = self.inner.node.kv.auth_state();
        match stamp {
            Some(stamp) => state.check_admin_stamped(stamp).map_err(kv_refusal),
            None if state.enabled => Err(kv_refusal(kv::KvError::PermissionDenied)),
            None => Ok(()),
        }
    }

    /// Refuses unless `caller` may run administrative requests (etcd's `IsAdminPermitted`).
    pub(super) fn check_admin(&self, caller: &Caller) -> Result<(), Status> {
        self.inner
            .node
            .kv
            .auth_state()
            .check_admin(&caller.user)
            .map_err(kv_refusal)
    }

    /// [`Api::caller`] of a request, then [`Api::check_admin`].
    pub(super) async fn admin<T: Sync>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.caller_of(request).await?;
        self.check_admin(&caller)?;
        Ok(caller)
    }

    /// Proposes an auth change sent by `caller`; the applying member checks the caller holds
    /// the root role at that revision.
    async fn auth_write(
        &self,
        caller: &Caller,
        req: kv::AuthRequest,
    ) -> Result<(epb::ResponseHeader, Option<String>), Status> {
        match self
            .write_kv_as(kv::Request::Auth(req), Some(caller.stamp()))
            .await?
        {
            kv::Response::Auth { revision, token } => Ok((
                epb::ResponseHeader {
                    revision,
                    ..self.header()
                },
                token,
            )),
            other => Err(unexpected(&other)),
        }
    }

    /// A bcrypt hash of `password` at the configured cost, computed on a blocking thread.
    async fn hash_password(&self, password: String) -> Result<String, Status> {
        if password.len() > kv::auth::PASSWORD_BYTES_MAX {
            return Err(Status::invalid_argument(ERR_PASSWORD_TOO_LONG));
        }
        // Under the same bound as password checks: hashing costs as much.
        let permit = self.inner.auth_limiter.checks.acquire();
        let _permit = tokio::time::timeout(AUTH_CHECK_WAIT_MAX, permit)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))?;
        let cost = self.inner.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("hashing a password: {e}")))
    }

    /// Whether `password` matches `hash`, checked on a blocking thread under the bound on
    /// checks in flight. Without a hash (no such user, or one without a password) it is
    /// checked against the dummy hash and never matches: the refusal costs what a wrong
    /// password costs, so its time does not tell whether the user exists.
    async fn password_matches(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, Status> {
        // bcrypt reads 72 bytes: a longer password would match its prefix's hash.
        if password.len() > kv::auth::PASSWORD_BYTES_MAX {
            return Ok(false);
        }
        let permit = self.inner.auth_limiter.checks.acquire();
        let _permit = tokio::time::timeout(AUTH_CHECK_WAIT_MAX, permit)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))?;
        let dummy = self.inner.auth_limiter.dummy_hash.clone();
        let cost = self.inner.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
            None => {
                let dummy = dummy.get_or_init(|| dummy_hash(cost));
                let _ = bcrypt::verify(password, dummy);
                false
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
    }

    async fn authenticate_impl(
        &self,
        from: Option<SocketAddr>,
        r: epb::AuthenticateRequest,
    ) -> Result<epb::AuthenticateResponse, Status> {
        // Keyed by address, not connection: a new connection does not refill the budget.
        // Connections without a known address (none in practice: the listener is TCP)
        // share one.
        let ip = from.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if !self
            .inner
            .auth_limiter
            .try_attempt(ip, &r.name, Instant::now())
        {
            if let Some(more) = self.inner.auth_limiter.refusals_logged.may_log() {
                tracing::info!(
                    user = %logged_name(&r.name), %ip, more_since_last_line = more,
                    "authentication refused: too many attempts"
                );
            }
            return Err(Status::resource_exhausted(ERR_AUTH_RATE));
        }
        self.linearizable_read().await?;
        for _ in 0..AUTHENTICATE_TRIES_MAX {
            let state = self.inner.node.kv.auth_state();
            if !state.enabled {
                return Err(kv_refusal(kv::KvError::AuthNotEnabled));
            }
            let hash = state
                .users
                .get(&r.name)
                .and_then(|u| u.password_hash.as_ref().map(|h| h.expose().to_string()));
            // One line for every failure: which of them it was shows in no answer either.
            if !self.password_matches(r.password.clone(), hash).await? {
                tracing::info!(user = %logged_name(&r.name), "authentication failed");
                return Err(kv_refusal(kv::KvError::AuthFailed));
            }
            // The log gets the hash of the token's random part, never the part: the token is
            // made here, from the index its entry took.
            let prefix = token_prefix()?;
            let hash = kv::auth::tokens::prefix_hash(&prefix);
            let req = kv::AuthRequest::Authenticate {
                name: r.name.clone(),
                token_prefix: hash.clone(),
                checked_revision: state.revision,
            };
            // Stamped with the user whose password was checked here: the entry assigns a
            // token to that user only, and an Authenticate without a stamp (which did not
            // come from a member's password check) is refused at apply.
            let checked = kv::AuthStamp {
                user: r.name.clone(),
                revision: state.revision,
            };
            let answer = self
                .write_kv_as(kv::Request::Auth(req), Some(checked))
                .await;
            match answer {
                Ok(kv::Response::Auth {
                    revision,
                    token: Some(key),
                }) => {
                    let index = key
                        .strip_prefix(&hash)
                        .and_then(|rest| rest.strip_prefix('.'))
                        .ok_or_else(|| {
                            Status::internal(format!("a login answered with the token key {key:?}"))
                        })?;
                    return Ok(epb::AuthenticateResponse {
                        header: Some(epb::ResponseHeader {
                            revision,
                            ..self.header()
                        }),
                        token: format!("{prefix}.{index}"),
                    });
                }
                Ok(other) => return Err(unexpected(&other)),
                // The state changed between the check and the entry: check again.
                Err(s) if crate::rpctypes::is_kv_error(&s, kv::KvError::AuthOldRevision) => {
                    self.linearizable_read().await?;
                }
                Err(s) => return Err(s),
            }
        }
        Err(kv_refusal(kv::KvError::AuthOldRevision))
    }

    fn user_get_impl(&self, caller: &Caller, name: &str) -> Result<Vec<String>, Status> {
        let state = self.inner.node.kv.auth_state();
        // etcd's: an administrator, or the user itself.
        if caller.user != name || !state.enabled {
            state.check_admin(&caller.user).map_err(kv_refusal)?;
        }
        let user = state
            .users
            .get(name)
            .ok_or_else(|| kv_refusal(kv::KvError::UserNotFound))?;
        Ok(user.roles.iter().cloned().collect())
    }

    fn role_get_impl(
        &self,
        caller: &Caller,
        role: &str,
    ) -> Result<Vec<authpb::Permission>, Status> {
        let state = self.inner.node.kv.auth_state();
        // etcd's: an administrator, or a user holding the role.
        let holds = state
            .users
            .get(&caller.user)
            .is_some_and(|u| u.roles.contains(role));
        if !holds {
            state.check_admin(&caller.user).map_err(kv_refusal)?;
        }
        let r = state
            .roles
            .get(role)
            .ok_or_else(|| kv_refusal(kv::KvError::RoleNotFound))?;
        Ok(r.perms
            .iter()
            .map(|p| authpb::Permission {
                perm_type: i32::from(p.perm_type.code()),
                key: p.key.clone(),
                range_end: p.range_end.clone(),
            })
            .collect())
    }
}

fn perm_type(code: i32) -> Result<kv::PermType, Status> {
    u8::try_from(code)
        .ok()
        .and_then(kv::PermType::from_code)
        .ok_or_else(|| Status::invalid_argument(format!("unknown permission type {code}")))
}

#[tonic::async_trait]
impl epb::auth_server::Auth for Api {
    async fn auth_enable(
        &self,
        request: Request<epb::AuthEnableRequest>,
    ) -> Result<Response<epb::AuthEnableResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let (header, _) = self.auth_write(&caller, kv::AuthRequest::Enable).await?;
        Ok(Response::new(epb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<epb::AuthDisableRequest>,
    ) -> Result<Response<epb::AuthDisableResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let (header, _) = self.auth_write(&caller, kv::AuthRequest::Disable).await?;
        Ok(Response::new(epb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<epb::AuthStatusRequest>,
    ) -> Result<Response<epb::AuthStatusResponse>, Status> {
        self.linearizable_read().await?;
        let state = self.inner.node.kv.auth_state();
        Ok(Response::new(epb::AuthStatusResponse {
            header: Some(self.header_now()),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<epb::AuthenticateRequest>,
    ) -> Result<Response<epb::AuthenticateResponse>, Status> {
        let from = request.remote_addr();
        let resp = self.authenticate_impl(from, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn user_add(
        &self,
        request: Request<epb::AuthUserAddRequest>,
    ) -> Result<Response<epb::AuthUserAddResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        // Before the costly hash: only an administrator may add users (once auth is on).
        self.check_admin(&caller)?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(kv_refusal(kv::KvError::UserEmpty));
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(self.hash_password(r.password).await?.into())
        };
        let req = kv::AuthRequest::UserAdd {
            name: r.name,
            password_hash,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        request: Request<epb::AuthUserGetRequest>,
    ) -> Result<Response<epb::AuthUserGetResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        self.linearizable_read().await?;
        let roles = self.user_get_impl(&caller, &request.get_ref().name)?;
        Ok(Response::new(epb::AuthUserGetResponse {
            header: Some(self.header_now()),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<epb::AuthUserListRequest>,
    ) -> Result<Response<epb::AuthUserListResponse>, Status> {
        self.admin(&request).await?;
        self.linearizable_read().await?;
        let state = self.inner.node.kv.auth_state();
        Ok(Response::new(epb::AuthUserListResponse {
            header: Some(self.header_now()),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<epb::AuthUserDeleteRequest>,
    ) -> Result<Response<epb::AuthUserDeleteResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let req = kv::AuthRequest::UserDelete {
            name: request.into_inner().name,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<epb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<epb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        // Refused before the (costly) hash if the caller may not change it anyway.
        self.check_admin(&caller)?;
        let r = request.into_inner();
        let req = kv::AuthRequest::UserChangePassword {
            name: r.name,
            password_hash: self.hash_password(r.password).await?.into(),
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<epb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<epb::AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let r = request.into_inner();
        let req = kv::AuthRequest::UserGrantRole {
            user: r.user,
            role: r.role,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<epb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<epb::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let r = request.into_inner();
        let req = kv::AuthRequest::UserRevokeRole {
            name: r.name,
            role: r.role,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        request: Request<epb::AuthRoleAddRequest>,
    ) -> Result<Response<epb::AuthRoleAddResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let req = kv::AuthRequest::RoleAdd {
            name: request.into_inner().name,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        request: Request<epb::AuthRoleGetRequest>,
    ) -> Result<Response<epb::AuthRoleGetResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        self.linearizable_read().await?;
        let perm = self.role_get_impl(&caller, &request.get_ref().role)?;
        Ok(Response::new(epb::AuthRoleGetResponse {
            header: Some(self.header_now()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<epb::AuthRoleListRequest>,
    ) -> Result<Response<epb::AuthRoleListResponse>, Status> {
        self.admin(&request).await?;
        self.linearizable_read().await?;
        let state = self.inner.node.kv.auth_state();
        Ok(Response::new(epb::AuthRoleListResponse {
            header: Some(self.header_now()),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<epb::AuthRoleDeleteRequest>,
    ) -> Result<Response<epb::AuthRoleDeleteResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let req = kv::AuthRequest::RoleDelete {
            role: request.into_inner().role,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<epb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<epb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let r = request.into_inner();
        let Some(p) = r.perm else {
            return Err(Status::invalid_argument("a permission is required"));
        };
        let req = kv::AuthRequest::RoleGrantPermission {
            name: r.name,
            perm: kv::Permission {
                perm_type: perm_type(p.perm_type)?,
                key: p.key,
                range_end: p.range_end,
            },
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<epb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<epb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller_of(&request).await?;
        let r = request.into_inner();
        let req = kv::AuthRequest::RoleRevokePermission {
            role: r.role,
            key: r.key,
            range_end: r.range_end,
        };
        let (header, _) = self.auth_write(&caller, req).await?;
        Ok(Response::new(epb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_names_are_cut_short_and_escaped() {
        assert_eq!(logged_name("alice"), "alice");
        assert_eq!(logged_name("a\nb\"c\u{1b}[2J"), "a\\nb\\\"c\\u{1b}[2J");
        let long = "x".repeat(10_000);
        let logged = logged_name(&long);
        assert_eq!(logged, format!("{}...", "x".repeat(LOGGED_NAME_CHARS_MAX)));
        let wide = "é".repeat(LOGGED_NAME_CHARS_MAX);
        assert_eq!(logged_name(&wide), wide, "cut by characters, not bytes");
    }

    #[test]
    fn a_name_without_a_password_costs_a_check_like_a_wrong_password() {
        let cost = 6;
        let real = bcrypt::hash("pw", cost).expect("hash");
        let dummy = dummy_hash(cost);
        assert!(dummy.starts_with("$2"), "a real bcrypt hash");
        assert_eq!(dummy[..7], real[..7], "of the same cost");
        assert!(!bcrypt::verify("pw", &dummy).expect("verifies"));
    }

    #[test]
    fn token_prefixes_are_sixteen_letters_and_differ() {
        let a = token_prefix().expect("random");
        let b = token_prefix().expect("random");
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }

    #[test]
    fn flags_are_checked() {
        assert!(AuthConfig::default().validate().is_ok());
        let zero = AuthConfig {
            token_ttl: Duration::ZERO,
            ..AuthConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("--auth-token-ttl"));
        let cost = AuthConfig {
            bcrypt_cost: 3,
            ..AuthConfig::default()
        };
        assert!(cost.validate().unwrap_err().contains("--bcrypt-cost"));
    }
}
