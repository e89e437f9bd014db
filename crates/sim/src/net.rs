//! The simulated network: decides, for every message, whether it arrives, when, and how many
//! times. Connectivity follows labrpc: a node can be disconnected (all its links down), and
//! single directed links can be cut (one-way partitions). A link must be up both when a message
//! is sent and when it would arrive.

use std::collections::{BTreeMap, BTreeSet};

use raft::{Message, MessageBody};

use crate::rng::Rng;

/// Delivery behaviour of the whole network. Times are virtual milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Smallest one-way delay.
    pub delay_ms_min: u64,
    /// Largest one-way delay (reordering comes from the spread).
    pub delay_ms_max: u64,
    /// Requests dropped, per mille (labrpc "unreliable": 100).
    pub request_loss_per_mille: u64,
    /// Replies dropped after the handler ran, per mille (labrpc "unreliable": 100).
    pub reply_loss_per_mille: u64,
    /// Messages delivered twice, per mille.
    pub duplicate_per_mille: u64,
    /// labrpc "long reordering": two thirds of replies are delayed 200..=2200 ms.
    pub long_reordering: bool,
}

impl NetConfig {
    /// labrpc's reliable network: no loss, a fixed 1 ms delay (so no reordering).
    pub fn reliable() -> NetConfig {
        NetConfig {
            delay_ms_min: 1,
            delay_ms_max: 1,
            request_loss_per_mille: 0,
            reply_loss_per_mille: 0,
            duplicate_per_mille: 0,
            long_reordering: false,
        }
    }

    /// labrpc's unreliable network: 0..=26 ms delay, 10% of requests and 10% of replies lost.
    pub fn unreliable() -> NetConfig {
        NetConfig {
            delay_ms_min: 0,
            delay_ms_max: 26,
            request_loss_per_mille: 100,
            reply_loss_per_mille: 100,
            duplicate_per_mille: 0,
            long_reordering: false,
        }
    }
}

/// Whether a message answers another one (labrpc's "reply") rather than asking something.
pub fn is_reply(body: &MessageBody) -> bool {
    matches!(
        body,
        MessageBody::PreVoteResp { .. }
            | MessageBody::VoteResp { .. }
            | MessageBody::AppendResp { .. }
            | MessageBody::HeartbeatResp { .. }
            | MessageBody::ReadIndexResp { .. }
    )
}

/// Network state: configuration, connectivity and per-link extra loss.
#[derive(Clone, Debug)]
pub struct Network {
    /// Delivery behaviour.
    pub config: NetConfig,
    /// Nodes currently disconnected from everyone (labrpc `disconnect`).
    disconnected: BTreeSet<u64>,
    /// Directed links `(from, to)` that are cut.
    cut: BTreeSet<(u64, u64)>,
    /// Extra loss on single directed links, per mille (swarm testing).
    link_loss_per_mille: BTreeMap<(u64, u64), u64>,
    /// Extra delay for one kind of message (`MessageBody::name`) on one directed link, ms: a
    /// message held back on a slow path while the rest of the traffic flows, such as a
    /// TimeoutNow that arrives after its transfer was aborted.
    kind_delay_ms: BTreeMap<(u64, u64, &'static str), u64>,
}

impl Network {
    /// A fully connected network.
    pub fn new(config: NetConfig) -> Network {
        Network {
            config,
            disconnected: BTreeSet::new(),
            cut: BTreeSet::new(),
            link_loss_per_mille: BTreeMap::new(),
            kind_delay_ms: BTreeMap::new(),
        }
    }

    /// Whether a message from `from` to `to` can travel now.
    pub fn link_up(&self, from: u64, to: u64) -> bool {
        !self.disconnected.contains(&from)
            && !self.disconnected.contains(&to)
            && !self.cut.contains(&(from, to))
    }

    /// Whether `node` is connected (labrpc sense).
    pub fn connected(&self, node: u64) -> bool {
        !self.disconnected.contains(&node)
    }

    /// Disconnects `node` from everyone.
    pub fn disconnect(&mut self, node: u64) {
        self.disconnected.insert(node);
    }

