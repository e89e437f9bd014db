//! Every scenario on many seeds, determinism, and the simulator's self-tests (planted driver
//! bugs must be caught). Seed counts are chosen so the whole file runs in a few minutes on two
//! cores in release mode; the `sim` binary runs more.

use skiff_sim::scenarios::{find, Scenario};
use skiff_sim::Property::{self, *};
use skiff_sim::{run_seed, run_seed_classified, set_driver_bug, set_guards_off, DriverBug, Guard};

/// Seeds per scenario in `cargo test --release` (CI). A debug build (`cargo test` without
/// `--release`) runs a tenth as many, so a quick local run stays quick.
const SEEDS: u64 = if cfg!(debug_assertions) { 20 } else { 200 };

/// Seeds for the cheap, high-yield scenarios (Figure 8 variants, swarm).
const SEEDS_MANY: u64 = if cfg!(debug_assertions) { 100 } else { 1000 };

fn run_many(name: &str, seeds: u64) {
    let s: Scenario = find(name).expect("known scenario");
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(msg) = run_seed(s, seed) {
            failures.push(msg);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seed(s) of {name}, first ones:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! scenario_tests {
    ($($(#[$attr:meta])* $test:ident => $name:literal, $seeds:expr;)*) => {
        $(
            #[test]
            $(#[$attr])*
            fn $test() {
                run_many($name, $seeds);
            }
        )*
    };
}

scenario_tests! {
    initial_election => "InitialElection", SEEDS;
    re_election => "ReElection", SEEDS;
    many_elections => "ManyElections", SEEDS;
    basic_agree => "BasicAgree", SEEDS;
    rpc_bytes => "RPCBytes", SEEDS;
    follower_failure => "FollowerFailure", SEEDS;
    leader_failure => "LeaderFailure", SEEDS;
    fail_agree => "FailAgree", SEEDS;
    fail_no_agree => "FailNoAgree", SEEDS;
    concurrent_starts => "ConcurrentStarts", SEEDS;
    rejoin => "Rejoin", SEEDS;
    backup => "Backup", SEEDS;
    count => "Count", SEEDS;
    persist1 => "Persist1", SEEDS;
    persist2 => "Persist2", SEEDS;
    persist3 => "Persist3", SEEDS;
    figure8 => "Figure8", SEEDS_MANY;
    figure8_split => "Figure8Split", SEEDS_MANY;
    unreliable_agree => "UnreliableAgree", SEEDS;
    figure8_unreliable => "Figure8Unreliable", SEEDS;
    reliable_churn => "ReliableChurn", SEEDS;
    unreliable_churn => "UnreliableChurn", SEEDS;
    snapshot_basic => "SnapshotBasic", SEEDS;
    snapshot_install => "SnapshotInstall", SEEDS;
    snapshot_install_unreliable => "SnapshotInstallUnreliable", SEEDS;
    snapshot_install_crash => "SnapshotInstallCrash", SEEDS;
    snapshot_install_uncrash => "SnapshotInstallUnCrash", SEEDS;
    snapshot_all_crash => "SnapshotAllCrash", SEEDS;
    snapshot_init => "SnapshotInit", SEEDS;
    snapshot_catch_up_far => "SnapshotCatchUpFar", 100;
    kv_concurrent_partitions => "KvConcurrentPartitions", SEEDS;
    kv_lease_partitions => "KvLeasePartitions", SEEDS;
    kv_stale_leader => "KvStaleLeader", SEEDS;
    kv_stale_leader_lease => "KvStaleLeaderLease", SEEDS;
    kv_crash_all => "KvCrashAll", SEEDS;
    kv_one_partition => "KvOnePartition", SEEDS;
    kv_snapshot_crash_all => "KvSnapshotCrashAll", SEEDS;
    kv_snapshot_partitions => "KvSnapshotPartitions", SEEDS;
    membership_churn => "MembershipChurn", SEEDS;
    joint_partition => "JointPartition", SEEDS;
    removed_node_disruption => "RemovedNodeDisruption", SEEDS;
    leader_transfer_faults => "LeaderTransferFaults", SEEDS;
    kv_lease_transfers => "KvLeaseTransfers", SEEDS;
    membership_shrink => "MembershipShrink", SEEDS;
    swarm => "Swarm", SEEDS_MANY;
}

/// Replays one seed that once failed and must now pass.
fn replay(name: &str, seed: u64) {
    if let Err(msg) = run_seed(find(name).expect("known scenario"), seed) {
        panic!("{name} seed {seed} regressed:\n{msg}");
    }
}

/// The last chunk of snapshot A and the first chunks of a newer B reached a paused follower
/// together; the batch staged B's chunks and then asked to install A (partially staged B on
/// disk). Fixed in `handle_snapshot_chunk`: no chunk is staged behind an install.
#[test]
fn swarm_seed_102635_install_behind_a_newer_snapshots_chunks() {
    replay("Swarm", 102635);
}

/// The joint configuration {2,3,4,5} -> {1,3,6} with C_new appended only on 2, 4 and 5:
/// they no longer campaigned (not voters of C_new), and 1, 3 and 6 could not win a majority
/// of {2,3,4,5}. Fixed in `is_promotable`: a voter of the last committed configuration may
/// campaign while a later one is uncommitted in its log.
#[test]
fn swarm_seed_102983_joint_exit_only_on_outgoing_voters() {
    replay("Swarm", 102983);
}

/// Voter 3 of {3,4,5}, with an empty log and term 9, campaigned only to the removed 1 and 2
/// and ignored the term-6 leader's heartbeats without answering (no PreVote, no
/// CheckQuorum). Fixed in `step_stale`: a stale Append/Heartbeat is always answered with our
/// term (Figure 2).
#[test]
fn swarm_seed_221436_member_with_stale_config_and_higher_term() {
    replay("Swarm", 221436);
}

/// A leader of {1,2} that removed itself and stepped down before C_new reached node 2 (and
/// seeds like it in MembershipShrink and Swarm) blocked every election while it could not
/// campaign. Fixed with seed 102983 (`is_promotable`).
#[test]
fn removed_leader_holding_the_only_copy_of_its_removal() {
    replay("MembershipShrink", 11);
    replay("Swarm", 499);
}

/// A voter left in an old configuration with a higher term, PreVote and CheckQuorum off, never
/// caught up. Fixed with seed 221436 (`step_stale`).
#[test]
fn swarm_seed_5754_stale_member_unreached() {
    replay("Swarm", 5754);
}

/// Node 4 (joint {4} -> {1}) needed node 1's vote; node 1, far behind and believing in
/// {1,3,5}, campaigned (PreVote off) among voters that refused it, always one term ahead of
/// node 4, and dropped node 4's stale vote requests unanswered. Fixed in `step_stale`: a stale
/// vote request is answered with our term (Figure 2).
#[test]
fn swarm_seed_2159289_stale_vote_request_answered() {
    replay("Swarm", 2159289);
}

/// Node 8 of {4,8} (uncommitted; node 4 was down while {4,8,9} and {4,8} were appended, its
/// log ends at entry 21) needed node 4's vote; node 4, believing in {1,2,3,4,6,7}, where it cannot win, started
/// a term every election timeout (PreVote off), voting for itself, and the removed 3 and 5
/// pushed its term further. Node 8, outside node 4's configuration, learned node 4's term only
/// from its refusals, an election timeout late: for 13 s each request found node 4 voted for
/// itself in that term or past it. Fixed in `campaign_now`: a candidate that lost its election
/// pre-votes until it hears from a leader (thesis §9.6).
#[test]
fn swarm_seed_8760087_lost_candidates_pre_vote() {
    replay("Swarm", 8760087);
}

/// Node 1, sole voter with other members, won term 3 at once and sent term-3 appends before
/// term 3 was durable; it crashed, came back in term 2, won term 3 again with another log, and
/// a member held two different entries 24@3 (Log Matching). Fixed in `ready`: no message of a
/// term or vote that is not durable yet leaves before the sync.
#[test]
fn swarm_seed_2262450_sole_voter_sends_only_a_durable_term() {
    replay("Swarm", 2262450);
}

/// A sole voter won its term in memory before the term and its vote were durable; a crash
/// took the term back, and it voted for another leader of that term (2780045: two leaders of
/// term 5) or led it again with another log (2177418: two entries 20@4). Fixed in
/// `own_vote_durable`: a candidate counts its own vote only once it is durable.
#[test]
fn sole_voter_leads_only_a_durable_term() {
    replay("Swarm", 2780045);
    replay("Swarm", 2177418);
}

#[test]
fn same_seed_same_trace() {
    for name in [
        "Figure8Unreliable",
        "Swarm",
        "KvConcurrentPartitions",
        "Persist2",
        "MembershipShrink",
        "KvLeaseTransfers",
    ] {
        let s = find(name).unwrap();
        for seed in [1, 7] {
            let a = run_seed(s, seed);
            let b = run_seed(s, seed);
            assert_eq!(a, b, "{name} seed {seed} is not deterministic");
        }
        if let (Ok(a), Ok(b)) = (run_seed(s, 1), run_seed(s, 7)) {
            assert_ne!(
                a.trace, b.trace,
                "{name}: different seeds gave the same trace"
            );
        }
    }
}

/// Runs seeds of the given scenarios with a planted driver bug until one fails on one of the
/// properties in `expect` (other failures, e.g. known core bugs, are skipped); returns the
/// failure message, which starts with the property's name.
fn catch(bug: DriverBug, scenarios: &[&str], seeds_max: u64, expect: &[Property]) -> String {
    catch_guards_off(bug, scenarios, seeds_max, expect, &[])
}

/// [`catch`] with `guards` turned off, for bugs a guard would stop before the property sees
/// the damage.
fn catch_guards_off(
    bug: DriverBug,
    scenarios: &[&str],
    seeds_max: u64,
    expect: &[Property],
    guards: &[Guard],
) -> String {
    set_guards_off(guards);
    set_driver_bug(Some(bug));
    let mut found = None;
    'hunt: for seed in 0..seeds_max {
        for name in scenarios {
            if let Err(f) = run_seed_classified(find(name).unwrap(), seed) {
                assert_eq!(Property::classify(&f.message), f.property, "{}", f.message);
                if expect.contains(&f.property) {
                    found = Some(f.message);
                    break 'hunt;
                }
            }
        }
    }
    set_driver_bug(None);
    set_guards_off(&[]);
    found.unwrap_or_else(|| panic!("{bug:?} not caught within {seeds_max} seeds of {scenarios:?}"))
}

#[test]
fn catches_send_before_sync() {
    let msg = catch(
        DriverBug::SendBeforeSync,
        &["Swarm"],
        300,
        &[
            ElectionSafety,
            AckedEntries,
            LeaderCompleteness,
            StateMachineSafety,
            Linearizability,
        ],
    );
    eprintln!("caught: {msg}");
}

#[test]
fn catches_forgotten_vote() {
    // The monotonic module sees the restarted node persist a second vote in the term before
    // the vote is sent; with it off, Election Safety sees the two votes.
    let msg = catch_guards_off(
        DriverBug::ForgetVoteOnRestart,
        &["Swarm", "Persist2", "Figure8", "ReliableChurn"],
        2000,
        &[ElectionSafety],
        &[Guard::Monotonic],
    );
    eprintln!("caught: {msg}");
}

#[test]
fn catches_apply_twice() {
    let msg = catch(
        DriverBug::ApplyTwice,
        &["BasicAgree"],
        5,
        &[StateMachineSafety],
    );
    // Every failure names its property, its seed and the one command that replays it.
    assert!(msg.starts_with("state_machine_safety: "), "{msg}");
    assert!(
        msg.contains("replay: cargo run -p skiff-sim --release -- --scenario BasicAgree --seed "),
        "{msg}"
    );
}

#[test]
fn catches_reads_without_read_index() {
    let msg = catch(
        DriverBug::LocalReads,
        &["KvOnePartition", "KvConcurrentPartitions"],
        50,
        &[Linearizability],
    );
    eprintln!("caught: {msg}");
}
