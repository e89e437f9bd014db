//! Opening a replica from its data dir: the durable log (checked to belong to this cluster and
//! member), the state machine, and the newest snapshot, brought in line with each other after
//! whatever crash came before; then the core, started where they left off.
//!
//! ```text
//!   <data-dir>/raft/     Raft log, hard state, membership, identity (crates/storage)
//!   <data-dir>/kv.redb   MVCC state machine (crates/kv); its applied index says where to resume
//! ```
//!
//! A snapshot file newer than the log start means a crash interrupted installing or taking
//! it, and the install is finished; a state machine behind the log start is restored from the
//! snapshot; the core is told about the snapshot (to send it to followers) and about a
//! half-received one (to resume it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::{Index, Membership, NodeId, RawNode};

use super::CurrentSnapshot;
use crate::error::ServerError;

/// Sessions the state machine remembers for deduplicating retried writes.
pub const SESSIONS_MAX: usize = 100_000;

/// Where and as whom a replica starts.
pub struct OpenOptions<'a> {
    /// The member's data dir (created if missing by the caller).
    pub data_dir: &'a Path,
    /// The cluster and member the data dir must belong to.
    pub identity: storage::Identity,
    /// The voters of a new cluster, used when the log holds no membership yet.
    pub initial_voters: Vec<NodeId>,
    /// Whether an empty data dir may be started: a new cluster's member, or one whose member
    /// file says who it is (it joined a running cluster). Otherwise an empty dir is refused.
    pub may_create: bool,
    /// The core's configuration.
    pub raft: raft::Config,
}

/// A replica's state, opened and consistent, ready for [`super::NodeTask::new`].
pub struct Opened {
    /// The core, at the state the log and the state machine describe.
    pub raw: RawNode,
    /// The durable log.
    pub log: storage::Store,
    /// The state machine.
    pub kv: Arc<kv::Store>,
    /// The state machine's file (for its size).
    pub kv_path: PathBuf,
    /// The snapshot the log starts from, if any.
    pub snapshot: Option<CurrentSnapshot>,
}

/// Opens the log and the state machine under `o.data_dir`, finishes what a crash left half
/// done, and starts the core from them.
pub fn open(o: OpenOptions<'_>) -> Result<Opened, ServerError> {
    let (mut log, recovered) =
        storage::Store::open(&o.data_dir.join("raft"), storage::Options::new(o.identity))?;
    if log.membership().voters.is_empty() {
        if !o.may_create && recovered.created {
            return Err(ServerError::Config(
                "--initial-cluster-state existing with an empty data dir and no member file".into(),
            ));
        }
        log.set_membership(&Membership::new(o.initial_voters.iter().copied()))?;
    }

    // The state machine; entries it has not applied are replayed from the log.
    let kv_path = o.data_dir.join("kv.redb");
    let kv = Arc::new(kv::Store::open(
        &kv_path,
        kv::Options {
            // The Raft log is durable on its own; a crash replays what the state machine lost.
            // One fsync a second (every 10th grouped commit under load) keeps it off all but
            // about 1 in 1000 sequential writes (put-c1's p99 was 2.7x etcd's with one every
            // 64 commits); the count bounds the file's growth between two (see
            // `kv::Durability::Batched`).
            durability: kv::Durability::Batched {
                commits_per_sync: 1024,
                interval: std::time::Duration::from_secs(1),
            },
            sessions_max: SESSIONS_MAX,
            // etcd's backend batch interval: one redb commit per 100 ms of applies rather
            // than per apply batch (see `kv::Options::commit_delay`).
            commit_delay: std::time::Duration::from_millis(100),
        },
    )?);
    let snapshot = recover_snapshot(&mut log, &kv)?;
    let applied = kv.applied_index()?;
    if applied > log.last_index().0 {
        return Err(ServerError::Config(format!(
            "state machine applied index {applied} is past the raft log's last index {}: \
             the data dir is inconsistent",
            log.last_index()
        )));
    }
    let state = storage::initial_state(&log, Index(applied))?;
    let mut raw = RawNode::new(o.raft, state)?;
    if let Some(meta) = &snapshot {
        raw.compact(meta.clone()).map_err(|e| {
            ServerError::Invariant(format!(
                "the core refused the snapshot it starts from: {e:?}"
            ))
        })?;
    }
    if let Some(staged) = log.staged() {
        let meta = raft::SnapshotMeta {
            last: staged.meta.last,
            membership: staged.meta.membership.clone(),
            size_bytes: staged.total_bytes,
        };
        raw.resume_staged_snapshot(meta, staged.received_bytes);
    }
    Ok(Opened {
        raw,
        log,
        kv,
        kv_path,
        snapshot,
    })
}

