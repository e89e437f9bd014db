//! etcd's corruption checks (`etcdserver/corrupt.go`), over the peer port's `HashKV`:
//!
//! - Periodic (`--experimental-corrupt-check-time`): the leader hashes its key-value history
//!   at its current revision ([`kv::Store::hash_kv`]), asks every peer for its hash at that
//!   revision, confirms with a linearizable read that it still leads and hashes again (a
//!   hash that changed without the revision changing is this member's own corruption). A
//!   peer ahead of the leader in revision or compacted revision, or one with the same
//!   compacted revision and another hash, is a mismatch. Unlike etcd 3.4 (which cannot tell
//!   which member is wrong and raises the alarm for member 0), the hashes of the members at
//!   the leader's compacted revision are counted: the members outside a hash that a majority
//!   of the voters share are the corrupt ones, and a CORRUPT alarm is raised for each through
//!   the log (for member 0 when no hash has a majority). Peers that have not reached the
//!   revision, or compacted past it, are skipped, as in etcd.
//! - Initial (`--experimental-initial-corrupt-check`): before a member starts its node and
//!   serves, it compares its own hash with each reachable peer's at its own revision; a
//!   different hash at the same compacted revision makes it refuse to start.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::peer::Peers;

/// How long one peer has to answer a hash request (etcd waits its request timeout, 5 s plus
/// two election timeouts).
const PEER_HASH_TIMEOUT: Duration = Duration::from_secs(5);

/// One peer's answer to a hash request at a revision.
#[derive(Debug)]
struct PeerHash {
    id: u64,
    answer: Result<kv::KvHash, Status>,
}

/// Asks every peer of `peers` for its hash at `revision`, one after the other (bounded by
/// the number of members, each by [`PEER_HASH_TIMEOUT`]).
async fn peer_hashes(peers: &Peers, revision: i64) -> Vec<PeerHash> {
    let mut out = Vec::new();
    for id in peers.ids() {
        let Some(mut client) = peers.client(id) else {
            continue;
        };
        let mut req = tonic::Request::new(epb::HashKvRequest { revision });
        req.set_timeout(PEER_HASH_TIMEOUT);
        let answer = match tokio::time::timeout(PEER_HASH_TIMEOUT, client.hash_kv(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Ok(kv::KvHash {
                    hash: r.hash,
                    revision: r.header.map_or(0, |h| h.revision),
                    compact_revision: r.compact_revision,
                })
            }
            Ok(Err(s)) => Err(s),
            Err(_) => Err(Status::deadline_exceeded("no answer in time")),
        };
        if let Err(e) = &answer {
            tracing::warn!(
                remote_peer_id = %format_args!("{:x}", id.get()),
                requested_revision = revision,
                error = %e.message(),
                "failed hash kv request"
            );
        }
        out.push(PeerHash {
            id: id.get(),
            answer,
        });
    }
    out
}

/// etcd's `CheckInitialHashKV`: compares this member's state machine with its peers' before
/// it starts; `Err` names the mismatch. Peers that cannot answer are skipped (logged).
pub async fn initial_check(kv: &kv::Store, me: u64, peers: &Peers) -> Result<(), String> {
    tracing::info!(local_member_id = %format_args!("{me:x}"), "starting initial corruption check");
    let mine = kv
        .hash_kv(0)
        .map_err(|e| format!("{me:x} failed to fetch hash ({e})"))?;
    let mut mismatches = 0;
    for p in peer_hashes(peers, mine.revision).await {
        let Ok(theirs) = p.answer else { continue };
        if theirs.hash == mine.hash {
            continue;
        }
        if theirs.compact_revision == mine.compact_revision {
            tracing::warn!(
                local_member_id = %format_args!("{me:x}"),
                local_member_revision = mine.revision,
                local_member_compact_revision = mine.compact_revision,
                local_member_hash = mine.hash,
                remote_peer_id = %format_args!("{:x}", p.id),
                remote_peer_revision = theirs.revision,
                remote_peer_compact_revision = theirs.compact_revision,
                remote_peer_hash = theirs.hash,
                "found different hash values from remote peer"
            );
            mismatches += 1;
        } else {
            tracing::warn!(
                local_member_id = %format_args!("{me:x}"),
                remote_peer_id = %format_args!("{:x}", p.id),
                local_member_compact_revision = mine.compact_revision,
                remote_peer_compact_revision = theirs.compact_revision,
                "found different compact revision values from remote peer"
            );
        }
    }
    if mismatches > 0 {
        return Err(format!("{me:x} found data inconsistency with peers"));
    }
    tracing::info!(local_member_id = %format_args!("{me:x}"), "initial corruption checking passed; no corruption");
    Ok(())
}

