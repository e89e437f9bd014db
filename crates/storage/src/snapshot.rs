//! Snapshot files: written atomically, the newest kept, older ones removed once the new one is
//! durable; plus the staging file for a snapshot being received in chunks.
//!
//! A snapshot file `snap-<term:016x>-<index:016x>.snap` is
//! `[magic 8][header len u32][sealed header][data][crc32(data) u32]`, the header holding the
//! last included entry id, the membership as of that entry and the data length.
//! Saving writes `<name>.tmp`, fsyncs it, renames it into place and fsyncs the directory; a crash
//! leaves either the old state or the new one, and leftover `.tmp` files are deleted on open.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use raft::{EntryId, Index, Membership, Term};

use crate::codec::{self, Reader};
use crate::error::StorageError;

/// First bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"SKIFFSNP";
/// Bytes written between syncs when writing a large snapshot file.
const WRITE_SLICE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read at a time when checking a snapshot's checksum.
const READ_SLICE_BYTES: usize = 1024 * 1024;
/// Largest header accepted; bounds allocation when the length field is corrupt.
const HEADER_BYTES_MAX: u32 = 64 * 1024;

/// What a snapshot covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log entry the snapshot includes.
    pub last: EntryId,
    /// The voting configuration as of `last`.
    pub membership: Membership,
}

/// The snapshot directory. Invariant: `latest` is the newest durable, header-verified file.
#[derive(Debug)]
pub struct SnapshotDir {
    /// The directory holding snapshot files and the staging file.
    dir: PathBuf,
    /// The newest complete snapshot, if any.
    latest: Option<SnapshotMeta>,
}

/// Fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

fn file_name(last: EntryId) -> String {
    format!("snap-{:016x}-{:016x}.snap", last.term.0, last.index.0)
}

fn parse_name(name: &str) -> Option<EntryId> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (t, i) = rest.split_once('-')?;
    if t.len() != 16 || i.len() != 16 {
        return None;
    }
    Some(EntryId {
        term: Term(u64::from_str_radix(t, 16).ok()?),
        index: Index(u64::from_str_radix(i, 16).ok()?),
    })
}

fn encode_header(meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&meta.last.term.0.to_le_bytes());
    p.extend_from_slice(&meta.last.index.0.to_le_bytes());
    codec::put_membership(&mut p, &meta.membership);
    p.extend_from_slice(&data_len.to_le_bytes());
    codec::seal_payload(&p)
}

fn decode_header(bytes: &[u8]) -> Result<(SnapshotMeta, u64), String> {
    let mut r = Reader::new(codec::unseal_payload(bytes)?);
    let last = EntryId {
        term: Term(r.u64()?),
        index: Index(r.u64()?),
    };
    let membership = codec::get_membership(&mut r)?;
    let data_len = r.u64()?;
    r.finish()?;
    Ok((SnapshotMeta { last, membership }, data_len))
}

/// Writes the snapshot file for `meta` into `dir` atomically and durably (temp file, fsync,
/// rename, fsync of the directory), without touching the store's snapshot directory state: safe to run
/// on another thread while the store goes on; [`crate::Store::adopt_snapshot`] then makes it the latest.
pub fn write_durable(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let mut w = SnapshotWriter::create(dir, meta)?;
    w.write_all(data)
        .map_err(|e| StorageError::io("write", &w.tmp, e))?;
    w.finish().map(|_| ())
}

/// A snapshot file written from a stream of any length, so that nobody holds the whole
/// snapshot in memory: the data goes to `<name>.tmp` in synced slices, then [`finish`]
/// writes the real length into the header, appends the CRC, syncs, renames the file into
/// place and syncs the directory. Dropped unfinished, it leaves a `.tmp` file that the next
/// open removes. Like [`write_durable`], it does not touch the store's snapshot directory state.
///
/// [`finish`]: SnapshotWriter::finish
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    file: File,
    meta: SnapshotMeta,
    crc: crc32fast::Hasher,
    data_len: u64,
    unsynced: usize,
}

impl SnapshotWriter {
    /// Starts the snapshot file for `meta` in `dir`.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        let name = file_name(meta.last);
        let tmp = dir.join(format!("{name}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        // The header's length field is fixed-size: a placeholder now, the real one at finish.
        let header = encode_header(meta, 0);
        let header_len = u32::try_from(header.len()).expect("header is small");
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&header_len.to_le_bytes());
        start.extend_from_slice(&header);
        file.write_all(&start)
            .map_err(|e| StorageError::io("write", &tmp, e))?;
        Ok(SnapshotWriter {
            dir: dir.to_path_buf(),
            path: dir.join(name),
            tmp,
            file,
            meta: meta.clone(),
            crc: crc32fast::Hasher::new(),
            data_len: 0,
            unsynced: 0,
        })
    }

