//! The apply task: applies committed entries to the state machine ([`kv::Store`]) behind the
//! node task and answers their writers and the reads released with them, so that the node task
//! syncs the next batch to disk while this one is applied (pipelined apply).
//!
//! ```text
//!   node task --ApplyJob (bounded, in order)--> apply task --> kv::Store
//!                                                 |-- answers writers of each entry
//!                                                 `-- answers reads released with the job,
//!                                                     after every earlier job is applied
//! ```
//!
//! Order is the whole contract: jobs are handled in the order sent, so a read released by the
//! core in batch `n` is answered only once every entry of batches `<= n` is in the state
//! machine, which is what ReadIndex needs (thesis §6.4). Entries jobs already queued together
//! are applied in one state machine commit (the commit is the cost, not the entry). Snapshot jobs (install one
//! from the leader, take one here) go through the same queue and so see exactly the entries
//! sent before them; taking one only opens a read view here, and the node task serializes it
//! on a blocking thread while applying goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::{Entry, EntryKind};
use tokio::sync::{mpsc, oneshot};

use super::removal::Removal;
use super::reply::{ReadReply, Waiter, WriteError};
use super::session_waiters::SessionWaiters;
use crate::error::ServerError;

/// Jobs queued for the apply task, at most; a full queue makes the node task wait.
pub const APPLY_QUEUE_MAX: usize = 64;
/// Entries applied in one state machine commit, at most, when queued jobs are merged.
const COALESCED_ENTRIES_MAX: usize = 4096;

/// One unit of work, handled in order.
pub enum ApplyJob {
    /// Apply `entries` (committed, in log order), answer `writers`, then answer `reads`.
    Entries {
        /// Committed entries.
        entries: Vec<Entry>,
        /// Writers waiting for some of them, ascending by index.
        writers: Vec<Waiter>,
        /// Reads the core released in the same batch.
        reads: Vec<ReadReply>,
        /// Configuration entries among them that leave members out: (index, their ids),
        /// ascending by index (see [`Removal`]).
        removals: Vec<(u64, Vec<u64>)>,
    },
    /// Replace the state machine with a snapshot from the leader.
    Install {
        /// The snapshot's data, streamed from its file.
        data: Box<storage::SnapshotReader>,
        /// The applied index the snapshot must leave the state machine at.
        index: u64,
        /// Done (or why not).
        done: oneshot::Sender<Result<(), ServerError>>,
    },
    /// Make the state machine durable and hand out a consistent view of it, to be
    /// serialized off the apply path.
    Snapshot {
        /// The result.
        done: oneshot::Sender<Result<kv::SnapshotView, ServerError>>,
    },
}

/// Starts the apply task. `applied` is published after every job (for status and metrics),
/// and `changed` is told the applied index too (watch streams wait on it).
pub fn spawn(
    kv: Arc<kv::Store>,
    applied: Arc<AtomicU64>,
    changed: tokio::sync::watch::Sender<u64>,
    sessions: Arc<SessionWaiters>,
    removal: Arc<Removal>,
    metrics: Arc<crate::metrics::Metrics>,
) -> (
    mpsc::Sender<ApplyJob>,
    tokio::task::JoinHandle<Result<(), ServerError>>,
) {
    let (tx, rx) = mpsc::channel(APPLY_QUEUE_MAX);
    let task = tokio::spawn(run(kv, applied, changed, sessions, removal, metrics, rx));
    (tx, task)
}

