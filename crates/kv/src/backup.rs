//! Backup files: what Maintenance.Snapshot streams, `etcdctl snapshot save` stores, and
//! `skiff snapshot status/restore` read. A backup is a state machine snapshot (the format of
//! [`crate::snapshot`], with its own CRC) in etcd's envelope:
//!
//! ```text
//!   snapshot             crate::snapshot's bytes, ending in their CRC-32
//!   zero bytes           padding, so that the body is a multiple of 512 bytes
//!   snapshot length      8 bytes LE: where the snapshot ends (the padding is 0..=511 bytes)
//!   sha256               32 bytes, of the body (everything before it)
//! ```
//!
//! Why this shape: `etcdctl snapshot save` refuses a download whose length is not
//! `512 * k + 32` ("sha256 checksum not found"), since etcd sends its database (whole pages)
//! and then the sha256 of what it sent; `etcdctl snapshot restore` checks that digest. The
//! length field tells a reader where the snapshot ends, which the padding alone would not.
//!
//! A backup is verified whole (digest, then every row and the snapshot's CRC) before anything
//! is made from it, so a truncated or altered file is refused, never half restored.

use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::members::{MEMBERS, MEMBERS_REMOVED};
use crate::session::{Sessions, SESSIONS};
use crate::snapshot::Summary;
use crate::store::{SnapshotView, Store, META, META_SESSIONS_EVICTED};

/// The body of a backup is a multiple of this (etcd's client checks the file's length by it).
pub const BODY_ALIGN_BYTES: u64 = 512;
/// Length of the sha256 digest that ends a backup.
pub const DIGEST_BYTES: u64 = 32;
/// Length of the snapshot length field before the digest.
const LENGTH_BYTES: u64 = 8;
/// Padding written at once, at most (the padding is shorter than [`BODY_ALIGN_BYTES`]).
const ZEROS: [u8; BODY_ALIGN_BYTES as usize] = [0; BODY_ALIGN_BYTES as usize];

/// Length of a backup's body (everything before the digest) holding a snapshot of
/// `snapshot_bytes`.
pub fn body_bytes(snapshot_bytes: u64) -> u64 {
    (snapshot_bytes + LENGTH_BYTES).div_ceil(BODY_ALIGN_BYTES) * BODY_ALIGN_BYTES
}

/// Whether a file of `bytes` can be a backup (etcd's `hasChecksum`, and room for a length).
fn plausible_length(bytes: u64) -> bool {
    bytes >= BODY_ALIGN_BYTES + DIGEST_BYTES && bytes % BODY_ALIGN_BYTES == DIGEST_BYTES
}

/// A backup that is not one: the message says what is wrong, for a reader who named the file.
fn bad(m: String) -> Error {
    Error::Decode(m)
}

/// Counts what passes through to `out` and hashes it.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    sha: Sha256,
    bytes: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A writer that only counts.
struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotView {
    /// The length of the body [`SnapshotView::write_backup_body`] writes, found by serializing
    /// the view without keeping anything (so that a stream can say how much is left from its
    /// first message, as etcd's does).
    pub fn backup_body_bytes(&self) -> Result<u64, Error> {
        let mut counter = Counting(0);
        let written = self.write_to(&mut counter)?;
        debug_assert_eq!(written, counter.0);
        Ok(body_bytes(counter.0))
    }

    /// Writes a backup's body (see the module doc) to `out`, a slice at a time; returns its
    /// length and its sha256, which the caller appends to complete the backup (etcd's server
    /// sends it as the stream's last message).
    pub fn write_backup_body(&self, out: &mut dyn Write) -> Result<(u64, [u8; 32]), Error> {
        let mut w = Hashing {
            out,
            sha: Sha256::new(),
            bytes: 0,
        };
        let snapshot_bytes = self.write_to(&mut w)?;
        let body = body_bytes(snapshot_bytes);
        let padding = body - snapshot_bytes - LENGTH_BYTES;
        w.write_all(&ZEROS[..padding as usize]).map_err(Error::Io)?;
        w.write_all(&snapshot_bytes.to_le_bytes())
            .map_err(Error::Io)?;
        assert_eq!(
            w.bytes, body,
            "a backup body has the length body_bytes says"
        );
        Ok((body, w.sha.finalize().into()))
    }
}

/// What a verified backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// The file's length, digest included.
    pub file_bytes: u64,
    /// The snapshot's length.
    pub snapshot_bytes: u64,
    /// The snapshot's CRC-32 (its last four bytes): a hash of the state it holds.
    pub crc: u32,
    /// What the snapshot holds.
    pub state: Summary,
}

impl BackupSummary {
    /// The file's length less the digest: what etcd reports as a backup's size (its
    /// database's).
    pub fn body_bytes(&self) -> u64 {
        self.file_bytes - DIGEST_BYTES
    }
}