    /// Completes the file and makes it durable under its final name; returns the data size.
    pub fn finish(mut self) -> Result<u64, StorageError> {
        let io = |e| StorageError::io("write", &self.tmp, e);
        let header = encode_header(&self.meta, self.data_len);
        std::os::unix::fs::FileExt::write_all_at(&self.file, &header, 12).map_err(io)?;
        let crc = self.crc.clone().finalize();
        self.file.write_all(&crc.to_le_bytes()).map_err(io)?;
        self.file
            .sync_all()
            .map_err(|e| StorageError::io("fsync", &self.tmp, e))?;
        fs::rename(&self.tmp, &self.path).map_err(|e| StorageError::io("rename", &self.tmp, e))?;
        sync_dir(&self.dir)?;
        Ok(self.data_len)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        self.crc.update(buf);
        self.data_len += buf.len() as u64;
        // Large snapshots go out in slices, each synced before the next: a few hundred MB of
        // dirty pages flushed at once would stall the Raft log's fsyncs on the same disk for
        // seconds (measured: requests > 7 s under etcdctl check perf --load=l).
        self.unsynced += buf.len();
        if self.unsynced >= WRITE_SLICE_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The data of a snapshot file as a stream; the file's CRC is checked when the end is
/// reached (a mismatch is an `InvalidData` error then), so a reader that consumes it all has
/// read exactly what was written.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    file: std::io::BufReader<File>,
    /// Offset of the data in the file.
    header_end: u64,
    left: u64,
    crc: crc32fast::Hasher,
    /// The stored CRC has been compared (once the data is all read).
    checked: bool,
}

impl SnapshotReader {
    /// Compares the stored CRC with the data read, once.
    fn check_end(&mut self) -> std::io::Result<()> {
        if self.checked {
            return Ok(());
        }
        let mut stored = [0u8; 4];
        self.file.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != self.crc.clone().finalize() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: snapshot data checksum mismatch", self.path.display()),
            ));
        }
        self.checked = true;
        Ok(())
    }

    /// The store's error for a read error of this stream: the file and offset of a checksum
    /// mismatch or a short file, else the IO error.
    fn error(&self, e: std::io::Error) -> StorageError {
        let file = self.path.display().to_string();
        match e.kind() {
            std::io::ErrorKind::InvalidData => {
                StorageError::corrupt(file, self.header_end, "snapshot data checksum mismatch")
            }
            _ => short(&self.path, self.header_end, e),
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.check_end()?;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} is short", self.path.display()),
            ));
        }
        self.crc.update(&buf[..n]);
        self.left -= n as u64;
        if self.left == 0 {
            self.check_end()?;
        }
        Ok(n)
    }
}

impl SnapshotDir {
    /// Opens (creating if needed) the snapshot directory: deletes interrupted `.tmp` files,
    /// finds the newest snapshot and checks its header. A corrupt newest snapshot is an error.
    pub fn open(dir: &Path) -> Result<SnapshotDir, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        let mut newest: Option<EntryId> = None;
        for name in list(dir)? {
            if name.ends_with(".tmp") {
                tracing::warn!(file = %name, "removing interrupted snapshot write");
                let p = dir.join(&name);
                fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
            } else if let Some(id) = parse_name(&name) {
                if newest.is_none_or(|n| id.index > n.index) {
                    newest = Some(id);
                }
            }
        }
        let latest = match newest {
            None => None,
            Some(id) => Some(read_header(&dir.join(file_name(id)), id)?.0),
        };
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            latest,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest durable snapshot.
    pub fn latest(&self) -> Option<&SnapshotMeta> {
        self.latest.as_ref()
    }

    /// Writes a snapshot atomically and durably, then removes older ones. Saving a snapshot
    /// that is not newer than the latest is refused.
    pub fn save(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.check_newer(meta)?;
        write_durable(&self.dir, meta, data)?;
        self.adopt(meta)
    }

    /// Refuses a snapshot that is not newer than the latest.
    pub(crate) fn check_newer(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        if let Some(l) = &self.latest {
            if meta.last.index <= l.last.index {
                return Err(StorageError::InvalidRequest(format!(
                    "snapshot at {} is not newer than the stored one at {}",
                    meta.last.index, l.last.index
                )));
            }
        }
        Ok(())
    }

    /// Makes a snapshot file that [`write_durable`] wrote (possibly on another thread) the
    /// latest, then removes older ones. Refused if it is not newer than the latest.
    pub fn adopt(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.check_newer(meta)?;
        let path = self.dir.join(file_name(meta.last));
        read_header(&path, meta.last)?;
        self.latest = Some(meta.clone());
        // Only now is the new snapshot durable and adopted; the old ones may go.
        for old in list(&self.dir)? {
            if let Some(id) = parse_name(&old) {
                if id.index < meta.last.index {
                    let p = self.dir.join(&old);
                    fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
                }
            }
        }
        Ok(())
    }