/// Runs until the node task drops its sender (Ok) or the state machine fails (Err; the node
/// task then stops too).
async fn run(
    kv: Arc<kv::Store>,
    applied: Arc<AtomicU64>,
    changed: tokio::sync::watch::Sender<u64>,
    sessions: Arc<SessionWaiters>,
    removal: Arc<Removal>,
    metrics: Arc<crate::metrics::Metrics>,
    mut jobs: mpsc::Receiver<ApplyJob>,
) -> Result<(), ServerError> {
    // A job taken while coalescing that must wait for the next round.
    let mut held: Option<ApplyJob> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            // Idle: commit a grouped transaction once it is due, rather than keep it open
            // (holding redb's writer and the pending rows) until the next write.
            None => match next_job(&kv, &mut jobs).await? {
                Some(job) => job,
                None => break,
            },
        };
        match job {
            ApplyJob::Entries {
                mut entries,
                mut writers,
                mut reads,
                mut removals,
            } => {
                // Entries jobs already queued behind this one are applied with it, in one state
                // machine commit (its cost is per commit, not per entry). Committed entries of
                // consecutive jobs are contiguous, and a read may be answered once everything
                // before it is applied, so merging keeps the order's contract.
                while entries.len() < COALESCED_ENTRIES_MAX {
                    match jobs.try_recv() {
                        Ok(ApplyJob::Entries {
                            entries: more,
                            writers: w,
                            reads: r,
                            removals: gone,
                        }) => {
                            entries.extend(more);
                            writers.extend(w);
                            reads.extend(r);
                            removals.extend(gone);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let began = std::time::Instant::now();
                let (results, clients) = tokio::task::block_in_place(|| {
                    apply_all(&kv, &entries, &removals, |index, client| {
                        // Writers are ascending by index (merged jobs too).
                        writers.binary_search_by_key(&index, |w| w.index).is_ok()
                            || client.is_some_and(|c| sessions.is_waiting(c))
                    })
                })?;
                metrics.observe_apply(began.elapsed(), kv.slow_applies());
                sessions.answer_applied(&results, &clients);
                answer_writers(&entries, results, writers);
                // After the answers: a member removing itself answers before it stops.
                for (_, ids) in &removals {
                    removal.record(ids);
                }
                for r in reads {
                    let _ = r.send(Ok(()));
                }
            }
            ApplyJob::Install {
                mut data,
                index,
                done,
            } => {
                // The entries the snapshot covers are never applied here: writers waiting
                // for them retry under their session.
                sessions.fail_all(WriteError::LeaderChanged);
                let r = tokio::task::block_in_place(|| restore(&kv, &mut data, index));
                if r.is_ok() {
                    // The snapshot's removed members are this member's now.
                    removal.record(&kv.removed_members()?);
                }
                let failed = r.as_ref().err().map(|e| e.to_string());
                let _ = done.send(r);
                if let Some(e) = failed {
                    return Err(ServerError::Invariant(format!(
                        "installing a snapshot failed: {e}"
                    )));
                }
            }
            ApplyJob::Snapshot { done } => {
                let r = tokio::task::block_in_place(|| -> Result<_, ServerError> {
                    // Durable first: the log entries the snapshot covers are about to go.
                    kv.sync()?;
                    Ok(kv.snapshot_view()?)
                });
                let _ = done.send(r);
            }
        }
        let index = kv.applied_index()?;
        applied.store(index, Ordering::Release);
        changed.send_replace(index);
    }
    Ok(())
}

/// How long the apply task waits for a job before it commits a grouped transaction that is
/// due (`kv::Options::commit_delay`).
const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The next job, committing the state machine's grouped transaction whenever none comes for
/// [`IDLE_COMMIT`]; `None` once the node task is gone.
async fn next_job(
    kv: &kv::Store,
    jobs: &mut mpsc::Receiver<ApplyJob>,
) -> Result<Option<ApplyJob>, ServerError> {
    loop {
        match tokio::time::timeout(IDLE_COMMIT, jobs.recv()).await {
            Ok(job) => return Ok(job),
            Err(_) => tokio::task::block_in_place(|| kv.settle_if_due())?,
        }
    }
}

fn restore(kv: &kv::Store, data: &mut dyn std::io::Read, index: u64) -> Result<(), ServerError> {
    kv.restore_from(data)?;
    kv.sync()?;
    let applied = kv.applied_index()?;
    if applied != index {
        return Err(ServerError::Invariant(format!(
            "a snapshot through {index} restored a state machine at applied index {applied}"
        )));
    }
    Ok(())
}

/// Answers each writer with the result of the entry at its index, if that entry is the one
/// it proposed (same term); otherwise its proposal was lost to another leader.
fn answer_writers(
    entries: &[Entry],
    results: Vec<Option<Result<kv::Response, kv::KvError>>>,
    writers: Vec<Waiter>,
) {
    let first = entries.first().map_or(0, |e| e.index.0);
    let mut results: Vec<Option<_>> = results.into_iter().map(Some).collect();
    for w in writers {
        let slot = w
            .index
            .checked_sub(first)
            .and_then(|i| usize::try_from(i).ok());
        let answer = match slot.and_then(|i| Some((entries.get(i)?, results.get_mut(i)?))) {
            Some((e, result)) if e.term.0 == w.term => match result.take().flatten() {
                Some(Ok(resp)) => Ok(resp),
                Some(Err(err)) => Err(WriteError::Kv(err)),
                // A configuration change that changes no member's description (a
                // promotion): applied, with nothing to say (its waiter reads the members).
                None if matches!(e.kind, EntryKind::Membership(_)) => {
                    Ok(kv::Response::Members { revision: 0 })
                }
                None => Err(WriteError::LeaderChanged),
            },
            _ => Err(WriteError::LeaderChanged),
        };
        let _ = w.reply.send(answer);
    }
}

/// An entry's command. A committed entry that does not decode stops this member (as etcd's
/// `MustUnmarshal` does): skipping it would be safe only if no replica could decode it, and
/// a member of an older version meets entries a newer one wrote (a rolling upgrade), which
/// the others apply. Skipping there would make this replica diverge silently; stopping
/// keeps its state a prefix of theirs until it is upgraded (the entry stays in the log and
/// is applied after the restart).
fn decode(e: &Entry) -> Result<kv::Command, ServerError> {
    kv::codec::decode_command(&e.data).map_err(|err| {
        ServerError::Unsupported(format!(
            "committed entry {} does not decode ({err}): it was written by a newer or \
             incompatible Skiff; upgrade this member and restart it",
            e.index.0
        ))
    })
}

/// The results of applying one batch, by entry, and the session client of each entry.
type Applied = (
    Vec<Option<Result<kv::Response, kv::KvError>>>,
    Vec<Option<u64>>,
);

/// Applies committed entries in order, in one state machine transaction. `None` for entries
/// that carry no command, or that the state machine already had (replayed after a restart),
/// and for retries whose answer must be rebuilt but that nobody here waits for
/// (`waited(index, session client)` is false). Also returns each entry's session client.
fn apply_all(
    kv: &kv::Store,
    entries: &[Entry],
    removals: &[(u64, Vec<u64>)],
    waited: impl Fn(u64, Option<u64>) -> bool,
) -> Result<Applied, ServerError> {
    let commands: Vec<(u64, Option<kv::Command>)> = entries
        .iter()
        .map(|e| {
            Ok(match e.kind {
                // A configuration entry that adds a member carries its description (the
                // context MemberAdd gave it) ...
                EntryKind::Membership(_) if !e.data.is_empty() => Some(decode(e)?),
                // ... and one that leaves members out removes them from the member table
                // (derived here, on every replica alike; see `Removal`).
                EntryKind::Membership(_) => removals
                    .binary_search_by_key(&e.index.0, |(i, _)| *i)
                    .ok()
                    .map(|i| kv::Command::new(kv::Request::MembersRemoved(removals[i].1.clone()))),
                EntryKind::Normal if !e.data.is_empty() => Some(decode(e)?),
                _ => None,
            })
            .map(|cmd| (e.index.0, cmd))
        })
        .collect::<Result<_, ServerError>>()?;
    let refs: Vec<(u64, Option<&kv::Command>)> =
        commands.iter().map(|(i, c)| (*i, c.as_ref())).collect();
    let clients = commands
        .iter()
        .map(|(_, c)| c.as_ref().and_then(|c| c.session).map(|s| s.client_id))
        .collect();
    let results = kv.apply_batch_answering(&refs, |index, cmd| {
        waited(index, cmd.session.map(|s| s.client_id))
    })?;
    Ok((results, clients))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: Vec<u8>) -> Entry {
        Entry {
            term: raft::Term(1),
            index: raft::Index(index),
            kind: EntryKind::Normal,
            data,
        }
    }

    fn put(key: &str) -> Vec<u8> {
        kv::codec::encode_command(&kv::Command::new(kv::Request::Put(kv::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })))
    }

    /// A committed entry this member cannot decode (written by a newer Skiff, say) stops the
    /// member with a reason naming the entry, and nothing of its batch is applied: skipping it
    /// would let this replica diverge from those that apply it.
    #[test]
    fn an_undecodable_committed_entry_stops_the_member_and_applies_nothing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let kv = kv::Store::open(dir.path().join("kv.redb"), kv::Options::default())
            .expect("a fresh state machine");
        // Tag 0x7f: no session kind this version knows.
        let batch = [
            entry(1, put("a")),
            entry(2, vec![0x7f, 1, 2, 3]),
            entry(3, put("b")),
        ];
        let err = apply_all(&kv, &batch, &[], |_, _| true).expect_err("must stop");
        let text = err.to_string();
        assert!(
            text.contains("committed entry 2 does not decode") && text.contains("upgrade"),
            "{text}"
        );
        assert_eq!(kv.applied_index().expect("readable"), 0, "nothing applied");

        // The same entries without the foreign one apply.
        let good = [entry(1, put("a")), entry(2, put("b"))];
        apply_all(&kv, &good, &[], |_, _| true).expect("applies");
        assert_eq!(kv.applied_index().expect("readable"), 2);
    }
}
