//! The MIT 6.5840 Raft lab tests, part 3C (persistence) (`raft/test_test.go`), same structure and
//! constants, in virtual time. Differences forced by the core are noted where they occur; the
//! main one: a new leader appends a no-op entry (paper §8), so log indexes are checked relative
//! to the previous command rather than as absolute numbers.

use super::lab::*;
use crate::cluster::{Cluster, ClusterConfig};

/// TestPersist13C: basic persistence.
pub fn persist1(seed: u64) -> Cluster {
    let mut c = lab(seed, "Persist1", 3, false);
    let servers = c.n();
    one(&mut c, cmd(11), servers, true);
    for i in c.ids() {
        start1(&mut c, i);
    }
    for i in c.ids() {
        c.disconnect(i);
        c.connect(i);
    }
    one(&mut c, cmd(12), servers, true);
    let leader1 = check_one_leader(&mut c);
    c.disconnect(leader1);
    start1(&mut c, leader1);
    c.connect(leader1);
    one(&mut c, cmd(13), servers, true);
    let leader2 = check_one_leader(&mut c);
    c.disconnect(leader2);
    let index = one(&mut c, cmd(14), servers - 1, true);
    start1(&mut c, leader2);
    c.connect(leader2);
    wait(&mut c, index, servers, None);
    let l = check_one_leader(&mut c);
    let i3 = plus(&c, l, 1);
    c.disconnect(i3);
    one(&mut c, cmd(15), servers - 1, true);
    start1(&mut c, i3);
    c.connect(i3);
    one(&mut c, cmd(16), servers, true);
    c
}

/// TestPersist23C: more persistence.
pub fn persist2(seed: u64) -> Cluster {
    let mut c = lab(seed, "Persist2", 5, false);
    let servers = c.n();
    let mut index = 1u64;
    for _ in 0..5 {
        one(&mut c, cmd(10 + index), servers, true);
        index += 1;
        let leader1 = check_one_leader(&mut c);
        c.disconnect(plus(&c, leader1, 1));
        c.disconnect(plus(&c, leader1, 2));
        one(&mut c, cmd(10 + index), servers - 2, true);
        index += 1;
        c.disconnect(leader1);
        c.disconnect(plus(&c, leader1, 3));
        c.disconnect(plus(&c, leader1, 4));
        let t = plus(&c, leader1, 1);
        start1(&mut c, t);
        let t = plus(&c, leader1, 2);
        start1(&mut c, t);
        c.connect(plus(&c, leader1, 1));
        c.connect(plus(&c, leader1, 2));
        c.run_for(ELECTION_TIMEOUT_MS);
        let t = plus(&c, leader1, 3);
        start1(&mut c, t);
        c.connect(plus(&c, leader1, 3));
        one(&mut c, cmd(10 + index), servers - 2, true);
        index += 1;
        c.connect(plus(&c, leader1, 4));
        c.connect(leader1);
    }
    one(&mut c, cmd(1000), servers, true);
    c
}

/// TestPersist33C: partitioned leader and one follower crash, leader restarts.
pub fn persist3(seed: u64) -> Cluster {
    let mut c = lab(seed, "Persist3", 3, false);
    let servers = c.n();
    one(&mut c, cmd(101), 3, true);
    let leader = check_one_leader(&mut c);
    c.disconnect(plus(&c, leader, 2));
    one(&mut c, cmd(102), 2, true);
    crash1(&mut c, leader);
    let t = plus(&c, leader, 1);
    crash1(&mut c, t);
    c.connect(plus(&c, leader, 2));
    start1(&mut c, leader);
    c.connect(leader);
    one(&mut c, cmd(103), 2, true);
    let t = plus(&c, leader, 1);
    start1(&mut c, t);
    c.connect(plus(&c, leader, 1));
    one(&mut c, cmd(104), servers, true);
    c
}

/// TestFigure83C: leaders crash right after proposing, 1000 times; the paper's Figure 8
/// schedule arises and an old-term entry must not be committed by counting replicas.
pub fn figure8(seed: u64) -> Cluster {
    figure8_with(lab(seed, "Figure8", 5, false))
}

/// Figure 8 with appends of one entry each (`msg_bytes_max` just above one command), so a new
/// leader's no-op does not travel with the older entries before it: the schedule of the
/// paper's Figure 8 (an old-term entry replicated to a majority before anything of the new
/// term) then arises, and counting replicas of an old-term entry would commit it.
pub fn figure8_split(seed: u64) -> Cluster {
    let mut cfg = ClusterConfig::lab(5, seed % 2 == 1);
    cfg.msg_bytes_max = 40;
    cfg.inflight_msgs_max = 1;
    figure8_with(Cluster::new(seed, "Figure8Split", cfg))
}

