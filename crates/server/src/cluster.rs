//! The static cluster definition (`--initial-cluster`) and the ids derived from it. Ids are
//! hashes of names and peer URLs, like etcd's, so every member computes the same ids without
//! talking to the others, and a data dir records which cluster and member it belongs to.

use std::collections::BTreeMap;

use raft::NodeId;

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Human-readable name (`--name`).
    pub name: String,
    /// Raft node id, derived from the name and peer URL.
    pub id: NodeId,
    /// Where peers reach it, e.g. `http://127.0.0.1:2380`.
    pub peer_url: String,
}

/// The initial cluster: members by id, and the cluster id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Members, sorted by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Hash of every member id and the cluster token.
    pub cluster_id: u64,
}

/// Members in one cluster definition, at most.
pub const MEMBERS_MAX: usize = 64;

impl ClusterSpec {
    /// Parses `name=url,name=url,...`. Errors say what is wrong in one line.
    pub fn parse(initial_cluster: &str, token: &str) -> Result<ClusterSpec, String> {
        Self::parse_with(initial_cluster, token, false)
    }

    /// [`ClusterSpec::parse`], also accepting members without a name (`=url`) when
    /// `unnamed_ok`: what `etcdctl member add` prints for members added but not started yet,
    /// for a member joining a running cluster.
    pub fn parse_with(
        initial_cluster: &str,
        token: &str,
        unnamed_ok: bool,
    ) -> Result<ClusterSpec, String> {
        let mut members = BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        for part in initial_cluster.split(',').filter(|p| !p.trim().is_empty()) {
            let Some((name, url)) = part.split_once('=') else {
                return Err(format!("member {part:?} is not of the form name=url"));
            };
            let (name, url) = (name.trim(), url.trim());
            if name.is_empty() && !unnamed_ok {
                return Err(format!("member {part:?} has an empty name"));
            }
            check_url(url).map_err(|e| format!("member {name}: {e}"))?;
            if !name.is_empty() && !names.insert(name.to_string()) {
                return Err(format!("member name {name:?} appears twice"));
            }
            let id = member_id(name, url);
            if members.contains_key(&id) {
                return Err(format!("member {name} has a colliding id"));
            }
            members.insert(
                id,
                Member {
                    name: name.to_string(),
                    id,
                    peer_url: url.to_string(),
                },
            );
        }
        if members.is_empty() {
            return Err("no members".to_string());
        }
        if members.len() > MEMBERS_MAX {
            return Err(format!("more than {MEMBERS_MAX} members"));
        }
        let mut h = Fnv::new();
        h.write(token.as_bytes());
        for id in members.keys() {
            h.write(&id.get().to_be_bytes());
        }
        let cluster_id = h.finish().max(1);
        Ok(ClusterSpec {
            members,
            cluster_id,
        })
    }

    /// The member called `name`.
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.values().find(|m| m.name == name)
    }
}

/// The id of a member: a hash of its name and peer URL, never 0.
pub fn member_id(name: &str, peer_url: &str) -> NodeId {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    h.write(b"\0");
    h.write(peer_url.as_bytes());
    NodeId::new(h.finish().max(1)).unwrap_or_else(|| unreachable!("max(1) is non-zero"))
}

/// Parses a URL to listen on, `http://IP:PORT` or `https://IP:PORT` (the scheme says whether
/// the port speaks TLS; see [`is_https`]), into a socket address: an address to bind, so an
/// IP, not a host name (as etcd: "expected IP in URL for binding").
pub fn parse_url(url: &str) -> Result<std::net::SocketAddr, String> {
    let rest = host_port(url)?;
    // etcd binds `localhost` too (its default listen URLs name it), as the loopback address.
    if let Some(port) = rest.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    rest.parse()
        .map_err(|_| format!("url {url:?}: expected IP in URL for binding (http://IP:PORT)"))
}

/// Checks a URL others reach a member at (advertised, in `--initial-cluster`, given to
/// `member add`): `http[s]://HOST:PORT`, where HOST is an IP address or a DNS name (as etcd
/// takes them; a name is resolved each time a connection is made).
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = host_port(url)?;
    if rest.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("url {url:?} must be http[s]://HOST:PORT (an IP address or a host name)");
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    // As loose as etcd's check (a URL with a non-empty host and a port), which takes names
    // that are not DNS names, such as Docker Compose's `proj_etcd_1`, and a trailing dot; but
    // nothing that would make it another URL or an address with credentials.
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host_ok(host) {
        return Err(bad());
    }
    Ok(())
}

/// Whether `url` (checked by [`check_url`] or [`parse_url`]) is served over TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// `HOST:PORT` of `http[s]://HOST:PORT[/]`.
fn host_port(url: &str) -> Result<&str, String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!("url {url:?} must start with http:// or https://"));
    };
    Ok(rest.strip_suffix('/').unwrap_or(rest))
}

/// 64-bit FNV-1a: small, stable across versions and platforms (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_stable_ids() {
        let s = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3";
        let spec = ClusterSpec::parse(s, "t").expect("valid");
        assert_eq!(spec.members.len(), 3);
        assert_eq!(spec, ClusterSpec::parse(s, "t").expect("valid"));
        assert_ne!(
            spec.cluster_id,
            ClusterSpec::parse(s, "u").expect("valid").cluster_id
        );
        assert_eq!(
            spec.member_by_name("b").map(|m| m.id),
            Some(member_id("b", "http://127.0.0.1:2"))
        );
    }

    #[test]
    fn members_are_reached_at_ips_or_host_names_and_listen_on_ips() {
        let s = "a=http://etcd-0.etcd.svc:2380,b=http://10.0.0.2:2380,c=http://[::1]:2380/,\
                 d=http://proj_etcd_1:2380,e=http://etcd-4.etcd.ns.svc.cluster.local.:2380,\
                 f=https://10.0.0.6:2380";
        let spec = ClusterSpec::parse(s, "t").expect("valid");
        assert_eq!(spec.members.len(), 6);
        assert!(spec
            .member_by_name("f")
            .is_some_and(|m| m.peer_url == "https://10.0.0.6:2380" && is_https(&m.peer_url)));
        assert_eq!(
            parse_url("https://127.0.0.1:2379"),
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 2379)))
        );
        assert!(parse_url("http://[::1]:2380").is_ok());
        assert_eq!(
            parse_url("http://localhost:2379"),
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 2379))),
            "etcd's default listen URL"
        );
        let err = parse_url("http://etcd-0:2380").expect_err("a name cannot be bound");
        assert!(err.contains("expected IP in URL for binding"), "{err}");
    }

    #[test]
    fn bad_definitions_say_why() {
        for (s, needle) in [
            ("", "no members"),
            ("a", "name=url"),
            ("a=127.0.0.1:1", "http://"),
            ("a=ftp://127.0.0.1:1", "https://"),
            ("a=http://localhost", "HOST:PORT"),
            ("a=http://user@host:1", "HOST:PORT"),
            ("a=http://host/x:1", "HOST:PORT"),
            ("a=http://x.example:99999", "HOST:PORT"),
            ("a=http://127.0.0.1:1,a=http://127.0.0.1:2", "twice"),
        ] {
            let err = ClusterSpec::parse(s, "t").expect_err(s);
            assert!(err.contains(needle), "{s:?}: {err}");
        }
    }
}
