//! A disk running out of room is an alarm, not a crash. etcd stops a member whose WAL or
//! bbolt write fails for lack of space; Skiff raises that member's NOSPACE alarm while room
//! remains, so every member refuses puts, transactions with puts and lease grants (with
//! etcd's `etcdserver: mvcc: database space exceeded`) while deletes, compaction, reads and
//! the alarm's own entries still fit.
//!
//! Every [`DISK_CHECK_EVERY`] a member measures the space left to unprivileged writers on
//! the file system of its data dir (which holds both its Raft log and its state machine) and
//! exports it as `skiff_disk_free_bytes`. When that falls below
//! `--experimental-disk-reserve-bytes` and this member's NOSPACE alarm is not raised, it
//! raises it through the log, as the space quota does (`super::quota`), and logs one line
//! saying so. A learner only logs: it does not vote, and, as in etcd, it raises no alarm that
//! would stop the voters' writes (a member joining onto a small disk). As with the quota, the
//! alarm stays until an operator disarms it (`etcdctl alarm disarm`) after making room; a
//! disarm while room is still short is followed by a new alarm at the next check.
//!
//! The default reserve, [`DISK_RESERVE_BYTES_DEFAULT`], is two log segments: the log prepares
//! its next segment ahead of need (free space drops by a segment at once), and the rest is
//! room for what is written between the check that sees the shortage and the alarm's commit,
//! and for deletes and compaction while the alarm is raised. The check runs ten times a
//! second, so only a writer faster than the reserve per tenth of a second (640 MB/s by
//! default) outruns it. If the disk fills anyway (another process takes the reserve), the
//! write that fails stops the member with one line naming the file; everything it
//! acknowledged was synced before and is replayed when it restarts with room.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Api;
use crate::metrics::Metrics;

