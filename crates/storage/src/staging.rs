//! The staging file for a snapshot received in chunks from the leader. Each chunk is fsynced
//! as it arrives, so a restart resumes from the bytes already received; a torn last chunk is
//! truncated, and a staging file whose header is unreadable is discarded (the leader resends).
//!
//! `incoming.stage` = records `[payload len u32][sealed payload]`; record 0 is the header
//! (snapshot meta and total length), records 1.. are chunks in order.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use raft::{EntryId, Index, Term};

use crate::codec::{self, Reader};
use crate::error::StorageError;
use crate::snapshot::{sync_dir, SnapshotMeta};

/// Name of the staging file inside the snapshot directory.
const STAGE_FILE: &str = "incoming.stage";
/// Largest chunk accepted (and so the largest record read back).
pub const CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How far a staged snapshot has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedProgress {
    /// The snapshot being received.
    pub meta: SnapshotMeta,
    /// Its total size in bytes, as announced by the sender.
    pub total_bytes: u64,
    /// Bytes durably received so far (the offset of the next chunk).
    /// Invariant: `received_bytes <= total_bytes`.
    pub received_bytes: u64,
}

/// An open staging file.
#[derive(Debug)]
pub struct Staging {
    /// Path of the staging file.
    path: PathBuf,
    /// The file, positioned at its end.
    file: File,
    /// Progress so far.
    progress: StagedProgress,
}

fn encode_record(payload: &[u8]) -> Vec<u8> {
    let sealed = codec::seal_payload(payload);
    let mut rec = (sealed.len() as u32).to_le_bytes().to_vec();
    rec.extend_from_slice(&sealed);
    rec
}

impl Staging {
    /// Starts staging a new snapshot, replacing any staged one.
    pub fn begin(
        dir: &Path,
        meta: &SnapshotMeta,
        total_bytes: u64,
    ) -> Result<Staging, StorageError> {
        let path = dir.join(STAGE_FILE);
        let mut p = Vec::new();
        p.extend_from_slice(&meta.last.term.0.to_le_bytes());
        p.extend_from_slice(&meta.last.index.0.to_le_bytes());
        codec::put_membership(&mut p, &meta.membership);
        p.extend_from_slice(&total_bytes.to_le_bytes());
        let mut file = File::create(&path).map_err(|e| StorageError::io("create", &path, e))?;
        file.write_all(&encode_record(&p))
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::io("write", &path, e))?;
        sync_dir(dir)?;
        Ok(Staging {
            path,
            file,
            progress: StagedProgress {
                meta: meta.clone(),
                total_bytes,
                received_bytes: 0,
            },
        })
    }

    /// Reopens a staging file left by an earlier run, if any. A torn tail is truncated; an
    /// unreadable header discards the file. Both are logged.
    pub fn recover(dir: &Path) -> Result<Option<Staging>, StorageError> {
        let path = dir.join(STAGE_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(|e| StorageError::io("read", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        let mut records = Vec::new();
        let mut pos = 0usize;
        while let Some((payload, next)) = next_record(&bytes, pos) {
            records.push(payload);
            pos = next;
        }
        let Some((meta, total_bytes)) = records.first().and_then(|h| decode_header(h).ok()) else {
            tracing::warn!(file = %path.display(), "discarding staged snapshot with unreadable header");
            discard_path(dir, &path)?;
            return Ok(None);
        };
        let received_bytes: u64 = records[1..].iter().map(|c| c.len() as u64).sum();
        if received_bytes > total_bytes {
            tracing::warn!(file = %path.display(), "discarding staged snapshot longer than announced");
            discard_path(dir, &path)?;
            return Ok(None);
        }
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        if pos < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                offset = pos,
                "truncating torn tail of staged snapshot"
            );
            file.set_len(pos as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("truncate", &path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| StorageError::io("seek", &path, e))?;
        Ok(Some(Staging {
            path,
            file,
            progress: StagedProgress {
                meta,
                total_bytes,
                received_bytes,
            },
        }))
    }

    /// Progress so far.
    pub fn progress(&self) -> &StagedProgress {
        &self.progress
    }

    /// Appends a chunk durably. `offset` must equal the bytes received so far.
    pub fn write_chunk(&mut self, offset: u64, chunk: &[u8]) -> Result<(), StorageError> {
        let p = &self.progress;
        if offset != p.received_bytes {
            return Err(StorageError::InvalidRequest(format!(
                "chunk at offset {offset}, expected {}",
                p.received_bytes
            )));
        }
        if chunk.len() > CHUNK_BYTES_MAX || p.received_bytes + chunk.len() as u64 > p.total_bytes {
            return Err(StorageError::InvalidRequest(format!(
                "chunk of {} bytes at {offset} overflows the announced {} bytes",
                chunk.len(),
                p.total_bytes
            )));
        }
        self.file
            .write_all(&encode_record(chunk))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StorageError::io("write", &self.path, e))?;
        self.progress.received_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Streams the whole staged snapshot into `out` once every byte has arrived, a chunk at
    /// a time (each checked against its record's checksum).
    pub fn copy_into(&self, out: &mut dyn Write) -> Result<(), StorageError> {
        let mut reader = self.reader()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read_checked(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])
                .map_err(|e| StorageError::io("copy the staged snapshot from", &self.path, e))?;
        }
    }

    /// A reader of the whole staged snapshot's bytes, once every byte has arrived: each chunk
    /// is checked against its record's checksum as it is read, and a file that changed on
    /// disk is an error, never short data.
    pub fn reader(&self) -> Result<StagedReader, StorageError> {
        let p = &self.progress;
        if p.received_bytes != p.total_bytes {
            return Err(StorageError::InvalidRequest(format!(
                "staged snapshot has {} of {} bytes",
                p.received_bytes, p.total_bytes
            )));
        }
        let file = File::open(&self.path).map_err(|e| StorageError::io("open", &self.path, e))?;
        let mut reader = StagedReader {
            path: self.path.clone(),
            input: std::io::BufReader::with_capacity(1 << 20, file),
            total: p.total_bytes,
            copied: 0,
            pos: 0,
            payload: Vec::new(),
            at: 0,
        };
        // Record 0 is the header, not data.
        if !reader.next_record()? {
            return Err(reader.changed());
        }
        reader.payload.clear();
        Ok(reader)
    }

    /// Deletes the staging file.
    pub fn discard(self) -> Result<(), StorageError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        discard_path(&dir, &self.path)
    }
}

