//! Asking the peers whether this member was removed, when it hears from none of them.
//!
//! A member learns of its removal by applying it, or when a peer refuses its messages (see
//! [`crate::replica::Removal`]). A follower that was down while it was removed does neither
//! if it sends nothing: a learner never campaigns, and a follower whose leader has gone quiet
//! towards it waits for heartbeats that never come. etcd's members find out because their
//! stream connections to peers are refused; here a member that has heard from no peer for
//! [`QUIET_ELECTIONS`] election timeouts asks each peer, once per election timeout, and stops
//! if one says it was removed. A member that is merely cut off asks into the void, at no cost
//! to anyone.

use std::sync::Arc;
use std::time::Duration;

use raft::NodeId;
use tokio::time::Instant;

use super::outbound::refused_as_removed;
use super::Peers;
use crate::pb::skiff::raft::v1 as pb;
use crate::replica::Removal;

/// Election timeouts without a message from any peer before this member asks.
pub const QUIET_ELECTIONS: u32 = 3;

/// Starts asking (see the module docs) on the current runtime; the task ends once this member
/// knows it was removed.
pub fn start(
    peers: Arc<Peers>,
    removal: Arc<Removal>,
    me: NodeId,
    cluster_id: u64,
    election: Duration,
) -> tokio::task::JoinHandle<()> {
    let quiet_for = election * QUIET_ELECTIONS;
    let started = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(election);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if removal.self_removed() {
                return;
            }
            let ids = peers.ids();
            let heard_lately = ids.iter().any(|id| {
                removal
                    .last_heard(id.get())
                    .is_some_and(|t| t.elapsed() < quiet_for)
            });
            if heard_lately || started.elapsed() < quiet_for {
                continue;
            }
            for id in ids {
                let Some(mut client) = peers.client(id) else {
                    continue;
                };
                let ask = client.probe(pb::ProbeRequest {
                    cluster_id,
                    from: me.get(),
                });
                match tokio::time::timeout(election, ask).await {
                    Ok(Err(status)) if refused_as_removed(&status) => {
                        tracing::error!(
                            peer = format!("{:x}", id.get()),
                            "a peer says this member was removed from the cluster"
                        );
                        removal.refused_by_peer();
                        return;
                    }
                    // Answered (still a member: just cut off from the leader), unreachable,
                    // or an older peer without the call: ask again later.
                    _ => {}
                }
            }
        }
    })
}

/// How often each peer's round-trip time is measured (etcd's prober: every few seconds).
pub const RTT_EVERY: Duration = Duration::from_secs(5);

/// Measures the round trip to each peer every [`RTT_EVERY`] with the same cheap `Probe` call,
/// into `etcd_network_peer_round_trip_time_seconds{To}`. A peer that does not answer within
/// an election timeout gets no observation (etcd's prober counts only answers too).
pub fn start_rtt(
    peers: Arc<Peers>,
    metrics: Arc<crate::metrics::Metrics>,
    me: NodeId,
    cluster_id: u64,
    election: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RTT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for id in peers.ids() {
                let Some(mut client) = peers.client(id) else {
                    continue;
                };
                let began = Instant::now();
                let ask = client.probe(pb::ProbeRequest {
                    cluster_id,
                    from: me.get(),
                });
                if let Ok(Ok(_)) = tokio::time::timeout(election, ask).await {
                    metrics
                        .peer_rtt
                        .get_or_create(&crate::metrics::peer_label("To", id.get()))
                        .observe(crate::metrics::seconds(began.elapsed()));
                }
            }
        }
    })
}
