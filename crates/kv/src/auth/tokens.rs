//! etcd's simple tokens (`auth/simple_token.go`): a token is assigned to a user when an
//! Authenticate entry applies, on every member, and lives in memory only (a restarted member
//! knows none: its clients authenticate again, as etcd's do). A token unused for the TTL
//! (`--auth-token-ttl`, etcd's default 300 s) expires; each use refreshes it.
//!
//! A token is `<random part>.<index of its Authenticate entry>`. The entry, which stays in
//! every member's log (the WAL) until compacted, carries only the SHA-256 of the random part
//! ([`prefix_hash`]), and the table holds tokens by their key `<that hash in hex>.<index>`
//! ([`key_of`]): reading a log or a member's memory does not give anyone a live token. Only
//! the member that chose the random part knows it, and hands the token to its client.
//! Entries written before hold the random part itself; they apply to the same key.
//!
//! The table is bounded by [`TOKENS_MAX`] overall and [`USER_TOKENS_MAX`] per user: a user's
//! new token pushes out that user's oldest (so one account's login flood costs only its own
//! older sessions), and when the table is full, expired tokens go first, then the one
//! closest to expiring, so that a flood of logins costs the oldest idle sessions their
//! tokens (their clients authenticate again), never memory. Every operation is a lookup in
//! an index (by token, by expiry, by user), never a scan of the table.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most tokens held at once.
pub const TOKENS_MAX: usize = 1 << 16;
/// Most tokens one user holds at once (etcd has no bound): a 65th login drops the user's
/// oldest token.
pub const USER_TOKENS_MAX: usize = 64;
/// etcd's default `--auth-token-ttl`.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Letters in a token's random prefix (etcd's `defaultSimpleTokenLength`).
pub const TOKEN_PREFIX_LETTERS: usize = 16;

/// Hex digits of a random part's SHA-256 ([`prefix_hash`]).
pub const PREFIX_HASH_HEX_DIGITS: usize = 64;

