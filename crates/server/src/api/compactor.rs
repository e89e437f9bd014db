//! Automatic MVCC compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`: without it the key-value history (every revision of every
//! key) grows until a client calls Compact, and so do snapshots.
//!
//! - `revision` mode keeps the last `retention` revisions: every [`REVISION_CHECK_INTERVAL`]
//!   the leader compacts to `current revision - retention`.
//! - `periodic` mode keeps `retention` of wall-clock history: the leader samples the current
//!   revision every `retention / 10` (at least 1 s) and compacts to the newest sample that is at
//!   least `retention` old. A new leader starts sampling afresh, so it first compacts a full
//!   retention after taking over (as etcd's periodic compactor does).
//!
//! Only the leader compacts; compaction goes through the log like any write, so every member
//! compacts at the same revision.

use std::collections::VecDeque;
use std::time::Duration;

use raft::Role;
use tokio::time::Instant;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::peer::Origin;

/// How often `revision` mode checks.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest sampling interval of `periodic` mode.
const PERIODIC_CHECK_MIN: Duration = Duration::from_secs(1);
/// Revision samples kept in `periodic` mode, at most (10 per retention, with slack).
const SAMPLES_MAX: usize = 64;

/// The auto-compaction policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never compact on our own (etcd's default retention "0").
    Off,
    /// Keep this many revisions.
    Revision(u64),
    /// Keep this much wall-clock history.
    Periodic(Duration),
}

impl AutoCompaction {
    /// Parses etcd's flags: `mode` is "periodic" or "revision"; `retention` is "0" (off), a
    /// revision count in revision mode, or a duration ("90s", "30m", "1h"; a bare number means
    /// hours, as in etcd) in periodic mode. The error names the flag.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
        let retention = retention.trim();
        if retention == "0" {
            return Ok(AutoCompaction::Off);
        }
        let bad = || {
            format!(
                "--auto-compaction-retention {retention:?} is not valid for \
                 --auto-compaction-mode {mode}"
            )
        };
        match mode {
            "revision" => retention
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .map(AutoCompaction::Revision)
                .ok_or_else(bad),
            "periodic" => {
                let (num, unit) = match retention.find(|c: char| !c.is_ascii_digit()) {
                    Some(i) => retention.split_at(i),
                    None => (retention, "h"),
                };
                let n: u64 = num.parse().map_err(|_| bad())?;
                let secs = match unit {
                    "s" => n,
                    "m" => n.checked_mul(60).ok_or_else(bad)?,
                    "h" => n.checked_mul(3600).ok_or_else(bad)?,
                    _ => return Err(bad()),
                };
                if secs == 0 {
                    return Err(bad());
                }
                Ok(AutoCompaction::Periodic(Duration::from_secs(secs)))
            }
            other => Err(format!(
                "--auto-compaction-mode must be \"periodic\" or \"revision\", got {other:?}"
            )),
        }
    }
}

impl Api {
    /// Starts the compactor task (none when off). The caller aborts it when the server stops.
    pub fn start_compactor(&self, mode: AutoCompaction) -> Option<tokio::task::JoinHandle<()>> {
        if mode == AutoCompaction::Off {
            return None;
        }
        let api = self.clone();
        Some(tokio::spawn(async move { api.compaction_loop(mode).await }))
    }

    async fn compaction_loop(self, mode: AutoCompaction) {
        let every = match mode {
            AutoCompaction::Off => return,
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
            AutoCompaction::Periodic(retention) => (retention / 10).max(PERIODIC_CHECK_MIN),
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut leading_in = None;
        loop {
            ticker.tick().await;
            let st = self.inner.node.status();
            if st.role != Role::Leader {
                samples.clear();
                leading_in = None;
                continue;
            }
            if leading_in != Some(st.term) {
                samples.clear();
                leading_in = Some(st.term);
            }
            let kv = self.inner.node.kv.clone();
            let read = tokio::task::spawn_blocking(move || -> Result<_, kv::Error> {
                Ok((kv.revision()?, kv.compact_revision()?))
            })
            .await;
            let Ok(Ok((revision, compacted))) = read else {
                continue;
            };
            let target = match mode {
                AutoCompaction::Off => return,
                AutoCompaction::Revision(keep) => {
                    revision.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX))
                }
                AutoCompaction::Periodic(retention) => {
                    let now = Instant::now();
                    if samples.len() >= SAMPLES_MAX {
                        samples.pop_front();
                    }
                    samples.push_back((now, revision));
                    let mut old_enough = None;
                    while let Some(&(at, rev)) = samples.front() {
                        if now.duration_since(at) < retention {
                            break;
                        }
                        old_enough = Some(rev);
                        samples.pop_front();
                    }
                    match old_enough {
                        Some(rev) => rev,
                        None => continue,
                    }
                }
            };
            if target <= compacted || target <= 1 {
                continue;
            }
            let request = epb::CompactionRequest {
                revision: target,
                physical: false,
            };
            // Run here or not at all (`Origin::Peer`): only the leader compacts on its own,
            // and an unstamped compaction is never forwarded (a leader refuses one while
            // auth is enabled: it could come from anyone who reaches the peer port).
            match self.compact_impl(request, Origin::Peer, None, None).await {
                Ok(_) => tracing::info!(revision = target, "auto-compacted the key-value history"),
                Err(status) => {
                    tracing::warn!(revision = target, error = %status.message(), "auto-compaction failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_etcd_and_errors_name_the_flag() {
        let p = AutoCompaction::parse;
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(
            p("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "90s"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(90)))
        );
        for (mode, retention) in [
            ("revision", "1h"),
            ("revision", "-3"),
            ("periodic", "1d"),
            ("periodic", "abc"),
            ("periodic", "0s"),
            ("hourly", "5"),
        ] {
            let e = p(mode, retention).expect_err(retention);
            assert!(e.contains("--auto-compaction"), "{e}");
        }
    }
}
