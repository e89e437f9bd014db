//! The budgets of Authenticate attempts ([`AuthLimiter`]): token buckets per client IP
//! address, per user name and for the whole member, and the bound on bcrypt checks in
//! flight, so that a password cannot be guessed at line rate, from many connections or many
//! addresses, and logins cannot take every core.
//!
//! ```text
//!   attempt from ip for user:  ip's bucket   (a new connection from the same ip shares it)
//!                              user's bucket (many addresses guessing one password share it)
//!                              the member's  (everything shares it)
//!   any empty -> "too many authentication attempts", nothing checked
//! ```
//!
//! Each bucket map is bounded (`Buckets`).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::budget::Buckets;

/// Attempts one IP address may make back to back (etcdctl authenticates on every run, so a
/// script on one host makes many).
pub const AUTH_IP_BURST: u32 = 20;
/// After the burst, one more attempt per address every this long (10 a second).
pub const AUTH_IP_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts for one user name back to back, whatever the addresses.
pub const AUTH_USER_BURST: u32 = 20;
/// After the burst, one more attempt per user name every this long (5 a second).
pub const AUTH_USER_INTERVAL: Duration = Duration::from_millis(200);
/// Attempts on this member back to back, whoever makes them.
pub const AUTH_GLOBAL_BURST: u32 = 100;
/// After the burst, one more attempt on this member every this long (50 a second, about
/// what [`AUTH_CHECKS_INFLIGHT_MAX`] bcrypt checks at cost 10 get through).
pub const AUTH_GLOBAL_INTERVAL: Duration = Duration::from_millis(20);
/// Addresses, and user names, whose buckets are remembered, at most (each).
pub const AUTH_KEYS_MAX: usize = 4096;
/// bcrypt checks running at once, at most (each takes a core for ~50-100 ms at cost 10);
/// more wait, up to [`AUTH_CHECK_WAIT_MAX`], then are refused as "too many requests".
pub const AUTH_CHECKS_INFLIGHT_MAX: usize = 4;
/// Longest wait for a bcrypt check to start.
pub const AUTH_CHECK_WAIT_MAX: Duration = Duration::from_secs(5);
/// Longest user name kept as a key of the per-user buckets, in bytes: a longer one names no
/// user ([`kv::auth::NAME_BYTES_MAX`]) and shares one bucket with every other such name.
const AUTH_USER_KEY_BYTES_MAX: usize = kv::auth::NAME_BYTES_MAX;

const _: () = assert!(AUTH_IP_BURST >= 1 && AUTH_USER_BURST >= 1 && AUTH_GLOBAL_BURST >= 1);
const _: () = assert!(AUTH_GLOBAL_BURST >= AUTH_IP_BURST && AUTH_KEYS_MAX >= 1);

/// The Authenticate budgets of one member, and the bound on bcrypt checks in flight.
#[derive(Debug)]
pub struct AuthLimiter {
    /// Per IP address, per user name, and the member's one bucket.
    buckets: Mutex<AllBuckets>,
    /// Permits for bcrypt checks ([`AUTH_CHECKS_INFLIGHT_MAX`]).
    pub(super) checks: tokio::sync::Semaphore,
    /// A bcrypt hash at the configured cost of a password nobody sends, checked in place of
    /// a user's when the name has no password to check, so that such a refusal takes as long
    /// as a wrong password. Made once, off the request path (see `Api::with_auth`).
    pub(super) dummy_hash: std::sync::Arc<std::sync::OnceLock<String>>,
    /// Rate limit of the "too many attempts" lines: refusals come at line rate exactly
    /// while someone guesses, and each must not become a log line.
    pub(super) refusals_logged: crate::tls::FailureLog,
}

#[derive(Debug)]
struct AllBuckets {
    ips: Buckets<IpAddr>,
    users: Buckets<Option<String>>,
    global: Buckets<()>,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter {
            buckets: Mutex::new(AllBuckets {
                ips: Buckets::new(AUTH_IP_BURST, AUTH_IP_INTERVAL, AUTH_KEYS_MAX),
                users: Buckets::new(AUTH_USER_BURST, AUTH_USER_INTERVAL, AUTH_KEYS_MAX),
                global: Buckets::new(AUTH_GLOBAL_BURST, AUTH_GLOBAL_INTERVAL, 1),
            }),
            checks: tokio::sync::Semaphore::new(AUTH_CHECKS_INFLIGHT_MAX),
            dummy_hash: Default::default(),
            refusals_logged: Default::default(),
        }
    }
}

