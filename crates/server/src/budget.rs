//! Token buckets by key ([`Buckets`]): the budgets of Authenticate attempts
//! (`api::auth_limit`) and of TLS handshakes per address (`tls`). The map of buckets is
//! bounded: when full, entries whose bucket has refilled go first (they would start full
//! anyway), then the one counted longest ago.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The budget key of a client address: an IPv4 address itself (an IPv4-mapped IPv6 address
/// as its IPv4 address), an IPv6 address its /64 network. A single IPv6 host is commonly
/// given a whole /64 and can send from any address in it, so per-address budgets keyed by
/// the full address would be a budget per attempt.
pub(crate) fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Token buckets by key, at most `keys_max` of them.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    /// Key -> (attempts left, when last counted); attempts left at most `burst`.
    left: HashMap<K, (f64, Instant)>,
    /// Attempts a full bucket holds (a new key's bucket is full); at least 1.
    burst: f64,
    /// How long one attempt takes to come back; non-zero.
    interval: Duration,
    /// Most keys remembered (`left.len()`); at least 1.
    keys_max: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(crate) fn new(burst: u32, interval: Duration, keys_max: usize) -> Self {
        assert!(burst >= 1 && !interval.is_zero() && keys_max >= 1);
        Buckets {
            left: HashMap::new(),
            burst: f64::from(burst),
            interval,
            keys_max,
        }
    }

    /// The attempts `key`'s bucket holds at `now`.
    pub(crate) fn level(&self, key: &K, now: Instant) -> f64 {
        match self.left.get(key) {
            None => self.burst,
            Some(&(left, at)) => self.refilled((left, at), now),
        }
    }

    fn refilled(&self, (left, at): (f64, Instant), now: Instant) -> f64 {
        let earned = now.saturating_duration_since(at).as_secs_f64() / self.interval.as_secs_f64();
        (left + earned).min(self.burst)
    }

    /// Takes one attempt from `key`'s bucket at `now` (which [`Buckets::level`] said holds
    /// one), making room for the key if it is new.
    pub(crate) fn take(&mut self, key: K, now: Instant) {
        let left = self.level(&key, now);
        assert!(left >= 1.0, "an attempt taken from an empty bucket");
        if !self.left.contains_key(&key) && self.left.len() >= self.keys_max {
            let full = |b: &(f64, Instant)| self.refilled(*b, now) >= self.burst;
            let refilled: Vec<K> = self
                .left
                .iter()
                .filter(|(_, b)| full(b))
                .map(|(k, _)| k.clone())
                .collect();
            for k in refilled {
                self.left.remove(&k);
            }
            if self.left.len() >= self.keys_max {
                let oldest = self
                    .left
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.left.remove(&k);
                }
            }
        }
        self.left.insert(key, (left - 1.0, now));
        assert!(self.left.len() <= self.keys_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_its_ipv4() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert_eq!(source_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn a_full_table_forgets_refilled_then_oldest_entries() {
        let mut b = Buckets::new(2, Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        for k in 0..3u32 {
            b.take(k, t0 + ms(u64::from(k)));
        }
        b.take(3, t0 + ms(10));
        assert_eq!(b.left.len(), 3);
        assert!(!b.left.contains_key(&0), "the oldest went");
        // After a refill all are forgotten at once to make room.
        b.take(4, t0 + Duration::from_secs(5));
        assert_eq!(b.left.len(), 1);
    }
}