fn figure8_with(mut c: Cluster) -> Cluster {
    let servers = c.n();
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), 1, true);
    let mut nup = servers;
    for _ in 0..1000 {
        let mut leader = None;
        for i in c.ids() {
            let v = rand_value(&mut c);
            if c.alive(i) && c.propose(i, cmd(v)).is_some() {
                leader = Some(i);
            }
        }
        let ms = if c.rng.below(1000) < 100 {
            c.rng.below(ELECTION_TIMEOUT_MS / 2)
        } else {
            c.rng.below(13)
        };
        c.run_for(ms);
        if let Some(l) = leader {
            crash1(&mut c, l);
            nup -= 1;
        }
        if nup < 3 {
            let s = c.rng.below(servers as u64) + 1;
            if !c.alive(s) {
                start1(&mut c, s);
                c.connect(s);
                nup += 1;
            }
        }
    }
    for i in c.ids() {
        if !c.alive(i) {
            start1(&mut c, i);
            c.connect(i);
        }
    }
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    c
}

/// TestUnreliableAgree3C. Go runs four `one()` calls in goroutines beside a fifth; here the
/// five are driven together, each with `one()`'s 10 s budget.
pub fn unreliable_agree(seed: u64) -> Cluster {
    let mut c = lab(seed, "UnreliableAgree", 5, true);
    let servers = c.n();
    for iters in 1..50u64 {
        let mut cmds: Vec<Vec<u8>> = (0..4).map(|j| cmd(100 * iters + j)).collect();
        cmds.push(cmd(iters));
        one_concurrent(&mut c, cmds, 1);
    }
    c.net.config = crate::net::NetConfig::reliable();
    one(&mut c, cmd(100), servers, true);
    c
}

/// Several `one(cmd, expected, true)` calls running at the same time.
pub fn one_concurrent(c: &mut Cluster, cmds: Vec<Vec<u8>>, expected: usize) {
    struct Attempt {
        command: Vec<u8>,
        index: Option<u64>,
        since: u64,
        done: bool,
    }
    let t0 = c.now_ms();
    let n = c.n() as u64;
    let mut attempts: Vec<Attempt> = cmds
        .into_iter()
        .map(|command| Attempt {
            command,
            index: None,
            since: t0,
            done: false,
        })
        .collect();
    let mut starts = 0u64;
    while attempts.iter().any(|a| !a.done) {
        if c.now_ms() - t0 >= 10_000 {
            c.fail("one() failed to reach agreement (concurrent)");
        }
        for a in attempts.iter_mut().filter(|a| !a.done) {
            if let Some(index) = a.index {
                let (nd, got) = n_committed(c, index);
                if nd > 0 && nd >= expected && got.as_ref() == Some(&a.command) {
                    a.done = true;
                    continue;
                }
                if c.now_ms() - a.since < 2_000 {
                    continue;
                }
                a.index = None;
            }
            for _ in 0..n {
                starts = (starts + 1) % n;
                let node = starts + 1;
                if c.up(node) {
                    if let Some(id) = c.propose(node, a.command.clone()) {
                        a.index = Some(id.index.0);
                        a.since = c.now_ms();
                        break;
                    }
                }
            }
        }
        c.run_for(20);
    }
}

/// TestFigure8Unreliable3C: Figure 8 on an unreliable network, long reordering from
/// iteration 200 on.
pub fn figure8_unreliable(seed: u64) -> Cluster {
    let mut c = lab(seed, "Figure8Unreliable", 5, true);
    let servers = c.n();
    let v = c.rng.below(10_000);
    one(&mut c, cmd(v), 1, true);
    let mut nup = servers;
    for iters in 0..1000 {
        if iters == 200 {
            c.net.config.long_reordering = true;
        }
        let mut leader = None;
        for i in c.ids() {
            let v = c.rng.below(10_000);
            if c.propose(i, cmd(v)).is_some() && c.up(i) {
                leader = Some(i);
            }
        }
        let ms = if c.rng.below(1000) < 100 {
            c.rng.below(ELECTION_TIMEOUT_MS / 2)
        } else {
            c.rng.below(13)
        };
        c.run_for(ms);
        if let Some(l) = leader {
            if c.rng.below(1000) < ELECTION_TIMEOUT_MS / 2 {
                c.disconnect(l);
                nup -= 1;
            }
        }
        if nup < 3 {
            let s = c.rng.below(servers as u64) + 1;
            if !c.net.connected(s) {
                c.connect(s);
                nup += 1;
            }
        }
    }
    for i in c.ids() {
        c.connect(i);
    }
    let v = c.rng.below(10_000);
    one(&mut c, cmd(v), servers, true);
    c
}

