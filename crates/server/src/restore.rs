//! `skiff snapshot restore`: a member's data dir made from a backup (`kv::backup`), so that
//! `skiff serve` with the same flags and `--initial-cluster-state new` starts a new cluster
//! (etcd's `snapshot restore`): its ids come from the flags, its members are the flags'
//! members, and its state machine holds every key, revision, the compacted revision and the
//! leases of the backup.
//!
//! The data dir looks like one that bootstrapped and then took a snapshot at entry 1 of
//! term 1 (as etcd's restore writes its first entries and a snapshot after them):
//!
//! ```text
//!   kv.redb      the backup's state; applied index 1; no sessions, no member table, no
//!                removed members (the old cluster's; the new members publish themselves)
//!   raft/        hard state (term 1, commit 1), the log empty after (1, 1), the snapshot at
//!                (1, 1) with the new voters: the same on every member restored from the
//!                same file, so their logs match; a member added later gets the snapshot
//!   member       the new cluster and member ids, the voters the log starts from
//! ```
//!
//! Leases keep their TTLs: the new leader gives each a full TTL when it takes over, as after
//! any leader change. The backup is verified whole before anything is written; the dir is
//! built beside the target and renamed into place, so a failure leaves no data dir behind.

use std::path::{Path, PathBuf};

use raft::{EntryId, HardState, Index, Membership, NodeId, Term};

use crate::cluster::ClusterSpec;
use crate::error::ServerError;
use crate::replica::member_file::{self, MemberFile};

/// The entry the restored state machine stands for: the new log starts after it.
const RESTORED_AT: EntryId = EntryId {
    term: Term(1),
    index: Index(1),
};

/// What to restore, and as whom.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The backup file (`etcdctl snapshot save`).
    pub backup: PathBuf,
    /// The data dir to create; refused if it exists and is not empty.
    pub data_dir: PathBuf,
    /// This member's name in `cluster`.
    pub name: String,
    /// The new cluster (`--initial-cluster`, `--initial-cluster-token`).
    pub cluster: ClusterSpec,
}

/// What a restore made.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The new cluster and this member.
    pub identity: storage::Identity,
    /// What the backup held.
    pub summary: kv::backup::BackupSummary,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = format!("{what} {}", path.display());
    move |error| ServerError::Io { what, error }
}

/// Opens and verifies a backup file whole; the error names the file and says what is wrong.
pub fn verify(backup: &Path) -> Result<(std::fs::File, kv::backup::BackupSummary), ServerError> {
    let mut file = std::fs::File::open(backup).map_err(io("open backup", backup))?;
    let summary = kv::backup::verify_backup(&mut file).map_err(|e| match e {
        kv::Error::Io(error) => ServerError::Io {
            what: format!("read backup {}", backup.display()),
            error,
        },
        kv::Error::Decode(why) => {
            ServerError::Config(format!("backup {}: {why}", backup.display()))
        }
        other => ServerError::Config(format!("backup {}: {other}", backup.display())),
    })?;
    Ok((file, summary))
}

/// Creates `o.data_dir` from the backup (see the module doc).
pub fn restore(o: &RestoreOptions) -> Result<Restored, ServerError> {
    let me = o.cluster.member_by_name(&o.name).ok_or_else(|| {
        ServerError::Config(format!("--name {:?} is not in --initial-cluster", o.name))
    })?;
    let identity = storage::Identity {
        cluster_id: o.cluster.cluster_id,
        node_id: me.id,
    };
    refuse_used(&o.data_dir)?;
    let (mut file, summary) = verify(&o.backup)?;
    let tmp = staging_dir(&o.data_dir)?;
    std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    let voters: Vec<NodeId> = o.cluster.members.keys().copied().collect();
    let built = build(&tmp, identity, &voters, &mut file).and_then(|()| {
        // rename(2) replaces an empty directory, and nothing else.
        std::fs::rename(&tmp, &o.data_dir).map_err(io("move the restored dir to", &o.data_dir))
    });
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_parent(&o.data_dir)?;
    Ok(Restored { identity, summary })
}