/// Whether `prefix` is a token prefix as the members choose them: [`TOKEN_PREFIX_LETTERS`]
/// ASCII letters.
pub fn is_token_prefix(prefix: &str) -> bool {
    prefix.len() == TOKEN_PREFIX_LETTERS && prefix.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Whether `hash` is shaped like [`prefix_hash`]'s: [`PREFIX_HASH_HEX_DIGITS`] lowercase hex
/// digits (never a prefix, which has 16 letters).
pub fn is_prefix_hash(hash: &str) -> bool {
    hash.len() == PREFIX_HASH_HEX_DIGITS
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The SHA-256 of a token's random part, in lowercase hex: what an Authenticate entry
/// carries, and the first half of the token's key in the table.
pub fn prefix_hash(prefix: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(prefix.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key `token` (`<prefix>.<index>`) is held under (`<prefix_hash>.<index>`), and the Raft
/// index of the Authenticate entry that assigned it; `None` if it is not shaped like a
/// token any member assigns, in which case no member knows it or ever will.
pub fn key_of(token: &str) -> Option<(String, u64)> {
    let (prefix, index) = token.split_once('.')?;
    let digits =
        !index.is_empty() && index.len() <= 20 && index.bytes().all(|b| b.is_ascii_digit());
    if !is_token_prefix(prefix) || !digits {
        return None;
    }
    let index: u64 = index.parse().ok().filter(|&i| i > 0)?;
    Some((format!("{}.{index}", prefix_hash(prefix)), index))
}

/// The Raft index of the Authenticate entry that assigned `token`, as [`key_of`].
pub fn assigned_at(token: &str) -> Option<u64> {
    key_of(token).map(|(_, index)| index)
}

const _: () = assert!(USER_TOKENS_MAX >= 1 && USER_TOKENS_MAX <= TOKENS_MAX);

/// One live token.
#[derive(Debug)]
struct Entry {
    /// Whose it is.
    user: String,
    /// When it expires unless used.
    expires: Instant,
    /// Its place in the order tokens were assigned (unique; the same on every member, which
    /// assign tokens in log order).
    seq: u64,
}

/// The tokens of one member, by key ([`key_of`]; the methods take keys, not tokens).
///
/// Invariants ([`Tokens::check_invariants`]): the three indexes hold the same tokens;
/// `by_token.len() <= TOKENS_MAX`; no user holds more than [`USER_TOKENS_MAX`].
#[derive(Debug)]
pub struct Tokens {
    /// Token -> its entry. At most [`TOKENS_MAX`] entries.
    by_token: HashMap<String, Entry>,
    /// (expiry, seq) -> token: the order in which tokens would expire.
    by_expiry: BTreeMap<(Instant, u64), String>,
    /// User -> (seq -> token): each user's tokens, oldest first; no empty map.
    by_user: HashMap<String, BTreeMap<u64, String>>,
    /// The seq of the next token assigned.
    next_seq: u64,
    /// How long a token lives after its last use; non-zero.
    ttl: Duration,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            by_token: HashMap::new(),
            by_expiry: BTreeMap::new(),
            by_user: HashMap::new(),
            next_seq: 0,
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

    /// Records `token` for `user` at `now`, dropping `user`'s oldest token if it holds
    /// [`USER_TOKENS_MAX`], then tokens expired at `now`, then, if the table is still full,
    /// the one closest to expiring.
    pub fn assign(&mut self, token: String, user: String, now: Instant) {
        self.remove(&token);
        let oldest = self
            .by_user
            .get(&user)
            .filter(|held| held.len() >= USER_TOKENS_MAX)
            .and_then(|held| held.values().next().cloned());
        if let Some(oldest) = oldest {
            self.remove(&oldest);
        }
        while let Some(((expires, _), t)) = self.by_expiry.first_key_value() {
            if *expires > now && self.by_token.len() < TOKENS_MAX {
                break;
            }
            let t = t.clone();
            self.remove(&t);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires = now + self.ttl;
        self.by_expiry.insert((expires, seq), token.clone());
        self.by_user
            .entry(user.clone())
            .or_default()
            .insert(seq, token.clone());
        self.by_token.insert(token, Entry { user, expires, seq });
        debug_assert!(
            self.check_invariants().is_ok(),
            "{:?}",
            self.check_invariants()
        );
        assert!(self.by_token.len() <= TOKENS_MAX);
    }

    /// The user of `token` if it is live at `now`, refreshing it; an expired token is
    /// forgotten.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let ttl = self.ttl;
        let entry = self.by_token.get_mut(token)?;
        if entry.expires <= now {
            self.remove(token);
            return None;
        }
        let old = (entry.expires, entry.seq);
        entry.expires = now + ttl;
        let new = (entry.expires, entry.seq);
        let user = entry.user.clone();
        if let Some(t) = self.by_expiry.remove(&old) {
            self.by_expiry.insert(new, t);
        }
        Some(user)
    }

    /// Forgets `token`, if held.
    fn remove(&mut self, token: &str) {
        let Some(entry) = self.by_token.remove(token) else {
            return;
        };
        self.by_expiry.remove(&(entry.expires, entry.seq));
        if let Some(held) = self.by_user.get_mut(&entry.user) {
            held.remove(&entry.seq);
            if held.is_empty() {
                self.by_user.remove(&entry.user);
            }
        }
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        let Some(held) = self.by_user.remove(user) else {
            return;
        };
        for token in held.values() {
            if let Some(entry) = self.by_token.remove(token) {
                self.by_expiry.remove(&(entry.expires, entry.seq));
            }
        }
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&mut self) {
        self.by_token.clear();
        self.by_expiry.clear();
        self.by_user.clear();
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Checks the invariants of [`Tokens`]; says which one is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.by_token.len() > TOKENS_MAX {
            return Err(format!("{} tokens", self.by_token.len()));
        }
        if self.by_expiry.len() != self.by_token.len() {
            return Err("the expiry index and the table differ".into());
        }
        let by_user: usize = self.by_user.values().map(BTreeMap::len).sum();
        if by_user != self.by_token.len() {
            return Err("the user index and the table differ".into());
        }
        for (user, held) in &self.by_user {
            if held.is_empty() || held.len() > USER_TOKENS_MAX {
                return Err(format!("user {user:?} holds {} tokens", held.len()));
            }
            for (seq, token) in held {
                match self.by_token.get(token) {
                    Some(e) if e.user == *user && e.seq == *seq => {}
                    _ => return Err(format!("token {seq} of {user:?} is not in the table")),
                }
            }
        }
        for ((expires, seq), token) in &self.by_expiry {
            match self.by_token.get(token) {
                Some(e) if e.expires == *expires && e.seq == *seq => {}
                _ => return Err(format!("expiry entry {seq} is not in the table")),
            }
        }
        Ok(())
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
    fn a_tokens_key_holds_the_hash_of_its_random_part_not_the_part() {
        let (key, index) = key_of("abcdefghijklmnop.42").expect("a token");
        assert_eq!(index, 42);
        // echo -n abcdefghijklmnop | sha256sum
        let hash = "f39dac6cbaba535e2c207cd0cd8f154974223c848f727f98b3564cea569b41cf";
        assert_eq!(prefix_hash("abcdefghijklmnop"), hash);
        assert!(is_prefix_hash(hash));
        assert!(!is_prefix_hash("abcdefghijklmnop") && !is_token_prefix(hash));
        assert_eq!(key, format!("{hash}.42"));
        assert!(!key.contains("abcdefghijklmnop"));
    }

    #[test]
    fn only_tokens_shaped_as_members_assign_them_have_an_index() {
        assert_eq!(assigned_at("abcdefghijklmnop.42"), Some(42));
        assert_eq!(assigned_at("ABCDEFGHIJKLMNOp.1"), Some(1));
        for bad in [
            "",
            "garbage.1",
            "abcdefghijklmnop",
            "abcdefghijklmnop.",
            "abcdefghijklmnop.0",
            "abcdefghijklmno1.2",
            "abcdefghijklmnopq.2",
            "abcdefghijklmnop.+2",
            "abcdefghijklmnop.2.3",
            "abcdefghijklmnop.99999999999999999999",
            "Bearer abcdefghijklmnop.2",
        ] {
            assert_eq!(assigned_at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_users_login_flood_drops_only_that_users_oldest_tokens() {
        let mut t = Tokens::default();
        let t0 = Instant::now();
        t.assign("other.0".into(), "bob".into(), t0);
        for i in 0..USER_TOKENS_MAX + 10 {
            t.assign(format!("a.{i}"), "alice".into(), t0);
        }
        t.check_invariants().expect("invariants");
        assert_eq!(t.len(), USER_TOKENS_MAX + 1);
        for i in 0..10 {
            assert_eq!(t.user(&format!("a.{i}"), t0), None, "a.{i} was pushed out");
        }
        for i in 10..USER_TOKENS_MAX + 10 {
            assert!(t.user(&format!("a.{i}"), t0).is_some(), "a.{i} stays");
        }
        assert_eq!(t.user("other.0", t0).as_deref(), Some("bob"));
        t.invalidate_user("alice");
        assert_eq!(t.len(), 1);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_full_table_drops_the_token_closest_to_expiring() {
        let mut t = Tokens::default();
        let t0 = Instant::now();
        for i in 0..TOKENS_MAX {
            t.assign(
                format!("t.{i}"),
                format!("u{}", i / USER_TOKENS_MAX),
                t0 + Duration::from_millis(i as u64),
            );
        }
        t.assign("new".into(), "v".into(), t0 + Duration::from_secs(1));
        assert_eq!(t.len(), TOKENS_MAX);
        assert_eq!(t.user("t.0", t0 + Duration::from_secs(1)), None);
        assert!(t.user("t.1", t0 + Duration::from_secs(1)).is_some());
        assert!(t.user("new", t0 + Duration::from_secs(1)).is_some());
        t.check_invariants().expect("invariants");
        // Tokens expired by the time of a login go first, all of them.
        t.assign("late".into(), "v".into(), t0 + TOKEN_TTL_DEFAULT * 2);
        assert_eq!(t.len(), 1, "every token had expired");
        t.check_invariants().expect("invariants");
    }
}