/// TestReliableChurn3C.
pub fn reliable_churn(seed: u64) -> Cluster {
    churn(seed, "ReliableChurn", false)
}

/// TestUnreliableChurn3C.
pub fn unreliable_churn(seed: u64) -> Cluster {
    churn(seed, "UnreliableChurn", true)
}

/// 6.5840's `internalChurn`: three clients propose to everyone while servers are randomly
/// disconnected, crashed and restarted; every value a client saw committed must be in the
/// final log.
fn churn(seed: u64, name: &str, unreliable: bool) -> Cluster {
    #[derive(Clone)]
    enum Cli {
        Idle {
            at: u64,
        },
        Waiting {
            x: u64,
            index: u64,
            step: usize,
            at: u64,
        },
    }
    const BACKOFF_MS: [u64; 5] = [10, 20, 50, 100, 200];
    let mut c = lab(seed, name, 5, unreliable);
    let servers = c.n() as u64;
    let ncli = 3u64;
    let mut clients: Vec<Cli> = (0..ncli).map(|_| Cli::Idle { at: 0 }).collect();
    let mut seen: Vec<u64> = Vec::new();
    let drive = |c: &mut Cluster, clients: &mut Vec<Cli>, seen: &mut Vec<u64>, ms: u64| {
        let until = c.now_ms() + ms;
        while c.now_ms() < until {
            let now = c.now_ms();
            for (me, cl) in clients.iter_mut().enumerate() {
                match cl.clone() {
                    Cli::Idle { at } if at <= now => {
                        let x = c.rng.next_u64() >> 2;
                        let mut index = None;
                        for i in 1..=servers {
                            if c.alive(i) {
                                if let Some(id) = c.propose(i, cmd(x)) {
                                    index = Some(id.index.0);
                                }
                            }
                        }
                        *cl = match index {
                            Some(index) => Cli::Waiting {
                                x,
                                index,
                                step: 0,
                                at: now,
                            },
                            None => Cli::Idle {
                                at: now + 79 + me as u64 * 17,
                            },
                        };
                    }
                    Cli::Waiting { x, index, step, at } if at <= now => {
                        let (nd, got) = n_committed(c, index);
                        if nd > 0 {
                            if got.as_deref().and_then(cmd_value) == Some(x) {
                                seen.push(x);
                            }
                            *cl = Cli::Idle { at: now };
                        } else if step == BACKOFF_MS.len() {
                            *cl = Cli::Idle { at: now };
                        } else {
                            *cl = Cli::Waiting {
                                x,
                                index,
                                step: step + 1,
                                at: now + BACKOFF_MS[step],
                            };
                        }
                    }
                    _ => {}
                }
            }
            c.run_for(5);
        }
    };
    for _ in 0..20 {
        if c.rng.below(1000) < 200 {
            let i = c.rng.below(servers) + 1;
            c.disconnect(i);
        }
        if c.rng.below(1000) < 500 {
            let i = c.rng.below(servers) + 1;
            if !c.alive(i) {
                start1(&mut c, i);
            }
            c.connect(i);
        }
        if c.rng.below(1000) < 200 {
            let i = c.rng.below(servers) + 1;
            if c.alive(i) {
                crash1(&mut c, i);
            }
        }
        drive(
            &mut c,
            &mut clients,
            &mut seen,
            ELECTION_TIMEOUT_MS * 7 / 10,
        );
    }
    drive(&mut c, &mut clients, &mut seen, ELECTION_TIMEOUT_MS);
    c.net.config = crate::net::NetConfig::reliable();
    for i in c.ids() {
        if !c.alive(i) {
            start1(&mut c, i);
        }
        c.connect(i);
    }
    // Clients stop; a client waiting on an index finishes its current check loop.
    for cl in clients.iter_mut() {
        if let Cli::Waiting { x, index, .. } = cl.clone() {
            let (nd, got) = n_committed(&c, index);
            if nd > 0 && got.as_deref().and_then(cmd_value) == Some(x) {
                seen.push(x);
            }
        }
    }
    c.run_for(ELECTION_TIMEOUT_MS);
    let v = rand_value(&mut c);
    let last = one(&mut c, cmd(v), servers as usize, true);
    let mut really = Vec::new();
    for index in 1..=last {
        if let Some(v) = wait(&mut c, index, servers as usize, None) {
            really.extend(cmd_value(&v));
        }
    }
    for v1 in seen {
        if !really.contains(&v1) {
            c.fail(&format!(
                "didn't find a value ({v1}) a client saw committed"
            ));
        }
    }
    c
}