/// Refuses a data dir that exists and holds anything (etcd refuses any existing one; an
/// empty one, made ready by an operator, is taken).
fn refuse_used(data_dir: &Path) -> Result<(), ServerError> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ServerError::Config(format!(
                    "--data-dir {}: exists and is not empty; restore into a new directory",
                    data_dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("read --data-dir", data_dir)(e)),
    }
}

/// The directory the data dir is built in: beside it, so that the final rename stays on one
/// file system.
fn staging_dir(data_dir: &Path) -> Result<PathBuf, ServerError> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| {
            ServerError::Config(format!(
                "--data-dir {}: not a directory name",
                data_dir.display()
            ))
        })?
        .to_string_lossy();
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    remove_abandoned(&parent, &name);
    let tmp = parent.join(format!(".{name}.restoring.{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove the leftover", &tmp))?;
    }
    Ok(tmp)
}

/// Removes what earlier restores into the same data dir left when they were killed: staging
/// dirs whose process is gone (`/proc/<pid>` absent; on a system without `/proc` nothing is
/// removed). Best effort: a leftover that cannot be removed is only logged.
fn remove_abandoned(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}.restoring.");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an abandoned restore");
        }
    }
}

/// Writes the state machine, the log and the member file into `dir`.
fn build(
    dir: &Path,
    identity: storage::Identity,
    voters: &[NodeId],
    backup: &mut std::fs::File,
) -> Result<(), ServerError> {
    // The paths `replica::open` reads.
    let kv = kv::Store::open(dir.join("kv.redb"), kv::Options::default())?;
    kv.restore_backup(backup, RESTORED_AT.index.0)?;
    let (mut log, _) = storage::Store::open(&dir.join("raft"), storage::Options::new(identity))?;
    let meta = storage::SnapshotMeta {
        last: RESTORED_AT,
        membership: Membership::new(voters.iter().copied()),
    };
    // The snapshot the log starts from is the restored state machine, streamed to the file.
    let mut writer = storage::SnapshotWriter::create(log.snapshot_dir(), &meta)?;
    kv.snapshot_view()?.write_to(&mut writer)?;
    writer.finish()?;
    log.adopt_snapshot(&meta)?;
    let hard_state = HardState {
        term: RESTORED_AT.term,
        vote: None,
        commit: RESTORED_AT.index,
    };
    log.reset_to_snapshot(RESTORED_AT, &hard_state)?;
    kv.sync()?;
    drop(log);
    drop(kv);
    member_file::write(
        dir,
        &MemberFile {
            identity,
            bootstrap: voters.to_vec(),
        },
    )
}

/// Makes the rename into place durable.
fn sync_parent(data_dir: &Path) -> Result<(), ServerError> {
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", parent))
}

#[cfg(test)]
mod abandoned_tests {
    use super::*;

