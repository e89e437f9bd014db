//! A disk running out of room is an alarm, not a crash. etcd stops a member whose WAL or
//! bbolt write fails for lack of space; Skiff raises that member's NOSPACE alarm while room
//! remains, so every member refuses puts, transactions with puts and lease grants (with
//! etcd's `etcdserver: mvcc: database space exceeded`) while deletes, compaction, reads and
//! the alarm's own entries still fit.
//!
//! Every [`DISK_CHECK_EVERY`] a member measures the space left to unprivileged writers on
//! the file system of its data dir (which holds both its Raft log and its state machine). When
//! that falls below `--experimental-disk-reserve-bytes` and this member's NOSPACE alarm is not
//! raised, it raises it through the log, as the space quota does (`super::quota`), and logs
//! one line saying so. As with the quota, the alarm stays until an operator disarms it
//! (`etcdctl alarm disarm`) after making room; a disarm while room is still short is followed
//! by a new alarm at the next check.
//!
//! The default reserve, [`DISK_RESERVE_BYTES_DEFAULT`], is two log segments: the segment the
//! log prepares ahead of need, and one more for the state machine's growth while the alarm
//! is raised and the operator compacts and deletes. If the disk fills anyway (another process
//! takes the reserve), the write that fails stops the member with one line naming the file;
//! everything it acknowledged was synced before and is replayed when it restarts with room.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Api;
use crate::metrics::Metrics;

/// How often the free space is measured: a `statvfs`, cheap enough for every second.
pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The default `--experimental-disk-reserve-bytes`: two 64 MiB log segments.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Api {
    /// Starts the disk space watch of `data_dir` (none for a reserve of 0), which also sets
    /// `skiff_disk_free_bytes`. The caller aborts it when the server stops.
    pub fn start_disk_space_watch(
        &self,
        data_dir: PathBuf,
        reserve_bytes: u64,
        metrics: std::sync::Arc<Metrics>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if reserve_bytes == 0 {
            tracing::info!("disk space watch off (--experimental-disk-reserve-bytes 0)");
            return None;
        }
        let api = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(DISK_CHECK_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Whether the last measurement was below the reserve, so that a disk that stays
            // short logs once, not every second.
            let mut short = false;
            let mut unreadable = false;
            // Whether this watch raised the alarm since the disk last ran short.
            let mut raised = false;
            loop {
                ticker.tick().await;
                let dir = data_dir.clone();
                let free = match tokio::task::spawn_blocking(move || free_bytes(&dir)).await {
                    Ok(Ok(free)) => free,
                    Ok(Err(e)) => {
                        if !std::mem::replace(&mut unreadable, true) {
                            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot measure the free space of the data dir");
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                unreadable = false;
                metrics
                    .disk_free
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
                if free >= reserve_bytes {
                    if std::mem::replace(&mut short, false) {
                        tracing::info!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space back above the reserve; disarm the NOSPACE alarm to take writes again");
                    }
                    continue;
                }
                let alarm = kv::AlarmMember {
                    member_id: api.inner.member_id,
                    alarm: kv::AlarmType::NoSpace,
                };
                if api.inner.node.kv.alarms().contains(&alarm) {
                    short = true;
                    continue;
                }
                // Logged when the disk first runs short and again after each disarm that came
                // too early; not for every retry of a proposal that failed.
                if !std::mem::replace(&mut short, true) || raised {
                    tracing::warn!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space below the reserve; raising the NOSPACE alarm");
                }
                raised = false;
                match api
                    .propose_alarm(kv::AlarmAction::Activate, alarm, None)
                    .await
                {
                    Ok(_) => raised = true,
                    // No leader now, say: the next check tries again.
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "raising the NOSPACE alarm failed")
                    }
                }
            }
        }))
    }
}