/// How often the free space is measured: a `statvfs`, cheap enough for ten times a second.
pub const DISK_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The default `--experimental-disk-reserve-bytes`: two 64 MiB log segments.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Api {
    /// Starts the disk space watch of `data_dir`, which sets `skiff_disk_free_bytes` and, with
    /// a reserve above 0, raises the NOSPACE alarm below it. The caller aborts it when the
    /// server stops.
    pub fn start_disk_space_watch(
        &self,
        data_dir: PathBuf,
        reserve_bytes: u64,
        metrics: std::sync::Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        if reserve_bytes == 0 {
            tracing::info!(
                "no NOSPACE alarm for a short disk (--experimental-disk-reserve-bytes 0)"
            );
        }
        let api = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(DISK_CHECK_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = Watch::default();
            loop {
                ticker.tick().await;
                let dir = data_dir.clone();
                let free = match tokio::task::spawn_blocking(move || free_bytes(&dir)).await {
                    Ok(Ok(free)) => free,
                    Ok(Err(e)) => {
                        if !std::mem::replace(&mut watch.unreadable, true) {
                            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot measure the free space of the data dir; skiff_disk_free_bytes is -1 until it can");
                        }
                        metrics.disk_free.set(-1);
                        continue;
                    }
                    Err(_) => continue,
                };
                watch.unreadable = false;
                metrics
                    .disk_free
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
                if reserve_bytes == 0 {
                    continue;
                }
                let me = api.inner.member_id;
                let alarm = kv::AlarmMember {
                    member_id: me,
                    alarm: kv::AlarmType::NoSpace,
                };
                let raised = api.inner.node.kv.alarms().contains(&alarm);
                let learner = api
                    .inner
                    .node
                    .membership()
                    .learners
                    .iter()
                    .any(|l| l.get() == me);
                match watch.next(free, reserve_bytes, raised, learner) {
                    Step::Nothing => {}
                    Step::Recovered if raised => {
                        tracing::info!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space back above the reserve; disarm the NOSPACE alarm to take writes again")
                    }
                    Step::Recovered => {
                        tracing::info!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space back above the reserve")
                    }
                    Step::LearnerShort => {
                        tracing::warn!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space below the reserve; a learner raises no NOSPACE alarm")
                    }
                    Step::Raise { log } => {
                        if log {
                            tracing::warn!(dir = %data_dir.display(), free_bytes = free, reserve_bytes, "disk space below the reserve; raising the NOSPACE alarm");
                        }
                        match api
                            .propose_alarm(kv::AlarmAction::Activate, alarm, None)
                            .await
                        {
                            Ok(_) => watch.proposed(),
                            // No leader now, say: the next check tries again.
                            Err(e) => {
                                tracing::debug!(error = %e.message(), "raising the NOSPACE alarm failed")
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Checks a successful proposal may wait to show in this member's own state machine (which
/// can apply it after the leader answered) before it is proposed again: 2 s.
const PROPOSAL_SEEN_WITHIN_CHECKS: u32 = 20;

/// What the watch remembers between checks, so that a disk that stays short logs once, not
/// ten times a second.
#[derive(Debug, Default)]
struct Watch {
    /// The last measurement was below the reserve (and has not since been back above it
    /// with a margin, see [`Watch::next`]).
    short: bool,
    /// The line saying the alarm is being raised was logged since the disk ran short.
    announced: bool,
    /// This member's state machine showed the alarm since it was last proposed: its absence
    /// now means an operator disarmed it.
    seen: bool,
    /// Checks since a proposal of the alarm succeeded that this member has not applied yet.
    pending: Option<u32>,
    /// The last measurement failed.
    unreadable: bool,
}

/// What a check does.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    /// Back above the reserve with the margin: say so once.
    Recovered,
    /// Short on a learner: say so once, raise nothing.
    LearnerShort,
    /// Propose the alarm; `log`: say so (the first time, and after each early disarm).
    Raise {
        log: bool,
    },
}

impl Watch {
    /// The step for `free` bytes against `reserve`, with the alarm `raised` or not in this
    /// member's state machine. The disk counts as short again only below the reserve, and as
    /// recovered only above the reserve plus a quarter of it, so that space hovering at the
    /// line does not log at every check.
    fn next(&mut self, free: u64, reserve: u64, raised: bool, learner: bool) -> Step {
        if free >= reserve.saturating_add(reserve / 4) {
            self.announced = false;
            self.seen = false;
            self.pending = None;
            return if std::mem::replace(&mut self.short, false) {
                Step::Recovered
            } else {
                Step::Nothing
            };
        }
        if free >= reserve && !self.short {
            return Step::Nothing;
        }
        let first = !std::mem::replace(&mut self.short, true);
        if learner {
            return if first {
                Step::LearnerShort
            } else {
                Step::Nothing
            };
        }
        if raised {
            self.seen = true;
            self.pending = None;
            return Step::Nothing;
        }
        if let Some(waited) = self.pending {
            if waited < PROPOSAL_SEEN_WITHIN_CHECKS {
                self.pending = Some(waited + 1);
                return Step::Nothing;
            }
            self.pending = None;
        }
        let disarmed = std::mem::replace(&mut self.seen, false);
        let log = !std::mem::replace(&mut self.announced, true) || disarmed;
        Step::Raise { log }
    }

    /// The proposal of the alarm succeeded.
    fn proposed(&mut self) {
        self.pending = Some(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_disk_raises_once_and_again_after_an_early_disarm() {
        let mut w = Watch::default();
        assert_eq!(w.next(200, 100, false, false), Step::Nothing);
        assert_eq!(w.next(99, 100, false, false), Step::Raise { log: true });
        // The proposal failed (no leader): retried without a new line.
        assert_eq!(w.next(99, 100, false, false), Step::Raise { log: false });
        w.proposed();
        // Committed, but not yet applied here: no second proposal for a while.
        assert_eq!(w.next(99, 100, false, false), Step::Nothing);
        assert_eq!(w.next(98, 100, true, false), Step::Nothing);
        // Disarmed while still short: raised again, with a line.
        assert_eq!(w.next(98, 100, false, false), Step::Raise { log: true });
        w.proposed();
        assert_eq!(w.next(98, 100, true, false), Step::Nothing);
    }

    #[test]
    fn an_alarm_never_seen_here_is_proposed_again_in_time() {
        let mut w = Watch::default();
        assert_eq!(w.next(99, 100, false, false), Step::Raise { log: true });
        w.proposed();
        for _ in 0..PROPOSAL_SEEN_WITHIN_CHECKS {
            assert_eq!(w.next(99, 100, false, false), Step::Nothing);
        }
        assert_eq!(w.next(99, 100, false, false), Step::Raise { log: false });
    }

    #[test]
    fn recovery_needs_a_margin_above_the_reserve() {
        let mut w = Watch::default();
        assert_eq!(w.next(99, 100, false, false), Step::Raise { log: true });
        w.proposed();
        // Above the reserve but within the margin: still short, nothing logged.
        assert_eq!(w.next(110, 100, true, false), Step::Nothing);
        assert!(w.short);
        assert_eq!(w.next(125, 100, true, false), Step::Recovered);
        assert_eq!(w.next(130, 100, true, false), Step::Nothing);
        // Hovering just above the line after a recovery logs nothing.
        assert_eq!(w.next(101, 100, true, false), Step::Nothing);
    }

    #[test]
    fn a_learner_logs_and_raises_nothing() {
        let mut w = Watch::default();
        assert_eq!(w.next(10, 100, false, true), Step::LearnerShort);
        assert_eq!(w.next(10, 100, false, true), Step::Nothing);
        // Promoted while short: it raises the alarm, saying so once.
        assert_eq!(w.next(10, 100, false, false), Step::Raise { log: true });
        assert_eq!(w.next(10, 100, false, false), Step::Raise { log: false });
    }
}
