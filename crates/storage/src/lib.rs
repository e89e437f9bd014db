//! Durable storage for the Raft log, hard state and snapshots (work in progress: see issue 6).