/// The members a periodic check finds corrupt, from the leader's hash before (`first`) and
/// after (`second`) confirming it leads, and the peers' answers at `first.revision`.
/// `voters` are the configuration's voters: a hash that more than half of them share is the
/// cluster's (learners' hashes count for no majority: two groups could otherwise both
/// qualify). `Some(0)` in the answer: a mismatch whose culprit is unknown.
fn find_corrupt(
    leader: u64,
    first: kv::KvHash,
    second: kv::KvHash,
    peers: &[(u64, kv::KvHash)],
    voters: &std::collections::BTreeSet<u64>,
) -> Vec<u64> {
    let mut corrupt = Vec::new();
    if second.hash != first.hash
        && second.revision == first.revision
        && second.compact_revision == first.compact_revision
    {
        tracing::warn!(
            revision_1 = first.revision,
            hash_1 = first.hash,
            revision_2 = second.revision,
            hash_2 = second.hash,
            "found hash mismatch"
        );
        corrupt.push(leader);
    }
    // Hashes at the leader's compacted revision, by hash (the leader's own included).
    let mut by_hash: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    by_hash.entry(first.hash).or_default().push(leader);
    for &(id, h) in peers {
        if h.revision > second.revision {
            tracing::warn!(
                leader_revision = second.revision,
                follower_revision = h.revision,
                follower_peer_id = %format_args!("{id:x}"),
                "revision from follower must be less than or equal to leader's"
            );
            corrupt.push(id);
        } else if h.compact_revision > second.compact_revision {
            tracing::warn!(
                leader_compact_revision = second.compact_revision,
                follower_compact_revision = h.compact_revision,
                follower_peer_id = %format_args!("{id:x}"),
                "compact revision from follower must be less than or equal to leader's"
            );
            corrupt.push(id);
        } else if h.compact_revision == first.compact_revision {
            by_hash.entry(h.hash).or_default().push(id);
        }
    }
    if by_hash.len() > 1 {
        let majority = by_hash.iter().find(|(_, ids)| {
            ids.iter().filter(|id| voters.contains(id)).count() * 2 > voters.len()
        });
        for (&hash, ids) in &by_hash {
            if majority.is_some_and(|(&m, _)| m == hash) {
                continue;
            }
            for &id in ids {
                tracing::warn!(
                    revision = first.revision,
                    compact_revision = first.compact_revision,
                    member_id = %format_args!("{id:x}"),
                    member_hash = hash,
                    majority_hash = ?majority.map(|(h, _)| *h),
                    "same compact revision then hashes must match"
                );
            }
            if majority.is_some() {
                corrupt.extend(ids);
            } else {
                corrupt.push(0);
            }
        }
    }
    corrupt.sort_unstable();
    corrupt.dedup();
    corrupt
}