    /// Reconnects `node` (cut links stay cut).
    pub fn connect(&mut self, node: u64) {
        self.disconnected.remove(&node);
    }

    /// Cuts the directed link `from -> to` (a one-way partition).
    pub fn cut_link(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Splits the nodes into groups that only talk within themselves (symmetric partition).
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        self.cut.clear();
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi == hi {
                    continue;
                }
                for &a in g {
                    for &b in h {
                        self.cut.insert((a, b));
                    }
                }
            }
        }
    }

    /// Heals every cut and reconnects every node; per-link loss stays.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.disconnected.clear();
    }

    /// Sets extra loss on one directed link.
    pub fn set_link_loss(&mut self, from: u64, to: u64, per_mille: u64) {
        self.link_loss_per_mille.insert((from, to), per_mille);
    }

    /// Removes all extra per-link loss.
    pub fn clear_link_loss(&mut self) {
        self.link_loss_per_mille.clear();
    }

    /// Holds back messages of one `kind` (`MessageBody::name`) on one directed link by `ms`.
    pub fn set_kind_delay(&mut self, from: u64, to: u64, kind: &'static str, ms: u64) {
        self.kind_delay_ms.insert((from, to, kind), ms);
    }

    /// Removes every per-kind delay.
    pub fn clear_kind_delay(&mut self) {
        self.kind_delay_ms.clear();
    }

    /// The delays (in ms) after which copies of `msg` arrive: empty if it is lost.
    pub fn route(&self, rng: &mut Rng, msg: &Message) -> Vec<u64> {
        let (from, to) = (msg.from.get(), msg.to.get());
        if !self.link_up(from, to) {
            return Vec::new();
        }
        let reply = is_reply(&msg.body);
        let loss = if reply {
            self.config.reply_loss_per_mille
        } else {
            self.config.request_loss_per_mille
        };
        let extra = self
            .link_loss_per_mille
            .get(&(from, to))
            .copied()
            .unwrap_or(0);
        if rng.chance(loss) || rng.chance(extra) {
            return Vec::new();
        }
        let slow_ms = if self.kind_delay_ms.is_empty() {
            0
        } else {
            let key = (from, to, msg.body.name());
            self.kind_delay_ms.get(&key).copied().unwrap_or(0)
        };
        let copies = if rng.chance(self.config.duplicate_per_mille) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut d = rng.range(self.config.delay_ms_min, self.config.delay_ms_max);
                // labrpc: `if longreordering && rand.Intn(900) < 600`, then 200 + rand(1 + rand(2000)).
                if reply && self.config.long_reordering && rng.below(900) < 600 {
                    let spread = rng.below(2000);
                    d = 200 + rng.below(1 + spread);
                }
                d + slow_ms
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{NodeId, Term};

    fn msg(from: u64, to: u64) -> Message {
        Message {
            from: NodeId::new(from).unwrap(),
            to: NodeId::new(to).unwrap(),
            term: Term(1),
            body: MessageBody::Heartbeat {
                commit: raft::Index(0),
                read_round: 0,
            },
        }
    }

    #[test]
    fn partitions_and_one_way_cuts() {
        let mut net = Network::new(NetConfig::reliable());
        let mut rng = Rng::new(1);
        assert_eq!(net.route(&mut rng, &msg(1, 2)).len(), 1);
        net.partition(&[vec![1], vec![2, 3]]);
        assert!(net.route(&mut rng, &msg(1, 2)).is_empty());
        assert!(net.link_up(2, 3));
        net.heal();
        net.cut_link(1, 2);
        assert!(!net.link_up(1, 2));
        assert!(net.link_up(2, 1));
        net.heal();
        net.disconnect(3);
        assert!(!net.link_up(1, 3) && !net.link_up(3, 2));
    }

    #[test]
    fn unreliable_loses_about_ten_percent() {
        let net = Network::new(NetConfig::unreliable());
        let mut rng = Rng::new(3);
        let lost = (0..10_000)
            .filter(|_| net.route(&mut rng, &msg(1, 2)).is_empty())
            .count();
        assert!((800..1200).contains(&lost), "{lost}");
    }
}
