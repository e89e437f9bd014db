//! Snapshots of the running replica (paper §7): taking one when enough entries were applied
//! and compacting the logs behind it, and staging and installing one streamed from the leader.
//! Recovering from a snapshot at start is in [`super::open`].

use raft::{EntryId, SnapshotMeta};
use tokio::sync::oneshot;

use super::apply::ApplyJob;
use super::node::NodeTask;
use super::CurrentSnapshot;
use crate::error::ServerError;

impl NodeTask {
    /// Stages chunks of an incoming snapshot durably, in order (before the batch's
    /// `SnapshotResp` promises them to the leader).
    pub(super) fn stage_chunks(
        &mut self,
        chunks: &[raft::SnapshotChunk],
    ) -> Result<(), ServerError> {
        for chunk in chunks {
            if chunk.offset == 0 {
                self.log
                    .stage_begin(&storage_meta(&chunk.meta), chunk.meta.size_bytes)?;
            }
            let staged = self.log.staged().map(|p| p.meta.last);
            if staged != Some(chunk.meta.last) {
                // The core only asks for chunks that continue what it knows is staged.
                return Err(ServerError::Invariant(format!(
                    "snapshot chunk for {:?} at offset {} but {staged:?} is staged",
                    chunk.meta.last, chunk.offset
                )));
            }
            self.log.stage_chunk(chunk.offset, &chunk.data)?;
        }
        Ok(())
    }