    /// The newest snapshot and the size of its data, from its header.
    pub fn latest_sized(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        let Some(meta) = &self.latest else {
            return Ok(None);
        };
        let (meta, data_len, _, _) = read_header(&self.dir.join(file_name(meta.last)), meta.last)?;
        Ok(Some((meta, data_len)))
    }

    /// Checks the newest snapshot's data checksum, reading it in bounded slices (never the
    /// whole file in memory). Returns its metadata and data size.
    pub fn verify_latest(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        let Some((meta, size, mut reader)) = self.open_latest()? else {
            return Ok(None);
        };
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| reader.error(e))?;
        Ok(Some((meta, size)))
    }

    /// Reads `len` bytes of the newest snapshot's data from `offset` (for sending it in
    /// chunks without holding it in memory). `last` must name the newest snapshot: a replaced
    /// one is gone.
    pub fn read_chunk(
        &self,
        last: EntryId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let Some(meta) = self.latest.as_ref().filter(|m| m.last == last) else {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot {last:?} is not the newest ({:?})",
                self.latest.as_ref().map(|m| m.last)
            )));
        };
        let path = self.dir.join(file_name(meta.last));
        let (_, data_len, header_end, f) = read_header(&path, meta.last)?;
        if offset.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(StorageError::InvalidRequest(format!(
                "chunk {offset}+{len} past the snapshot's {data_len} bytes"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, header_end + offset)
            .map_err(|e| short(&path, header_end + offset, e))?;
        Ok(buf)
    }

    /// The newest snapshot's data as a stream, checked against its CRC at the end.
    pub fn open_latest(&self) -> Result<Option<(SnapshotMeta, u64, SnapshotReader)>, StorageError> {
        let Some(meta) = &self.latest else {
            return Ok(None);
        };
        let path = self.dir.join(file_name(meta.last));
        let (meta, data_len, header_end, f) = read_header(&path, meta.last)?;
        let reader = SnapshotReader {
            path,
            file: std::io::BufReader::with_capacity(READ_SLICE_BYTES, f),
            header_end,
            left: data_len,
            crc: crc32fast::Hasher::new(),
            checked: false,
        };
        Ok(Some((meta, data_len, reader)))
    }

    /// Reads and fully verifies the newest snapshot.
    pub fn load_latest(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let Some((meta, size, mut reader)) = self.open_latest()? else {
            return Ok(None);
        };
        let len = usize::try_from(size).map_err(|_| {
            StorageError::corrupt(reader.path.display().to_string(), 0, "huge length")
        })?;
        let mut data = Vec::with_capacity(len);
        reader.read_to_end(&mut data).map_err(|e| reader.error(e))?;
        Ok(Some((meta, data)))
    }
}

/// Lists file names in `dir`.
pub(crate) fn list(dir: &Path) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(n) = ent.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn short(path: &Path, offset: u64, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        StorageError::corrupt(path.display().to_string(), offset, "snapshot file is short")
    } else {
        StorageError::io("read", path, e)
    }
}

/// Opens a snapshot file and checks magic and header; returns the reader positioned at data.
fn read_header(
    path: &Path,
    expected: EntryId,
) -> Result<(SnapshotMeta, u64, u64, File), StorageError> {
    let file = path.display().to_string();
    let mut f = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(|e| short(path, 0, e))?;
    if &magic != MAGIC {
        return Err(StorageError::corrupt(file, 0, "bad snapshot magic"));
    }
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(|e| short(path, 8, e))?;
    let len = u32::from_le_bytes(len);
    if len > HEADER_BYTES_MAX {
        return Err(StorageError::corrupt(file, 8, "snapshot header too long"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| short(path, 12, e))?;
    let (meta, data_len) =
        decode_header(&header).map_err(|r| StorageError::corrupt(file.clone(), 12, r))?;
    let header_end = 12 + u64::from(len);
    let file_len = f
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    if header_end
        .checked_add(data_len)
        .and_then(|n| n.checked_add(4))
        != Some(file_len)
    {
        return Err(StorageError::corrupt(
            file,
            header_end,
            format!("header says {data_len} data bytes but the file holds {file_len} bytes"),
        ));
    }
    if meta.last != expected {
        return Err(StorageError::corrupt(
            file,
            12,
            format!("header says {:?}, file name says {:?}", meta.last, expected),
        ));
    }
    Ok((meta, data_len, header_end, f))
}
