//! The 6.5840 tester's helpers (`config.go`), ported to virtual time: `checkOneLeader`,
//! `checkTerms`, `checkNoLeader`, `nCommitted`, `one`, `wait`, `crash1` and `start1`.
//! Commands are 6.5840's integers, tagged so the KV state machine ignores them.

use std::collections::BTreeMap;

use raft::{Role, Term};

use crate::cluster::{Cluster, ClusterConfig};
use crate::kv::TAG_RAW;

/// 6.5840's `RaftElectionTimeout`: 1000 ms.
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

/// An integer command.
pub fn cmd(v: u64) -> Vec<u8> {
    let mut out = vec![TAG_RAW];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// The integer of an integer command; `None` for no-ops and other payloads.
pub fn cmd_value(data: &[u8]) -> Option<u64> {
    if data.len() == 9 && data[0] == TAG_RAW {
        Some(u64::from_le_bytes(data[1..9].try_into().ok()?))
    } else {
        None
    }
}

/// A random integer command value below 2^62 (Go's `rand.Int()`).
pub fn rand_value(c: &mut Cluster) -> u64 {
    c.rng.next_u64() >> 2
}

/// Index (0-based, as in Go) arithmetic on 1-based node ids: `(node - 1 + k) % n + 1`.
pub fn plus(c: &Cluster, node: u64, k: u64) -> u64 {
    (node - 1 + k) % c.n() as u64 + 1
}

/// `checkOneLeader`: within ten rounds of 450..550 ms, exactly one leader in the newest term
/// among connected servers, and never two in one term.
pub fn check_one_leader(c: &mut Cluster) -> u64 {
    for _ in 0..10 {
        let ms = 450 + c.rng.below(100);
        c.run_for(ms);
        let mut leaders: BTreeMap<Term, Vec<u64>> = BTreeMap::new();
        for i in c.ids() {
            if !c.up(i) {
                continue;
            }
            let s = c.status(i).expect("up");
            if s.role == Role::Leader {
                leaders.entry(s.term).or_default().push(i);
            }
        }
        for (term, ls) in &leaders {
            if ls.len() > 1 {
                c.fail(&format!(
                    "term {term} has {} (>1) leaders: {ls:?}",
                    ls.len()
                ));
            }
        }
        if let Some((_, ls)) = leaders.iter().next_back() {
            return ls[0];
        }
    }
    c.fail("expected one leader, got none")
}

/// `checkTerms`: every connected server is in the same term.
pub fn check_terms(c: &mut Cluster) -> Term {
    let mut term = None;
    for i in c.ids() {
        if !c.up(i) {
            continue;
        }
        let t = c.status(i).expect("up").term;
        match term {
            None => term = Some(t),
            Some(t0) if t0 != t => c.fail("servers disagree on term"),
            Some(_) => {}
        }
    }
    term.unwrap_or_default()
}

/// `checkNoLeader`: no connected server thinks it is leader.
pub fn check_no_leader(c: &mut Cluster) {
    for i in c.ids() {
        if c.up(i) && c.status(i).expect("up").role == Role::Leader {
            c.fail(&format!(
                "expected no leader among connected servers, but {i} claims to be leader"
            ));
        }
    }
}

/// `nCommitted`: how many servers applied `index`, and the command (all must agree).
pub fn n_committed(c: &Cluster, index: u64) -> (usize, Option<Vec<u8>>) {
    let mut count = 0;
    let mut cmd: Option<Vec<u8>> = None;
    for i in c.ids() {
        if let Some(v) = c.applied_at(i, index) {
            if let Some(prev) = &cmd {
                if prev != v {
                    c.fail(&format!(
                        "committed values do not match: index {index}, {prev:?}, {v:?}"
                    ));
                }
            }
            count += 1;
            cmd = Some(v.clone());
        }
    }
    (count, cmd)
}

/// `one`: submits `command` to a leader and waits for `expected` servers to apply it; with
/// `retry`, re-submits after a leader failure. Gives up after 10 s.
pub fn one(c: &mut Cluster, command: Vec<u8>, expected: usize, retry: bool) -> u64 {
    let t0 = c.now_ms();
    let n = c.n() as u64;
    let mut starts = 0u64;
    while c.now_ms() - t0 < 10_000 {
        let mut index = None;
        for _ in 0..n {
            starts = (starts + 1) % n;
            let node = starts + 1;
            if c.up(node) {
                if let Some(id) = c.propose(node, command.clone()) {
                    index = Some(id.index.0);
                    break;
                }
            }
        }
        if let Some(index) = index {
            let t1 = c.now_ms();
            while c.now_ms() - t1 < 2_000 {
                let (nd, cmd1) = n_committed(c, index);
                if nd > 0 && nd >= expected && cmd1.as_ref() == Some(&command) {
                    return index;
                }
                c.run_for(20);
            }
            if !retry {
                c.fail(&format!(
                    "one({:?}) failed to reach agreement",
                    cmd_value(&command)
                ));
            }
        } else {
            c.run_for(50);
        }
    }
    c.fail(&format!(
        "one({:?}) failed to reach agreement",
        cmd_value(&command)
    ))
}

/// `wait`: waits for `n` servers to apply `index`; `None` if some server moved past
/// `start_term` (the leader changed, so the index may never commit).
pub fn wait(c: &mut Cluster, index: u64, n: usize, start_term: Option<Term>) -> Option<Vec<u8>> {
    let mut to = 10;
    for _ in 0..30 {
        let (nd, _) = n_committed(c, index);
        if nd >= n {
            break;
        }
        c.run_for(to);
        if to < 1000 {
            to *= 2;
        }
        if let Some(st) = start_term {
            for i in c.ids() {
                if c.status(i).is_some_and(|s| s.term > st) {
                    return None;
                }
            }
        }
    }
    let (nd, cmd) = n_committed(c, index);
    if nd < n {
        c.fail(&format!("only {nd} decided for index {index}; wanted {n}"));
    }
    cmd
}

/// `crash1`: disconnect and crash.
pub fn crash1(c: &mut Cluster, node: u64) {
    c.disconnect(node);
    c.crash(node);
}

/// `start1`: (re)start from the durable state; connectivity is unchanged.
pub fn start1(c: &mut Cluster, node: u64) {
    c.crash(node);
    c.start(node);
}

/// A 6.5840 cluster: `servers` nodes, reliable or unreliable network.
pub(crate) fn lab(seed: u64, name: &str, servers: usize, unreliable: bool) -> Cluster {
    Cluster::new(seed, name, ClusterConfig::lab(servers, unreliable))
}