    /// Installs a fully staged snapshot from the leader: the snapshot file becomes durable,
    /// the state machine is replaced by it (after every entry queued before it is applied),
    /// then the log restarts after it (keeping a matching suffix). A crash between the steps
    /// is finished at the next start (see `server::recover_snapshot`).
    pub(super) async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        hard_state: Option<&raft::HardState>,
    ) -> Result<(), ServerError> {
        let log = &mut self.log;
        let (staged, size, data) = tokio::task::block_in_place(|| -> Result<_, ServerError> {
            // Decode the staged snapshot whole before it replaces the previous one: a snapshot
            // this member cannot load must not cost it the one it can restart from.
            let verified = log
                .staged_reader()
                .map_err(ServerError::from)
                .and_then(|mut r| kv::snapshot::verify(&mut r).map_err(ServerError::from))
                .and_then(|applied| {
                    if applied == meta.last.index.0 {
                        Ok(())
                    } else {
                        Err(ServerError::Invariant(format!(
                            "it restores applied index {applied}, not {}",
                            meta.last.index.0
                        )))
                    }
                });
            if let Err(e) = verified {
                log.stage_discard()?;
                return Err(ServerError::Invariant(format!(
                    "the leader's snapshot {:?} does not load here, kept the previous one: {e}",
                    meta.last
                )));
            }
            log.stage_finish()?;
            log.open_snapshot()?
                .ok_or_else(|| ServerError::Invariant("the installed snapshot vanished".into()))
        })?;
        if staged.last != meta.last || size != meta.size_bytes {
            return Err(ServerError::Invariant(format!(
                "asked to install snapshot {:?} of {} bytes but staged {:?} has {size} bytes",
                meta.last, meta.size_bytes, staged.last,
            )));
        }
        let (done, rx) = oneshot::channel();
        self.submit(ApplyJob::Install {
            data: Box::new(data),
            index: meta.last.index.0,
            done,
        })
        .await?;
        self.wait(rx).await?;
        let mut hs = hard_state.copied().unwrap_or_else(|| self.log.hard_state());
        hs.commit = hs.commit.max(meta.last.index);
        tokio::task::block_in_place(|| self.log.reset_to_snapshot(meta.last, &hs))?;
        tracing::info!(
            member = %format_args!("{:x}", self.raw.id().get()),
            index = meta.last.index.0,
            term = meta.last.term.0,
            bytes = meta.size_bytes,
            "installed a snapshot from the leader"
        );
        // Writers waiting on entries the snapshot covers will never see them applied here.
        self.fail_writes_through(meta.last.index.0);
        self.snapshot = Some(meta.clone());
        Ok(())
    }

    /// Starts a snapshot once `snapshot_count` entries were applied past the log start
    /// (paper §7): the apply task opens a durable, consistent view of the state machine once
    /// it has applied every entry handed to it so far, and a blocking thread serializes it and
    /// writes the snapshot file. The node task waits for neither (it used to wait for the
    /// view, which stalled replication for the apply queue's length and a durable commit);
    /// [`NodeTask::finish_snapshot`] compacts the logs when the file is written.
    pub(super) async fn maybe_snapshot(&mut self) -> Result<(), ServerError> {
        // Cheap test first (no IO): this runs after every batch.
        let start = self.log.log_start().index.0;
        // Every entry up to here was handed to the apply task: the view will be at it.
        let applied = self.raw.status().applied;
        if self.snapshotting.is_some() || applied.0 < start.saturating_add(self.snapshot_count) {
            return Ok(());
        }
        let Some(term) = self.raw.log().term(applied) else {
            return Ok(());
        };
        let last = EntryId {
            term,
            index: applied,
        };
        let membership = self.raw.log().membership_at(applied).clone();
        let dir = self.log.snapshot_dir().to_path_buf();
        let (done, rx) = oneshot::channel();
        self.submit(ApplyJob::Snapshot { done }).await?;
        self.snapshotting = Some(tokio::spawn(async move {
            let view = rx.await.map_err(|_| {
                ServerError::Invariant("the apply task stopped before the snapshot view".into())
            })??;
            let at = view.applied_index()?;
            if at != last.index.0 {
                return Err(ServerError::Invariant(format!(
                    "a snapshot view after entry {} is at applied index {at}",
                    last.index
                )));
            }
            tokio::task::spawn_blocking(move || {
                // Streamed from the read view to the file: the state is never whole in memory.
                let smeta = storage::SnapshotMeta {
                    last,
                    membership: membership.clone(),
                };
                let mut file = storage::SnapshotWriter::create(&dir, &smeta)?;
                let size_bytes = view.write_to(&mut file)?;
                drop(view);
                file.finish()?;
                Ok(SnapshotMeta {
                    last,
                    membership,
                    size_bytes,
                })
            })
            .await
            .map_err(|e| ServerError::Invariant(format!("snapshot writer failed: {e}")))?
        }));
        Ok(())
    }

    /// Adopts a snapshot written by [`NodeTask::maybe_snapshot`] and compacts the core's log
    /// and the durable log up to it. Skipped if a snapshot installed from the leader in the
    /// meantime already covers it (the file is then removed by the next adoption).
    pub(super) fn finish_snapshot(&mut self, meta: CurrentSnapshot) -> Result<(), ServerError> {
        let covered = self.log.log_start().index;
        if meta.last.index <= covered || !self.raw.log().matches(meta.last) {
            tracing::info!(
                index = meta.last.index.0,
                "a newer snapshot was installed meanwhile; dropping the one taken here"
            );
            return Ok(());
        }
        self.metrics.snapshots_taken.inc();
        let log = &mut self.log;
        tokio::task::block_in_place(|| -> Result<_, ServerError> {
            log.adopt_snapshot(&storage_meta(&meta))?;
            // The membership as of the new log start, before the entries that held it go.
            log.set_membership(&meta.membership)?;
            Ok(())
        })?;
        self.raw
            .compact(meta.clone())
            .map_err(|e| ServerError::Invariant(format!("core refused compaction: {e:?}")))?;
        tokio::task::block_in_place(|| self.log.compact(meta.last))?;
        tracing::info!(
            member = %format_args!("{:x}", self.raw.id().get()),
            index = meta.last.index.0,
            term = meta.last.term.0,
            bytes = meta.size_bytes,
            "took a snapshot and compacted the log"
        );
        self.snapshot = Some(meta);
        Ok(())
    }
}

/// The storage crate's description of a snapshot (its size lives in the file).
fn storage_meta(meta: &SnapshotMeta) -> storage::SnapshotMeta {
    storage::SnapshotMeta {
        last: meta.last,
        membership: meta.membership.clone(),
    }
}
