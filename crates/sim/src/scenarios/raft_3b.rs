//! The MIT 6.5840 Raft lab tests, part 3B (log) (`raft/test_test.go`), same structure and
//! constants, in virtual time. Differences forced by the core are noted where they occur; the
//! main one: a new leader appends a no-op entry (paper §8), so log indexes are checked relative
//! to the previous command rather than as absolute numbers.

use super::lab::*;
use crate::cluster::Cluster;
use crate::kv::TAG_RAW;

/// TestBasicAgree3B.
pub fn basic_agree(seed: u64) -> Cluster {
    let mut c = lab(seed, "BasicAgree", 3, false);
    let servers = c.n();
    let mut prev: Option<u64> = None;
    for index in 1..=3u64 {
        let next = prev.map_or(1, |p| p + 1);
        let (nd, _) = n_committed(&c, next);
        if nd > 0 && prev.is_some() {
            c.fail("some have committed before Start()");
        }
        let xindex = one(&mut c, cmd(index * 100), servers, false);
        if let Some(p) = prev {
            if xindex != p + 1 {
                c.fail(&format!("got index {xindex} but expected {}", p + 1));
            }
        }
        prev = Some(xindex);
    }
    c
}

/// TestRPCBytes3B: ten 5000-byte commands must cost at most `servers * bytes + 50000` bytes.
pub fn rpc_bytes(seed: u64) -> Cluster {
    let mut c = lab(seed, "RPCBytes", 3, false);
    let servers = c.n();
    let mut prev = one(&mut c, cmd(99), servers, false);
    let bytes0 = c.rpc_bytes();
    let mut sent = 0u64;
    for _ in 0..10 {
        let mut command = vec![TAG_RAW];
        command.extend((0..5000).map(|_| b'a' + c.rng.below(26) as u8));
        let xindex = one(&mut c, command.clone(), servers, false);
        if xindex != prev + 1 {
            c.fail(&format!("got index {xindex} but expected {}", prev + 1));
        }
        prev = xindex;
        sent += command.len() as u64;
    }
    let got = c.rpc_bytes() - bytes0;
    let expected = servers as u64 * sent;
    if got > expected + 50_000 {
        c.fail(&format!(
            "too many RPC bytes; got {got}, expected {expected}"
        ));
    }
    c
}

/// TestFollowerFailure3B.
pub fn follower_failure(seed: u64) -> Cluster {
    let mut c = lab(seed, "FollowerFailure", 3, false);
    let servers = c.n();
    one(&mut c, cmd(101), servers, false);
    let leader1 = check_one_leader(&mut c);
    c.disconnect(plus(&c, leader1, 1));
    one(&mut c, cmd(102), servers - 1, false);
    c.run_for(ELECTION_TIMEOUT_MS);
    let last = one(&mut c, cmd(103), servers - 1, false);
    let leader2 = check_one_leader(&mut c);
    c.disconnect(plus(&c, leader2, 1));
    c.disconnect(plus(&c, leader2, 2));
    let Some(id) = c.propose(leader2, cmd(104)) else {
        c.fail("leader rejected Start()");
    };
    if id.index.0 != last + 1 {
        c.fail(&format!("expected index {}, got {}", last + 1, id.index));
    }
    c.run_for(2 * ELECTION_TIMEOUT_MS);
    let (n, _) = n_committed(&c, id.index.0);
    if n > 0 {
        c.fail(&format!("{n} committed but no majority"));
    }
    c
}

/// TestLeaderFailure3B.
pub fn leader_failure(seed: u64) -> Cluster {
    let mut c = lab(seed, "LeaderFailure", 3, false);
    let servers = c.n();
    one(&mut c, cmd(101), servers, false);
    let leader1 = check_one_leader(&mut c);
    c.disconnect(leader1);
    one(&mut c, cmd(102), servers - 1, false);
    c.run_for(ELECTION_TIMEOUT_MS);
    one(&mut c, cmd(103), servers - 1, false);
    let leader2 = check_one_leader(&mut c);
    c.disconnect(leader2);
    let mut indexes = Vec::new();
    for i in c.ids() {
        if let Some(id) = c.propose(i, cmd(104)) {
            indexes.push(id.index.0);
        }
    }
    c.run_for(2 * ELECTION_TIMEOUT_MS);
    for index in indexes {
        let (n, _) = n_committed(&c, index);
        if n > 0 {
            c.fail(&format!("{n} committed but no majority"));
        }
    }
    c
}