    #[test]
    fn abandoned_staging_dirs_of_dead_restores_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        // pid_max is far below this: no such process.
        let dead = dir.path().join(".n1.restoring.4294967295");
        let alive = dir
            .path()
            .join(format!(".n1.restoring.{}", std::process::id()));
        let other = dir.path().join(".n2.restoring.4294967295");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("raft")).expect("mkdir");
        }
        remove_abandoned(dir.path(), "n1");
        assert!(!dead.exists(), "a dead restore's leftover goes");
        assert!(alive.exists() && other.exists(), "others stay");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup of a store with history, a compaction, a lease and a session, as
    /// `etcdctl snapshot save` stores it; and the store.
    fn backup(path: &Path) -> kv::Store {
        let store = kv::Store::in_memory(kv::Options::default()).expect("store");
        let apply = |index: u64, request: kv::Request| {
            let cmd = kv::Command::with_session(9, index, request);
            store.apply(index, &cmd).expect("apply");
        };
        apply(1, kv::Request::Put(kv::PutRequest::new("a", "1")));
        apply(2, kv::Request::Put(kv::PutRequest::new("a", "2")));
        apply(3, kv::Request::LeaseGrant { id: 5, ttl: 60 });
        apply(
            4,
            kv::Request::Put(kv::PutRequest {
                lease: 5,
                ..kv::PutRequest::new("leased", "x")
            }),
        );
        apply(5, kv::Request::Compact { revision: 3 });
        let view = store.snapshot_view().expect("view");
        let mut file = Vec::new();
        let (_, digest) = view.write_backup_body(&mut file).expect("body");
        file.extend_from_slice(&digest);
        std::fs::write(path, file).expect("write backup");
        store
    }

    #[test]
    fn a_restored_dir_opens_as_a_new_member_at_the_backups_state() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("backup.db");
        let source = backup(&file);
        let cluster =
            ClusterSpec::parse("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").expect("spec");
        let options = RestoreOptions {
            backup: file.clone(),
            data_dir: tmp.path().join("a.skiff"),
            name: "a".into(),
            cluster: cluster.clone(),
        };
        let restored = restore(&options).expect("restore");
        let me = cluster.member_by_name("a").expect("a").id;
        assert_eq!(restored.identity.node_id, me);
        assert_eq!(restored.identity.cluster_id, cluster.cluster_id);
        let voters: Vec<NodeId> = cluster.members.keys().copied().collect();
        let file_says = member_file::read(&options.data_dir)
            .expect("read")
            .expect("a member file");
        assert_eq!(file_says.identity, restored.identity);
        assert_eq!(file_says.bootstrap, voters);
        // Nothing else beside the data dir.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // It opens as `skiff serve` opens it: the log starts after the restored snapshot.
        let opened = crate::replica::open(crate::replica::OpenOptions {
            data_dir: &options.data_dir,
            identity: restored.identity,
            initial_voters: Vec::new(),
            may_create: false,
            raft: raft::Config::new(me),
        })
        .expect("open");
        assert_eq!(opened.log.log_start(), RESTORED_AT);
        assert_eq!(opened.log.last_index(), RESTORED_AT.index);
        assert_eq!(opened.log.hard_state().commit, RESTORED_AT.index);
        let in_log: Vec<NodeId> = opened.log.membership().voters.iter().copied().collect();
        assert_eq!(in_log, voters);
        assert_eq!(opened.snapshot.as_ref().map(|s| s.last), Some(RESTORED_AT));
        assert_eq!(opened.raw.status().applied, RESTORED_AT.index);
        let kv = &opened.kv;
        assert_eq!(kv.applied_index().expect("applied"), 1);
        assert_eq!(kv.revision().expect("rev"), source.revision().expect("rev"));
        assert_eq!(kv.compact_revision().expect("compacted"), 3);
        assert_eq!(
            kv.leases().expect("leases"),
            source.leases().expect("leases")
        );
        assert_eq!(kv.lease_keys(5).expect("keys"), vec![b"leased".to_vec()]);
        assert!(kv.members().expect("members").is_empty());
        let all = kv::RangeRequest::range("\0", "\0");
        assert_eq!(
            kv.range(&all).expect("range").kvs,
            source.range(&all).expect("range").kvs
        );
        drop(opened);

        // A second restore into it is refused, and changes nothing.
        let again = restore(&options).expect_err("a used data dir");
        assert!(again.to_string().contains("not empty"), "{again}");
        assert!(member_file::read(&options.data_dir)
            .expect("read")
            .is_some());
    }

    #[test]
    fn a_damaged_backup_or_a_stranger_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("backup.db");
        backup(&file);
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let damaged = tmp.path().join("damaged.db");
        std::fs::write(&damaged, &bytes).expect("write");
        let cluster = ClusterSpec::parse("a=http://127.0.0.1:1", "t").expect("spec");
        let options = |backup: &Path, name: &str| RestoreOptions {
            backup: backup.to_path_buf(),
            data_dir: tmp.path().join("new").join("a.skiff"),
            name: name.into(),
            cluster: cluster.clone(),
        };
        let e = restore(&options(&damaged, "a")).expect_err("damaged");
        assert!(e.to_string().contains("corrupt"), "{e}");
        let e = restore(&options(&file, "z")).expect_err("not a member");
        assert!(e.to_string().contains("--name"), "{e}");
        let e = restore(&options(&tmp.path().join("missing.db"), "a")).expect_err("missing");
        assert!(e.to_string().contains("missing.db"), "{e}");
        assert!(!tmp.path().join("new").exists(), "nothing was written");
    }
}