/// Checks a backup whole: its length, its sha256, its layout, then every row of its snapshot
/// and the snapshot's CRC. Reads the file twice, a slice at a time. An error says what is
/// wrong in one line (truncated, corrupt, not a backup).
pub fn verify_backup<R: Read + Seek>(file: &mut R) -> Result<BackupSummary, Error> {
    let file_bytes = file.seek(SeekFrom::End(0)).map_err(Error::Io)?;
    if !plausible_length(file_bytes) {
        return Err(bad(format!(
            "{file_bytes} bytes: truncated, or not a backup (a backup is 512*k+32 bytes long)"
        )));
    }
    let body = file_bytes - DIGEST_BYTES;
    file.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
    let mut sha = Sha256::new();
    let copied =
        std::io::copy(&mut (&mut *file).take(body), &mut ShaSink(&mut sha)).map_err(Error::Io)?;
    let mut stored = [0u8; DIGEST_BYTES as usize];
    file.read_exact(&mut stored).map_err(Error::Io)?;
    if copied != body || sha.finalize().as_slice() != stored {
        return Err(bad(
            "sha256 mismatch: the file is corrupt (altered or truncated)".into(),
        ));
    }
    let mut word = [0u8; LENGTH_BYTES as usize];
    file.seek(SeekFrom::Start(body - LENGTH_BYTES))
        .map_err(Error::Io)?;
    file.read_exact(&mut word).map_err(Error::Io)?;
    let snapshot_bytes = u64::from_le_bytes(word);
    if snapshot_bytes < 4
        || snapshot_bytes > body - LENGTH_BYTES
        || body_bytes(snapshot_bytes) != body
    {
        return Err(bad(format!(
            "the snapshot length {snapshot_bytes} does not fit a body of {body} bytes"
        )));
    }
    let mut padding = vec![0u8; (body - LENGTH_BYTES - snapshot_bytes) as usize];
    file.seek(SeekFrom::Start(snapshot_bytes))
        .map_err(Error::Io)?;
    file.read_exact(&mut padding).map_err(Error::Io)?;
    if padding.iter().any(|b| *b != 0) {
        return Err(bad("the padding after the snapshot is not zero".into()));
    }
    let mut crc = [0u8; 4];
    file.seek(SeekFrom::Start(snapshot_bytes - 4))
        .map_err(Error::Io)?;
    file.read_exact(&mut crc).map_err(Error::Io)?;
    file.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
    let state = crate::snapshot::verify_summary(&mut (&mut *file).take(snapshot_bytes))?;
    Ok(BackupSummary {
        file_bytes,
        snapshot_bytes,
        crc: u32::from_le_bytes(crc),
        state,
    })
}

/// Feeds what is written to a sha256.
struct ShaSink<'a>(&'a mut Sha256);

impl Write for ShaSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Replaces the whole state with a backup's, for the first member of a new cluster
    /// (`skiff snapshot restore`): every key, revision, the compacted revision and the leases
    /// (with their TTLs) are kept; what belonged to the old cluster goes: the client sessions
    /// (their ids mean nothing to the new cluster's members), the member table and the
    /// removed members (the new cluster's members publish themselves). The applied index
    /// becomes `applied`, where the new cluster's log starts. The backup is verified whole
    /// first; on an error the store may hold the backup's state or its previous one, never a
    /// mix of the two, and should be discarded.
    pub fn restore_backup<R: Read + Seek>(
        &self,
        file: &mut R,
        applied: u64,
    ) -> Result<BackupSummary, Error> {
        let summary = verify_backup(file)?;
        file.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        self.restore_from(&mut file.take(summary.snapshot_bytes))?;
        self.forget_cluster(applied)?;
        Ok(summary)
    }

    /// Drops the sessions, the member table and the removed members, and sets the applied
    /// index, in one transaction (see [`Store::restore_backup`]).
    fn forget_cluster(&self, applied: u64) -> Result<(), Error> {
        let mut open = self.lock_open();
        self.settle_locked(&mut open)?;
        let txn = self.begin_write()?;
        txn.delete_table(SESSIONS)?;
        txn.delete_table(MEMBERS)?;
        txn.delete_table(MEMBERS_REMOVED)?;
        crate::open::create_tables(&txn)?;
        let mut meta = crate::store::Meta::read(&txn.open_table(META)?)?;
        meta.applied = applied;
        meta.write(&txn)?;
        txn.open_table(META)?.remove(META_SESSIONS_EVICTED)?;
        let mut index = self.write_index();
        txn.commit()?;
        index.meta.applied = applied;
        *self.lock_sessions() = Sessions::default();
        Ok(())
    }
}