/// TestFailAgree3B.
pub fn fail_agree(seed: u64) -> Cluster {
    let mut c = lab(seed, "FailAgree", 3, false);
    let servers = c.n();
    one(&mut c, cmd(101), servers, false);
    let leader = check_one_leader(&mut c);
    let f = plus(&c, leader, 1);
    c.disconnect(f);
    one(&mut c, cmd(102), servers - 1, false);
    one(&mut c, cmd(103), servers - 1, false);
    c.run_for(ELECTION_TIMEOUT_MS);
    one(&mut c, cmd(104), servers - 1, false);
    one(&mut c, cmd(105), servers - 1, false);
    c.connect(f);
    one(&mut c, cmd(106), servers, true);
    c.run_for(ELECTION_TIMEOUT_MS);
    one(&mut c, cmd(107), servers, true);
    c
}

/// TestFailNoAgree3B.
pub fn fail_no_agree(seed: u64) -> Cluster {
    let mut c = lab(seed, "FailNoAgree", 5, false);
    let servers = c.n();
    one(&mut c, cmd(10), servers, false);
    let leader = check_one_leader(&mut c);
    for k in 1..=3 {
        c.disconnect(plus(&c, leader, k));
    }
    let Some(id) = c.propose(leader, cmd(20)) else {
        c.fail("leader rejected Start()");
    };
    let index = id.index.0;
    c.run_for(2 * ELECTION_TIMEOUT_MS);
    let (n, _) = n_committed(&c, index);
    if n > 0 {
        c.fail(&format!("{n} committed but no majority"));
    }
    for k in 1..=3 {
        c.connect(plus(&c, leader, k));
    }
    let leader2 = check_one_leader(&mut c);
    let Some(id2) = c.propose(leader2, cmd(30)) else {
        c.fail("leader2 rejected Start()");
    };
    // Go expects index 2 or 3 (after index 1 and the lost index 2); with the new leader's
    // no-op the window moves up by one.
    if id2.index.0 < index + 1 || id2.index.0 > index + 2 {
        c.fail(&format!("unexpected index {}", id2.index));
    }
    one(&mut c, cmd(1000), servers, true);
    c
}

/// TestConcurrentStarts3B: five Starts at the same instant all commit in one term.
pub fn concurrent_starts(seed: u64) -> Cluster {
    let mut c = lab(seed, "ConcurrentStarts", 3, false);
    let servers = c.n();
    let mut success = false;
    'outer: for attempt in 0..5 {
        if attempt > 0 {
            c.run_for(3_000);
        }
        let leader = check_one_leader(&mut c);
        let Some(first) = c.propose(leader, cmd(1)) else {
            continue;
        };
        let term = first.term;
        let mut indexes = Vec::new();
        for i in 0..5u64 {
            match c.propose(leader, cmd(100 + i)) {
                Some(id) => indexes.push(id.index.0),
                None => continue 'outer,
            }
        }
        for j in c.ids() {
            if c.status(j).is_some_and(|s| s.term != term) {
                continue 'outer;
            }
        }
        let mut cmds = Vec::new();
        for &index in &indexes {
            match wait(&mut c, index, servers, Some(term)) {
                Some(v) => cmds.extend(cmd_value(&v)),
                None => continue 'outer,
            }
        }
        for i in 0..5u64 {
            if !cmds.contains(&(100 + i)) {
                c.fail(&format!("cmd {} missing in {cmds:?}", 100 + i));
            }
        }
        success = true;
        break;
    }
    if !success {
        c.fail("term changed too often");
    }
    c
}

/// TestRejoin3B.
pub fn rejoin(seed: u64) -> Cluster {
    let mut c = lab(seed, "Rejoin", 3, false);
    let servers = c.n();
    one(&mut c, cmd(101), servers, true);
    let leader1 = check_one_leader(&mut c);
    c.disconnect(leader1);
    c.propose(leader1, cmd(102));
    c.propose(leader1, cmd(103));
    c.propose(leader1, cmd(104));
    one(&mut c, cmd(103), 2, true);
    let leader2 = check_one_leader(&mut c);
    c.disconnect(leader2);
    c.connect(leader1);
    one(&mut c, cmd(104), 2, true);
    c.connect(leader2);
    one(&mut c, cmd(105), servers, true);
    c
}

