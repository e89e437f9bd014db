//! Node configuration and its validation. Every limit is named with its unit and the qualifier
//! last (`inflight_msgs_max`), and `validate` explains what is wrong, naming the field.

use crate::types::NodeId;

/// How linearizable reads are confirmed (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// ReadIndex: the leader confirms it still leads with a round of heartbeats acknowledged by
    /// a quorum before it releases the read. Safe with any clocks.
    Safe,
    /// Lease reads: the leader serves reads at its commit index without a heartbeat round while
    /// it has heard from a quorum within the last election timeout. Requires `check_quorum`.
    ///
    /// Clock assumption: every node's tick runs at the same rate within a bounded drift, so a
    /// follower that acknowledged this leader will not grant a vote to anyone else for at least
    /// the election timeout (it ignores votes while it hears from a leader, see
    /// [`Config::check_quorum`]). If ticks on some node can run much faster than on the leader
    /// (a paused VM, a clock jump), a new leader may commit writes that a lease read misses.
    LeaseBased,
}

/// Configuration of one Raft node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Minimum election timeout in ticks. The actual timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)` each time it is reset (paper §5.2).
    pub election_ticks: u64,
    /// Leader heartbeat interval in ticks. Must be smaller than `election_ticks`.
    pub heartbeat_ticks: u64,
    /// Run a PreVote phase before raising the term (thesis §9.6). Off, a node still pre-votes
    /// when it is outside the configuration in force, and after losing an election until it
    /// hears from a leader (see `campaign_now`): campaigns that may not be winnable never
    /// raise the term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers that heard from a leader within the minimum election timeout ignore vote
    /// requests (thesis §6.2, §9.6).
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_only: ReadOnlyOption,
    /// Largest append message, in bytes of entries. A single entry larger than this is still
    /// sent alone, so proposals larger than this are refused at the leader.
    pub msg_bytes_max: u64,
    /// Append messages in flight to one follower in the replicate state.
    pub inflight_msgs_max: usize,
    /// Entry bytes in flight to one follower in the replicate state.
    pub inflight_bytes_max: u64,
    /// Bytes of entries the leader holds uncommitted before it refuses proposals as busy.
    pub uncommitted_bytes_max: u64,
    /// Bytes of committed entries handed to the application per output batch.
    pub apply_bytes_max: u64,
    /// Bytes of snapshot data per InstallSnapshot message.
    pub snapshot_chunk_bytes: u64,
    /// Snapshot chunks in flight to one follower.
    pub snapshot_chunks_inflight_max: u64,
    /// Read requests pending at this node (waiting for confirmation or for apply).
    pub pending_reads_max: usize,
    /// Seed of the election-jitter PRNG. Mixed with `id`, so nodes may share one seed.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults for `id`: 10-tick election timeout, 1-tick heartbeat,
    /// PreVote and CheckQuorum on, ReadIndex reads.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_only: ReadOnlyOption::Safe,
            msg_bytes_max: 1024 * 1024,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 * 1024 * 1024,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            apply_bytes_max: 64 * 1024 * 1024,
            pending_reads_max: 65_536,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunks_inflight_max: 4,
            seed: 0,
        }
    }

    /// Checks the settings against each other; the error names the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.election_ticks < 2 {
            return bad(
                "election_ticks",
                format!("must be at least 2, got {}", self.election_ticks),
            );
        }
        if self.election_ticks > u64::MAX / 4 {
            return bad("election_ticks", "is too large".to_string());
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks", "must be at least 1".to_string());
        }
        if self.heartbeat_ticks >= self.election_ticks {
            return bad(
                "heartbeat_ticks",
                format!(
                    "must be smaller than election_ticks ({}), got {}",
                    self.election_ticks, self.heartbeat_ticks
                ),
            );
        }
        if self.read_only == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return bad(
                "read_only",
                "lease-based reads require check_quorum to be on".to_string(),
            );
        }
        if self.msg_bytes_max == 0 {
            return bad("msg_bytes_max", "must be at least 1".to_string());
        }
        if self.inflight_msgs_max == 0 {
            return bad("inflight_msgs_max", "must be at least 1".to_string());
        }
        if self.inflight_bytes_max < self.msg_bytes_max {
            return bad(
                "inflight_bytes_max",
                format!(
                    "must be at least msg_bytes_max ({}), got {}",
                    self.msg_bytes_max, self.inflight_bytes_max
                ),
            );
        }
        if self.uncommitted_bytes_max < self.msg_bytes_max {
            return bad(
                "uncommitted_bytes_max",
                format!(
                    "must be at least msg_bytes_max ({}), got {}",
                    self.msg_bytes_max, self.uncommitted_bytes_max
                ),
            );
        }
        if self.apply_bytes_max == 0 {
            return bad("apply_bytes_max", "must be at least 1".to_string());
        }
        if self.snapshot_chunk_bytes == 0 {
            return bad("snapshot_chunk_bytes", "must be at least 1".to_string());
        }
        if self.snapshot_chunks_inflight_max == 0 {
            return bad(
                "snapshot_chunks_inflight_max",
                "must be at least 1".to_string(),
            );
        }
        if self.pending_reads_max == 0 {
            return bad("pending_reads_max", "must be at least 1".to_string());
        }
        Ok(())
    }
}

/// A configuration that does not hold together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid raft config: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(NodeId::new(1).unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(cfg().validate(), Ok(()));
    }

    #[test]
    fn each_inconsistency_names_its_field() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("election_ticks", Box::new(|c| c.election_ticks = 1)),
            ("heartbeat_ticks", Box::new(|c| c.heartbeat_ticks = 0)),
            ("heartbeat_ticks", Box::new(|c| c.heartbeat_ticks = 10)),
            (
                "read_only",
                Box::new(|c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.check_quorum = false;
                }),
            ),
            ("msg_bytes_max", Box::new(|c| c.msg_bytes_max = 0)),
            ("inflight_msgs_max", Box::new(|c| c.inflight_msgs_max = 0)),
            ("inflight_bytes_max", Box::new(|c| c.inflight_bytes_max = 1)),
            (
                "uncommitted_bytes_max",
                Box::new(|c| c.uncommitted_bytes_max = 1),
            ),
            ("apply_bytes_max", Box::new(|c| c.apply_bytes_max = 0)),
            ("pending_reads_max", Box::new(|c| c.pending_reads_max = 0)),
            (
                "snapshot_chunk_bytes",
                Box::new(|c| c.snapshot_chunk_bytes = 0),
            ),
            (
                "snapshot_chunks_inflight_max",
                Box::new(|c| c.snapshot_chunks_inflight_max = 0),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = cfg();
            mutate(&mut c);
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
