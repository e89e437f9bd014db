//! Scenarios: the 6.5840 Raft suite, KV scenarios and the swarm. Each is a function from a seed
//! to a finished [`Cluster`]; it fails by panicking with a [`crate::SimFailure`].

pub mod kv_tests;
pub mod lab;
pub mod lease_transfers;
pub mod membership;
pub mod membership_shrink;
pub mod raft_3a;
pub mod raft_3b;
pub mod raft_3c;
pub mod raft_3d;
pub mod shapes;
pub mod swarm;

use crate::cluster::Cluster;

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Name used on the command line and in replay commands.
    pub name: &'static str,
    /// Runs one seed.
    pub run: fn(u64) -> Cluster,
}

/// Every scenario, in 6.5840 order, then KV, then swarm.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "InitialElection",
        run: raft_3a::initial_election,
    },
    Scenario {
        name: "ReElection",
        run: raft_3a::re_election,
    },
    Scenario {
        name: "ManyElections",
        run: raft_3a::many_elections,
    },
    Scenario {
        name: "BasicAgree",
        run: raft_3b::basic_agree,
    },
    Scenario {
        name: "RPCBytes",
        run: raft_3b::rpc_bytes,
    },
    Scenario {
        name: "FollowerFailure",
        run: raft_3b::follower_failure,
    },
    Scenario {
        name: "LeaderFailure",
        run: raft_3b::leader_failure,
    },
    Scenario {
        name: "FailAgree",
        run: raft_3b::fail_agree,
    },
    Scenario {
        name: "FailNoAgree",
        run: raft_3b::fail_no_agree,
    },
    Scenario {
        name: "ConcurrentStarts",
        run: raft_3b::concurrent_starts,
    },
    Scenario {
        name: "Rejoin",
        run: raft_3b::rejoin,
    },
    Scenario {
        name: "Backup",
        run: raft_3b::backup,
    },
    Scenario {
        name: "Count",
        run: raft_3b::count,
    },
    Scenario {
        name: "Persist1",
        run: raft_3c::persist1,
    },
    Scenario {
        name: "Persist2",
        run: raft_3c::persist2,
    },
    Scenario {
        name: "Persist3",
        run: raft_3c::persist3,
    },
    Scenario {
        name: "Figure8",
        run: raft_3c::figure8,
    },
    Scenario {
        name: "Figure8Split",
        run: raft_3c::figure8_split,
    },
    Scenario {
        name: "UnreliableAgree",
        run: raft_3c::unreliable_agree,
    },
    Scenario {
        name: "Figure8Unreliable",
        run: raft_3c::figure8_unreliable,
    },
    Scenario {
        name: "ReliableChurn",
        run: raft_3c::reliable_churn,
    },
    Scenario {
        name: "UnreliableChurn",
        run: raft_3c::unreliable_churn,
    },
    Scenario {
        name: "SnapshotBasic",
        run: raft_3d::snapshot_basic,
    },
    Scenario {
        name: "SnapshotInstall",
        run: raft_3d::snapshot_install,
    },
    Scenario {
        name: "SnapshotInstallUnreliable",
        run: raft_3d::snapshot_install_unreliable,
    },
    Scenario {
        name: "SnapshotInstallCrash",
        run: raft_3d::snapshot_install_crash,
    },
    Scenario {
        name: "SnapshotInstallUnCrash",
        run: raft_3d::snapshot_install_uncrash,
    },
    Scenario {
        name: "SnapshotAllCrash",
        run: raft_3d::snapshot_all_crash,
    },
    Scenario {
        name: "SnapshotInit",
        run: raft_3d::snapshot_init,
    },
    Scenario {
        name: "SnapshotCatchUpFar",
        run: raft_3d::snapshot_catch_up_far,
    },
    Scenario {
        name: "KvConcurrentPartitions",
        run: kv_tests::kv_concurrent_partitions,
    },
    Scenario {
        name: "KvLeasePartitions",
        run: kv_tests::kv_lease_partitions,
    },
    Scenario {
        name: "KvStaleLeader",
        run: kv_tests::kv_stale_leader,
    },
    Scenario {
        name: "KvStaleLeaderLease",
        run: kv_tests::kv_stale_leader_lease,
    },
    Scenario {
        name: "KvCrashAll",
        run: kv_tests::kv_crash_all,
    },
    Scenario {
        name: "KvSnapshotPartitions",
        run: kv_tests::kv_snapshot_partitions,
    },
    Scenario {
        name: "KvSnapshotCrashAll",
        run: kv_tests::kv_snapshot_crash_all,
    },
    Scenario {
        name: "KvOnePartition",
        run: kv_tests::kv_one_partition,
    },
    Scenario {
        name: "MembershipChurn",
        run: membership::membership_churn,
    },
    Scenario {
        name: "JointPartition",
        run: membership::joint_partition,
    },
    Scenario {
        name: "RemovedNodeDisruption",
        run: membership::removed_node_disruption,
    },
    Scenario {
        name: "LeaderTransferFaults",
        run: membership::leader_transfer_faults,
    },
    Scenario {
        name: "MembershipShrink",
        run: membership_shrink::membership_shrink,
    },
    Scenario {
        name: "KvLeaseTransfers",
        run: lease_transfers::kv_lease_transfers,
    },
    Scenario {
        name: "Swarm",
        run: swarm::swarm,
    },
];

/// Looks a scenario up by name (case-insensitive).
pub fn find(name: &str) -> Option<Scenario> {
    ALL.iter()
        .copied()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}