/// TestBackup3B: a leader backs up quickly over incorrect follower logs (50 conflicting
/// entries, three rounds).
pub fn backup(seed: u64) -> Cluster {
    let mut c = lab(seed, "Backup", 5, false);
    let servers = c.n();
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    let leader1 = check_one_leader(&mut c);
    for k in 2..=4 {
        c.disconnect(plus(&c, leader1, k));
    }
    for _ in 0..50 {
        let v = rand_value(&mut c);
        c.propose(leader1, cmd(v));
    }
    c.run_for(ELECTION_TIMEOUT_MS / 2);
    c.disconnect(leader1);
    c.disconnect(plus(&c, leader1, 1));
    for k in 2..=4 {
        c.connect(plus(&c, leader1, k));
    }
    for _ in 0..50 {
        let v = rand_value(&mut c);
        one(&mut c, cmd(v), 3, true);
    }
    let leader2 = check_one_leader(&mut c);
    let mut other = plus(&c, leader1, 2);
    if leader2 == other {
        other = plus(&c, leader2, 1);
    }
    c.disconnect(other);
    for _ in 0..50 {
        let v = rand_value(&mut c);
        c.propose(leader2, cmd(v));
    }
    c.run_for(ELECTION_TIMEOUT_MS / 2);
    for i in c.ids() {
        c.disconnect(i);
    }
    c.connect(leader1);
    c.connect(plus(&c, leader1, 1));
    c.connect(other);
    for _ in 0..50 {
        let v = rand_value(&mut c);
        one(&mut c, cmd(v), 3, true);
    }
    for i in c.ids() {
        c.connect(i);
    }
    let v = rand_value(&mut c);
    one(&mut c, cmd(v), servers, true);
    c
}

/// TestCount3B: RPC counts for an election, for 12 entries, and for a second of idleness.
pub fn count(seed: u64) -> Cluster {
    let mut c = lab(seed, "Count", 3, false);
    let servers = c.n();
    check_one_leader(&mut c);
    let total1 = c.rpc_count();
    if !(1..=30).contains(&total1) {
        c.fail(&format!(
            "too many or few RPCs ({total1}) to elect initial leader"
        ));
    }
    let mut success = false;
    let mut total2 = 0;
    'outer: for attempt in 0..5 {
        if attempt > 0 {
            c.run_for(3_000);
        }
        let leader = check_one_leader(&mut c);
        let total1 = c.rpc_count();
        let iters = 10u64;
        let Some(start) = c.propose(leader, cmd(1)) else {
            continue;
        };
        let term = start.term;
        let mut cmds = Vec::new();
        for i in 1..iters + 2 {
            let x = rand_value(&mut c);
            cmds.push(x);
            let Some(id) = c.propose(leader, cmd(x)) else {
                continue 'outer;
            };
            if id.term != term {
                continue 'outer;
            }
            if start.index.0 + i != id.index.0 {
                c.fail("Start() failed");
            }
        }
        for i in 1..=iters {
            match wait(&mut c, start.index.0 + i, servers, Some(term)) {
                None => continue 'outer,
                Some(v) if cmd_value(&v) != Some(cmds[(i - 1) as usize]) => {
                    c.fail(&format!(
                        "wrong value {:?} committed for index {}",
                        cmd_value(&v),
                        start.index.0 + i
                    ));
                }
                Some(_) => {}
            }
        }
        for j in c.ids() {
            if c.status(j).is_some_and(|s| s.term != term) {
                continue 'outer;
            }
        }
        total2 = c.rpc_count();
        if total2 - total1 > (iters + 1 + 3) * 3 {
            c.fail(&format!(
                "too many RPCs ({}) for {iters} entries",
                total2 - total1
            ));
        }
        success = true;
        break;
    }
    if !success {
        c.fail("term changed too often");
    }
    c.run_for(ELECTION_TIMEOUT_MS);
    let total3 = c.rpc_count();
    if total3 - total2 > 3 * 20 {
        c.fail(&format!(
            "too many RPCs ({}) for 1 second of idleness",
            total3 - total2
        ));
    }
    c
}
