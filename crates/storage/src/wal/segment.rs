//! Segment files: names, the header, and zero-filled preallocation on a background thread.
//!
//! A segment is `<seq:016x>.wal`, created full size and zero-filled before it is used, so that
//! a synced append only writes data blocks already allocated: `fdatasync` then has no file
//! size or extent change to commit (measured on this ext4 disk, 6,400-byte synced writes: 6,871/s
//! into zero-filled space against 4,489/s appending and 4,221/s into `fallocate`d space).
//!
//! Header (64 bytes): `[magic "SKIFFWAL" 8][format version u32][seq u64][cluster id u64]
//! [node id u64][crc32 u32 of the preceding bytes][zeros]`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use raft::NodeId;

use crate::identity::Identity;

/// Bytes reserved for the header; the first frame starts here.
pub const HEADER_BYTES: u64 = 64;
const HEADER_MAGIC: &[u8; 8] = b"SKIFFWAL";
/// The segment format written today.
pub const FORMAT_VERSION: u32 = 1;
const ZEROS_CHUNK_BYTES: usize = 1 << 20;

/// The file name of segment `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The sequence number of a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The name a segment has while it is being preallocated.
pub fn temp_name(seq: u64) -> String {
    format!("{seq:016x}.wal.tmp")
}

/// The header of segment `seq` of `identity`.
pub fn encode_header(seq: u64, identity: &Identity) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..8].copy_from_slice(HEADER_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&identity.cluster_id.to_le_bytes());
    h[28..36].copy_from_slice(&identity.node_id.get().to_le_bytes());
    let crc = crc32fast::hash(&h[0..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header; returns the identity it records.
pub fn decode_header(bytes: &[u8], seq: u64) -> Result<Identity, String> {
    if bytes.len() < HEADER_BYTES as usize {
        return Err(format!("segment of {} bytes has no header", bytes.len()));
    }
    if &bytes[0..8] != HEADER_MAGIC {
        return Err("not a skiff log segment (bad magic)".to_string());
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let crc = crc32fast::hash(&bytes[0..36]);
    if crc != u32_at(36) {
        return Err(format!(
            "header checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            u32_at(36)
        ));
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(format!("unknown segment format version {}", u32_at(8)));
    }
    if u64_at(12) != seq {
        return Err(format!(
            "header says segment {}, file name {seq}",
            u64_at(12)
        ));
    }
    let node_id = NodeId::new(u64_at(28)).ok_or("header has node id 0")?;
    Ok(Identity {
        cluster_id: u64_at(20),
        node_id,
    })
}

/// Creates (or recreates) `path` holding `bytes` zeros, synced.
pub fn create_zeroed(path: &Path, bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; ZEROS_CHUNK_BYTES];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(ZEROS_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// The next segment, being zero-filled on a background thread so that rolling over does not
/// stall appends for the time it takes to write a whole segment.
pub struct Prealloc {
    seq: u64,
    path: PathBuf,
    pending: Pending,
}

enum Pending {
    Thread(JoinHandle<io::Result<File>>),
    /// No thread could be started; the work was done in place.
    Done(io::Result<File>),
}

impl Prealloc {
    /// Starts preparing segment `seq` in `dir`.
    pub fn start(dir: &Path, seq: u64, bytes: u64) -> Prealloc {
        let path = dir.join(temp_name(seq));
        let p = path.clone();
        let pending = match std::thread::Builder::new()
            .name("skiff-wal-prealloc".into())
            .spawn(move || create_zeroed(&p, bytes))
        {
            Ok(h) => Pending::Thread(h),
            Err(_) => Pending::Done(create_zeroed(&path, bytes)),
        };
        Prealloc { seq, path, pending }
    }

    /// Which segment this prepares.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The file's temporary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the file.
    pub fn take(self) -> io::Result<File> {
        match self.pending {
            Pending::Thread(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("segment preallocation thread panicked"))),
            Pending::Done(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers_round_trip() {
        assert_eq!(parse_name(&file_name(0x1234)), Some(0x1234));
        assert_eq!(parse_name("0000000000001234.wal.tmp"), None);
        assert_eq!(parse_name("1234.wal"), None);
        let id = Identity {
            cluster_id: 9,
            node_id: NodeId::new(3).unwrap(),
        };
        let h = encode_header(7, &id);
        assert_eq!(decode_header(&h, 7), Ok(id));
        assert!(decode_header(&h, 8).is_err());
        for i in 0..40 {
            let mut b = h;
            b[i] ^= 0x10;
            assert!(decode_header(&b, 7).is_err(), "flip at {i}");
        }
        assert!(decode_header(&h[..63], 7).is_err());
    }
}
