//! etcd's simple tokens (`auth/simple_token.go`): a token is assigned to a user when an
//! Authenticate entry applies, on every member, and lives in memory only (a restarted member
//! knows none: its clients authenticate again, as etcd's do). A token unused for the TTL
//! (`--auth-token-ttl`, etcd's default 300 s) expires; each use refreshes it.
//!
//! The table is bounded by [`TOKENS_MAX`]: when full, expired tokens go first, then the one
//! closest to expiring, so that a flood of logins costs the oldest idle sessions their
//! tokens (their clients authenticate again), never memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most tokens held at once.
pub const TOKENS_MAX: usize = 1 << 16;
/// etcd's default `--auth-token-ttl`.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);

/// The tokens of one member.
#[derive(Debug)]
pub struct Tokens {
    /// Token -> (user, when it expires unless used). At most [`TOKENS_MAX`] entries.
    by_token: HashMap<String, (String, Instant)>,
    /// How long a token lives after its last use; non-zero.
    ttl: Duration,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            by_token: HashMap::new(),
            ttl: TOKEN_TTL_DEFAULT,
        }
    }
}

impl Tokens {
    /// Sets how long tokens live after their last use (non-zero).
    pub fn set_ttl(&mut self, ttl: Duration) {
        assert!(
            !ttl.is_zero(),
            "a token TTL of zero would expire every token at once"
        );
        self.ttl = ttl;
    }

    /// Records `token` for `user` at `now`.
    pub fn assign(&mut self, token: String, user: String, now: Instant) {
        if self.by_token.len() >= TOKENS_MAX {
            self.by_token.retain(|_, (_, expires)| *expires > now);
        }
        if self.by_token.len() >= TOKENS_MAX {
            let soonest = self
                .by_token
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(t, _)| t.clone());
            if let Some(t) = soonest {
                self.by_token.remove(&t);
            }
        }
        self.by_token.insert(token, (user, now + self.ttl));
        assert!(self.by_token.len() <= TOKENS_MAX);
    }

    /// The user of `token` if it is live at `now`, refreshing it; an expired token is
    /// forgotten.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let ttl = self.ttl;
        match self.by_token.get_mut(token) {
            Some((user, expires)) if *expires > now => {
                *expires = now + ttl;
                Some(user.clone())
            }
            Some(_) => {
                self.by_token.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.by_token.retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&mut self) {
        self.by_token.clear();
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_unless_used_and_go_with_their_user() {
        let mut t = Tokens::default();
        t.set_ttl(Duration::from_secs(10));
        let t0 = Instant::now();
        t.assign("a.1".into(), "alice".into(), t0);
        t.assign("b.2".into(), "bob".into(), t0);
        // Used at 8 s: lives until 18 s.
        assert_eq!(
            t.user("a.1", t0 + Duration::from_secs(8)).as_deref(),
            Some("alice")
        );
        assert_eq!(t.user("b.2", t0 + Duration::from_secs(11)), None, "expired");
        assert_eq!(
            t.user("a.1", t0 + Duration::from_secs(17)).as_deref(),
            Some("alice")
        );
        assert_eq!(t.user("garbled", t0), None);
        t.invalidate_user("alice");
        assert_eq!(t.user("a.1", t0 + Duration::from_secs(17)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_drops_the_token_closest_to_expiring() {
        let mut t = Tokens::default();
        let t0 = Instant::now();
        for i in 0..TOKENS_MAX {
            t.assign(
                format!("t.{i}"),
                "u".into(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        t.assign("new".into(), "v".into(), t0 + Duration::from_secs(1));
        assert_eq!(t.len(), TOKENS_MAX);
        assert_eq!(t.user("t.0", t0 + Duration::from_secs(1)), None);
        assert!(t.user("t.1", t0 + Duration::from_secs(1)).is_some());
        assert!(t.user("new", t0 + Duration::from_secs(1)).is_some());
    }
}