impl AuthLimiter {
    /// Takes one attempt for `user` from `ip` (an IPv6 address counts as its /64: one host
    /// is commonly given a whole /64) at `now` from each budget; `false`, taking nothing, if
    /// any is empty.
    pub fn try_attempt(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        let ip = crate::budget::source_of(ip);
        let user = (user.len() <= AUTH_USER_KEY_BYTES_MAX).then(|| user.to_string());
        let mut b = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = b.ips.level(&ip, now) >= 1.0
            && b.users.level(&user, now) >= 1.0
            && b.global.level(&(), now) >= 1.0;
        if room {
            b.ips.take(ip, now);
            b.users.take(user, now);
            b.global.take((), now);
        }
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8) -> IpAddr {
        IpAddr::from([10, a, b, c])
    }

    #[test]
    fn an_address_gets_a_burst_then_one_attempt_per_interval_whatever_its_connections() {
        let limiter = AuthLimiter::default();
        let a = ip(0, 0, 1);
        let t0 = Instant::now();
        // Users differ so that only the address's budget runs out.
        for i in 0..AUTH_IP_BURST {
            assert!(limiter.try_attempt(a, &format!("u{i}"), t0));
        }
        assert!(!limiter.try_attempt(a, "fresh", t0), "burst spent");
        assert!(
            limiter.try_attempt(ip(0, 0, 2), "fresh", t0),
            "another address"
        );
        assert!(!limiter.try_attempt(a, "fresh", t0 + AUTH_IP_INTERVAL / 2));
        assert!(limiter.try_attempt(a, "fresh", t0 + AUTH_IP_INTERVAL));
        assert!(!limiter.try_attempt(a, "fresh", t0 + AUTH_IP_INTERVAL));
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_share_a_budget() {
        let limiter = AuthLimiter::default();
        let t0 = Instant::now();
        let v6 = |host: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]);
        for i in 0..AUTH_IP_BURST {
            let host = u16::try_from(i).expect("small burst") + 1;
            assert!(limiter.try_attempt(v6(host), &format!("u{i}"), t0));
        }
        assert!(!limiter.try_attempt(v6(999), "fresh", t0), "same /64");
        let other = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(limiter.try_attempt(other, "fresh", t0), "another /64");
    }

    #[test]
    fn one_user_name_has_one_budget_across_addresses() {
        let limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..AUTH_USER_BURST {
            assert!(limiter.try_attempt(ip(1, 0, i as u8), "alice", t0));
        }
        assert!(
            !limiter.try_attempt(ip(2, 0, 0), "alice", t0),
            "alice's spent"
        );
        assert!(
            limiter.try_attempt(ip(2, 0, 0), "bob", t0),
            "bob has his own"
        );
        assert!(limiter.try_attempt(ip(2, 0, 1), "alice", t0 + AUTH_USER_INTERVAL));
        // Names too long to be a user share one budget.
        let long = |c: char| c.to_string().repeat(AUTH_USER_KEY_BYTES_MAX + 1);
        for i in 0..AUTH_USER_BURST {
            assert!(limiter.try_attempt(ip(3, 0, i as u8), &long('x'), t0));
        }
        assert!(!limiter.try_attempt(ip(3, 1, 0), &long('y'), t0));
    }

    #[test]
    fn the_member_has_one_budget_for_everyone() {
        let limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..AUTH_GLOBAL_BURST {
            assert!(limiter.try_attempt(ip(4, (i >> 8) as u8, i as u8), &format!("u{i}"), t0));
        }
        assert!(
            !limiter.try_attempt(ip(5, 0, 0), "new", t0),
            "the member's spent"
        );
        assert!(limiter.try_attempt(ip(5, 0, 0), "new", t0 + AUTH_GLOBAL_INTERVAL));
    }
}