fn discard_path(dir: &Path, path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

/// The record at `pos`, if it is whole and its checksum holds, and where the next one starts.
fn next_record(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let len_bytes = bytes.get(pos..pos.checked_add(4)?)?;
    let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
    if len > CHUNK_BYTES_MAX + codec::SEAL_OVERHEAD_BYTES {
        return None;
    }
    let end = pos.checked_add(4)?.checked_add(len)?;
    let sealed = bytes.get(pos + 4..end)?;
    let payload = codec::unseal_payload(sealed).ok()?;
    Some((payload, end))
}

fn decode_header(p: &[u8]) -> Result<(SnapshotMeta, u64), String> {
    let mut r = Reader::new(p);
    let last = EntryId {
        term: Term(r.u64()?),
        index: Index(r.u64()?),
    };
    let membership = codec::get_membership(&mut r)?;
    let total = r.u64()?;
    r.finish()?;
    Ok((SnapshotMeta { last, membership }, total))
}

/// The bytes of a fully staged snapshot, chunk by chunk (from [`crate::Store::staged_reader`]).
#[derive(Debug)]
pub struct StagedReader {
    path: PathBuf,
    input: std::io::BufReader<File>,
    /// Announced size of the snapshot.
    total: u64,
    /// Data bytes read from records so far.
    copied: u64,
    /// File offset of the next record.
    pos: u64,
    /// The current record's payload, and how much of it was handed out.
    payload: Vec<u8>,
    at: usize,
}

impl StagedReader {
    fn changed(&self) -> StorageError {
        StorageError::corrupt(
            self.path.display().to_string(),
            self.pos,
            "staged snapshot changed on disk",
        )
    }

    /// Loads the next record's payload; `false` at the end of the file.
    fn next_record(&mut self) -> Result<bool, StorageError> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(StorageError::io("read", &self.path, e)),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > CHUNK_BYTES_MAX + codec::SEAL_OVERHEAD_BYTES {
            return Err(self.changed());
        }
        let mut record = vec![0u8; len];
        self.input
            .read_exact(&mut record)
            .map_err(|_| self.changed())?;
        let payload = codec::unseal_payload(&record)
            .map_err(|_| self.changed())?
            .to_vec();
        self.pos += 4 + len as u64;
        self.payload = payload;
        self.at = 0;
        Ok(true)
    }

    /// [`Read::read`] with the store's error.
    fn read_checked(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        while self.at == self.payload.len() {
            if !self.next_record()? {
                if self.copied != self.total {
                    return Err(self.changed());
                }
                return Ok(0);
            }
            self.copied += self.payload.len() as u64;
            if self.copied > self.total {
                return Err(self.changed());
            }
        }
        let n = buf.len().min(self.payload.len() - self.at);
        buf[..n].copy_from_slice(&self.payload[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Read for StagedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read_checked(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}
