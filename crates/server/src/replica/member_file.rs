//! `<data-dir>/member`: who this data dir belongs to, written once when the member first
//! starts (bootstrapping a new cluster, or joining a running one) and read at every later
//! start, as etcd keeps its member and cluster ids in its data dir and ignores the
//! `--initial-cluster*` flags once it has one.
//!
//! ```text
//!   skiff member v1
//!   cluster 0x5b4e2c7d1a0f3e91
//!   member 12345678901234567
//!   bootstrap 111 222 333
//! ```
//! `bootstrap` lists the voters every member's log starts from (before its first entry): the
//! initial cluster's. A member that joins later starts its log from the same configuration, so
//! that replaying the cluster's first entries gives it the configurations the others had.

use std::io::Write;
use std::path::{Path, PathBuf};

use raft::NodeId;

use crate::error::ServerError;

const FILE: &str = "member";
const MAGIC: &str = "skiff member v1";
/// Bootstrap voters a member file may list (the initial cluster's limit).
const BOOTSTRAP_MAX: usize = crate::cluster::MEMBERS_MAX;

/// What the member file records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFile {
    /// The cluster and this member.
    pub identity: storage::Identity,
    /// The voters the cluster's log starts from.
    pub bootstrap: Vec<NodeId>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads the member file; `None` if there is none yet. A file that does not parse is an error
/// naming it (never a reason to start as someone else).
pub fn read(data_dir: &Path) -> Result<Option<MemberFile>, ServerError> {
    let p = path(data_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ServerError::Io {
                what: format!("read {}", p.display()),
                error,
            })
        }
    };
    parse(&text)
        .map(Some)
        .map_err(|why| ServerError::Config(format!("{}: {why}", p.display())))
}

fn parse(text: &str) -> Result<MemberFile, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("does not start with {MAGIC:?}"));
    }
    let mut field = |name: &str| -> Result<Vec<String>, String> {
        let line = lines.next().ok_or_else(|| format!("no {name} line"))?;
        let mut words = line.split_whitespace();
        if words.next() != Some(name) {
            return Err(format!("expected a {name} line, got {line:?}"));
        }
        Ok(words.map(str::to_string).collect())
    };
    let cluster = field("cluster")?;
    let cluster_id = match cluster.as_slice() {
        [hex] => u64::from_str_radix(hex.trim_start_matches("0x"), 16)
            .map_err(|_| format!("bad cluster id {hex:?}"))?,
        _ => return Err("the cluster line needs one id".into()),
    };
    let node_id = match field("member")?.as_slice() {
        [id] => id
            .parse::<u64>()
            .ok()
            .and_then(NodeId::new)
            .ok_or_else(|| format!("bad member id {id:?}"))?,
        _ => return Err("the member line needs one id".into()),
    };
    let words = field("bootstrap")?;
    if words.is_empty() || words.len() > BOOTSTRAP_MAX {
        return Err(format!("bootstrap lists {} voters", words.len()));
    }
    let bootstrap = words
        .iter()
        .map(|w| {
            w.parse::<u64>()
                .ok()
                .and_then(NodeId::new)
                .ok_or_else(|| format!("bad bootstrap voter {w:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MemberFile {
        identity: storage::Identity {
            cluster_id,
            node_id,
        },
        bootstrap,
    })
}

fn render(f: &MemberFile) -> String {
    let voters: Vec<String> = f.bootstrap.iter().map(|v| v.get().to_string()).collect();
    format!(
        "{MAGIC}\ncluster {:#x}\nmember {}\nbootstrap {}\n",
        f.identity.cluster_id,
        f.identity.node_id.get(),
        voters.join(" ")
    )
}

/// Writes the member file durably: a temporary file, synced, renamed over, and the directory
/// synced, so that a crash leaves the old file or the new one, never a torn one.
pub fn write(data_dir: &Path, f: &MemberFile) -> Result<(), ServerError> {
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let io = |what: &str, error: std::io::Error| ServerError::Io {
        what: format!("{what} {}", p.display()),
        error,
    };
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    file.write_all(render(f).as_bytes())
        .map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| io("rename", e))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory of", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> NodeId {
        NodeId::new(i).expect("non-zero")
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(read(dir.path()).expect("read"), None);
        let f = MemberFile {
            identity: storage::Identity {
                cluster_id: 0xdead_beef_0000_0001,
                node_id: id(u64::MAX),
            },
            bootstrap: vec![id(1), id(22), id(333)],
        };
        write(dir.path(), &f).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(f.clone()));
        let good = render(&f);
        for bad in [
            String::new(),
            good.replace("v1", "v2"),
            good.replace("member ", "membr "),
            good.replace("bootstrap 1 22 333", "bootstrap"),
            good.replace("bootstrap 1", "bootstrap 0"),
            good.replace("cluster 0x", "cluster zz"),
            good.lines().take(3).collect::<Vec<_>>().join("\n"),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} parsed");
        }
    }
}