/// Brings the log and the state machine in line with the newest snapshot file and returns it.
///
/// - A snapshot newer than the log start: a crash came between saving it and resetting the log
///   (installing one from the leader, or taking one here). Its entries are committed, so the
///   log restarts after it, keeping a suffix that matches it.
/// - A state machine behind the log start (it syncs in batches, or a crash came before an
///   install restored it): it is restored from the snapshot; the log replays the rest.
fn recover_snapshot(
    log: &mut storage::Store,
    kv: &kv::Store,
) -> Result<Option<CurrentSnapshot>, ServerError> {
    let Some((meta, _)) = log.latest_snapshot()? else {
        return Ok(None);
    };
    if meta.last.index > log.log_start().index {
        let mut hs = log.hard_state();
        hs.commit = hs.commit.max(meta.last.index);
        tracing::warn!(
            index = meta.last.index.0,
            "finishing a snapshot install or compaction interrupted by a crash"
        );
        log.reset_to_snapshot(meta.last, &hs)?;
    }
    let size_bytes = if kv.applied_index()? < meta.last.index.0 {
        tracing::info!(
            index = meta.last.index.0,
            "restoring the state machine from the snapshot"
        );
        let (_, size, mut data) = log
            .open_snapshot()?
            .ok_or_else(|| ServerError::Invariant("the snapshot file vanished".into()))?;
        kv.restore_from(&mut data)?;
        kv.sync()?;
        size
    } else {
        // Not needed here, but followers may be sent it: check it now, a slice at a time.
        log.verify_snapshot()?
            .ok_or_else(|| ServerError::Invariant("the snapshot file vanished".into()))?
            .1
    };
    Ok(Some(raft::SnapshotMeta {
        last: meta.last,
        membership: meta.membership,
        size_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{Entry, EntryId, EntryKind, HardState, Membership, NodeId, Term};

    fn put(index: u64, term: u64) -> Entry {
        let cmd = kv::Command::new(kv::Request::Put(kv::PutRequest::new(
            format!("k{index}"),
            format!("v{index}"),
        )));
        Entry {
            term: Term(term),
            index: Index(index),
            kind: EntryKind::Normal,
            data: kv::codec::encode_command(&cmd),
        }
    }

    fn open(dir: &std::path::Path) -> (storage::Store, kv::Store) {
        let id = storage::Identity {
            cluster_id: 7,
            node_id: NodeId::new(1).expect("non-zero"),
        };
        let (mut log, _) =
            storage::Store::open(&dir.join("raft"), storage::Options::new(id)).expect("open log");
        if log.membership().voters.is_empty() {
            log.set_membership(&Membership::new([NodeId::new(1).expect("non-zero")]))
                .expect("membership");
        }
        let kv = kv::Store::open(dir.join("kv.redb"), kv::Options::default()).expect("open kv");
        (log, kv)
    }

    /// A snapshot at 6 taken from a state machine that applied entries 1..=6 of `entries`.
    fn snapshot_of(entries: &[Entry]) -> (storage::SnapshotMeta, Vec<u8>) {
        let source = kv::Store::in_memory(kv::Options::default()).expect("kv");
        for e in &entries[..6] {
            let cmd = kv::codec::decode_command(&e.data).expect("decode");
            source.apply(e.index.0, &cmd).expect("apply");
        }
        let meta = storage::SnapshotMeta {
            last: EntryId {
                term: entries[5].term,
                index: Index(6),
            },
            membership: Membership::new([NodeId::new(1).expect("non-zero")]),
        };
        (meta, source.snapshot().expect("snapshot"))
    }

    fn value(kv: &kv::Store, key: &str) -> Option<Vec<u8>> {
        let req = kv::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        kv.range(&req)
            .expect("range")
            .kvs
            .into_iter()
            .next()
            .map(|kv| kv.value)
    }

    #[test]
    fn a_compaction_interrupted_after_saving_the_snapshot_is_finished_at_start() {
        // Crash after `save_snapshot`, before `compact`, with a state machine that lost its
        // unsynced applies: the log restarts after the snapshot keeping 7..=10, and the state
        // machine is restored to 6 (the log replays the rest).
        let dir = tempfile::tempdir().expect("tempdir");
        let entries: Vec<Entry> = (1..=10).map(|i| put(i, 1)).collect();
        let (mut log, kv) = open(dir.path());
        let hs = HardState {
            term: Term(1),
            vote: None,
            commit: Index(10),
        };
        log.write(Some(&hs), &entries).expect("write");
        let (meta, data) = snapshot_of(&entries);
        log.save_snapshot(&meta, &data).expect("save");

        let current = recover_snapshot(&mut log, &kv)
            .expect("recover")
            .expect("snapshot");
        assert_eq!(current.last, meta.last);
        assert_eq!(current.size_bytes, data.len() as u64);
        assert_eq!(log.log_start(), meta.last);
        assert_eq!(log.last_index(), Index(10));
        assert_eq!(log.hard_state().commit, Index(10));
        assert_eq!(kv.applied_index().expect("applied"), 6);
        assert_eq!(value(&kv, "k6"), Some(b"v6".to_vec()));
        assert_eq!(value(&kv, "k7"), None);
        // A second start finds nothing to do.
        recover_snapshot(&mut log, &kv).expect("recover again");
        assert_eq!(log.last_index(), Index(10));
    }

    #[test]
    fn an_install_interrupted_before_the_log_reset_is_finished_at_start() {
        // The leader's snapshot (term 2 at 6) conflicts with this member's log (term 1 at 6):
        // a crash came after the snapshot file was saved; the log must restart empty after
        // it, committed through it, with the state machine restored.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, kv) = open(dir.path());
        let hs = HardState {
            term: Term(2),
            vote: None,
            commit: Index(3),
        };
        let ours: Vec<Entry> = (1..=8).map(|i| put(i, 1)).collect();
        log.write(Some(&hs), &ours).expect("write");
        let leaders: Vec<Entry> = (1..=6).map(|i| put(i, if i < 4 { 1 } else { 2 })).collect();
        let (meta, data) = snapshot_of(&leaders);
        log.save_snapshot(&meta, &data).expect("save");

        recover_snapshot(&mut log, &kv)
            .expect("recover")
            .expect("snapshot");
        assert_eq!(log.log_start(), meta.last);
        assert_eq!(log.last_index(), Index(6));
        assert_eq!(log.hard_state().commit, Index(6));
        assert_eq!(kv.applied_index().expect("applied"), 6);
        // The state machine and the log start the core from a consistent place.
        let state = storage::initial_state(&log, Index(6)).expect("initial state");
        assert!(state.entries.is_empty());
        assert_eq!(state.snapshot, meta.last);
    }
}
