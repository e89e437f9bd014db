//! The one error type of the crate. Faults (IO errors, a full disk, corrupt files, a data dir
//! from another cluster, a caller asking for the impossible) are values; broken internal
//! invariants are bugs and panic.

use std::io;
use std::path::{Path, PathBuf};

use raft::Index;

use crate::identity::Identity;

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system IO error. The store must be treated as failed: after a failed sync
    /// the kernel may have dropped dirty pages, so the caller reopens rather than retries.
    #[error("io error while trying to {op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk (or quota) is full. Reported separately so the server can say so plainly.
    #[error("disk full while trying to {op} {path}")]
    DiskFull {
        /// What we were doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
    },
    /// Stored bytes fail a checksum, a length or a structural check somewhere other than a torn
    /// tail, or a file that must exist is missing. The store refuses to open (or to serve the
    /// read) rather than guess: an acknowledged entry is never silently dropped.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file holding the bad bytes.
        file: String,
        /// Byte offset in `file`, or the entry index for log entries.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// Another process has the log open (two servers started on one data dir).
    #[error("{path} is locked: another process is using this data dir")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The data dir was created for another cluster or node.
    #[error("data dir belongs to {found}, but this server is {expected}")]
    IdentityMismatch {
        /// The identity this server was started with.
        expected: Identity,
        /// The identity recorded in the data dir.
        found: Identity,
    },
    /// The requested index was compacted away into a snapshot.
    #[error("index {index} is compacted (log starts after {snapshot_index})")]
    Compacted {
        /// The index asked for.
        index: Index,
        /// Last index covered by the snapshot.
        snapshot_index: Index,
    },
    /// The requested index is past the end of the log.
    #[error("index {index} is past the last entry {last_index}")]
    Unavailable {
        /// The index asked for.
        index: Index,
        /// The last stored index.
        last_index: Index,
    },
    /// The caller asked for something that would break the log's shape (a gap, overwriting the
    /// compacted prefix, entries out of order). This is a bug in the caller, reported as a value
    /// so that a server can log it and stop cleanly.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An earlier write failed; the store refuses more writes until it is reopened.
    #[error("the store failed earlier and must be reopened")]
    Failed,
}

impl StorageError {
    /// Wraps an IO error, recognising a full disk.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> StorageError {
        if is_disk_full(&source) {
            return StorageError::DiskFull {
                op,
                path: path.to_path_buf(),
            };
        }
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A corruption error.
    pub(crate) fn corrupt(file: impl Into<String>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// ENOSPC and EDQUOT both mean "no room"; `StorageFull`/`QuotaExceeded` are their std names.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_disk_full() {
        for code in [28, 122] {
            let e = StorageError::io("write", Path::new("/x"), io::Error::from_raw_os_error(code));
            assert!(matches!(e, StorageError::DiskFull { .. }), "{e:?}");
        }
        let e = StorageError::io("write", Path::new("/x"), io::Error::from_raw_os_error(5));
        assert!(matches!(e, StorageError::Io { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "io error while trying to write /x: Input/output error (os error 5)"
        );
    }
}