impl Api {
    /// Starts the periodic corruption check (none when `every` is zero). The caller aborts
    /// it when the server stops.
    pub fn start_corruption_check(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if every.is_zero() {
            return None;
        }
        tracing::info!(interval = ?every, "enabled corruption checking");
        let api = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate: wait one interval first
            loop {
                ticker.tick().await;
                let me = api.inner.member_id;
                if api.inner.node.status().leader.map(|l| l.get()) != Some(me) {
                    continue;
                }
                if let Err(e) = api.check_hash_kv().await {
                    tracing::warn!(error = %e.message(), "failed to check hash KV");
                }
            }
        }))
    }

    /// One round of the periodic check (etcd's `checkHashKV`).
    async fn check_hash_kv(&self) -> Result<(), Status> {
        let first = self.read_kv(|kv| kv.hash_kv(0)).await?;
        let answers = peer_hashes(&self.inner.members.peers, first.revision).await;
        self.linearizable_read().await?;
        let second = self.read_kv(|kv| kv.hash_kv(0)).await?;
        let peers: Vec<(u64, kv::KvHash)> = answers
            .into_iter()
            .filter_map(|p| p.answer.ok().map(|h| (p.id, h)))
            .collect();
        let voters = self
            .inner
            .node
            .membership()
            .voters
            .iter()
            .map(|v| v.get())
            .collect();
        let corrupt = find_corrupt(self.inner.member_id, first, second, &peers, &voters);
        tracing::info!(
            number_of_peers_checked = peers.len(),
            "finished peer corruption check"
        );
        for member_id in corrupt {
            let alarm = kv::AlarmMember {
                member_id,
                alarm: kv::AlarmType::Corrupt,
            };
            if self.inner.node.kv.alarms().contains(&alarm) {
                continue;
            }
            self.propose_alarm(kv::AlarmAction::Activate, alarm, None)
                .await?;
        }
        Ok(())
    }
}

/// Parses a duration as Go's `time.ParseDuration` writes them ("0", "500ms", "5s", "1m30s",
/// "1.5h"); units ns, us (or µs), ms, s, m, h.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (such as \"5s\", \"1m30s\" or \"0\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hash: u32, revision: i64, compact_revision: i64) -> kv::KvHash {
        kv::KvHash {
            hash,
            revision,
            compact_revision,
        }
    }

    #[test]
    fn the_members_outside_the_majority_hash_are_corrupt() {
        let three: std::collections::BTreeSet<u64> = [1, 2, 3].into();
        let one: std::collections::BTreeSet<u64> = [1].into();
        let me = h(7, 10, 2);
        // One follower differs: it is named.
        let peers = [(2, h(7, 10, 2)), (3, h(9, 10, 2))];
        assert_eq!(find_corrupt(1, me, me, &peers, &three), vec![3]);
        // The leader differs from both followers: the leader is named.
        let peers = [(2, h(9, 10, 2)), (3, h(9, 12, 2))];
        assert_eq!(find_corrupt(1, me, h(7, 12, 2), &peers, &three), vec![1]);
        // No majority (one follower answered): the cluster (0).
        let peers = [(3, h(9, 10, 2))];
        assert_eq!(find_corrupt(1, me, me, &peers, &three), vec![0]);
        // Another compacted revision is skipped; all agree otherwise.
        let peers = [(2, h(7, 10, 2)), (3, h(5, 10, 1))];
        assert_eq!(find_corrupt(1, me, me, &peers, &three), Vec::<u64>::new());
        // Ahead of the leader in revision or compaction: named.
        let peers = [(2, h(7, 11, 2)), (3, h(7, 10, 3))];
        assert_eq!(find_corrupt(1, me, me, &peers, &three), vec![2, 3]);
        // The leader's own hash changed at the same revision.
        assert_eq!(find_corrupt(1, me, h(8, 10, 2), &[], &one), vec![1]);
        // A learner (4) sharing the leader's hash makes no majority of voters: the two
        // voters that agree with each other are the cluster's hash, the others are named.
        let peers = [(2, h(9, 10, 2)), (3, h(9, 10, 2)), (4, h(7, 10, 2))];
        assert_eq!(find_corrupt(1, me, me, &peers, &three), vec![1, 4]);
        // Voters split with no majority among them: the cluster (0), whatever learners say.
        let peers = [(2, h(9, 10, 2)), (4, h(7, 10, 2))];
        let two: std::collections::BTreeSet<u64> = [1, 2].into();
        assert_eq!(find_corrupt(1, me, me, &peers, &two), vec![0]);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "s", "5x", "-1s", "1e3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }
}
